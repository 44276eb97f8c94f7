"""Perplexity from summed negative log-likelihoods."""

from __future__ import annotations

import math


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(total NLL in nats / number of predicted tokens)."""
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    return math.exp(total_nll / total_tokens)
