"""Hidden Markov language model: configuration, parameterisations and the model itself.

Two parameterisations of the same HMM (``K`` states, vocabulary ``V``) are selectable by
``HMMConfig.parameterization``:

* ``dense``: free logits for π ``(K,)``, A ``(K, K)`` and B ``(K, V)``, each normalised by a softmax.
* ``neural``: the reparameterisation of Chiu & Rush (2020, "Scaling Hidden Markov Language Models"):
  state and word embeddings shared across the three distributions, with small residual MLPs producing
  the logits, ``A = softmax(c·cos(f_from(E_s), f_to(E'_s)))``, ``B = softmax(c·cos(f_emit(E_s), E_w))`` and
  ``π = softmax(c·cos(E_s, f_start(q)))`` with ``c = √d``: cosine logits are bounded, so AdamW cannot push
  them out of float32's range. Parameters grow as ``O((K + V)·d)`` instead of ``O(K² + K·V)``.

Both produce normalised log parameters; all inference goes through :mod:`latentlm.hmm.forward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from latentlm.core.pretrained import PretrainedMixin
from latentlm.hmm import forward as inference
from latentlm.hmm.config import HMMConfig
from latentlm.hmm.data import VOCAB_FILE, Vocabulary, pad_batch


class HMMParameters(NamedTuple):
    """Normalised log parameters: ``log_start (K,)``, ``log_transition (K, K)``, ``log_emission (K, V)``."""

    log_start: Tensor
    log_transition: Tensor
    log_emission: Tensor


class DenseParameterization(nn.Module):
    """Free logits normalised by softmax."""

    def __init__(self, config: HMMConfig, generator: torch.Generator) -> None:
        super().__init__()
        k, v, std = config.num_states, config.vocab_size, config.init_std
        self.start_logits = nn.Parameter(torch.randn(k, generator=generator) * std)
        self.transition_logits = nn.Parameter(torch.randn(k, k, generator=generator) * std)
        self.emission_logits = nn.Parameter(torch.randn(k, v, generator=generator) * std)
        self._count_gradients = False

    @property
    def count_gradients(self) -> bool:
        """EM mode: the tables hold normalised log-probabilities and are used as they are, so the gradient
        of log P(O) with respect to each table is exactly its expected counts (what EM's M-step needs).
        Switching it on normalises the tables once; EM's M-step keeps them normalised (no softmax pass
        over K × V per step)."""
        return self._count_gradients

    @count_gradients.setter
    def count_gradients(self, on: bool) -> None:
        if on:
            with torch.no_grad():
                for table in self._tables():
                    table.copy_(table.log_softmax(-1))
        self._count_gradients = on

    def forward(self) -> HMMParameters:
        if self.count_gradients:
            return HMMParameters(*self._tables())
        return HMMParameters(*(t.log_softmax(-1) for t in self._tables()))

    def _tables(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.start_logits, self.transition_logits, self.emission_logits

    @torch.no_grad()
    def load_log_probabilities(self, params: HMMParameters) -> None:
        """Set the logits so that the normalised parameters equal ``params`` (log-probabilities)."""
        self.start_logits.copy_(params.log_start)
        self.transition_logits.copy_(params.log_transition)
        self.emission_logits.copy_(params.log_emission)


class ResidualMLP(nn.Module):
    """``x + W2 relu(W1 LayerNorm(x))``, the building block of the neural parameterisation."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


class NeuralParameterization(nn.Module):
    """Chiu & Rush (2020) style: shared embeddings and MLPs produce the HMM's logits."""

    def __init__(self, config: HMMConfig, generator: torch.Generator) -> None:
        super().__init__()
        k, v, d, h = config.num_states, config.vocab_size, config.embedding_dim, config.hidden_dim
        std = config.init_std

        def embedding(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator) * std / d**0.5)

        self.state_embeddings = embedding(k, d)  # (K, d)
        self.next_state_embeddings = embedding(k, d)  # (K, d)
        self.word_embeddings = embedding(v, d)  # (V, d)
        self.start_query = embedding(d)  # (d,)
        self.start_mlp = ResidualMLP(d, h)
        self.from_mlp = ResidualMLP(d, h)
        self.to_mlp = ResidualMLP(d, h)
        self.emission_mlp = ResidualMLP(d, h)
        with torch.no_grad():
            for mlp in (self.start_mlp, self.from_mlp, self.to_mlp, self.emission_mlp):
                for layer in (mlp.up, mlp.down):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std / d**0.5)
                    layer.bias.zero_()

    def forward(self) -> HMMParameters:
        scale = self.state_embeddings.shape[1] ** 0.5
        start_logits = bounded_logits(self.state_embeddings, self.start_mlp(self.start_query)[None], scale)
        transition_logits = bounded_logits(
            self.from_mlp(self.state_embeddings), self.to_mlp(self.next_state_embeddings), scale
        )  # (K, K)
        emission_logits = bounded_logits(
            self.emission_mlp(self.state_embeddings), self.word_embeddings, scale
        )
        return HMMParameters(
            start_logits[:, 0].log_softmax(0),  # (K, 1) -> (K,)
            transition_logits.log_softmax(1),
            emission_logits.log_softmax(1),
        )


def bounded_logits(rows: Tensor, columns: Tensor, scale: float) -> Tensor:
    """``(n, m)`` cosine similarities of ``(n, d)`` rows and ``(m, d)`` columns, times ``scale``.

    Bounded in ``[−scale, scale]`` whatever the weights: with raw dot products, AdamW at the seed's
    learning rates (0.02–0.05) grew the logits past float32's exp range within ~10 steps and the
    forward algorithm returned NaN; cosine logits with scale √d keep every probability ratio within
    ``exp(2√d)`` (≈ 9e6 at d = 64), ample for a peaked emission row.
    """
    return (
        torch.nn.functional.normalize(rows, dim=-1)
        @ torch.nn.functional.normalize(columns, dim=-1).t()
        * scale
    )


_PARAMETERIZATION_CLASSES = {"dense": DenseParameterization, "neural": NeuralParameterization}


@dataclass
class HMMOutput:
    """What :meth:`HMMLanguageModel.forward` returns (transformers' convention: ``loss`` with labels).

    Attributes:
        log_likelihood: ``(B,)`` ``log P(O)`` of each sequence (``log P(O, S)`` for rows given latent states).
        num_tokens: scored tokens (mask entries) in the batch.
        loss: ``−Σ log_likelihood / num_tokens`` (nats per token) when labels were given, else ``None``;
            ``loss.exp()`` is the batch's perplexity.
    """

    log_likelihood: Tensor
    num_tokens: int
    loss: Tensor | None = None


class HMMLanguageModel(nn.Module, PretrainedMixin):
    """An HMM over word ids, with exact likelihood, joint, posteriors, Viterbi and sampling.

    ``save_pretrained`` writes the vocabulary (``vocab.json``) beside the weights when the model has
    one, so ``from_pretrained`` gives a model that encodes and scores text on its own.

    Example:
        >>> model = HMMLanguageModel(HMMConfig(num_states=8, vocab_size=20))
        >>> obs = torch.randint(0, 20, (2, 5))
        >>> model(obs, labels=obs).log_likelihood.shape
        torch.Size([2])
    """

    config_class = HMMConfig

    def __init__(self, config: HMMConfig) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        self.parameterization = _PARAMETERIZATION_CLASSES[config.parameterization](config, generator)
        self.vocabulary: Vocabulary | None = None

    def save_assets(self, directory: Path) -> None:
        """The vocabulary goes inside the folder (written before the manifest, so it is verified too)."""
        if self.vocabulary is not None:
            self.vocabulary.save(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> HMMLanguageModel:
        model = super().from_pretrained(directory, device=device)
        if (Path(directory) / VOCAB_FILE).is_file():
            model.vocabulary = Vocabulary.load(directory)
        return model

    def log_parameters(self) -> HMMParameters:
        """Normalised log π ``(K,)``, log A ``(K, K)`` and log B ``(K, V)`` (differentiable)."""
        return self.parameterization()

    def log_likelihood(self, obs: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B,)`` ``log P(O)`` by the scaled GEMM forward algorithm (see :mod:`.forward`)."""
        return inference.forward_log_likelihood(*self.log_parameters(), obs, mask)

    def joint_log_likelihood(self, obs: Tensor, states: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B,)`` ``log P(O, S)`` for given ``(B, T)`` states, by direct gather."""
        return inference.joint_log_likelihood(*self.log_parameters(), obs, states, mask)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        latent_states: Tensor | None = None,
    ) -> HMMOutput:
        """Score right-padded sequences.

        Args:
            input_ids: ``(B, T)`` word ids (the observations O).
            attention_mask: ``(B, T)`` 1/True on real tokens (default: all).
            labels: as for transformers' causal LMs, the ids to score: an HMM scores its own input, so
                ``labels`` equals ``input_ids`` except where set to ``-100`` (not scored). Given labels,
                ``loss`` is the mean negative log-likelihood per scored token.
            latent_states: ``(B, T)`` stored states S; rows whose first entry is ``>= 0`` are scored by
                ``log P(O, S)`` (LVD), the others by ``log P(O)``.
        """
        mask = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        if labels is not None:
            scored = labels != -100
            if (labels[scored] != input_ids[scored]).any():
                raise ValueError(
                    "labels: an HMM scores its own input; labels must equal input_ids or be -100"
                )
            mask = mask & scored
        params = self.log_parameters()  # one call, so that DDP sees one forward
        log_likelihood = params.log_start.new_zeros(input_ids.shape[0])
        joint = latent_states[:, 0] >= 0 if latent_states is not None else torch.zeros_like(mask[:, 0])
        if joint.any():
            rows = joint.nonzero().squeeze(1)  # (R,)
            width = int(mask[rows].sum(1).max())
            log_likelihood = log_likelihood.index_put(
                (rows,),
                inference.joint_log_likelihood(
                    *params, input_ids[rows, :width], latent_states[rows, :width], mask[rows, :width]
                ),
            )
        if (~joint).any():
            rows = (~joint).nonzero().squeeze(1)  # (R,)
            width = max(int(mask[rows].sum(1).max()), 1)
            log_likelihood = log_likelihood.index_put(
                (rows,),
                inference.forward_log_likelihood(*params, input_ids[rows, :width], mask[rows, :width]),
            )
        num_tokens = int(mask.sum())
        loss = -log_likelihood.sum() / max(num_tokens, 1) if labels is not None else None
        return HMMOutput(log_likelihood=log_likelihood, num_tokens=num_tokens, loss=loss)

    def encode(self, texts: list[str]) -> dict[str, Tensor]:
        """Tokenise texts with the saved vocabulary: ``input_ids`` and ``attention_mask``, ``(B, T)``.

        Each text is one unit (closed by ``<eos>``); a text longer than ``max_length`` tokens becomes
        several rows, as in training.
        """
        if self.vocabulary is None:
            raise ValueError("this model has no vocabulary (it was not saved by a training run)")
        sequences = self.vocabulary.encode_units(list(texts))
        batch = pad_batch([{"index": i, "obs": sequences.sequence(i)} for i in range(len(sequences))])
        device = next(self.parameters()).device
        return {"input_ids": batch["obs"].to(device), "attention_mask": batch["mask"].to(device)}

    @torch.no_grad()
    def posteriors(self, obs: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B, T, K)`` posterior state marginals."""
        return inference.posterior_marginals(*self.log_parameters(), obs, mask)

    @torch.no_grad()
    def viterbi(self, obs: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Most likely states ``(B, T)`` and their ``log P(O, S*)`` ``(B,)``."""
        return inference.viterbi(*self.log_parameters(), obs, mask)

    @torch.no_grad()
    def sample(
        self,
        num_sequences: int,
        max_length: int,
        generator: torch.Generator | None = None,
        eos_id: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw sequences from the model (ancestral sampling).

        Args:
            num_sequences: N sequences.
            max_length: T tokens at most per sequence.
            generator: torch RNG for reproducibility.
            eos_id: if given, a sequence ends after it emits this word (the EOS is kept).

        Returns:
            ``(words, states, mask)``, each ``(N, T)``; ``mask`` marks the tokens before and including EOS.
        """
        log_start, log_transition, log_emission = self.log_parameters()
        transition, emission = log_transition.exp(), log_emission.exp()
        device = log_start.device
        states = torch.empty(num_sequences, max_length, dtype=torch.long, device=device)
        words = torch.empty(num_sequences, max_length, dtype=torch.long, device=device)
        mask = torch.zeros(num_sequences, max_length, dtype=torch.bool, device=device)
        alive = torch.ones(num_sequences, dtype=torch.bool, device=device)
        state = torch.multinomial(log_start.exp().expand(num_sequences, -1), 1, generator=generator).squeeze(
            1
        )
        for t in range(max_length):
            if t > 0:
                state = torch.multinomial(transition[state], 1, generator=generator).squeeze(1)  # (N,)
            word = torch.multinomial(emission[state], 1, generator=generator).squeeze(1)  # (N,)
            states[:, t], words[:, t], mask[:, t] = state, word, alive
            if eos_id is not None:
                alive = alive & (word != eos_id)
        return words, states, mask

    def load_log_probabilities(self, params: HMMParameters) -> None:
        """Set a dense model to the given log-probabilities (used by count estimates and EM)."""
        if not isinstance(self.parameterization, DenseParameterization):
            raise ValueError(
                "parameterization: closed-form estimates can only be loaded into a 'dense' model, "
                f"this one is {self.config.parameterization!r}"
            )
        self.parameterization.load_log_probabilities(params)
