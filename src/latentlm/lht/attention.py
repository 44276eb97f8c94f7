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

from latentlm.lht.config import EdgeConfig

KIND_INVALID = -1
KIND_DOC = 0
KIND_TOKEN = 1
KIND_HEAD0 = 2  # head of level l has kind KIND_HEAD0 + l (l = 0 is the first level)


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

    def key_ranges(self, layout: HierarchyLayout) -> Tensor | None:
        """Per query slot, a few slot intervals that hold every key it may attend to (a superset is fine).

        Returns:
            (B, S, R, 2) long [first, last] slot of R intervals (first > last = empty), or None when the
            pattern has no cheap description (then `key_block_mask` tiles the dense mask).
        """
        return None

    def key_block_mask(self, layout: HierarchyLayout, block_size: int) -> Tensor:
        """Which key blocks each query block needs: a superset of the tiles of `materialize` that hold
        an edge, always with the diagonal (every slot attends to itself).

        Returns:
            (B, nb, nb) bool with nb = ceil(S / block_size).
        """
        ranges = self.key_ranges(layout)
        if ranges is None:
            mask = self.materialize(layout)
            batch, size, _ = mask.shape
            blocks = -(-size // block_size)
            pad = blocks * block_size - size
            padded = F.pad(mask, (0, pad, 0, pad))
            tiles = padded.view(batch, blocks, block_size, blocks, block_size)  # (B, nb, bs, nb, bs)
            return tiles.any(dim=4).any(dim=2) | torch.eye(blocks, dtype=torch.bool, device=mask.device)
        return ranges_to_block_mask(ranges, block_size)

    def mask_mod(self, layout: HierarchyLayout) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """The same rule as a FlexAttention `mask_mod(b, h, q_idx, kv_idx)`."""
        keys = self.slot_keys(layout)

        def mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return self.rule(keys, b, q_idx, kv_idx)

        return mod


def ranges_to_block_mask(ranges: Tensor, block_size: int) -> Tensor:
    """Key blocks touched by any interval of any query of a query block.

    Args:
        ranges: (B, S, R, 2) long [first, last] key slots per query slot (first > last = empty).
        block_size: slots per block.

    Returns:
        (B, nb, nb) bool, with the diagonal always set.
    """
    batch, size, count, _ = ranges.shape
    blocks = -(-size // block_size)
    first, last = ranges[..., 0], ranges[..., 1]
    empty = first > last
    first_block = torch.where(empty, blocks, first.div(block_size, rounding_mode="floor"))
    last_block = torch.where(empty, -1, last.div(block_size, rounding_mode="floor"))
    query_block = (torch.arange(size, device=ranges.device) // block_size)[None, :, None]  # (1, S, 1)
    row = (torch.arange(batch, device=ranges.device)[:, None, None] * blocks + query_block).expand_as(first)
    # Union of the intervals per query block: +1 at each interval's first key block, -1 after its last.
    marks = torch.zeros(batch * blocks, blocks + 2, dtype=torch.long, device=ranges.device)
    live = ~empty
    marks.index_put_((row[live], first_block[live]), torch.ones_like(first_block[live]), accumulate=True)
    marks.index_put_((row[live], last_block[live] + 1), -torch.ones_like(first_block[live]), accumulate=True)
    hit = marks.cumsum(dim=1)[:, :blocks] > 0  # (B*nb, nb)
    hit = hit.view(batch, blocks, blocks)
    return hit | torch.eye(blocks, dtype=torch.bool, device=ranges.device)


def _stack_range(condition: Tensor, first: Tensor, last: Tensor, size: int) -> Tensor:
    """(B, S, 2) interval, empty (size, -1) where `condition` is False."""
    return torch.stack([torch.where(condition, first, size), torch.where(condition, last, -1)], dim=-1)


class FullAttention(AttentionPattern):
    """Every valid slot attends to every valid slot (the dense baseline)."""

    def allowed(self, keys: dict[str, Tensor], b: Tensor, qi: Tensor, kj: Tensor) -> Tensor:
        return keys["valid"][b, qi] & keys["valid"][b, kj]

    def key_ranges(self, layout: HierarchyLayout) -> Tensor:
        valid = layout.valid
        zero = torch.zeros_like(valid, dtype=torch.long)
        return _stack_range(valid, zero, zero + valid.shape[1] - 1, valid.shape[1])[:, :, None]


class LocalWindowAttention(AttentionPattern):
    """Sliding-window baseline: a valid slot attends to valid slots within ±window positions."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"model.edges.local_window: the sliding window needs >= 1, got {window}")
        self.window = window

    def slot_keys(self, layout: HierarchyLayout) -> dict[str, Tensor]:
        valid = layout.valid
        far = torch.full_like(layout.position, _FAR)
        return {
            "valid": valid,
            "pos_q": torch.where(valid, layout.position, -far),
            "pos_k": torch.where(valid, layout.position, far),
        }

    def allowed(self, keys: dict[str, Tensor], b: Tensor, qi: Tensor, kj: Tensor) -> Tensor:
        return (keys["pos_q"][b, qi] - keys["pos_k"][b, kj]).abs() <= self.window

    def key_ranges(self, layout: HierarchyLayout) -> Tensor | None:
        if layout.token_offset != 0 or layout.head_capacity:
            return None  # slots are not positions: tile the exact mask instead
        batch, size = layout.kind.shape
        slot = torch.arange(size, device=layout.kind.device).expand(batch, size)
        first = (slot - self.window).clamp(min=0)
        last = (slot + self.window).clamp(max=size - 1)
        return _stack_range(layout.valid, first, last, size)[:, :, None]


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

    def key_ranges(self, layout: HierarchyLayout) -> Tensor:
        """Intervals per query slot: itself, `[DOC]`, one hull in the token segment and one hull in each
        head segment (window + same unit for tokens, the unit's tokens for heads; the own head for
        tokens and lower heads, the children for heads, siblings and neighbours for heads)."""
        e = self.edges
        kind = layout.kind.long()
        unit = layout.unit.long()
        position = layout.position.long()
        batch, size = kind.shape
        device = kind.device
        active = layout.active_levels
        t0, n = layout.token_offset, layout.num_tokens
        slot = torch.arange(size, device=device).expand(batch, size)
        valid = kind >= 0
        ranges = [_stack_range(torch.ones_like(valid), slot, slot, size)]  # self
        if e.doc_token and t0 == 1:
            zero = torch.zeros_like(slot)
            ranges.append(_stack_range(valid, zero, zero, size))  # every slot -> [DOC]
            ranges.append(_stack_range(kind == KIND_DOC, zero, zero + size - 1, size))  # [DOC] -> all
        token_units = unit[:, :, t0 : t0 + n]  # (L, B, N)
        token_index = torch.arange(n, device=device).expand(batch, n)
        firsts, lasts = [], []
        for level in range(active):
            capacity = layout.head_capacity[level]
            ids = token_units[level]
            dump = torch.where(ids >= 0, ids, capacity)
            first = torch.full((batch, capacity + 1), n - 1, dtype=torch.long, device=device)
            last = torch.zeros((batch, capacity + 1), dtype=torch.long, device=device)
            firsts.append(first.scatter_reduce(1, dump, token_index, reduce="amin")[:, :capacity])
            lasts.append(last.scatter_reduce(1, dump, token_index, reduce="amax")[:, :capacity])

        def token_span(level: int) -> tuple[Tensor, Tensor]:
            """First/last token index of each slot's unit at `level` ((B, S) each)."""
            ids = unit[level].clamp(0, layout.head_capacity[level] - 1)
            return firsts[level].gather(1, ids), lasts[level].gather(1, ids)

        def member_span(member_level: int, level: int) -> tuple[Tensor, Tensor]:
            """First/last level-`member_level` unit inside each slot's level-`level` unit."""
            first, last = token_span(level)
            members = token_units[member_level]
            return members.gather(1, first).clamp(min=0), members.gather(1, last).clamp(min=0)

        class Hull:
            def __init__(self) -> None:
                self.first = torch.full_like(slot, size)
                self.last = torch.full_like(slot, -1)

            def widen(self, condition: Tensor, first: Tensor, last: Tensor) -> None:
                self.first = torch.where(condition, torch.minimum(self.first, first), self.first)
                self.last = torch.where(condition, torch.maximum(self.last, last), self.last)

        token = kind == KIND_TOKEN
        tokens = Hull()
        if e.local_window > 0:
            tokens.widen(
                token,
                t0 + (position - e.local_window).clamp(min=0),
                t0 + (position + e.local_window).clamp(max=n - 1),
            )
        if e.same_unit and active > 0:
            first, last = token_span(0)
            tokens.widen(token, t0 + first, t0 + last)
        if e.parent_child:
            for level in range(active):
                first, last = token_span(level)
                tokens.widen(kind == KIND_HEAD0 + level, t0 + first, t0 + last)
        ranges.append(torch.stack([tokens.first, tokens.last], dim=-1))
        for segment in range(active):
            offset = layout.head_offsets[segment]
            capacity = layout.head_capacity[segment]
            heads = Hull()
            is_segment_head = kind == KIND_HEAD0 + segment
            if e.parent_child:
                below = (kind >= KIND_TOKEN) & (kind < KIND_HEAD0 + segment)
                heads.widen(below, offset + unit[segment], offset + unit[segment])
                for level in range(segment + 1, active):
                    first, last = member_span(segment, level)
                    heads.widen(kind == KIND_HEAD0 + level, offset + first, offset + last)
            if e.siblings:
                if segment + 1 < active:
                    first, last = member_span(segment, segment + 1)
                    heads.widen(is_segment_head, offset + first, offset + last)
                else:
                    heads.widen(
                        is_segment_head,
                        torch.full_like(slot, offset),
                        torch.full_like(slot, offset + capacity - 1),
                    )
            if e.neighbour_units > 0:
                own = unit[segment]
                heads.widen(
                    is_segment_head,
                    offset + (own - e.neighbour_units).clamp(min=0),
                    offset + (own + e.neighbour_units).clamp(max=capacity - 1),
                )
            ranges.append(torch.stack([heads.first, heads.last], dim=-1))
        return torch.stack(ranges, dim=2)


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

    def prepare(self, layout: HierarchyLayout) -> Tensor | None:
        if isinstance(self.pattern, FullAttention) and bool(layout.valid.all()):
            return None  # no padding: unmasked SDPA (the fastest dense kernel)
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


def bucket_width(count: int) -> int:
    """Smallest width >= count among 1, 2, 3, 4, 6, 8, 12, 16, ... (padding at most a third)."""
    width = 1
    while True:
        for candidate in (width, 3 * width // 2):
            if candidate >= count:
                return max(candidate, 1)
        width *= 2


@dataclass
class SparseBucket:
    """Query blocks that gather the same number of key blocks.

    Attributes:
        pairs: (P,) long flat index b * nb + query block of each member.
        key_index: (P * K,) long flat index b * nb + key block of the gathered key blocks, K per member.
        width: K, key blocks gathered per member.
        mask: (P, 1, bs, K * bs) bool, the pattern's edges between the query block and its gathered keys
            (False on padding key blocks and on key slots beyond S).
        additive: the mask as 0 / -inf in each floating dtype asked for so far (built once per layout,
            shared by every layer that attends with it).
    """

    pairs: Tensor
    key_index: Tensor
    width: int
    mask: Tensor
    additive: dict[torch.dtype, Tensor]

    def additive_mask(self, dtype: torch.dtype) -> Tensor:
        """(P, 1, bs, K * bs) 0 where an edge exists, -inf elsewhere, in `dtype`."""
        if dtype not in self.additive:
            blocked = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
            self.additive[dtype] = blocked.masked_fill_(~self.mask, float("-inf"))
        return self.additive[dtype]


@dataclass
class SparseLayout:
    """What `SparseBlockBackend.prepare` computes once per layout.

    Attributes:
        buckets: query blocks grouped by how many key blocks they gather.
        order: (B * nb,) long position of every flat query block in the concatenated bucket outputs.
        size: S.
        blocks: nb.
        block_size: bs.
        density: gathered key blocks / (B * nb * nb), the share of the dense work done.
    """

    buckets: list[SparseBucket]
    order: Tensor
    size: int
    blocks: int
    block_size: int
    density: float


def sparse_block_size(size: int, block_size: int = 0) -> int:
    """Slots per block for S slots: `block_size`, or when 0, 16 up to 4,096 slots and 64 above.

    Small blocks follow the staircase of the hierarchy tightly (at 2,048 tokens 16-slot blocks gather
    6 % of the S x S grid, 64-slot blocks 22 %); at 8,192 tokens the fewer, larger gathers of 64-slot
    blocks won in `benchmarks/lht_speed.py`.
    """
    if block_size > 0:
        return block_size
    return 16 if size <= 4096 else 64


class SparseBlockBackend(AttentionBackend):
    """Block-sparse attention that runs anywhere, backward included (plain autograd ops).

    The slots are cut into blocks of `block_size`; for each query block, only the key blocks that the
    pattern may connect it to (`AttentionPattern.key_block_mask`, computed from per-slot intervals in
    O(B S), never from the S x S mask) are gathered, the exact edge rule is evaluated on those pairs only,
    and `scaled_dot_product_attention` runs on (query block, gathered keys). Query blocks are grouped in
    buckets by how many key blocks they need (a `[DOC]` block needs all of them, a token block a few), so
    work grows with the sum of gathered blocks, not with S^2. Blocks are gathered slot-major
    ((blocks, bs, H, Dh), a view of the model's (B, S, H, Dh) projections) with `index_select`, whose
    backward is a plain `index_add`, and the masks are turned into additive float masks once per layout.
    """

    def __init__(self, pattern: AttentionPattern, block_size: int = 0) -> None:
        super().__init__(pattern)
        self.block_size = block_size  # 0 = by length (`sparse_block_size`)

    def prepare(self, layout: HierarchyLayout) -> SparseLayout:
        batch, size = layout.kind.shape
        device = layout.kind.device
        bs = sparse_block_size(size, self.block_size)
        needed = self.pattern.key_block_mask(layout, bs)  # (B, nb, nb)
        blocks = needed.shape[1]
        needed = needed.flatten(0, 1)  # (B*nb, nb)
        counts = needed.sum(dim=-1)  # (B*nb,)
        # Needed key blocks first, in block order (a stable sort of "not needed").
        ranked = torch.sort((~needed).to(torch.uint8), dim=-1, stable=True).indices  # (B*nb, nb)
        widths = torch.tensor([bucket_width(int(c)) for c in counts.tolist()], device=device)
        keys = self.pattern.slot_keys(layout)
        buckets, members = [], []
        for width in sorted(set(widths.tolist())):
            pairs = (widths == width).nonzero().flatten()  # (P,)
            width = min(width, blocks)
            present = torch.arange(width, device=device) < counts[pairs, None]  # (P, K)
            key_blocks = torch.where(present, ranked[pairs, :width], 0)  # (P, K)
            row = pairs.div(blocks, rounding_mode="floor")  # (P,) batch index
            query_block = pairs % blocks
            key_slot = key_blocks[..., None] * bs + torch.arange(bs, device=device)  # (P, K, bs)
            key_ok = (present[..., None] & (key_slot < size)).flatten(1)  # (P, K*bs)
            key_slot = key_slot.flatten(1).clamp(max=size - 1)  # (P, K*bs)
            query_slot = query_block[:, None] * bs + torch.arange(bs, device=device)  # (P, bs)
            b = row[:, None, None]
            mask = self.pattern.rule(keys, b, query_slot.clamp(max=size - 1)[..., None], key_slot[:, None, :])
            mask = mask & key_ok[:, None, :]  # (P, bs, K*bs)
            # Query rows beyond S are dropped after attention; one key keeps their softmax finite.
            first_key = torch.arange(width * bs, device=device) == 0
            mask = mask | ((query_slot >= size)[..., None] & first_key)
            key_index = (row[:, None] * blocks + key_blocks).flatten()  # (P*K,)
            buckets.append(SparseBucket(pairs, key_index, width, mask[:, None], {}))
            members.append(pairs)
        order = torch.argsort(torch.cat(members))
        density = float(sum(b.key_index.numel() for b in buckets)) / (batch * blocks * blocks)
        return SparseLayout(buckets, order, size, blocks, bs, density)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared: object, dropout: float = 0.0) -> Tensor:
        assert isinstance(prepared, SparseLayout)
        batch, heads, size, dim = q.shape
        bs, blocks = prepared.block_size, prepared.blocks
        pad = blocks * bs - size

        def blocked(x: Tensor) -> Tensor:
            x = F.pad(x.transpose(1, 2), (0, 0, 0, 0, 0, pad))  # (B, nb*bs, H, Dh), slot-major
            return x.reshape(batch * blocks, bs, heads, dim)  # (B*nb, bs, H, Dh)

        queries, keys, values = blocked(q), blocked(k), blocked(v)
        outputs = []
        for bucket in prepared.buckets:
            picked_shape = (len(bucket.pairs), bucket.width * bs, heads, dim)  # (P, K*bs, H, Dh)
            picked_keys = keys.index_select(0, bucket.key_index).view(picked_shape)
            picked_values = values.index_select(0, bucket.key_index).view(picked_shape)
            attended = F.scaled_dot_product_attention(
                queries.index_select(0, bucket.pairs).transpose(1, 2),  # (P, H, bs, Dh)
                picked_keys.transpose(1, 2),  # (P, H, K*bs, Dh)
                picked_values.transpose(1, 2),
                attn_mask=bucket.additive_mask(q.dtype),
                dropout_p=dropout,
            )  # (P, H, bs, Dh)
            outputs.append(attended.transpose(1, 2))  # (P, bs, H, Dh)
        out = torch.cat(outputs).index_select(0, prepared.order)  # (B*nb, bs, H, Dh)
        out = out.reshape(batch, blocks * bs, heads, dim)[:, :size]  # (B, S, H, Dh)
        return out.transpose(1, 2)  # (B, H, S, Dh)


def make_backend(name: str, pattern: AttentionPattern, block_size: int = 0) -> AttentionBackend:
    """Backend by config name: 'dense', 'sparse' or 'flex'."""
    if name == "dense":
        return DenseMaskBackend(pattern)
    if name == "sparse":
        return SparseBlockBackend(pattern, block_size)
    if name == "flex":
        return FlexBackend(pattern)
    raise ValueError(f"model.backend: expected 'dense', 'sparse' or 'flex', got {name!r}")
