"""Boundary P/R/F1: hand cases and the greedy matching against brute-force maximum matching."""

from __future__ import annotations

import random

import pytest

from latentlm.metrics.boundaries import boundary_scores, match_boundaries


def brute_force_matching(preds: list[int], golds: list[int], tolerance: int) -> int:
    """Largest matching by trying every partner (or none) for each prediction."""

    def best(i: int, used: frozenset) -> int:
        if i == len(preds):
            return 0
        result = best(i + 1, used)
        for j, g in enumerate(golds):
            if j not in used and abs(preds[i] - g) <= tolerance:
                result = max(result, 1 + best(i + 1, used | {j}))
        return result

    return best(0, frozenset())


def test_hand_cases():
    exact = boundary_scores([0, 5, 9], [0, 5, 10], tolerance=0)
    assert (exact.matched, exact.precision, exact.recall) == (2, 2 / 3, 2 / 3)
    loose = boundary_scores([0, 5, 9], [0, 5, 10], tolerance=1)
    assert loose.f1 == 1.0
    # One gold boundary cannot be claimed by two predictions.
    crowd = boundary_scores([4, 5, 6], [5], tolerance=1)
    assert (crowd.matched, crowd.precision, crowd.recall) == (1, 1 / 3, 1.0)
    assert boundary_scores([], [3], 2).f1 == 0.0
    total = boundary_scores([1], [1], 0) + boundary_scores([2, 8], [3], 0)
    assert (total.matched, total.num_predicted, total.num_gold) == (1, 3, 2)
    with pytest.raises(ValueError, match="tolerance"):
        match_boundaries([1], [1], -1)


def test_greedy_matching_is_maximum():
    rng = random.Random(0)
    for _ in range(300):
        preds = sorted(rng.sample(range(20), rng.randint(0, 7)))
        golds = sorted(rng.sample(range(20), rng.randint(0, 7)))
        tolerance = rng.randint(0, 3)
        assert match_boundaries(preds, golds, tolerance) == brute_force_matching(preds, golds, tolerance)
