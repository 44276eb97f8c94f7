"""Per-model adapters Z -> soft tokens, and the trainable `WireModel` (encoder + all adapters).

An adapter maps latent slots (B, M, d_z) into one frozen LLM's input-embedding space (B, M, d):
a linear projection, optionally a residual 2-layer GELU MLP, optionally FiLM (per-slot scale and
shift predicted from the slot), RMS calibration of every soft token to the model's `embed_rms`
(per example and per token, seed 001 "calibrate per-example"), a learnable per-channel affine,
and a prefix gain applied at evaluation. Later issues plug deep-prefix / multi-depth heads in
next to `WireAdapter` without touching it.
"""

from __future__ import annotations

import torch
from torch import nn

from latentlm.core.pretrained import PretrainedMixin
from latentlm.wire.config import AdapterConfig, WireModelConfig
from latentlm.wire.encoders import EncoderInputs, TokenCodes, build_encoder


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

    def __init__(self, cfg: AdapterConfig, d_z: int, d_model: int, embed_rms: float) -> None:
        super().__init__()
        self.cfg = cfg
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
        self.register_buffer("embed_rms", torch.tensor(float(embed_rms)), persistent=True)
        self.scale = nn.Parameter(torch.ones(()))
        self.gamma = nn.Parameter(torch.ones(d_model)) if cfg.affine else None
        self.beta = nn.Parameter(torch.zeros(d_model)) if cfg.affine else None

    def forward(self, z: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """z (B, M, d_z) -> soft tokens (B, M, d_model), RMS-calibrated, times `gain`."""
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


class WireModel(PretrainedMixin, nn.Module):
    """The trainable part of LatentWire: one encoder and one adapter per frozen model.

    `encode` gives Z (B, M_total, d_z) with the shared slots first and then each model's private
    slots; `latent_for(z, i)` is model i's view (shared + its private, M slots); `soft_tokens`
    runs model i's adapter on it.
    """

    config_class = WireModelConfig

    def __init__(self, config: WireModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(
            config.encoder, config.latent, len(config.model_names), config.st_dim, config.model_dims
        )
        self.adapters = nn.ModuleList(
            WireAdapter(config.adapter, config.latent.d_z, d, rms)
            for d, rms in zip(config.model_dims, config.embed_rms, strict=True)
        )

    @property
    def required_features(self) -> tuple[str, ...]:
        return self.encoder.required_features

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
