"""The trainable model of the diffusion system: `LatentDiffusionLM` (seed 002, "Model").

`TwoStreamDenoiser` is a two-stream (MMDiT-like) joint denoiser over text tokens and latent tokens.
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

`LatentDiffusionLM` wraps the denoiser (as ``rwkv``, so the seed's unfreeze regexes ``rwkv.*time_mix``
select the recurrent layers), the Stage II modules q(z|x) / p(z), the latent standardisation and the
compact-vocabulary map.  It is a `PretrainedMixin`: ``save_pretrained`` / ``from_pretrained`` round-trip
everything needed to score and sample (the tokenizer and sentence-encoder names are in its config).
``forward(input_ids, latent)`` returns the diffusion loss terms (transformers' convention).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentlm.core.pretrained import PretrainedMixin
from latentlm.diffusion.config import STAGE1_MODES, ModelConfig
from latentlm.diffusion.objectives import (
    apply_masking,
    gaussian_latent_loss,
    linear_cross_entropy,
    masked_nelbo,
    noise_latent,
)
from latentlm.diffusion.sampling import decode_samples, sample_joint, sample_text_from_latent
from latentlm.diffusion.schedules import (
    CosineGaussianSchedule,
    LogLinearMaskingSchedule,
    sample_diffusion_times,
)
from latentlm.diffusion.variational import (
    LatentPrior,
    TextLatentEncoder,
    kl_divergence,
    masked_mean,
    reparameterize,
)
from latentlm.diffusion.wkv import ChannelMix, JointTimeMix

__all__ = [
    "DenoiserOutput",
    "DiffusionLMOutput",
    "TwoStreamDenoiser",
    "LatentDiffusionLM",
    "stream_of",
    "MODE_FROZEN_STREAM",
]

STREAMS = ("text", "latent")
# The conditioning stream of each mode is frozen (it only encodes a clean condition).
MODE_FROZEN_STREAM = {"stage1_coupling": None, "l2t": "latent", "t2l": "text"}
_STREAM_PATTERNS = {
    "text": re.compile(
        r"^rwkv\.(token_embedding|text_position|time_embed_text|final_modulation\.text|final_norm\.text"
        r"|blocks\.\d+\.[\w.]*\btext\b)"
    ),
    "latent": re.compile(
        r"^rwkv\.(latent_in|latent_position|latent_head|latent_modulation|time_embed_latent|final_modulation\.latent"
        r"|final_norm\.latent|blocks\.\d+\.[\w.]*\blatent\b)"
    ),
}


def stream_of(name: str) -> str | None:
    """``"text"``, ``"latent"`` or None (shared / not part of the denoiser) for a parameter name."""
    for stream, pattern in _STREAM_PATTERNS.items():
        if pattern.search(name):
            return stream
    return None


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
        angles = 1000.0 * t.to(self.mlp[0].weight.dtype).unsqueeze(-1) * freqs  # float64 in a float64 model
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift.unsqueeze(1), x, 1.0 + scale.unsqueeze(1))


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
            hidden[s] = torch.addcmul(hidden[s], mods[s][2].unsqueeze(1), out)
        for s in STREAMS:
            ff = self.feed_forward(s, _modulate(self.norm2[s](hidden[s]), mods[s][3], mods[s][4]))
            hidden[s] = torch.addcmul(hidden[s], mods[s][5].unsqueeze(1), ff)
        return hidden["text"], hidden["latent"]


class JointRWKVBlock(_TwoStreamBlock):
    """Two-stream block with a joint bidirectional RWKV time mix and per-stream channel mixes."""

    needs_positions = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.d_model)
        self.time_mix = JointTimeMix(
            cfg.d_model,
            cfg.num_heads,
            cfg.decay_lora_rank,
            cfg.gate_lora_rank,
            cfg.wkv_impl,
            cfg.wkv_chunk_size,
            latent_both_ends=cfg.latent_placement == "both_ends",
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

    def __init__(self, cfg: ModelConfig) -> None:
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

    def __init__(self, cfg: ModelConfig) -> None:
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
        self.latent_modulation = nn.Linear(cfg.latent_dim, D) if cfg.latent_modulation else None
        if self.latent_modulation is not None:  # starts without effect, like the adaLN-Zero layers
            nn.init.zeros_(self.latent_modulation.weight)
            nn.init.zeros_(self.latent_modulation.bias)
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
        if self.latent_modulation is not None:
            cond = cond + self.latent_modulation(z_t)
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

    def masked_token_nll(self, text_hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``-log p_theta(x_0 = target | x_t)`` under SUBS (the [MASK] word excluded) from the (N, D)
        hidden states of N masked positions and their (N,) clean ids; (N,)."""
        return linear_cross_entropy(
            text_hidden, self.token_embedding.weight, targets, excluded=self.config.mask_token_id
        )

    def text_logits(self, text_hidden: torch.Tensor, float64: bool = False) -> torch.Tensor:
        """Vocabulary logits from (..., D) hidden states (output embedding tied to the input one).

        ``float64``: compute the product in float64 (for sampling; float32 logits of a large
        vocabulary lose the tail of the distribution)."""
        weight = self.token_embedding.weight
        if float64:
            return text_hidden.double() @ weight.double().T
        return text_hidden @ weight.T


@dataclass
class DiffusionLMOutput:
    """What ``LatentDiffusionLM.forward`` returns (unweighted terms; the task weights them).

    ``loss`` = text NELBO per token + latent MSE + KL / L (the terms present in the mode).
    """

    loss: torch.Tensor
    text_nelbo: torch.Tensor | None = None
    """Text NELBO per token of the rows with noisy text (scalar)."""
    text_nelbo_per_example: torch.Tensor | None = None
    """(B,) summed text NELBO of each sentence (nats)."""
    latent_mse: torch.Tensor | None = None
    """Latent v/eps mean-squared error of the rows with a noisy latent (scalar)."""
    kl: torch.Tensor | None = None
    """Stage II: (B, d) KL(q(z|x) || p(z)) per latent dimension."""
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    text_features: torch.Tensor | None = None
    """Stage II: pooled clean-text hidden states (B, D) that q(z|x) read."""
    mask_rate: torch.Tensor | None = None


class LatentDiffusionLM(PretrainedMixin, nn.Module):
    """The trainable model: the denoiser (``rwkv``) plus, for Stage II, q(z|x) and p(z).

    Buffers: ``latent_mean`` / ``latent_std`` (the training-set standardisation of the encoder's
    latents) and ``original_ids`` (model vocabulary id -> tokenizer id; the identity unless the
    vocabulary is compact).
    """

    config_class = ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.complete:
            raise ValueError(
                "model: vocab_size, seq_len, latent_dim and mask_token_id must be filled in (from the data) "
                f"to build a model; got {config.vocab_size}, {config.seq_len}, {config.latent_dim}, "
                f"{config.mask_token_id}"
            )
        self.config = config
        self.rwkv = TwoStreamDenoiser(config)
        self.latent_encoder = (
            TextLatentEncoder(config.d_model, config.latent_dim, config.latent_encoder_hidden)
            if config.variational
            else None
        )
        self.latent_prior = (
            LatentPrior(config.latent_dim, config.latent_prior_type) if config.variational else None
        )
        self.register_buffer("latent_mean", torch.zeros(config.latent_dim))
        self.register_buffer("latent_std", torch.ones(config.latent_dim))
        self.register_buffer("original_ids", torch.arange(config.vocab_size))
        self.text_schedule = LogLinearMaskingSchedule(config.mask_eps)
        self.latent_schedule = CosineGaussianSchedule()

    # ------------------------------------------------------------------ latents
    def standardize_latent(self, raw: torch.Tensor) -> torch.Tensor:
        """Encoder-space latents (..., d) -> the model's standardised space."""
        return (raw - self.latent_mean) / self.latent_std

    def denormalize_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The model's standardised latents (..., d) -> the sentence encoder's space."""
        return latent * self.latent_std + self.latent_mean

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
            raise RuntimeError("encode_text needs a Stage II model (train.stage_schedule=stage2_variational)")
        hidden = self.clean_text_hidden(x0)
        mu, logvar = self.latent_encoder(hidden, keep)
        return mu, logvar, masked_mean(hidden, keep)

    def clean_text_hidden(self, x0: torch.Tensor) -> torch.Tensor:
        """Final text hidden states of clean text with a null latent (t_latent = 1, z = 0): (B, T, D)."""
        B = x0.shape[0]
        zeros = x0.new_zeros(B, dtype=torch.float32)
        z_null = torch.zeros(B, self.config.latent_dim, device=x0.device)
        return self.rwkv(x0, z_null, zeros, torch.ones_like(zeros)).text_hidden

    # ------------------------------------------------------------------ loss
    def forward(
        self,
        input_ids: torch.Tensor,
        latent: torch.Tensor | None = None,
        t_text: torch.Tensor | None = None,
        t_latent: torch.Tensor | None = None,
        mode: str = "stage1_coupling",
        generator: torch.Generator | None = None,
    ) -> DiffusionLMOutput:
        """The diffusion loss terms of clean sentences (and their latents).

        Args:
            input_ids: clean token ids (model vocabulary), (B, T).
            latent: standardised latents (B, d); None for a Stage II model: ``z ~ q(z | x)``.
            t_text, t_latent: diffusion times (B,) (0 = clean); default: uniform draws.
            mode: ``stage1_coupling`` (both losses) | ``l2t`` (text loss only) | ``t2l`` (latent only).
            generator: torch generator for the times, masks and noise.

        Returns:
            ``DiffusionLMOutput``.
        """
        if mode not in STAGE1_MODES:
            raise ValueError(f"mode: must be one of {STAGE1_MODES}, got {mode!r}")
        x0 = input_ids
        B, L = x0.shape
        device = x0.device
        out = DiffusionLMOutput(loss=x0.new_zeros((), dtype=torch.float32))
        if latent is None:
            if self.latent_encoder is None:
                raise ValueError("a Stage I model needs the sentence latents (latent=None given)")
            keep = x0 != self.config.pad_token_id
            out.mu, out.logvar, out.text_features = self.encode_text(x0, keep)
            latent = reparameterize(out.mu, out.logvar, generator)
            out.kl = kl_divergence(out.mu, out.logvar, *self.latent_prior(B), reduce=False)
            out.loss = out.loss + out.kl.sum(-1).mean() / L
        if t_text is None:
            t_text = sample_diffusion_times(B, generator, device=device)
        if t_latent is None:
            t_latent = sample_diffusion_times(B, generator, device=device)
        x_t, masked = apply_masking(x0, t_text, self.text_schedule, self.config.mask_token_id, generator)
        z_t, eps = noise_latent(latent, t_latent, self.latent_schedule, generator)
        hidden = self.rwkv(x_t, z_t, t_text, t_latent)
        text_rows = t_text > 0
        latent_rows = (t_latent > 0) & (mode != "l2t")
        if mode != "t2l" and masked.any():
            nll = self.rwkv.masked_token_nll(hidden.text_hidden[masked], x0[masked])
            nelbo = masked_nelbo(nll, masked, t_text, self.text_schedule)
            out.text_nelbo_per_example = nelbo
            out.text_nelbo = nelbo.sum() / (L * text_rows.sum().clamp_min(1))
            out.loss = out.loss + out.text_nelbo
        if latent_rows.any():
            mse = gaussian_latent_loss(
                hidden.latent_output,
                latent,
                eps,
                t_latent,
                self.latent_schedule,
                self.config.latent_prediction,
            )
            out.latent_mse = mse[latent_rows].mean()
            out.loss = out.loss + out.latent_mse
        out.mask_rate = masked.float().mean()
        return out

    # ------------------------------------------------------------------ text
    def decode(self, ids: torch.Tensor, tokenizer=None) -> list[str]:
        """Texts of (B, T) model-vocabulary id rows, cut at the first [SEP] / [PAD]."""
        if tokenizer is None:
            from latentlm.teachers import load_tokenizer

            tokenizer = load_tokenizer(self.config.tokenizer)
        original = self.original_ids[ids.clamp(0, self.config.vocab_size - 1)]
        sep, pad = (int(self.original_ids[i]) for i in (self.config.sep_token_id, self.config.pad_token_id))
        return decode_samples(tokenizer, original, sep, pad)

    @torch.no_grad()
    def generate(
        self,
        num_samples: int = 4,
        num_steps: int = 64,
        latents: torch.Tensor | None = None,
        seed: int = 0,
        **sampling,
    ) -> list[str]:
        """Sample sentences: joint samples (Stage I), prior samples (Stage II), or text given ``latents``
        (encoder-space, (B, d)). ``sampling``: temperature, top_k, top_p, float64 (default True)."""
        g = torch.Generator().manual_seed(seed)
        sampling.setdefault("float64", True)
        device = self.latent_mean.device
        if latents is not None:
            z = self.standardize_latent(latents.to(device))
            ids = sample_text_from_latent(self, z, num_steps=num_steps, generator=g, **sampling)
        elif self.latent_prior is not None:
            z = self.latent_prior.sample(num_samples, g).to(device)
            ids = sample_text_from_latent(self, z, num_steps=num_steps, generator=g, **sampling)
        else:
            ids, _ = sample_joint(
                self,
                num_samples,
                num_steps=num_steps,
                prediction=self.config.latent_prediction,
                generator=g,
                device=device,
                **sampling,
            )
        return self.decode(ids)
