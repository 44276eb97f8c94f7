"""Boundary precision, recall and F1 with a position tolerance (LHT evaluation, seed 003 3.3).

A predicted boundary counts as correct when it can be paired with a distinct gold boundary at most
`tolerance` positions away; pairs are one-to-one and their number is maximal. For sorted positions
and a symmetric window, scanning both lists left to right and pairing each prediction with the
earliest unpaired gold boundary in its window gives a maximum matching (the neighbourhoods are
intervals whose ends increase with the prediction).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass
class BoundaryScores:
    """Counts and scores of one comparison (or a micro-averaged sum of several)."""

    matched: int
    num_predicted: int
    num_gold: int

    @property
    def precision(self) -> float:
        return self.matched / self.num_predicted if self.num_predicted else 0.0

    @property
    def recall(self) -> float:
        return self.matched / self.num_gold if self.num_gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def __add__(self, other: BoundaryScores) -> BoundaryScores:
        return BoundaryScores(
            self.matched + other.matched,
            self.num_predicted + other.num_predicted,
            self.num_gold + other.num_gold,
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "predicted": float(self.num_predicted),
            "gold": float(self.num_gold),
        }


def match_boundaries(predicted: Iterable[int], gold: Iterable[int], tolerance: int) -> int:
    """Size of a maximum one-to-one matching with |p - g| <= tolerance.

    Args:
        predicted: predicted boundary positions (duplicates count once).
        gold: gold boundary positions (duplicates count once).
        tolerance: allowed distance, >= 0.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance: must be >= 0, got {tolerance}")
    preds = sorted(set(predicted))
    golds = sorted(set(gold))
    matched = 0
    g = 0
    for p in preds:
        while g < len(golds) and golds[g] < p - tolerance:
            g += 1  # too far left for this and every later prediction
        if g < len(golds) and golds[g] <= p + tolerance:
            matched += 1
            g += 1
    return matched


def boundary_scores(predicted: Sequence[int], gold: Sequence[int], tolerance: int = 0) -> BoundaryScores:
    """Precision/recall/F1 of predicted boundary positions against gold ones.

    Args:
        predicted: positions (e.g. token indices where a unit starts).
        gold: gold positions.
        tolerance: a prediction within this many positions of a gold boundary counts as a hit.

    Returns:
        `BoundaryScores`; sum several with `+` for a micro average.
    """
    return BoundaryScores(match_boundaries(predicted, gold, tolerance), len(set(predicted)), len(set(gold)))
