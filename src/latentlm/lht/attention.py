"""Hierarchical attention for the Learned Hierarchical Transformer (seed 003, roadmap 2.1).

The sequence a layer sees is laid out in segments so that block sparsity survives::

    [DOC] | tokens 0..N-1 | level-1 heads (C_1 slots) | level-2 heads (C_2 slots) | ...

Unit heads live in their own segment, in unit order, never interleaved with tokens; a head slot that
is not used by the current document (fewer units than slots) is invalid. `HierarchyLayout` holds the
per-slot metadata (kind, RoPE position, unit id at every level), `HierarchicalBias` turns it into the
HDT-style edge set -- local window, same unit, parent/child, siblings, +-k neighbour units, `[DOC]`
global, each switchable -- and the backends (`DenseMaskBackend`, `FlexBackend`) run attention with it
behind one interface. Both backends evaluate the *same* edge rule (`HierarchicalBias.allowed`), once
as a broadcast boolean mask and once as a FlexAttention `mask_mod`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

KIND_INVALID = -1
KIND_DOC = 0
KIND_TOKEN = 1
KIND_HEAD0 = 2  # head of level l has kind KIND_HEAD0 + l (l = 0 is the first level)


@dataclass
class EdgeConfig:
    """Which edge types the hierarchical attention uses (each can be switched off for ablations)."""

    local_window: int = 8  # tokens attend to tokens within +-local_window positions; 0 = off
    same_unit: bool = True  # tokens attend to every token of their level-1 unit
    parent_child: bool = True  # every node <-> the head of its unit at each higher level
    siblings: bool = True  # heads <-> heads of the same level sharing a parent (top level: all)
    neighbour_units: int = 1  # heads <-> heads of the same level within +-k units; 0 = off
    doc_token: bool = True  # a [DOC] slot attends to and is attended by every valid slot

    def __post_init__(self) -> None:
        if self.local_window < 0:
            raise ValueError(f"edges.local_window: must be >= 0, got {self.local_window}")
        if self.neighbour_units < 0:
            raise ValueError(f"edges.neighbour_units: must be >= 0, got {self.neighbour_units}")


@dataclass
class HierarchyLayout:
    """Per-slot metadata of one batch laid out as ``[DOC] | tokens | heads level 1 | ...``.

    Attributes:
        kind: (B, S) long; -1 invalid slot, 0 `[DOC]`, 1 token, 2 + l head of level l.
        position: (B, S) long RoPE position (heads take the position of their unit's first token).
        unit: (L, B, S) long; unit id of the slot at level l, -1 where undefined (heads of levels
            above l, invalid slots, levels not routed yet).
        active_levels: number of levels routed so far (edges exist only for these).
        token_offset: index of the first token slot.
        num_tokens: N, token slots.
        head_offsets: first slot of each level's head segment.
        head_capacity: slots per level.
    """

    kind: Tensor
    position: Tensor
    unit: Tensor
    active_levels: int
    token_offset: int
    num_tokens: int
    head_offsets: list[int]
    head_capacity: list[int]

    @property
    def size(self) -> int:
        """Total number of slots S."""
        return self.kind.shape[1]

    @property
    def valid(self) -> Tensor:
        """(B, S) bool, slots that carry a real node."""
        return self.kind != KIND_INVALID

    def token_slice(self) -> slice:
        return slice(self.token_offset, self.token_offset + self.num_tokens)

    def head_slice(self, level: int) -> slice:
        return slice(self.head_offsets[level], self.head_offsets[level] + self.head_capacity[level])


def first_member_index(unit_ids: Tensor, num_units: int) -> Tensor:
    """Index of the first member of every unit.

    Args:
        unit_ids: (B, M) long unit id of each member, -1 for members outside any unit.
        num_units: C, number of unit slots.

    Returns:
        (B, C) long; M for units without members.
    """
    batch, members = unit_ids.shape
    dump = torch.where(unit_ids >= 0, unit_ids, torch.full_like(unit_ids, num_units))
    first = torch.full((batch, num_units + 1), members, dtype=torch.long, device=unit_ids.device)
    index = torch.arange(members, device=unit_ids.device).expand(batch, members)
    first.scatter_reduce_(1, dump, index, reduce="amin")
    return first[:, :num_units]


def build_layout(
    token_valid: Tensor,
    token_units: list[Tensor],
    head_capacity: list[int],
    with_doc: bool,
) -> HierarchyLayout:
    """Lay out tokens, `[DOC]` and unit heads and record every slot's metadata.

    Args:
        token_valid: (B, N) bool, real (non-padding) tokens.
        token_units: one (B, N) long tensor per routed level: the unit id of each token at that level
            (contiguous ids from 0, -1 on padding). Units must nest: a level-(l+1) unit is a union of
            consecutive level-l units. Fewer tensors than `head_capacity` entries = levels not routed yet.
        head_capacity: head slots reserved for each level (C_l); unit ids must be < C_l.
        with_doc: reserve slot 0 for a `[DOC]` node.

    Returns:
        The layout; head slots beyond the number of units of a document are invalid.
    """
    batch, n = token_valid.shape
    device = token_valid.device
    num_levels = len(head_capacity)
    active = len(token_units)
    if active > num_levels:
        raise ValueError(f"build_layout: {active} routed levels but only {num_levels} head segments")
    token_offset = 1 if with_doc else 0
    head_offsets = []
    offset = token_offset + n
    for capacity in head_capacity:
        head_offsets.append(offset)
        offset += capacity
    size = offset
    kind = torch.full((batch, size), KIND_INVALID, dtype=torch.long, device=device)
    position = torch.zeros((batch, size), dtype=torch.long, device=device)
    unit = torch.full((num_levels, batch, size), -1, dtype=torch.long, device=device)
    if with_doc:
        kind[:, 0] = KIND_DOC
    tokens = slice(token_offset, token_offset + n)
    kind[:, tokens] = torch.where(token_valid, KIND_TOKEN, KIND_INVALID)
    position[:, tokens] = torch.arange(n, device=device)
    for level, ids in enumerate(token_units):
        unit[level, :, tokens] = torch.where(token_valid, ids, -1)
    for level in range(active):
        capacity = head_capacity[level]
        heads = slice(head_offsets[level], head_offsets[level] + capacity)
        first_token = first_member_index(unit[level, :, tokens], capacity)  # (B, C)
        exists = first_token < n
        safe_first = first_token.clamp(max=n - 1)
        kind[:, heads] = torch.where(exists, KIND_HEAD0 + level, KIND_INVALID)
        position[:, heads] = torch.where(exists, safe_first, 0)
        for upper in range(level, active):
            ids = unit[upper, :, tokens].gather(1, safe_first)
            unit[upper, :, heads] = torch.where(exists, ids, -1)
    # int32 metadata halves the memory traffic of the (B, S, S) comparisons in the edge rule.
    return HierarchyLayout(
        kind.int(), position.int(), unit.int(), active, token_offset, n, head_offsets, list(head_capacity)
    )


def token_layout(token_valid: Tensor) -> HierarchyLayout:
    """Layout with tokens only (the dense baseline and layers before the first router)."""
    return build_layout(token_valid, [], [], with_doc=False)


class AttentionPattern:
    """Interface: which slot may attend to which.

    A pattern first derives per-slot integer keys from the layout (`slot_keys`, cheap: O(B S)) and
    then states every edge type as a comparison of a query key with a key key (`allowed`), so that the
    dense mask costs a handful of (B, S, S) operations and the FlexAttention `mask_mod` evaluates the
    very same expression one (query, key) pair at a time.
    """

    def slot_keys(self, layout: HierarchyLayout) -> dict[str, Tensor]:
        """Per-slot (B, S) tensors the rule compares."""
        return {"valid": layout.valid}

    def allowed(self, keys: dict[str, Tensor], b: Tensor, qi: Tensor, kj: Tensor) -> Tensor:
        """Boolean `query qi of batch b may attend key kj`, broadcasting over the index tensors."""
        raise NotImplementedError

    def rule(self, keys: dict[str, Tensor], b: Tensor, qi: Tensor, kj: Tensor) -> Tensor:
        """`allowed` plus self-edges for every slot, so that no query row is empty."""
        return (qi == kj) | self.allowed(keys, b, qi, kj)

    def materialize(self, layout: HierarchyLayout) -> Tensor:
        """Dense boolean mask.

        Returns:
            (B, S, S) bool; entry [b, i, j] is True when slot i may attend to slot j.
        """
        batch, size = layout.kind.shape
        device = layout.kind.device
        b = torch.arange(batch, device=device)[:, None, None]
        qi = torch.arange(size, device=device)[None, :, None]
        kj = torch.arange(size, device=device)[None, None, :]
        return self.rule(self.slot_keys(layout), b, qi, kj)

    def mask_mod(self, layout: HierarchyLayout) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """The same rule as a FlexAttention `mask_mod(b, h, q_idx, kv_idx)`."""
        keys = self.slot_keys(layout)

        def mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return self.rule(keys, b, q_idx, kv_idx)

        return mod


class FullAttention(AttentionPattern):
    """Every valid slot attends to every valid slot (the dense baseline)."""

    def allowed(self, keys: dict[str, Tensor], b: Tensor, qi: Tensor, kj: Tensor) -> Tensor:
        return keys["valid"][b, qi] & keys["valid"][b, kj]


# Sentinels: a query-side key of -FAR never equals or comes near a key-side key of +FAR, so slots a
# rule does not apply to drop out of a single comparison. LEVEL_STRIDE separates levels in one key.
_FAR = 1 << 29
_LEVEL_STRIDE = 1 << 24


class HierarchicalBias(AttentionPattern):
    """HDT-style hierarchical attention over a `HierarchyLayout` (each edge type switchable)."""

    def __init__(self, edges: EdgeConfig) -> None:
        self.edges = edges

    def slot_keys(self, layout: HierarchyLayout) -> dict[str, Tensor]:
        kind, unit = layout.kind, layout.unit
        valid = kind >= 0
        token = kind == KIND_TOKEN
        active = layout.active_levels
        keys = {"valid": valid, "doc": kind == KIND_DOC}

        def sided(condition: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
            far = torch.full_like(value, _FAR)
            return torch.where(condition, value, -far), torch.where(condition, value, far)

        keys["pos_q"], keys["pos_k"] = sided(token, layout.position)
        if active > 0:
            keys["unit0_q"], keys["unit0_k"] = sided(token, unit[0])
        # Heads of every level in one key: level * stride + unit (neighbours) or + parent (siblings).
        head_level = kind - KIND_HEAD0  # (B, S), level of a head slot
        is_head = (kind >= KIND_HEAD0) & (head_level < active)
        level_base = head_level.clamp(min=0) * _LEVEL_STRIDE
        own_unit = torch.zeros_like(kind)
        parent = torch.zeros_like(kind)
        for level in range(active):
            at_level = head_level == level
            own_unit = torch.where(at_level, unit[level], own_unit)
            if level + 1 < active:
                parent = torch.where(at_level, unit[level + 1], parent)
        keys["unit_q"], keys["unit_k"] = sided(is_head, level_base + own_unit)
        keys["parent_q"], keys["parent_k"] = sided(is_head, level_base + parent)
        for level in range(active):
            # Parent/child at `level`: a head of this level vs a token or lower head of the same unit.
            head = kind == KIND_HEAD0 + level
            below = (kind >= KIND_TOKEN) & (kind < KIND_HEAD0 + level)
            keys[f"head{level}_q"], keys[f"head{level}_k"] = sided(head, unit[level])
            keys[f"below{level}_q"], keys[f"below{level}_k"] = sided(below, unit[level])
        return keys

    def allowed(self, keys: dict[str, Tensor], b: Tensor, qi: Tensor, kj: Tensor) -> Tensor:
        e = self.edges
        valid_q, valid_k = keys["valid"][b, qi], keys["valid"][b, kj]
        allowed = torch.zeros_like(valid_q & valid_k)
        if e.doc_token:
            allowed = allowed | (keys["doc"][b, qi] & valid_k) | (valid_q & keys["doc"][b, kj])
        if e.local_window > 0:
            allowed = allowed | ((keys["pos_q"][b, qi] - keys["pos_k"][b, kj]).abs() <= e.local_window)
        if e.same_unit and "unit0_q" in keys:
            allowed = allowed | (keys["unit0_q"][b, qi] == keys["unit0_k"][b, kj])
        level = 0
        while e.parent_child and f"head{level}_q" in keys:
            allowed = allowed | (keys[f"head{level}_q"][b, qi] == keys[f"below{level}_k"][b, kj])
            allowed = allowed | (keys[f"below{level}_q"][b, qi] == keys[f"head{level}_k"][b, kj])
            level += 1
        if e.siblings:
            allowed = allowed | (keys["parent_q"][b, qi] == keys["parent_k"][b, kj])
        if e.neighbour_units > 0:
            allowed = allowed | ((keys["unit_q"][b, qi] - keys["unit_k"][b, kj]).abs() <= e.neighbour_units)
        return allowed


class AttentionBackend:
    """Runs attention for a layout; `prepare` once per layout, `attend` in every layer."""

    def __init__(self, pattern: AttentionPattern) -> None:
        self.pattern = pattern

    def prepare(self, layout: HierarchyLayout) -> object:
        raise NotImplementedError

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared: object, dropout: float = 0.0) -> Tensor:
        """Attention of (B, H, S, Dh) queries/keys/values; returns (B, H, S, Dh)."""
        raise NotImplementedError


class DenseMaskBackend(AttentionBackend):
    """Boolean (B, 1, S, S) mask through `scaled_dot_product_attention` (trains anywhere)."""

    def prepare(self, layout: HierarchyLayout) -> Tensor:
        return self.pattern.materialize(layout)[:, None]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared: object, dropout: float = 0.0) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=prepared, dropout_p=dropout)


class FlexBackend(AttentionBackend):
    """FlexAttention with a block mask built from the same rule (forward only on CPU)."""

    def __init__(self, pattern: AttentionPattern, block_size: int = 128) -> None:
        super().__init__(pattern)
        self.block_size = block_size
        self._compiled = None

    def prepare(self, layout: HierarchyLayout) -> object:
        from torch.nn.attention.flex_attention import create_block_mask

        batch, size = layout.kind.shape
        return create_block_mask(
            self.pattern.mask_mod(layout),
            batch,
            None,
            size,
            size,
            device=layout.kind.device,
            BLOCK_SIZE=self.block_size,
        )

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared: object, dropout: float = 0.0) -> Tensor:
        from torch.nn.attention.flex_attention import flex_attention

        if q.is_cuda:
            # Eager FlexAttention materialises the scores; the compiled kernel skips empty blocks.
            if self._compiled is None:
                self._compiled = torch.compile(flex_attention)
            flex_attention = self._compiled
        if dropout > 0.0:
            raise ValueError("attention backend 'flex' does not support attention dropout; set it to 0")
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            raise RuntimeError(
                "attention backend 'flex' cannot train on CPU (FlexAttention has no CPU backward); "
                "use backend: dense"
            )
        return flex_attention(q, k, v, block_mask=prepared)


def block_density(mask: Tensor, block_size: int) -> float:
    """Fraction of (block_size x block_size) tiles of a (B, S, S) mask that hold any edge."""
    batch, size, _ = mask.shape
    blocks = -(-size // block_size)
    padded = F.pad(mask, (0, blocks * block_size - size, 0, blocks * block_size - size))
    tiles = padded.view(batch, blocks, block_size, blocks, block_size).any(dim=4).any(dim=2)
    return tiles.float().mean().item()


def make_backend(name: str, pattern: AttentionPattern) -> AttentionBackend:
    """Backend by config name: 'dense' or 'flex'."""
    if name == "dense":
        return DenseMaskBackend(pattern)
    if name == "flex":
        return FlexBackend(pattern)
    raise ValueError(f"model.backend: expected 'dense' or 'flex', got {name!r}")
