"""Routers: ratio loss closed form, pooled level-2 routing on a hand-built case, capacity, STE."""

from __future__ import annotations

import torch

from latentlm.lht.routers import (
    HierarchyConfig,
    HierarchyManager,
    LevelRouter,
    boundaries_to_units,
    ratio_loss,
    segment_mean,
    units_to_boundaries,
)


def rate_tensors(f: float, g: float):
    # 1000 members: round(1000 f) hard boundaries, every probability equal to g.
    valid = torch.ones(1, 1000, dtype=torch.bool)
    hard = torch.zeros(1, 1000, dtype=torch.bool)
    hard[0, : round(1000 * f)] = True
    return torch.full((1, 1000), g, dtype=torch.float64, requires_grad=True), hard, valid


def test_ratio_loss_minimum_at_target_rate():
    target = 4.0
    rates = [i / 1000 for i in range(1, 1000)]
    losses = []
    for x in rates:
        probs, hard, valid = rate_tensors(x, x)
        losses.append(ratio_loss(probs, hard, valid, target).item())
    best = rates[min(range(len(rates)), key=losses.__getitem__)]
    assert best == 0.25
    torch.testing.assert_close(min(losses), 1.0, atol=1e-12, rtol=0)
    # Closed form at F = G = x: N/(N-1) ((N-1) x^2 + (1-x)^2).
    x = 0.4
    expected = target / (target - 1) * ((target - 1) * x * x + (1 - x) ** 2)
    torch.testing.assert_close(losses[399], expected, atol=1e-12, rtol=0)


def test_ratio_loss_gradient_pulls_rate_to_target():
    for f, sign in ((0.5, 1.0), (0.1, -1.0)):
        probs, hard, valid = rate_tensors(f, f)
        ratio_loss(probs, hard, valid, 4.0).backward()
        assert torch.sign(probs.grad.sum()) == sign  # too many boundaries -> push probabilities down


def test_segment_mean_and_unit_conversions():
    values = torch.arange(12, dtype=torch.float64).view(1, 6, 2)
    ids = torch.tensor([[0, 0, 1, 2, 2, -1]])
    means = segment_mean(values, ids, 4)
    torch.testing.assert_close(means[0, 0], torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(means[0, 2], torch.tensor([7.0, 8.0], dtype=torch.float64))
    assert means[0, 3].abs().sum() == 0
    valid = torch.tensor([[True] * 5 + [False]])
    flags = torch.tensor([[True, False, True, True, False, True]])
    units = boundaries_to_units(flags, valid)
    assert units.tolist() == [[0, 0, 1, 2, 2, -1]]
    assert units_to_boundaries(units).tolist() == [[True, False, True, True, False, False]]


def test_router_probabilities_are_cosine_dissimilarity():
    router = LevelRouter(3)
    states = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]], dtype=torch.float64)
    router.double()
    decision = router(states, torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(decision.probs, torch.tensor([[1.0, 0.0, 0.5, 1.0]], dtype=torch.float64))
    assert decision.boundaries.tolist() == [[True, False, True, True]]


def hand_built_manager(capacity_factor: float = 2.0) -> HierarchyManager:
    config = HierarchyConfig(target_ratios=[2.0, 2.0], router_layers=[0, 0], capacity_factor=capacity_factor)
    manager = HierarchyManager(config, hidden_size=4, with_doc=True).double()
    # Level-2 router merges the first two basis directions, so pooled heads a and b look alike.
    merge = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    with torch.no_grad():
        manager.routers[1].query.weight.copy_(merge)
        manager.routers[1].key.weight.copy_(merge)
    return manager


def test_level2_routes_pooled_heads_and_broadcasts_to_tokens():
    a, b, c = torch.eye(4, dtype=torch.float64)[:3]
    tokens = torch.stack([a, a, b, b, b, c, c])[None]  # (1, 7, 4)
    manager = hand_built_manager()
    valid = torch.ones(1, 7, dtype=torch.bool)
    state = manager.initial_state(valid)
    layout = state.layout
    hidden = torch.zeros(1, layout.size, 4, dtype=torch.float64)
    hidden[:, layout.token_slice()] = tokens
    hidden, state = manager.route(0, hidden, state)
    assert state.token_units[0].tolist() == [[0, 0, 1, 1, 1, 2, 2]]
    heads = hidden[0, state.layout.head_slice(0)]
    torch.testing.assert_close(heads[:3], torch.stack([a, b, c]))  # pooled means (confidence is 1)
    hidden, state = manager.route(1, hidden, state)
    assert state.token_units[1].tolist() == [[0, 0, 0, 0, 0, 1, 1]]
    assert state.token_boundaries()[1].tolist() == [[True, False, False, False, False, True, False]]
    heads2 = hidden[0, state.layout.head_slice(1)]
    torch.testing.assert_close(heads2[0], (a + b) / 2)
    torch.testing.assert_close(heads2[1], c)
    stats = manager.statistics()
    torch.testing.assert_close(stats["level1/compression"], 7 / 3)
    torch.testing.assert_close(stats["level2/compression"], 7 / 2)


def test_capacity_drops_boundaries_beyond_the_head_segment():
    eye = torch.eye(4, dtype=torch.float64)
    tokens = torch.stack([eye[i % 4] for i in range(8)])[None]  # every token starts a unit
    config = HierarchyConfig(target_ratios=[4.0], router_layers=[0], capacity_factor=1.0)
    manager = HierarchyManager(config, hidden_size=4, with_doc=False).double()
    state = manager.initial_state(torch.ones(1, 8, dtype=torch.bool))
    assert state.layout.head_capacity == [2]
    hidden = torch.cat([tokens, torch.zeros(1, 2, 4, dtype=torch.float64)], dim=1)
    hidden, state = manager.route(0, hidden, state)
    assert state.token_units[0].tolist() == [[0, 1, 1, 1, 1, 1, 1, 1]]
    assert state.overflow == [6]


def test_straight_through_gradient_reaches_router():
    torch.manual_seed(0)
    manager = hand_built_manager().float()
    tokens = torch.randn(2, 9, 4, requires_grad=True)
    state = manager.initial_state(torch.ones(2, 9, dtype=torch.bool))
    layout = state.layout
    hidden = torch.cat([torch.zeros(2, 1, 4), tokens, torch.zeros(2, layout.size - 10, 4)], dim=1)
    hidden, state = manager.route(0, hidden, state)
    # Loss on the heads only (no ratio loss): the gradient must come through the STE confidence.
    hidden[:, state.layout.head_slice(0)].pow(2).sum().backward()
    grad = manager.routers[0].query.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_non_maximum_suppression_keeps_local_maxima():
    from latentlm.lht.routers import suppress_non_maxima

    probs = torch.tensor([[1.0, 0.6, 0.7, 0.2, 0.9, 0.8, 0.1]])
    flags = probs >= 0.5
    kept = suppress_non_maxima(probs, flags, radius=1)
    assert kept.tolist() == [[True, False, True, False, True, False, False]]
    assert torch.equal(suppress_non_maxima(probs, flags, radius=0), flags)


def test_top_k_selection_takes_exactly_the_target_count_of_highest_probabilities():
    from latentlm.lht.routers import top_k_boundaries, unit_count

    torch.manual_seed(0)
    probs = torch.rand(3, 40)
    probs[:, 0] = 1.0
    valid = torch.arange(40)[None] < torch.tensor([[40], [13], [1]])
    probs = probs * valid
    flags = top_k_boundaries(probs, valid, valid, ratio=4.0)
    for row, n in enumerate((40, 13, 1)):
        k = unit_count(n, 4.0)
        assert int(flags[row].sum()) == k and bool(flags[row, 0])
        chosen = probs[row, 1:n][flags[row, 1:n]]
        others = probs[row, 1:n][~flags[row, 1:n]]
        if len(chosen) and len(others):
            assert chosen.min() >= others.max()  # the highest probabilities win
    # A learned model with top-k selection has exactly round(n / ratio) units per level-1 row.
    from latentlm.lht.config import EdgeConfig, HierarchyConfig, LHTConfig
    from latentlm.lht.model import LHTForMaskedLM

    hierarchy = HierarchyConfig(target_ratios=[5.0, 2.0], router_layers=[0, 1], selection="top_k")
    model = LHTForMaskedLM(
        LHTConfig(
            vocab_size=60,
            hidden_size=16,
            num_layers=2,
            num_heads=2,
            intermediate_size=16,
            edges=EdgeConfig(),
            hierarchy=hierarchy,
        )
    )
    ids = torch.randint(5, 60, (2, 33))
    out = model(ids)
    level1 = out.hierarchy.decisions[0].boundaries
    assert level1.sum(dim=1).tolist() == [unit_count(33, 5.0)] * 2
