"""Per-model adapters Z -> soft tokens, and the trainable `WireModel` (encoder + all adapters).

An adapter maps latent slots (B, M, d_z) into one frozen LLM's input-embedding space (B, M, d):
a linear projection, optionally a residual 2-layer GELU MLP, optionally FiLM (per-slot scale and
shift predicted from the slot), RMS calibration of every soft token to the model's `embed_rms`
(per example and per token, seed 001 "calibrate per-example"), a learnable per-channel affine,
and a prefix gain applied at evaluation. Later issues plug deep-prefix / multi-depth heads in
next to `WireAdapter` without touching it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from latentlm.core.pretrained import PretrainedMixin
from latentlm.wire.config import AdapterConfig, WireModelConfig
from latentlm.wire.encoders import EncoderInputs, TokenCodes, build_encoder

if TYPE_CHECKING:
    from latentlm.wire.features import FeatureBuilder, SentenceStates
    from latentlm.wire.frozen import FrozenLM


def token_rms(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Root mean square over the last dimension, keeping it: (..., d) -> (..., 1)."""
    return x.pow(2).mean(dim=-1, keepdim=True).add(eps).sqrt()


class WireAdapter(nn.Module):
    """Latent slots -> one model's soft-token embeddings.

    Args:
        cfg: adapter settings.
        d_z: latent width.
        d_model: the frozen model's embedding width.
        embed_rms: the frozen model's input-embedding RMS (calibration target).
    """

    def __init__(
        self,
        cfg: AdapterConfig,
        d_z: int,
        d_model: int,
        embed_rms: float,
        part: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("embed_rms", torch.tensor(float(embed_rms)), persistent=True)
        self.scale = nn.Parameter(torch.ones(()))
        if cfg.kind == "select":  # this model's part of the latent + a low-rank correction (zero at start)
            if part is None or part[1] - part[0] != d_model:
                raise ValueError(f"adapter.kind select: needs this model's slice of the latent, got {part}")
            self.part = part
            self.delta = nn.Sequential(
                nn.LayerNorm(d_z), nn.Linear(d_z, cfg.rank), nn.GELU(), nn.Linear(cfg.rank, d_model)
            )
            nn.init.zeros_(self.delta[-1].weight)
            nn.init.zeros_(self.delta[-1].bias)
            self.gamma = self.beta = None
            return
        self.input_norm = nn.LayerNorm(d_z)
        self.proj = nn.Linear(d_z, d_model)
        self.mlp = None
        if cfg.kind == "mlp":
            self.mlp = nn.Sequential(
                nn.LayerNorm(d_model),
                nn.Linear(d_model, cfg.hidden_mult * d_model),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.hidden_mult * d_model, d_model),
            )
        self.film = None
        if cfg.film:
            self.film = nn.Linear(d_z, 2 * d_model)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.gamma = nn.Parameter(torch.ones(d_model)) if cfg.affine else None
        self.beta = nn.Parameter(torch.zeros(d_model)) if cfg.affine else None

    def forward(self, z: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """z (B, M, d_z) -> soft tokens (B, M, d_model), RMS-calibrated, times `gain`
        (`select`: this model's slice of z plus embed_rms x the low-rank correction, no calibration)."""
        if self.cfg.kind == "select":
            return (z[..., self.part[0] : self.part[1]] + self.embed_rms * self.delta(z)) * gain
        z = self.input_norm(z)
        h = self.proj(z)  # (B, M, d)
        if self.mlp is not None:
            h = h + self.mlp(h)
        if self.film is not None:
            film_scale, film_shift = self.film(z).chunk(2, dim=-1)  # (B, M, d) each
            h = h * (1 + film_scale) + film_shift
        if self.cfg.calibration == "embed_rms":
            h = h / token_rms(h) * self.embed_rms * self.scale
        if self.gamma is not None:
            h = h * self.gamma + self.beta
        return h * gain

    def identity_penalty(self) -> torch.Tensor:
        """L2 distance of the calibration scale and the affine from the identity."""
        penalty = (self.scale - 1).pow(2)
        if self.gamma is not None:
            penalty = penalty + (self.gamma - 1).pow(2).mean() + (self.beta / self.embed_rms).pow(2).mean()
        return penalty


@dataclass
class WireOutput:
    """What `WireModel.forward` returns (transformers' convention: `loss` when answers are given)."""

    latent: torch.Tensor
    """Z (B, M_total, d_z), shared slots first."""
    latent_mask: torch.Tensor
    """(B, M_total) 1 on slots that carry text (context scope: M_b = ceil(context tokens / ratio))."""
    soft_tokens: list[torch.Tensor]
    """Per frozen model, its soft tokens (B, M, d_i)."""
    loss: torch.Tensor | None = None
    """Mean over the frozen models of the teacher-forced answer CE (None without answers)."""
    model_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    """The answer CE of each frozen model."""
    model_masks: list[torch.Tensor] | None = None
    """Per frozen model, (B, M_total) the slots it reads when that differs from `latent_mask`
    (`anchor_span`: a context with fewer of that model's tokens than positions)."""

    def mask_for(self, index: int) -> torch.Tensor:
        """The slots frozen model `index` reads, (B, M_total)."""
        return self.latent_mask if self.model_masks is None else self.model_masks[index]

    def pieces(self, index: int) -> list[torch.Tensor]:
        """Per example, the soft tokens model `index` reads in the context scope, (M_b, d)."""
        soft, mask = self.soft_tokens[index], self.mask_for(index)
        return [soft[row, mask[row].bool()] for row in range(soft.shape[0])]


class WireModel(PretrainedMixin, nn.Module):
    """The trainable part of LatentWire: one encoder and one adapter per frozen model.

    `encode` gives Z (B, M_total, d_z) with the shared slots first and then each model's private
    slots; `latent_for(z, i)` is model i's view (shared + its private, M slots); `soft_tokens`
    runs model i's adapter on it. The frozen LLMs are not part of the module (checkpoints stay
    small): their names and prompting policy are in the config, `attach` hands over loaded ones and
    `frozen()` loads them by name on first use.
    """

    config_class = WireModelConfig

    def __init__(self, config: WireModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(
            config.encoder,
            config.latent,
            len(config.model_names),
            config.st_dim,
            config.model_dims,
            config.embed_rms,
        )
        starts = [sum(config.model_dims[:i]) for i in range(len(config.model_dims))]
        self.adapters = nn.ModuleList(
            WireAdapter(config.adapter, config.latent.d_z, d, rms, (start, start + d))
            for d, rms, start in zip(config.model_dims, config.embed_rms, starts, strict=True)
        )

    # ----------------------------------------------------------------- frozen models
    def attach(
        self,
        lms: Sequence[FrozenLM],
        sentence: SentenceStates | None = None,
        features: FeatureBuilder | None = None,
    ) -> WireModel:
        """Use these loaded frozen LLMs (in `config.model_names` order) and sentence encoder (or a
        whole feature builder)."""
        from latentlm.wire.features import build_features

        names = [lm.name for lm in lms]
        if names != list(self.config.model_names):
            raise ValueError(f"this WireModel serves {self.config.model_names}, got frozen models {names}")
        if features is None:
            features, _ = build_features(self.config.encoder, lms, sentence)
        self.__dict__["_frozen"] = (list(lms), features)  # plain attribute: not a submodule
        return self

    def frozen(self) -> tuple[list[FrozenLM], FeatureBuilder]:
        """The frozen LLMs and the feature builder, loaded by name from the config on first use."""
        if "_frozen" not in self.__dict__:
            from latentlm.wire.frozen import load_frozen_lms

            self.attach(load_frozen_lms(self.config.model_names, self.config.prompt))
        return self.__dict__["_frozen"]

    @property
    def scope(self) -> str:
        return self.config.latent.scope

    @property
    def required_features(self) -> tuple[str, ...]:
        return self.encoder.required_features

    def encoder_texts(self, contexts: Sequence[str], questions: Sequence[str]) -> list[str]:
        """What the encoder reads: the context alone (context scope) or context + question (prompt)."""
        from latentlm.wire.frozen import format_content

        if self.scope == "context":
            return list(contexts)
        return [format_content(c, q) for c, q in zip(contexts, questions, strict=True)]

    def latent_mask(self, inputs: EncoderInputs, z: torch.Tensor) -> torch.Tensor:
        """(B, M_total) 1 on slots that carry text; all ones for fixed-length encoders."""
        if hasattr(self.encoder, "latent_mask"):
            return self.encoder.latent_mask(inputs)
        return torch.ones(z.shape[:2], dtype=torch.long, device=z.device)

    def prompt(
        self, index: int, soft: torch.Tensor, latent_mask: torch.Tensor, questions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model `index`'s prompt embeddings (B, P, d) + mask around its soft tokens (B, M, d):
        `[prefix][soft][suffix][anchor]` (prompt scope) or `[prefix][soft][question][suffix][anchor]`
        (context scope; only the M_b slots of each example, left padded)."""
        from latentlm.wire.features import context_prompts, latent_prompt

        lm = self.frozen()[0][index]
        if self.scope == "prompt":
            return latent_prompt(lm, soft)
        pieces = [soft[row, latent_mask[row].bool()] for row in range(soft.shape[0])]  # (M_b, d) each
        return context_prompts(lm, pieces, questions)

    def forward(
        self,
        inputs: EncoderInputs,
        questions: Sequence[str] | None = None,
        answers: Sequence[str] | None = None,
        max_answer_tokens: int = 12,
        gain: float = 1.0,
    ) -> WireOutput:
        """Encode, map to every model's soft tokens and, given gold `answers`, score them.

        Args:
            inputs: encoder features of the batch (`FeatureBuilder(encoder_texts(...), required_features)`).
            questions: the questions (text after the latent in the context scope).
            answers: gold answers; with them `loss` is the mean answer CE over the frozen models.
            max_answer_tokens: answer tokens supervised.
            gain: soft-token gain.
        """
        from latentlm.wire.losses import masked_token_ce

        z = self.encode(inputs)  # (B, M_total, d_z)
        mask = self.latent_mask(inputs, z)
        soft = [self.soft_tokens(z, i, gain) for i in range(len(self.adapters))]
        out = WireOutput(latent=z, latent_mask=mask, soft_tokens=soft)
        if hasattr(self.encoder, "model_masks"):
            out.model_masks = self.encoder.model_masks(inputs)
        if answers is None:
            return out
        if self.scope == "context" and questions is None:
            raise ValueError("the context scope needs the questions to score answers")
        questions = list(questions) if questions is not None else [""] * z.shape[0]
        for index, lm in enumerate(self.frozen()[0]):
            prompt, prompt_mask = self.prompt(index, soft[index], out.mask_for(index), questions)
            gold = [lm.answer_ids(a)[:max_answer_tokens] for a in answers]
            gold_ids = lm.pad_answers(gold).to(prompt.device)
            gold_mask = lm.answer_mask(gold, gold_ids.shape[1]).to(prompt.device)
            logits = lm.teacher_forced_logits(prompt, prompt_mask, gold_ids, gold_mask)  # (B, A, V)
            out.model_losses[lm.name] = masked_token_ce(logits, gold_ids, gold_mask)
        out.loss = torch.stack(list(out.model_losses.values())).mean()
        return out

    @torch.no_grad()
    def answer(
        self, context: str, question: str, max_new_tokens: int = 12, gain: float = 1.0
    ) -> dict[str, str]:
        """Each frozen model's greedy answer to `question` about `context`, read from the latent."""
        lms, features = self.frozen()
        inputs = features(self.encoder_texts([context], [question]), self.required_features, [question])
        out = self(inputs, gain=gain)
        answers = {}
        for index, lm in enumerate(lms):
            prompt, mask = self.prompt(index, out.soft_tokens[index], out.mask_for(index), [question])
            answers[lm.name] = lm.decode(lm.generate_from_embeds(prompt, mask, max_new_tokens)[0])
        return answers

    def encode(self, inputs: EncoderInputs) -> torch.Tensor:
        """Features -> Z (B, M_total, d_z)."""
        return self.encoder(inputs)

    def encode_with_codes(self, inputs: EncoderInputs) -> tuple[torch.Tensor, TokenCodes | None]:
        """Z and, for an encoder that builds per-token codes (interlingua), those codes."""
        if not hasattr(self.encoder, "token_codes"):
            return self.encoder(inputs), None
        codes = self.encoder.token_codes(inputs)
        return self.encoder.select(codes, inputs), codes

    def latent_for(self, z: torch.Tensor, index: int) -> torch.Tensor:
        """Model `index`'s M slots: the shared slots then its private ones, (B, M, d_z)."""
        latent = self.config.latent
        shared = z[:, : latent.shared_length]
        if latent.private_length == 0:
            return shared
        start = latent.shared_length + index * latent.private_length
        return torch.cat([shared, z[:, start : start + latent.private_length]], dim=1)

    def soft_tokens(self, z: torch.Tensor, index: int, gain: float = 1.0) -> torch.Tensor:
        """Model `index`'s soft tokens (B, M, d_index)."""
        return self.adapters[index](self.latent_for(z, index), gain)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def adapter_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())
