"""Hidden Markov language model: configuration, parameterisations and the model itself.

Two parameterisations of the same HMM (``K`` states, vocabulary ``V``) are selectable by
``HMMConfig.parameterization``:

* ``dense``: free logits for π ``(K,)``, A ``(K, K)`` and B ``(K, V)``, each normalised by a softmax.
* ``neural``: the reparameterisation of Chiu & Rush (2020, "Scaling Hidden Markov Language Models"):
  state and word embeddings shared across the three distributions, with small residual MLPs producing
  the logits, ``A = softmax(f_from(E_s) f_to(E'_s)ᵀ)``, ``B = softmax(f_emit(E_s) E_wᵀ)`` and
  ``π = softmax(E_s f_start(q))``. Parameters grow as ``O((K + V)·d)`` instead of ``O(K² + K·V)``.

Both produce normalised log parameters; all inference goes through :mod:`latentlm.hmm.forward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from latentlm.core.pretrained import PretrainedMixin
from latentlm.hmm import forward as inference

PARAMETERIZATIONS = ("dense", "neural")


@dataclass
class HMMConfig:
    """Configuration of an :class:`HMMLanguageModel`.

    Attributes:
        num_states: number of hidden states K.
        vocab_size: number of words V (set from the corpus vocabulary by the training commands).
        parameterization: ``"dense"`` (softmax over free logits) or ``"neural"`` (Chiu & Rush MLPs).
        init_std: standard deviation of the random normal initial logits (dense) or weights (neural).
        embedding_dim: width of the state and word embeddings (neural only).
        hidden_dim: width of the hidden layer of each residual MLP (neural only).
        seed: seed of the random initialisation.
    """

    num_states: int = 64
    vocab_size: int = 100
    parameterization: str = "dense"
    init_std: float = 1.0
    embedding_dim: int = 64
    hidden_dim: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_states < 1:
            raise ValueError(f"num_states: must be >= 1, got {self.num_states}")
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size: must be >= 1, got {self.vocab_size}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization: must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}"
            )
        if self.init_std <= 0:
            raise ValueError(f"init_std: must be > 0, got {self.init_std}")
        if self.embedding_dim < 1 or self.hidden_dim < 1:
            raise ValueError("embedding_dim, hidden_dim: must be >= 1")


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

    def forward(self) -> HMMParameters:
        return HMMParameters(
            self.start_logits.log_softmax(0),
            self.transition_logits.log_softmax(1),
            self.emission_logits.log_softmax(1),
        )

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
        start_logits = self.state_embeddings @ self.start_mlp(self.start_query)  # (K,)
        transition_logits = self.from_mlp(self.state_embeddings) @ self.to_mlp(self.next_state_embeddings).t()
        emission_logits = self.emission_mlp(self.state_embeddings) @ self.word_embeddings.t()  # (K, V)
        return HMMParameters(
            start_logits.log_softmax(0), transition_logits.log_softmax(1), emission_logits.log_softmax(1)
        )


_PARAMETERIZATION_CLASSES = {"dense": DenseParameterization, "neural": NeuralParameterization}


class HMMLanguageModel(nn.Module, PretrainedMixin):
    """An HMM over word ids, with exact likelihood, joint, posteriors, Viterbi and sampling.

    Example:
        >>> model = HMMLanguageModel(HMMConfig(num_states=8, vocab_size=20))
        >>> obs = torch.randint(0, 20, (2, 5))
        >>> model.log_likelihood(obs).shape
        torch.Size([2])
    """

    config_class = HMMConfig

    def __init__(self, config: HMMConfig) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        self.parameterization = _PARAMETERIZATION_CLASSES[config.parameterization](config, generator)

    def log_parameters(self) -> HMMParameters:
        """Normalised log π ``(K,)``, log A ``(K, K)`` and log B ``(K, V)`` (differentiable)."""
        return self.parameterization()

    def log_likelihood(self, obs: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B,)`` ``log P(O)`` by the scaled GEMM forward algorithm (see :mod:`.forward`)."""
        return inference.forward_log_likelihood(*self.log_parameters(), obs, mask)

    def joint_log_likelihood(self, obs: Tensor, states: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B,)`` ``log P(O, S)`` for given ``(B, T)`` states, by direct gather."""
        return inference.joint_log_likelihood(*self.log_parameters(), obs, states, mask)

    def forward(self) -> HMMParameters:
        """The normalised log parameters; training code calls the (possibly DDP-wrapped) model for them."""
        return self.log_parameters()

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
