"""Learned segmentation of the LHT (seed 003, "Hierarchy System" and roadmap 2.2).

A `LevelRouter` scores, for each member of a sequence (tokens for level 1, unit heads of the level
below for level > 1), the probability that a new unit starts there: the cosine dissimilarity of
adjacent projected states, as in H-Net (Hwang et al. 2025), p_t = (1 - cos(W_q h_t, W_k h_{t-1})) / 2,
with p_0 = 1. Hard decisions are p_t >= 1/2. Gradients reach the router through a straight-through
confidence factor on the pooled unit heads (forward value 1, backward d/dp) and through the ratio
loss, which pulls the boundary rate of each level to 1 / target_ratio.

`HierarchyManager` owns the routers, their layer schedule (`router_layers`), the head capacity of each
level, turns decisions into nested unit ids and a new `HierarchyLayout`, and keeps statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from latentlm.lht.attention import HierarchyLayout, build_layout, first_member_index
from latentlm.lht.config import HierarchyConfig


@dataclass
class RouterDecision:
    """Boundary probabilities and hard decisions over one sequence of members.

    Attributes:
        probs: (B, M) boundary probability p_t (1 at the first member).
        boundaries: (B, M) bool hard decisions (False on invalid members).
    """

    probs: Tensor
    boundaries: Tensor


class LevelRouter(nn.Module):
    """Cosine-dissimilarity boundary router of one level (H-Net style)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Identity projections: boundaries start where adjacent states differ (H-Net's initialisation)."""
        nn.init.eye_(self.query.weight)
        nn.init.eye_(self.key.weight)

    def forward(self, states: Tensor, valid: Tensor) -> RouterDecision:
        """Score boundaries.

        Args:
            states: (B, M, D) member states.
            valid: (B, M) bool, real members (a prefix of each row).

        Returns:
            The decision; the first member of every non-empty row is always a boundary.
        """
        q = self.query(states[:, 1:])
        k = self.key(states[:, :-1])
        dtype = torch.promote_types(q.dtype, torch.float32)  # bf16 states: score in float32
        cos = nn.functional.cosine_similarity(q.to(dtype), k.to(dtype), dim=-1)  # (B, M-1)
        probs = torch.cat([torch.ones_like(cos[:, :1]), (0.5 * (1.0 - cos)).clamp(0.0, 1.0)], dim=1)
        probs = probs * valid
        boundaries = (probs >= 0.5) & valid
        return RouterDecision(probs, boundaries)


def suppress_non_maxima(probs: Tensor, boundaries: Tensor, radius: int) -> Tensor:
    """Keep a boundary only where its probability is the largest within ±radius members (smoothing)."""
    if radius <= 0:
        return boundaries
    probs = probs.detach()
    pooled = nn.functional.max_pool1d(probs[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]
    return boundaries & (probs >= pooled)


def unit_count(members: int, ratio: float) -> int:
    """Units over `members` members at `ratio` members per unit: max(1, round(members / ratio)), 0 if none."""
    return max(1, math.floor(members / ratio + 0.5)) if members else 0


def top_k_boundaries(probs: Tensor, candidates: Tensor, valid: Tensor, ratio: float) -> Tensor:
    """The unit_count(n, ratio) candidates with the highest probability in each row (member 0 first).

    Args:
        probs: (B, M) boundary probabilities (p_0 = 1).
        candidates: (B, M) bool members that may start a unit.
        valid: (B, M) bool real members (n per row).
        ratio: members per unit.

    Returns:
        (B, M) bool; fewer than k starts only where fewer candidates exist.
    """
    counts = torch.tensor([unit_count(n, ratio) for n in valid.sum(dim=1).tolist()], device=probs.device)
    scores = torch.where(candidates & valid, probs.detach().float(), -1.0)
    scores[:, 0] = torch.where(valid[:, 0], 2.0, -1.0)  # the first member always starts a unit
    order = scores.argsort(dim=1, descending=True)  # (B, M)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return (rank < counts[:, None]) & (scores >= 0)


def fixed_boundaries(valid: Tensor, ratio: float, mode: str, seeds: Tensor) -> Tensor:
    """Unit starts that do not depend on the content: exactly max(1, round(n / ratio)) per row.

    Args:
        valid: (B, M) bool, real members (a prefix of each row, n of them).
        ratio: members per unit.
        mode: 'stride' (evenly spaced: floor(i * n / k)) or 'random' (member 0 plus k - 1 distinct
            members drawn uniformly from 1..n-1 with a generator seeded by the row's seed).
        seeds: (B,) long seed of each row (the same document always gets the same boundaries).

    Returns:
        (B, M) bool.
    """
    flags = torch.zeros_like(valid)
    for row, n in enumerate(valid.sum(dim=1).tolist()):
        if n == 0:
            continue
        k = unit_count(n, ratio)
        if mode == "stride":
            positions = torch.arange(k) * n // k
        elif mode == "random":
            generator = torch.Generator().manual_seed(int(seeds[row]))
            rest = torch.randperm(n - 1, generator=generator)[: k - 1] + 1
            positions = torch.cat([torch.zeros(1, dtype=torch.long), rest])
        else:
            raise ValueError(f"model.hierarchy.boundaries: no fixed mode {mode!r}")
        flags[row, positions.to(valid.device)] = True
    return flags


def ratio_loss(probs: Tensor, boundaries: Tensor, valid: Tensor, target_ratio: float) -> Tensor:
    """H-Net ratio loss  N/(N-1) * ((N-1) F G + (1-F)(1-G)).

    F is the fraction of hard boundaries (no gradient), G the mean boundary probability, N the target
    ratio. With F = G = x the loss is minimal (= 1) at x = 1/N; its gradient in G is positive when
    F > 1/N and negative when F < 1/N, so the rate is pulled to 1/N.

    Args:
        probs: (B, M) boundary probabilities.
        boundaries: (B, M) bool hard decisions.
        valid: (B, M) bool members that count.
        target_ratio: N > 1, members per unit.

    Returns:
        Scalar loss.
    """
    count = valid.sum().clamp(min=1).to(probs.dtype)
    f = (boundaries & valid).sum().to(probs.dtype) / count
    g = (probs * valid).sum() / count
    n = target_ratio
    return n / (n - 1.0) * ((n - 1.0) * f * g + (1.0 - f) * (1.0 - g))


def segment_mean(values: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """Mean of the members of each segment.

    Args:
        values: (B, M, D).
        segment_ids: (B, M) long, -1 for members that belong to no segment.
        num_segments: C.

    Returns:
        (B, C, D); zeros for empty segments.
    """
    batch, members, dim = values.shape
    dump = torch.where(segment_ids >= 0, segment_ids, num_segments)
    sums = values.new_zeros(batch, num_segments + 1, dim)
    sums = sums.scatter_add(1, dump[..., None].expand(-1, -1, dim), values)
    counts = values.new_zeros(batch, num_segments + 1).scatter_add(1, dump, torch.ones_like(values[..., 0]))
    return (sums / counts.clamp(min=1)[..., None])[:, :num_segments]


def boundaries_to_units(boundaries: Tensor, valid: Tensor) -> Tensor:
    """Unit ids from boundary flags: cumsum - 1 on valid members, -1 elsewhere."""
    return torch.where(valid, boundaries.long().cumsum(dim=1) - 1, -1)


def units_to_boundaries(units: Tensor) -> Tensor:
    """Token boundary flags (first token of each unit) from (B, N) unit ids."""
    previous = torch.cat([torch.full_like(units[:, :1], -1), units[:, :-1]], dim=1)
    return (units >= 0) & (units != previous)


@dataclass
class HierarchyState:
    """What the routers have decided so far for one batch.

    Attributes:
        layout: the current slot layout (grows a head segment per routed level).
        token_valid: (B, N) bool.
        row_seeds: (B,) long per-document seeds of `boundaries: random` (from the token ids).
        token_units: per routed level, (B, N) long unit id of each token.
        decisions: per routed level, the router's decision over its members.
        member_valid: per routed level, (B, M_l) bool members the router saw.
        overflow: per routed level, boundaries dropped because the head segment was full.
    """

    layout: HierarchyLayout
    token_valid: Tensor
    row_seeds: Tensor | None = None
    token_units: list[Tensor] = field(default_factory=list)
    decisions: list[RouterDecision] = field(default_factory=list)
    member_valid: list[Tensor] = field(default_factory=list)
    overflow: list[int] = field(default_factory=list)

    def token_boundaries(self) -> list[Tensor]:
        """Per routed level, (B, N) bool: tokens that start a unit."""
        return [units_to_boundaries(units) for units in self.token_units]


class HierarchyManager(nn.Module):
    """Routers for every level, their schedule, head capacities and running statistics."""

    def __init__(self, config: HierarchyConfig, hidden_size: int, with_doc: bool) -> None:
        super().__init__()
        self.config = config
        self.with_doc = with_doc
        self.routers = nn.ModuleList(LevelRouter(hidden_size) for _ in config.target_ratios)
        self.level_embedding = nn.Parameter(torch.zeros(config.num_levels, hidden_size))
        self.reset_statistics()

    def capacities(self, num_tokens: int) -> list[int]:
        """Head slots per level for N tokens: C_l = min(C_{l-1}, ceil(factor * C_{l-1} / ratio_l))."""
        capacities = []
        below = num_tokens
        for ratio in self.config.target_ratios:
            below = min(below, math.ceil(self.config.capacity_factor * below / ratio))
            capacities.append(max(below, 1))
        return capacities

    def levels_at(self, layer: int) -> list[int]:
        """Levels whose router runs just before block `layer`."""
        return [level for level, at in enumerate(self.config.router_layers) if at == layer]

    def initial_state(self, token_valid: Tensor, row_seeds: Tensor | None = None) -> HierarchyState:
        """State before any router: tokens (and `[DOC]`), empty head segments."""
        capacities = self.capacities(token_valid.shape[1])
        layout = build_layout(token_valid, [], capacities, self.with_doc)
        return HierarchyState(layout, token_valid, row_seeds)

    def decide(
        self, level: int, members: Tensor, member_valid: Tensor, state: HierarchyState, gold: Tensor | None
    ) -> RouterDecision:
        """Unit starts over the members of `level`, by `config.boundaries`."""
        mode = self.config.boundaries
        if mode == "learned":
            decision = self.routers[level](members, member_valid)
            if self.config.selection == "top_k":
                candidates = suppress_non_maxima(decision.probs, member_valid, self.config.smoothing)
                ratio = self.config.target_ratios[level]
                boundaries = top_k_boundaries(decision.probs, candidates, member_valid, ratio)
            else:
                boundaries = suppress_non_maxima(decision.probs, decision.boundaries, self.config.smoothing)
            return RouterDecision(decision.probs, boundaries)
        if mode == "gold":
            if gold is None:
                raise ValueError("model.hierarchy.boundaries: 'gold' needs the gold unit starts of the batch")
            flags = gold & state.token_valid
            if level > 0:  # a level-(l-1) unit starts a level-l unit when its first token does
                capacity = state.layout.head_capacity[level - 1]
                first = first_member_index(state.token_units[level - 1], capacity)  # (B, C)
                n = flags.shape[1]
                flags = flags.gather(1, first.clamp(max=n - 1)) & (first < n)
            flags = flags & member_valid
            flags[:, 0] = member_valid[:, 0]
        else:
            seeds = (
                state.row_seeds
                if state.row_seeds is not None
                else torch.zeros(len(members), dtype=torch.long)
            )
            flags = fixed_boundaries(member_valid, self.config.target_ratios[level], mode, seeds + level)
        return RouterDecision(flags.to(members.dtype), flags)

    def route(
        self, level: int, hidden: Tensor, state: HierarchyState, gold: Tensor | None = None
    ) -> tuple[Tensor, HierarchyState]:
        """Decide the unit starts of `level` and write the pooled unit heads into their segment.

        Args:
            level: which level (levels are routed in order).
            hidden: (B, S, D) states of every slot of `state.layout`.
            state: the state with `level` levels routed.
            gold: (B, N) bool gold unit starts of this level over tokens (`boundaries: gold` only).

        Returns:
            The hidden states with the new head segment filled, and the new state.
        """
        if level != len(state.token_units):
            raise RuntimeError(f"level {level} routed after {len(state.token_units)} levels")
        layout = state.layout
        capacity = layout.head_capacity[level]
        if level == 0:
            members = hidden[:, layout.token_slice()]  # (B, N, D)
            member_valid = state.token_valid
        else:
            members = hidden[:, layout.head_slice(level - 1)]  # (B, C_{l-1}, D)
            member_valid = layout.valid[:, layout.head_slice(level - 1)]
        decision = self.decide(level, members, member_valid, state, gold)
        # Capacity: a boundary beyond the last head slot is dropped (its unit merges into the last one).
        fits = decision.boundaries.long().cumsum(dim=1) <= capacity
        overflow = int((decision.boundaries & ~fits).sum())
        decision = RouterDecision(decision.probs, decision.boundaries & fits)
        member_units = boundaries_to_units(decision.boundaries, member_valid)  # (B, M)
        if level == 0:
            token_units = member_units
        else:
            below = state.token_units[level - 1]
            token_units = torch.where(below >= 0, member_units.gather(1, below.clamp(min=0)), -1)
        # Straight-through confidence (H-Net): forward value 1, gradient through p (or 1 - p).
        confidence = torch.where(decision.boundaries, decision.probs, 1.0 - decision.probs)
        confidence = confidence + (1.0 - confidence).detach()
        heads = segment_mean(members * confidence[..., None].to(members.dtype), member_units, capacity)
        heads = heads + self.level_embedding[level].to(heads.dtype)
        token_units_all = [*state.token_units, token_units]
        new_layout = build_layout(state.token_valid, token_units_all, layout.head_capacity, self.with_doc)
        exists = new_layout.valid[:, new_layout.head_slice(level)]
        heads = heads * exists[..., None].to(heads.dtype)
        span = new_layout.head_slice(level)
        hidden = torch.cat([hidden[:, : span.start], heads, hidden[:, span.stop :]], dim=1)
        new_state = HierarchyState(
            new_layout,
            state.token_valid,
            state.row_seeds,
            token_units_all,
            [*state.decisions, decision],
            [*state.member_valid, member_valid],
            [*state.overflow, overflow],
        )
        self._record(level, new_state)
        return hidden, new_state

    def ratio_losses(self, state: HierarchyState) -> list[Tensor]:
        """One ratio loss per routed level (none when the boundaries are not learned)."""
        if self.config.boundaries != "learned":
            return []
        return [
            ratio_loss(d.probs, d.boundaries, valid, ratio)
            for d, valid, ratio in zip(
                state.decisions, state.member_valid, self.config.target_ratios, strict=False
            )
        ]

    def batch_statistics(self, state: HierarchyState) -> dict[str, float]:
        """Compression of this batch: tokens per unit, members per unit and units per document."""
        stats: dict[str, float] = {}
        tokens = float(state.token_valid.sum())
        docs = float(state.token_valid.any(dim=1).sum())
        for level, (decision, valid) in enumerate(zip(state.decisions, state.member_valid, strict=False)):
            units = float(decision.boundaries.sum())
            stats[f"level{level + 1}/tokens_per_unit"] = tokens / max(units, 1.0)
            stats[f"level{level + 1}/members_per_unit"] = float(valid.sum()) / max(units, 1.0)
            stats[f"level{level + 1}/units_per_doc"] = units / max(docs, 1.0)
            stats[f"level{level + 1}/mean_prob"] = float(
                (decision.probs.detach() * valid).sum() / valid.sum()
            )
            stats[f"level{level + 1}/overflow"] = float(state.overflow[level])
        return stats

    def reset_statistics(self) -> None:
        """Clear the running totals kept across forward passes."""
        levels = self.config.num_levels
        self._totals = {"tokens": [0.0] * levels, "units": [0.0] * levels, "docs": [0.0] * levels}

    def _record(self, level: int, state: HierarchyState) -> None:
        self._totals["tokens"][level] += float(state.token_valid.sum())
        self._totals["units"][level] += float(state.decisions[level].boundaries.sum())
        self._totals["docs"][level] += float(state.token_valid.any(dim=1).sum())

    def statistics(self) -> dict[str, float]:
        """Running compression ratio (tokens per unit) and units per document of every level."""
        stats = {}
        for level in range(self.config.num_levels):
            units = self._totals["units"][level]
            if units == 0:
                continue
            stats[f"level{level + 1}/compression"] = self._totals["tokens"][level] / units
            stats[f"level{level + 1}/units_per_doc"] = units / max(self._totals["docs"][level], 1.0)
        return stats
