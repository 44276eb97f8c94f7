"""The LHT encoder and its masked-LM head (seed 003, roadmap 1.1-1.2).

`LHTForMaskedLM` is a pre-norm transformer (RoPE, GELU MLP, dropout, residuals, tied MLM head) whose
attention pattern is chosen once from the config: `attention: hierarchical` places unit boundaries at
the layers of `hierarchy.router_layers` (learned routers, or random / stride / gold boundaries for the
ablations) and attends with `HierarchicalBias`; `attention: full` is the dense full-attention baseline
of the same size (same blocks, every token sees every token); `attention: window` the sliding-window
baseline (tokens see ±`edges.local_window` tokens). The attention backend (`dense` boolean mask through
SDPA, `sparse` gathered key blocks, or `flex` FlexAttention block masks) sits behind one interface.
Gradient checkpointing recomputes blocks in the backward pass; bf16 autocast
is applied by the engine (`train.mixed_precision: bf16`) or by `autocast_context` at evaluation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from latentlm.core.pretrained import PretrainedMixin
from latentlm.lht.attention import (
    AttentionBackend,
    FullAttention,
    HierarchicalBias,
    HierarchyLayout,
    LocalWindowAttention,
    make_backend,
    token_layout,
)
from latentlm.lht.config import LHTConfig
from latentlm.lht.routers import HierarchyManager, HierarchyState


def rope_tables(
    positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for rotary embeddings at arbitrary positions.

    Args:
        positions: (B, S) long.
        head_dim: Dh (even).
        theta: RoPE base.
        dtype: float32 or float64 (tables are never computed in half precision).

    Returns:
        cos, sin: (B, 1, S, Dh / 2).
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=dtype) / head_dim
    angles = positions[:, None, :, None].to(dtype) * theta ** (-exponents)  # (B, 1, S, Dh/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, S, Dh) by the tables (pairs are the two halves of the head dimension)."""
    first, second = x.to(cos.dtype).chunk(2, dim=-1)
    rotated = torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
    return rotated.to(x.dtype)


class LHTBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: LHTConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.mlp_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.intermediate_size),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.intermediate_size, d),
        )
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, backend: AttentionBackend, prepared: object
    ) -> Tensor:
        """(B, S, D) -> (B, S, D)."""
        batch, size, d = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, size, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, S, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        attended = backend.attend(q, k, v, prepared, self.attention_dropout if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(batch, size, d)
        x = x + self.residual_dropout(self.attn_out(attended))
        return x + self.residual_dropout(self.mlp(self.mlp_norm(x)))


@dataclass
class LHTOutput:
    """What `LHTForMaskedLM.forward` returns.

    Attributes:
        logits: (B, N, V) MLM logits of the token slots; None when labels were given (the loss is then
            computed from the labelled positions only, which saves most of the vocabulary projection).
        token_states: (B, N, D) final token states.
        doc_state: (B, D) final `[DOC]` state (mean of valid tokens when there is no `[DOC]` slot).
        router_loss: weighted sum of the ratio losses (0 for the dense baseline).
        ratio_losses: one scalar per routed level.
        hierarchy: the routers' decisions (None for the dense baseline).
        loss: MLM loss + router_loss when labels were given.
        mlm_loss: mean cross-entropy over labelled positions when labels were given.
    """

    logits: Tensor | None
    token_states: Tensor
    doc_state: Tensor
    router_loss: Tensor
    ratio_losses: list[Tensor]
    hierarchy: HierarchyState | None
    loss: Tensor | None = None
    mlm_loss: Tensor | None = None


class LHTForMaskedLM(nn.Module, PretrainedMixin):
    """LHT encoder with a tied masked-LM head (or the dense baseline, by `config.attention`)."""

    config_class: ClassVar[type] = LHTConfig

    def __init__(self, config: LHTConfig) -> None:
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("model.vocab_size: 0 is only a placeholder for the tokenizer's size; give it")
        self.config = config
        d = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(LHTBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.head_transform = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=config.layer_norm_eps)
        )
        self.head_bias = nn.Parameter(torch.zeros(config.vocab_size))
        if config.attention == "hierarchical":
            with_doc = config.edges.doc_token
            self.hierarchy = HierarchyManager(config.hierarchy, d, with_doc)
            self.doc_embedding = nn.Parameter(torch.zeros(d)) if with_doc else None
            self.backend = make_backend(config.backend, HierarchicalBias(config.edges), config.block_size)
        else:
            self.hierarchy = None
            self.doc_embedding = None
            pattern = (
                FullAttention()
                if config.attention == "full"
                else LocalWindowAttention(config.edges.local_window)
            )
            self.backend = make_backend(config.backend, pattern, config.block_size)
        self.apply(self._init_weights)
        if self.hierarchy is not None:
            for router in self.hierarchy.routers:
                router.reset_parameters()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        boundaries: list[Tensor] | None = None,
    ) -> LHTOutput:
        """Encode a batch of documents.

        Args:
            input_ids: (B, N) token ids.
            attention_mask: (B, N) 1 for real tokens (default: input_ids != pad_token_id).
            labels: (B, N) MLM targets, -100 where no loss is taken.
            boundaries: per level, (B, N) bool gold unit starts over tokens (`hierarchy.boundaries: gold`).

        Returns:
            `LHTOutput`.
        """
        token_valid = (
            attention_mask.bool() if attention_mask is not None else input_ids != self.config.pad_token_id
        )
        tokens = self.embed_dropout(self.embed(input_ids))  # (B, N, D)
        batch, n, d = tokens.shape
        state: HierarchyState | None = None
        if self.hierarchy is None:
            layout = token_layout(token_valid)
            hidden = tokens
        else:
            state = self.hierarchy.initial_state(token_valid, row_seeds(input_ids, token_valid))
            layout = state.layout
            parts = [tokens, tokens.new_zeros(batch, layout.size - layout.token_offset - n, d)]
            if self.doc_embedding is not None:
                parts.insert(0, self.doc_embedding.to(tokens.dtype).expand(batch, 1, d))
            hidden = torch.cat(parts, dim=1)  # (B, S, D)
        prepared_layout = None  # masks are built lazily: only for layouts a block attends with
        for index, block in enumerate(self.blocks):
            if self.hierarchy is not None and state is not None:
                for level in self.hierarchy.levels_at(index):
                    gold = boundaries[level] if boundaries is not None else None
                    hidden, state = self.hierarchy.route(level, hidden, state, gold)
                layout = state.layout
            if layout is not prepared_layout:
                prepared, cos, sin = self._prepare(layout)
                prepared_layout = layout
            if self.config.gradient_checkpointing and self.training:
                hidden = checkpoint(block, hidden, cos, sin, self.backend, prepared, use_reentrant=False)
            else:
                hidden = block(hidden, cos, sin, self.backend, prepared)
        hidden = self.final_norm(hidden)
        token_states = hidden[:, layout.token_slice()]
        logits = self.mlm_logits(token_states) if labels is None else None  # (B, N, V)
        if self.doc_embedding is not None:
            doc_state = hidden[:, 0]
        else:
            weights = token_valid.to(token_states.dtype)[..., None]
            doc_state = (token_states * weights).sum(1) / weights.sum(1).clamp(min=1)
        ratio_losses = self.hierarchy.ratio_losses(state) if self.hierarchy is not None and state else []
        router_loss = token_states.new_zeros(()).float()
        if ratio_losses:
            router_loss = self.config.hierarchy.ratio_loss_weight * torch.stack(ratio_losses).sum()
        output = LHTOutput(logits, token_states, doc_state, router_loss, ratio_losses, state)
        if labels is not None:
            selected = labels != -100
            if selected.any():
                output.mlm_loss = masked_lm_loss(self.mlm_logits(token_states[selected]), labels[selected])
            else:  # nothing to predict in this batch: a zero that keeps the graph connected
                output.mlm_loss = token_states.sum().float() * 0.0
            output.loss = output.mlm_loss + router_loss
        return output

    def load_tokenizer(self):
        """The tokenizer named in the saved config (`config.tokenizer`), loaded once."""
        if getattr(self, "_tokenizer", None) is None:
            if not self.config.tokenizer:
                raise ValueError("model.tokenizer: this model was saved without a tokenizer name")
            from latentlm.teachers import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.tokenizer)
        return self._tokenizer

    @torch.no_grad()
    def fill_mask(self, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The `top_k` (token, probability) predictions for every `[MASK]` in `text`, in order."""
        tokenizer = self.load_tokenizer()
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(self.embed.weight.device)
        logits = self(ids).logits[0]  # (N, V)
        positions = (ids[0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        if not positions:
            raise ValueError(f"fill_mask: no {tokenizer.mask_token} in the text")
        answers = []
        for position in positions:
            probs, best = logits[position].float().softmax(-1).topk(top_k)
            tokens = tokenizer.convert_ids_to_tokens(best.tolist())
            answers.append([(t, round(p, 4)) for t, p in zip(tokens, probs.tolist(), strict=True)])
        return answers

    def mlm_logits(self, states: Tensor) -> Tensor:
        """Tied MLM head: (..., D) -> (..., V)."""
        return self.head_transform(states) @ self.embed.weight.T + self.head_bias

    def _prepare(self, layout: HierarchyLayout) -> tuple[object, Tensor, Tensor]:
        dtype = torch.promote_types(self.embed.weight.dtype, torch.float32)
        head_dim = self.config.hidden_size // self.config.num_heads
        cos, sin = rope_tables(layout.position, head_dim, self.config.rope_theta, dtype)
        return self.backend.prepare(layout), cos, sin


def row_seeds(input_ids: Tensor, valid: Tensor) -> Tensor:
    """(B,) long seed per document from its tokens (random boundaries are a function of the text)."""
    ids = torch.where(valid, input_ids, 0) % 1_000_003
    weights = torch.arange(1, ids.shape[1] + 1, device=ids.device) % 9_973 + 1
    return (ids * weights).sum(dim=1) % (2**31 - 1)


def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over positions whose label is not -100 ((..., V), (...) -> scalar)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: loss in float32
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=-100)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is available on `device`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when asked for and supported, else a no-op context."""
    if enabled and bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
