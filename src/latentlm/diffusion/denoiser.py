"""Two-stream (MMDiT-like) joint denoiser over text tokens and latent tokens (seed 002, "Model").

The text stream carries token embeddings of the (partially masked) sentence; the latent stream carries
the (noisy) sentence latent projected to ``num_latent_tokens`` tokens.  Each stream has its own norms,
projections and feed-forward layers; every block mixes the two jointly: one bidirectional RWKV scan over
``[latent tokens; text tokens]`` (``JointRWKVBlock``, the system's model) or one joint softmax attention
(``JointAttentionBlock``, the MDLM-like peer used in benchmarks).  Both streams are modulated with
adaLN-Zero from an embedding of the two diffusion times ``(t_text, t_latent)``, so one network covers
joint generation (both noisy), text->latent (text clean, ``t_text = 0``) and latent->text (latent clean).

``latent_pred_from`` chooses the extra features the latent head reads besides the latent tokens:
``text`` (pooled final text hidden states), ``prefix`` (pooled input embeddings of the first
``prefix_length`` tokens) or ``both`` (both concatenated).

Module paths put the recurrent layers under ``rwkv.blocks.N.time_mix`` / ``rwkv.blocks.N.channel_mix``
once the denoiser is attached as ``LatentDiffusionLM.rwkv``, which is what the seed's unfreeze regexes
(``rwkv.*time_mix``, ``rwkv.*channel_mix``) select.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentlm.diffusion.variational import LatentPrior, TextLatentEncoder, masked_mean
from latentlm.diffusion.wkv import ChannelMix, JointTimeMix

__all__ = [
    "DenoiserConfig",
    "DenoiserOutput",
    "TwoStreamDenoiser",
    "LatentDiffusionLM",
    "SEQUENCE_MIXERS",
    "LATENT_PRED_FROM",
]

SEQUENCE_MIXERS = ("rwkv", "attention")
LATENT_PRED_FROM = ("text", "prefix", "both")
STREAMS = ("text", "latent")


@dataclass
class DenoiserConfig:
    """Architecture of the two-stream denoiser (everything needed to rebuild it)."""

    vocab_size: int
    mask_token_id: int
    latent_dim: int
    seq_len: int
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_latent_tokens: int = 4
    ffn_mult: int = 4
    decay_lora_rank: int = 16
    sequence_mixer: str = "rwkv"
    wkv_impl: str = "chunked"
    wkv_chunk_size: int = 0
    latent_pred_from: str = "text"
    prefix_length: int = 8

    def __post_init__(self) -> None:
        if self.sequence_mixer not in SEQUENCE_MIXERS:
            raise ValueError(
                f"model.sequence_mixer: must be one of {SEQUENCE_MIXERS}, got {self.sequence_mixer!r}"
            )
        if self.latent_pred_from not in LATENT_PRED_FROM:
            raise ValueError(
                f"model.latent_pred_from: must be one of {LATENT_PRED_FROM}, got {self.latent_pred_from!r}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"model.d_model={self.d_model} must be divisible by model.num_heads={self.num_heads}"
            )
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(
                f"mask_token_id {self.mask_token_id} outside the vocabulary of {self.vocab_size}"
            )


@dataclass
class DenoiserOutput:
    """Denoiser outputs: final text hidden states (B, T, D) and the latent prediction (B, d)."""

    text_hidden: torch.Tensor
    latent_output: torch.Tensor


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] followed by a 2-layer SiLU MLP (DiT)."""

    def __init__(self, d_model: int, num_frequencies: int = 64) -> None:
        super().__init__()
        self.num_frequencies = num_frequencies
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_frequencies, d_model), nn.SiLU(), nn.Linear(d_model, d_model)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Args: t (B,). Returns: (B, D)."""
        freqs = torch.exp(
            -math.log(10_000.0) * torch.arange(self.num_frequencies, device=t.device) / self.num_frequencies
        )
        angles = 1000.0 * t.float().unsqueeze(-1) * freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class _TwoStreamBlock(nn.Module):
    """Shared skeleton: per-stream adaLN-Zero around a joint sequence mixer and per-stream feed-forward."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm1 = nn.ModuleDict({s: nn.LayerNorm(d_model, elementwise_affine=False) for s in STREAMS})
        self.norm2 = nn.ModuleDict({s: nn.LayerNorm(d_model, elementwise_affine=False) for s in STREAMS})
        # adaLN-Zero: shift/scale/gate for the mixer and the feed-forward, zero-initialised so that
        # every block starts as the identity.
        self.modulation = nn.ModuleDict({s: nn.Linear(d_model, 6 * d_model) for s in STREAMS})
        for layer in self.modulation.values():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def sequence_mix(self, x_text: torch.Tensor, x_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def feed_forward(self, stream: str, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, h_text: torch.Tensor, h_latent: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: h_text (B, T, D), h_latent (B, M, D), cond (B, D). Returns the updated streams."""
        hidden = {"text": h_text, "latent": h_latent}
        mods = {s: self.modulation[s](F.silu(cond)).chunk(6, dim=-1) for s in STREAMS}
        mixed = self.sequence_mix(
            *(_modulate(self.norm1[s](hidden[s]), mods[s][0], mods[s][1]) for s in STREAMS)
        )
        for s, out in zip(STREAMS, mixed, strict=True):
            hidden[s] = hidden[s] + mods[s][2].unsqueeze(1) * out
        for s in STREAMS:
            ff = self.feed_forward(s, _modulate(self.norm2[s](hidden[s]), mods[s][3], mods[s][4]))
            hidden[s] = hidden[s] + mods[s][5].unsqueeze(1) * ff
        return hidden["text"], hidden["latent"]


class JointRWKVBlock(_TwoStreamBlock):
    """Two-stream block with a joint bidirectional RWKV time mix and per-stream channel mixes."""

    needs_positions = False

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__(cfg.d_model)
        self.time_mix = JointTimeMix(
            cfg.d_model, cfg.num_heads, cfg.decay_lora_rank, cfg.wkv_impl, cfg.wkv_chunk_size
        )
        self.channel_mix = nn.ModuleDict({s: ChannelMix(cfg.d_model, cfg.ffn_mult) for s in STREAMS})

    def sequence_mix(self, x_text, x_latent):
        return self.time_mix(x_text, x_latent)

    def feed_forward(self, stream, x):
        return self.channel_mix[stream](x)


class JointAttention(nn.Module):
    """MMDiT joint attention: per-stream q/k/v/out projections, one softmax over both streams."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.ModuleDict({s: nn.Linear(d_model, 3 * d_model, bias=False) for s in STREAMS})
        self.out = nn.ModuleDict({s: nn.Linear(d_model, d_model, bias=False) for s in STREAMS})

    def forward(self, x_text: torch.Tensor, x_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        M = x_latent.shape[1]
        joint = torch.cat([self.qkv["latent"](x_latent), self.qkv["text"](x_text)], dim=1)  # (B, M+T, 3D)
        B, L, _ = joint.shape
        q, k, v = joint.view(B, L, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # each (B, H, L, K)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, -1)
        return self.out["text"](y[:, M:]), self.out["latent"](y[:, :M])


class JointAttentionBlock(_TwoStreamBlock):
    """The attention peer (MDLM/DiT-like): joint softmax attention and per-stream GELU MLPs."""

    needs_positions = True

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__(cfg.d_model)
        self.attention = JointAttention(cfg.d_model, cfg.num_heads)
        self.mlp = nn.ModuleDict(
            {
                s: nn.Sequential(
                    nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model),
                    nn.GELU(approximate="tanh"),
                    nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model),
                )
                for s in STREAMS
            }
        )

    def sequence_mix(self, x_text, x_latent):
        return self.attention(x_text, x_latent)

    def feed_forward(self, stream, x):
        return self.mlp[stream](x)


_BLOCKS = {"rwkv": JointRWKVBlock, "attention": JointAttentionBlock}


class TwoStreamDenoiser(nn.Module):
    """The joint denoiser: ``(x_t, z_t, t_text, t_latent) -> (text hidden states, latent v/eps output)``."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.config = cfg
        D, M = cfg.d_model, cfg.num_latent_tokens
        block_cls = _BLOCKS[cfg.sequence_mixer]
        self.token_embedding = nn.Embedding(cfg.vocab_size, D)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.text_position = nn.Parameter(torch.zeros(cfg.seq_len, D)) if block_cls.needs_positions else None
        self.latent_in = nn.Linear(cfg.latent_dim, M * D)
        self.latent_position = nn.Parameter(0.02 * torch.randn(M, D))
        self.time_embed_text = TimestepEmbedding(D)
        self.time_embed_latent = TimestepEmbedding(D)
        self.blocks = nn.ModuleList(block_cls(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.ModuleDict({s: nn.LayerNorm(D, elementwise_affine=False) for s in STREAMS})
        self.final_modulation = nn.ModuleDict({s: nn.Linear(D, 2 * D) for s in STREAMS})
        for layer in self.final_modulation.values():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        extra = {"text": D, "prefix": D, "both": 2 * D}[cfg.latent_pred_from]
        self.latent_head = nn.Linear(M * D + extra, cfg.latent_dim)
        nn.init.zeros_(self.latent_head.weight)
        nn.init.zeros_(self.latent_head.bias)

    def forward(
        self,
        x_t: torch.Tensor,
        z_t: torch.Tensor,
        t_text: torch.Tensor,
        t_latent: torch.Tensor,
    ) -> DenoiserOutput:
        """Denoise both modalities.

        Args:
            x_t: noisy token ids, (B, T).
            z_t: noisy (normalised) latents, (B, d).
            t_text: text diffusion time per example, (B,) (0 = clean text).
            t_latent: latent diffusion time per example, (B,) (0 = clean latent).

        Returns:
            ``DenoiserOutput`` with text hidden states (B, T, D) (feed them to ``text_logits``) and the
            latent head's v/eps prediction (B, d).
        """
        cfg = self.config
        B, T = x_t.shape
        if cfg.seq_len < T:
            raise ValueError(f"sequence length {T} exceeds the model's seq_len {cfg.seq_len}")
        embedded = self.token_embedding(x_t)  # (B, T, D)
        h_text = embedded if self.text_position is None else embedded + self.text_position[:T]
        h_latent = self.latent_in(z_t).view(B, cfg.num_latent_tokens, cfg.d_model) + self.latent_position
        cond = self.time_embed_text(t_text) + self.time_embed_latent(t_latent)  # (B, D)
        for block in self.blocks:
            h_text, h_latent = block(h_text, h_latent, cond)
        final = {}
        for s, h in (("text", h_text), ("latent", h_latent)):
            shift, scale = self.final_modulation[s](F.silu(cond)).chunk(2, dim=-1)
            final[s] = _modulate(self.final_norm[s](h), shift, scale)
        features = [final["latent"].flatten(1)]
        if cfg.latent_pred_from in ("text", "both"):
            features.append(final["text"].mean(1))
        if cfg.latent_pred_from in ("prefix", "both"):
            features.append(embedded[:, : cfg.prefix_length].mean(1))
        return DenoiserOutput(final["text"], self.latent_head(torch.cat(features, dim=-1)))

    def text_logits(self, text_hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits from (..., D) hidden states (output embedding tied to the input one)."""
        return text_hidden @ self.token_embedding.weight.T


class LatentDiffusionLM(nn.Module):
    """The trainable model: the denoiser (``rwkv``) plus, for Stage II, q(z|x) and p(z)."""

    def __init__(
        self,
        cfg: DenoiserConfig,
        variational: bool = False,
        encoder_hidden: int = 256,
        prior_type: str = "fixed_gaussian",
    ) -> None:
        super().__init__()
        self.rwkv = TwoStreamDenoiser(cfg)
        self.latent_encoder = (
            TextLatentEncoder(cfg.d_model, cfg.latent_dim, encoder_hidden) if variational else None
        )
        self.latent_prior = LatentPrior(cfg.latent_dim, prior_type) if variational else None

    @property
    def config(self) -> DenoiserConfig:
        return self.rwkv.config

    def encode_text(
        self, x0: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(z | x): run the denoiser on clean text with an uninformative latent, then the encoder.

        Args:
            x0: clean ids, (B, T).
            keep: (B, T) bool of positions to pool (non-padding).

        Returns:
            (mu (B, d), logvar (B, d), pooled text features (B, D)).
        """
        if self.latent_encoder is None:
            raise RuntimeError(
                "encode_text needs a Stage II model (training.stage_schedule=stage2_variational)"
            )
        hidden = self.clean_text_hidden(x0)
        mu, logvar = self.latent_encoder(hidden, keep)
        return mu, logvar, masked_mean(hidden, keep)

    def clean_text_hidden(self, x0: torch.Tensor) -> torch.Tensor:
        """Final text hidden states of clean text with a null latent (t_latent = 1, z = 0): (B, T, D)."""
        B = x0.shape[0]
        zeros = x0.new_zeros(B, dtype=torch.float32)
        z_null = torch.zeros(B, self.config.latent_dim, device=x0.device)
        return self.rwkv(x0, z_null, zeros, torch.ones_like(zeros)).text_hidden
