"""LatentWire encoders: text features -> Z in R^{M_total x d_z} (seed 004: ByteEncoder, STQuery,
anchor-guided interlingua).

Every encoder ends in a `CrossAttentionPooler` (M learned queries, per-slot gate). What differs is
the feature it reads, named by `required_features` so the task builds only those:

- `ByteEncoder`: UTF-8 bytes -> byte embeddings + positions -> transformer.
- `STQueryEncoder`: a frozen sentence encoder's token states (MiniLM) -> projection -> transformer.
- `AnchorGuidedEncoder`: each frozen LLM's own token embeddings of the prompt, projected per model,
  cross-attending to the sentence encoder's token states (the semantic anchor) in a small
  alignment transformer (seed 004, "Anchor-Guided Cross-Model Interlingua").

A new feature (a gist head, a refiner) plugs in as another encoder class or as an input feature;
nothing in the task branches on the kind except `build_encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latentlm.wire.config import EncoderConfig, LatentConfig

BYTE_VOCAB = 256 + 1  # bytes + padding id 256


@dataclass
class EncoderInputs:
    """Features of a batch of prompts; an encoder reads the ones it declares.

    Attributes:
        byte_ids: (B, L_b) UTF-8 bytes, padded with 256.
        byte_mask: (B, L_b) 1 on real bytes.
        st_states: (B, L_s, d_st) frozen sentence-encoder token states.
        st_mask: (B, L_s).
        llm_embeds: per model, (B, L_i, d_i) that model's input embeddings of the content.
        llm_masks: per model, (B, L_i).
    """

    byte_ids: torch.Tensor | None = None
    byte_mask: torch.Tensor | None = None
    st_states: torch.Tensor | None = None
    st_mask: torch.Tensor | None = None
    llm_embeds: list[torch.Tensor] | None = None
    llm_masks: list[torch.Tensor] | None = None


def _transformer(width: int, heads: int, layers: int, dropout: float) -> nn.Module | None:
    if layers == 0:
        return None
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class CrossAttentionPooler(nn.Module):
    """M learned queries attend over token states; a per-slot sigmoid gate scales each slot.

    Args:
        width: token-state width.
        slots: number of queries (M_total).
        heads: attention heads.
        d_z: output width.
    """

    def __init__(self, width: int, slots: int, heads: int, d_z: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(slots, width) * width**-0.5)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.gate = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1), nn.Sigmoid())
        self.out = nn.Linear(width, d_z)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, L, width), mask (B, L) -> Z (B, slots, d_z)."""
        queries = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)  # (B, M, w)
        pooled, _ = self.attn(queries, states, states, key_padding_mask=mask == 0, need_weights=False)
        pooled = self.norm(pooled + queries)  # (B, M, w)
        return self.out(pooled * self.gate(pooled))  # (B, M, d_z)


class ByteEncoder(nn.Module):
    """UTF-8 bytes -> transformer -> cross-attention pooling with M learned queries."""

    required_features = ("bytes",)

    def __init__(self, cfg: EncoderConfig, slots: int, d_z: int, **_: object) -> None:
        super().__init__()
        self.embed = nn.Embedding(BYTE_VOCAB, cfg.width, padding_idx=BYTE_VOCAB - 1)
        self.position = nn.Embedding(cfg.max_bytes, cfg.width)
        self.body = _transformer(cfg.width, cfg.heads, cfg.layers, cfg.dropout)
        self.pool = CrossAttentionPooler(cfg.width, slots, cfg.heads, d_z)

    def forward(self, inputs: EncoderInputs) -> torch.Tensor:
        ids, mask = inputs.byte_ids, inputs.byte_mask
        positions = torch.arange(ids.shape[1], device=ids.device)
        states = self.embed(ids) + self.position(positions)  # (B, L, w)
        if self.body is not None:
            states = self.body(states, src_key_padding_mask=mask == 0)
        return self.pool(states, mask)


class STQueryEncoder(nn.Module):
    """Frozen sentence-encoder token states -> projection -> transformer -> M learned queries."""

    required_features = ("st",)

    def __init__(self, cfg: EncoderConfig, slots: int, d_z: int, st_dim: int = 384, **_: object) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(st_dim), nn.Linear(st_dim, cfg.width))
        self.position = nn.Embedding(cfg.max_tokens, cfg.width)
        self.body = _transformer(cfg.width, cfg.heads, cfg.layers, cfg.dropout)
        self.pool = CrossAttentionPooler(cfg.width, slots, cfg.heads, d_z)

    def forward(self, inputs: EncoderInputs) -> torch.Tensor:
        states, mask = inputs.st_states, inputs.st_mask
        positions = torch.arange(states.shape[1], device=states.device)
        hidden = self.proj(states) + self.position(positions)  # (B, L, w)
        if self.body is not None:
            hidden = self.body(hidden, src_key_padding_mask=mask == 0)
        return self.pool(hidden, mask)


class AnchorGuidedEncoder(nn.Module):
    """Each LLM's own token embeddings, aligned by cross-attention to the sentence-encoder anchor.

    Per model i: `proj_i(E_i) + position + model_tag_i`; the sequences of all models are
    concatenated and run through `layers` decoder layers (self-attention, then cross-attention to
    the anchor's token states), then pooled by M learned queries.
    """

    required_features = ("llm", "st")

    def __init__(
        self,
        cfg: EncoderConfig,
        slots: int,
        d_z: int,
        st_dim: int = 384,
        model_dims: tuple[int, ...] = (),
        **_: object,
    ) -> None:
        super().__init__()
        if not model_dims:
            raise ValueError("AnchorGuidedEncoder: model_dims must list each frozen model's width")
        self.proj = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.width)) for d in model_dims)
        self.model_tag = nn.Parameter(torch.zeros(len(model_dims), cfg.width))
        self.position = nn.Embedding(cfg.max_tokens, cfg.width)
        self.anchor_proj = nn.Sequential(nn.LayerNorm(st_dim), nn.Linear(st_dim, cfg.width))
        layer = nn.TransformerDecoderLayer(
            cfg.width, cfg.heads, 4 * cfg.width, cfg.dropout, batch_first=True, norm_first=True
        )
        self.align = nn.TransformerDecoder(layer, max(1, cfg.layers))
        self.pool = CrossAttentionPooler(cfg.width, slots, cfg.heads, d_z)

    def forward(self, inputs: EncoderInputs) -> torch.Tensor:
        parts, masks = [], []
        for i, (embeds, mask) in enumerate(zip(inputs.llm_embeds, inputs.llm_masks, strict=True)):
            positions = torch.arange(embeds.shape[1], device=embeds.device)
            parts.append(self.proj[i](embeds) + self.position(positions) + self.model_tag[i])  # (B, L_i, w)
            masks.append(mask)
        tokens, mask = torch.cat(parts, dim=1), torch.cat(masks, dim=1)  # (B, sum L_i, w)
        anchor = self.anchor_proj(inputs.st_states)  # (B, L_s, w)
        aligned = self.align(
            tokens, anchor, tgt_key_padding_mask=mask == 0, memory_key_padding_mask=inputs.st_mask == 0
        )
        return self.pool(aligned, mask)


ENCODERS = {"byte": ByteEncoder, "stquery": STQueryEncoder, "anchor": AnchorGuidedEncoder}


def build_encoder(
    cfg: EncoderConfig, latent: LatentConfig, num_models: int, st_dim: int, model_dims
) -> nn.Module:
    """The encoder named by `cfg.kind`, emitting shared + per-model private slots."""
    slots = latent.shared_length + num_models * latent.private_length
    encoder = ENCODERS[cfg.kind](cfg, slots, latent.d_z, st_dim=st_dim, model_dims=tuple(model_dims))
    if cfg.frozen:
        for param in encoder.parameters():
            param.requires_grad_(False)
    return encoder
