"""LatentWire encoders: text features -> Z in R^{M_total x d_z} (seed 004: ByteEncoder, STQuery,
anchor-guided interlingua).

The first three end in a `CrossAttentionPooler` (M learned queries, per-slot gate); the interlingua
encoder keeps M of its per-token codes instead. What differs is the feature each reads, named by
`required_features` so the task builds only those:

- `ByteEncoder`: UTF-8 bytes -> byte embeddings + positions -> transformer.
- `STQueryEncoder`: a frozen sentence encoder's token states (MiniLM) -> projection -> transformer.
- `AnchorGuidedEncoder`: each frozen LLM's own token embeddings of the prompt, projected per model,
  cross-attending to the sentence encoder's token states (the semantic anchor) in a small
  alignment transformer (seed 004, "Anchor-Guided Cross-Model Interlingua").
- `InterlinguaEncoder`: the same interlingua built token by token in LLM-native space (each
  model's embeddings of the same characters + the anchor state), read back by the adapters, and
  compressed by keeping M tokens chosen by the anchor's relevance prior plus a learned score.

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
        aligned_embeds: per model, (B, L_s, d_i): that model's embeddings of the characters of each
            sentence-encoder token (mean of the overlapping LLM tokens).
        token_mask: (B, L_s) 1 on sentence-encoder tokens that cover text (not special, not padding).
        question_mask: (B, L_s) 1 on tokens of the question.
        relevance: (B, L_s) cosine of the token's context sentence to the question (anchor prior).
        candidate_mask: (B, L_s) 1 on tokens of the context or question text (not the labels).
        anchor_embeds: per model, (B, L_i, d_i) that model's input embeddings of its first tokens of the
            context sentences ranked by similarity to the question (the `anchor_budget` text).
        anchor_masks: per model, (B, L_i) 1 on real tokens of `anchor_embeds`.
    """

    byte_ids: torch.Tensor | None = None
    byte_mask: torch.Tensor | None = None
    st_states: torch.Tensor | None = None
    st_mask: torch.Tensor | None = None
    llm_embeds: list[torch.Tensor] | None = None
    llm_masks: list[torch.Tensor] | None = None
    aligned_embeds: list[torch.Tensor] | None = None
    token_mask: torch.Tensor | None = None
    question_mask: torch.Tensor | None = None
    relevance: torch.Tensor | None = None
    candidate_mask: torch.Tensor | None = None
    anchor_embeds: list[torch.Tensor] | None = None
    anchor_masks: list[torch.Tensor] | None = None


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


@dataclass
class TokenCodes:
    """Per-token interlingua codes (B, L, d_z) and the mask of tokens that carry text (B, L)."""

    values: torch.Tensor
    mask: torch.Tensor


class AlignedTokenStates(nn.Module):
    """A state per sentence-encoder token from its anchor state and every frozen LLM's own embedding of
    the same characters (`aligned_embeds`): layer-normed, concatenated, projected, then mixed by an
    optional transformer. The token stage of the interlingua and span encoders."""

    def __init__(self, cfg: EncoderConfig, st_dim: int, model_dims: tuple[int, ...]) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in (st_dim, *model_dims))
        self.proj = nn.Linear(st_dim + sum(model_dims), cfg.width)
        self.body = _transformer(cfg.width, cfg.heads, cfg.layers, cfg.dropout)

    def forward(self, inputs: EncoderInputs) -> torch.Tensor:
        """(B, L, width) token states."""
        parts = [inputs.st_states, *inputs.aligned_embeds]
        normed = [norm(x.float()) for norm, x in zip(self.norms, parts, strict=True)]
        hidden = self.proj(torch.cat(normed, dim=-1))  # (B, L, width)
        if self.body is not None:
            hidden = self.body(hidden, src_key_padding_mask=inputs.token_mask == 0)
        return hidden


class InterlinguaEncoder(nn.Module):
    """Seed 004's interlingua "in LLM-native space first, compression later", as selection.

    Every token of the sentence encoder's tokenisation gets a code z_t in R^{d_z} from its anchor
    state and each frozen LLM's own embedding of the same characters (`aligned_embeds`), through an
    optional transformer. Each model's adapter learns to read a code back as that model's token
    embedding (token reconstruction: no LLM forward needed), so codes stay on every model's token
    manifold. Compression keeps M codes: a score per token, the semantic-anchor prior (question
    tokens first, then the context sentences most similar to the question) plus a learned term,
    picks the top M, laid out question first and then in text order. A straight-through gate
    (value 1, gradient of sigmoid(score)) passes the generation loss to the learned term.
    """

    required_features = ("aligned",)

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
            raise ValueError("InterlinguaEncoder: model_dims must list each frozen model's width")
        self.slots, self.cfg = slots, cfg
        self.token_states = AlignedTokenStates(cfg, st_dim, model_dims)
        self.out = nn.Linear(cfg.width, d_z)
        self.score = nn.Linear(d_z, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.empty = nn.Parameter(torch.zeros(d_z))  # code of slots beyond a short prompt's tokens

    def token_codes(self, inputs: EncoderInputs) -> TokenCodes:
        """Codes of every sentence-encoder token: (B, L, d_z)."""
        return TokenCodes(self.out(self.token_states(inputs)), inputs.token_mask)

    def select(self, codes: TokenCodes, inputs: EncoderInputs) -> torch.Tensor:
        """The M kept codes (B, M, d_z), question first, then in text order."""
        values, (batch, length, _) = codes.values, codes.values.shape
        question = inputs.question_mask.to(values)
        learned = self.score(values).squeeze(-1)  # (B, L)
        prior = self.cfg.question_prior * question + self.cfg.relevance_prior * inputs.relevance.to(values)
        score = (prior + learned).masked_fill(inputs.candidate_mask == 0, float("-inf"))
        k = min(self.slots, length)
        top = score.topk(k, dim=-1)
        positions = torch.arange(length, device=values.device)
        order_key = (1 - question) * length + positions  # question tokens first, then text order
        kept_key = order_key.gather(1, top.indices).masked_fill(top.values.isinf(), 2 * length)
        indices = top.indices.gather(1, kept_key.argsort(dim=-1))  # (B, k)
        kept_score = score.gather(1, indices)
        valid = ~kept_score.isinf()
        gate = torch.sigmoid(learned.gather(1, indices))
        picked = values.gather(1, indices.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        picked = picked * (gate / gate.detach()).unsqueeze(-1)  # value unchanged, gradient to the score
        picked = torch.where(valid.unsqueeze(-1), picked, self.empty.to(picked))
        if k < self.slots:
            pad = self.empty.to(picked).expand(batch, self.slots - k, -1)
            picked = torch.cat([picked, pad], dim=1)
        return picked

    def forward(self, inputs: EncoderInputs) -> torch.Tensor:
        return self.select(self.token_codes(inputs), inputs)


def span_assignment(
    token_mask: torch.Tensor, ratio: int, max_spans: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each row's text tokens into consecutive spans of `ratio` tokens (the last may be shorter).

    Args:
        token_mask: (B, L) 1 on tokens that carry text (special tokens and padding: 0).
        ratio: tokens per span.
        max_spans: at most this many spans per row; tokens after `max_spans * ratio` get no span.

    Returns:
        index: (B, S, ratio) position in L of each span's tokens (0 where `valid` is 0).
        valid: (B, S, ratio) 1 where a span slot holds a token.
        span_of_token: (B, L) the span each token belongs to, -1 for tokens in none.
        S is the largest span count of the batch.
    """
    batch, length = token_mask.shape
    counts = token_mask.sum(-1).clamp(max=max_spans * ratio)  # (B,)
    spans = int(((counts + ratio - 1) // ratio).max().clamp(min=1))
    index = torch.zeros(batch, spans, ratio, dtype=torch.long, device=token_mask.device)
    valid = torch.zeros(batch, spans, ratio, dtype=torch.long, device=token_mask.device)
    span_of_token = torch.full((batch, length), -1, dtype=torch.long, device=token_mask.device)
    for row in range(batch):
        positions = token_mask[row].nonzero().squeeze(-1)[: int(counts[row])]  # (n,)
        rank = torch.arange(positions.numel(), device=token_mask.device)
        index[row].view(-1)[rank] = positions
        valid[row].view(-1)[rank] = 1
        span_of_token[row, positions] = rank // ratio
    return index, valid, span_of_token


class SpanEncoder(nn.Module):
    """Issue 12's context compressor: each soft token stands for a span of `ratio` context tokens.

    Every sentence-encoder token of the context gets a state from its anchor (MiniLM) state and each
    frozen LLM's own embedding of the same characters (`aligned_embeds`, the interlingua's inputs),
    mixed by a small transformer. The tokens are cut into consecutive spans of `ratio`; the states
    of a span are concatenated in order (so the code knows which token came first) and projected to
    one code in R^{d_z}; a second small transformer lets the codes see each other. A paragraph of n
    tokens becomes M = ceil(n / ratio) codes (at most `latent.length`); `latent_mask` marks them.
    Trained through the frozen LLMs by autoencoding (each model regenerates the context from the
    codes) and the answer loss.
    """

    required_features = ("aligned",)

    def __init__(
        self,
        cfg: EncoderConfig,
        slots: int,
        d_z: int,
        st_dim: int = 384,
        model_dims: tuple[int, ...] = (),
        ratio: int = 4,
        **_: object,
    ) -> None:
        super().__init__()
        if not model_dims:
            raise ValueError("SpanEncoder: model_dims must list each frozen model's width")
        self.slots, self.ratio = slots, ratio
        self.token_states = AlignedTokenStates(cfg, st_dim, model_dims)
        self.span_proj = nn.Linear(ratio * cfg.width, cfg.width)
        self.spans = _transformer(cfg.width, cfg.heads, cfg.layers, cfg.dropout)
        self.out = nn.Linear(cfg.width, d_z)

    def latent_mask(self, inputs: EncoderInputs) -> torch.Tensor:
        """(B, S) 1 on the codes that carry a span."""
        _, valid, _ = span_assignment(inputs.token_mask, self.ratio, self.slots)
        return valid[..., 0]

    def forward(self, inputs: EncoderInputs) -> torch.Tensor:
        hidden = self.token_states(inputs)  # (B, L, width)
        index, valid, _ = span_assignment(inputs.token_mask, self.ratio, self.slots)  # (B, S, r) each
        batch, spans, ratio = index.shape
        width = hidden.shape[-1]
        gathered = hidden.gather(1, index.view(batch, spans * ratio, 1).expand(-1, -1, width))  # (B, S*r, w)
        gathered = gathered * valid.view(batch, spans * ratio, 1).to(gathered.dtype)
        codes = self.span_proj(gathered.view(batch, spans, ratio * width))  # (B, S, width)
        span_mask = valid[..., 0]  # (B, S)
        if self.spans is not None:
            codes = self.spans(codes, src_key_padding_mask=span_mask == 0)
        return self.out(codes) * span_mask.unsqueeze(-1).to(codes.dtype)  # (B, S, d_z)


class AnchorSpanEncoder(nn.Module):
    """Context scope: the query-aware extractive selection as the latent's starting point, plus a learned
    span residual.

    Position k of the latent is the concatenation over the frozen models of each model's input
    embedding of its k-th token of the `anchor_budget` text (the context sentences ranked by MiniLM
    similarity to the question), so d_z = sum of the models' widths; to it a `SpanEncoder` code of the
    k-th span of `ratio` context tokens is added, scaled per model part by that model's embedding RMS.
    The residual's output layer starts at zero, so at step 0 the latent *is* the anchor selection
    (with `select` adapters, each model's soft tokens equal its `anchor_budget` embeddings exactly) and
    training moves it from there. M = ceil(n / ratio) positions, as the span encoder's.
    """

    required_features = ("aligned", "anchor")

    def __init__(
        self,
        cfg: EncoderConfig,
        slots: int,
        d_z: int,
        st_dim: int = 384,
        model_dims: tuple[int, ...] = (),
        ratio: int = 4,
        embed_rms: tuple[float, ...] = (),
        **_: object,
    ) -> None:
        super().__init__()
        if not model_dims or d_z != sum(model_dims):
            raise ValueError(
                f"latent.d_z: the anchor_span latent concatenates every model's embedding, so it must be "
                f"{' + '.join(map(str, model_dims)) or 'the sum of the model widths'} = {sum(model_dims)}; "
                f"got {d_z}"
            )
        self.slots, self.ratio = slots, ratio
        self.residual = SpanEncoder(cfg, slots, d_z, st_dim, model_dims, ratio)
        nn.init.zeros_(self.residual.out.weight)
        nn.init.zeros_(self.residual.out.bias)
        rms = embed_rms or (1.0,) * len(model_dims)
        scale = torch.cat([torch.full((d,), float(r)) for d, r in zip(model_dims, rms, strict=True)])
        self.register_buffer("part_scale", scale, persistent=False)  # (d_z,)

    def latent_mask(self, inputs: EncoderInputs) -> torch.Tensor:
        """(B, S) 1 on the positions that carry a span."""
        return self.residual.latent_mask(inputs)

    def model_masks(self, inputs: EncoderInputs) -> list[torch.Tensor]:
        """Per model, (B, S): the positions that model reads, those with a span and a selected token of
        its own (a context shorter than S of its tokens uses fewer, as its `anchor_budget` does)."""
        span_mask = self.latent_mask(inputs)
        return [
            self._first(mask.unsqueeze(-1), span_mask.shape[1]).squeeze(-1) * span_mask
            for mask in inputs.anchor_masks
        ]

    @staticmethod
    def _first(x: torch.Tensor, length: int) -> torch.Tensor:
        """x (B, L, d) cut or zero-padded to (B, length, d)."""
        if x.shape[1] >= length:
            return x[:, :length]
        return torch.cat([x, x.new_zeros(x.shape[0], length - x.shape[1], x.shape[2])], dim=1)

    def forward(self, inputs: EncoderInputs) -> torch.Tensor:
        residual = self.residual(inputs)  # (B, S, d_z), zero outside the spans
        spans = residual.shape[1]
        parts = [
            self._first(e.to(residual.dtype) * m.unsqueeze(-1).to(residual.dtype), spans)
            for e, m in zip(inputs.anchor_embeds, inputs.anchor_masks, strict=True)
        ]  # per model (B, S, d_i)
        selected = torch.cat(parts, dim=-1) * self.latent_mask(inputs).unsqueeze(-1).to(residual.dtype)
        return selected + residual * self.part_scale  # (B, S, d_z)


ENCODERS = {
    "byte": ByteEncoder,
    "stquery": STQueryEncoder,
    "anchor": AnchorGuidedEncoder,
    "interlingua": InterlinguaEncoder,
    "span": SpanEncoder,
    "anchor_span": AnchorSpanEncoder,
}


def build_encoder(
    cfg: EncoderConfig, latent: LatentConfig, num_models: int, st_dim: int, model_dims, embed_rms=()
) -> nn.Module:
    """The encoder named by `cfg.kind`, emitting shared + per-model private slots."""
    slots = latent.shared_length + num_models * latent.private_length
    encoder = ENCODERS[cfg.kind](
        cfg,
        slots,
        latent.d_z,
        st_dim=st_dim,
        model_dims=tuple(model_dims),
        ratio=latent.ratio,
        embed_rms=tuple(embed_rms),
    )
    if cfg.frozen:
        for param in encoder.parameters():
            param.requires_grad_(False)
    return encoder
