"""Closed-form estimates: the count estimate for given states, and one EM step.

* :func:`count_estimate` is the exact maximiser of ``Σ log P(O, S) + α Σ log θ`` (maximum likelihood
  with an additive pseudocount α, i.e. MAP under a symmetric Dirichlet(α + 1)) for fixed states S:
  each distribution is its normalised counts plus α.
* :func:`em_step` runs the E-step (forward–backward expected counts over a set of batches) and the
  closed-form M-step from those counts, and loads the result into a dense model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from latentlm.hmm.forward import check_observations, expected_counts
from latentlm.hmm.model import HMMLanguageModel, HMMParameters


def normalise_counts(
    start: Tensor, transition: Tensor, emission: Tensor, pseudocount: float
) -> HMMParameters:
    """Log of (counts + pseudocount), normalised along the last axis of each distribution."""
    if pseudocount < 0:
        raise ValueError(f"pseudocount: must be >= 0, got {pseudocount}")

    def log_normalise(counts: Tensor) -> Tensor:
        counts = counts + pseudocount
        return counts.log() - counts.sum(dim=-1, keepdim=True).log()

    return HMMParameters(log_normalise(start), log_normalise(transition), log_normalise(emission))


def state_counts(
    obs: Tensor, states: Tensor, mask: Tensor | None, num_states: int, vocab_size: int, dtype=torch.float64
) -> tuple[Tensor, Tensor, Tensor]:
    """Counts of first states ``(K,)``, transitions ``(K, K)`` and emissions ``(K, V)`` in given paths."""
    mask = check_observations(obs, mask, vocab_size)
    if states.shape != obs.shape:
        raise ValueError(f"states must have the shape of obs {tuple(obs.shape)}, got {tuple(states.shape)}")
    start = torch.bincount(states[:, 0], minlength=num_states).to(dtype)
    pair_mask = mask[:, 1:]
    pairs = states[:, :-1][pair_mask] * num_states + states[:, 1:][pair_mask]
    transition = (
        torch.bincount(pairs, minlength=num_states * num_states).to(dtype).view(num_states, num_states)
    )
    emitted = states[mask] * vocab_size + obs[mask]
    emission = (
        torch.bincount(emitted, minlength=num_states * vocab_size).to(dtype).view(num_states, vocab_size)
    )
    return start, transition, emission


def count_estimate(
    obs: Tensor,
    states: Tensor,
    mask: Tensor | None,
    num_states: int,
    vocab_size: int,
    pseudocount: float = 1.0,
    dtype=torch.float64,
) -> HMMParameters:
    """Closed-form maximiser of ``Σ_b log P(O_b, S_b) + α·Σ log θ`` over normalised parameters.

    Args:
        obs: ``(B, T)`` word ids; states: ``(B, T)`` state ids; mask: ``(B, T)`` or ``None``.
        num_states: K; vocab_size: V.
        pseudocount: α ≥ 0 added to every count (α = 0 is the plain MLE; unseen events get -inf).

    Returns:
        Normalised :class:`HMMParameters` (log-probabilities).
    """
    return normalise_counts(*state_counts(obs, states, mask, num_states, vocab_size, dtype), pseudocount)


@torch.no_grad()
def em_step(
    model: HMMLanguageModel, batches: Iterable[tuple[Tensor, Tensor]], pseudocount: float = 0.0
) -> tuple[float, int]:
    """One EM iteration over ``batches`` of ``(obs, mask)``; updates a dense ``model`` in place.

    Returns:
        ``(total log-likelihood under the old parameters, number of tokens)``.
    """
    params = model.log_parameters()
    start = torch.zeros_like(params.log_start)
    transition = torch.zeros_like(params.log_transition)
    emission = torch.zeros_like(params.log_emission)
    total, tokens = 0.0, 0
    for obs, mask in batches:
        counts = expected_counts(*params, obs, mask)
        start += counts.start
        transition += counts.transition
        emission += counts.emission
        total += float(counts.log_likelihood.sum())
        tokens += int(mask.sum())
    model.load_log_probabilities(normalise_counts(start, transition, emission, pseudocount))
    return total, tokens
