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


def unigram_prior(ids, vocab_size: int) -> Tensor:
    """Add-one unigram distribution ``(V,)`` float64 of token ids: ``(count(w) + 1) / (N + V)``."""
    counts = torch.bincount(torch.as_tensor(ids, dtype=torch.long).reshape(-1), minlength=vocab_size)
    if counts.numel() != vocab_size:
        raise ValueError(f"token ids must be < vocab_size={vocab_size}, got {counts.numel() - 1}")
    counts = counts.to(torch.float64) + 1.0
    return counts / counts.sum()


def emission_pseudocounts(pseudocount: float, emission_prior: Tensor | None, vocab_size: int):
    """What the M-step adds to each emission row: ``α`` for every word (uniform), or the same total
    mass ``α·V`` spread like ``emission_prior`` (a distribution over the V words): ``α·V·prior``."""
    if emission_prior is None:
        return pseudocount
    if emission_prior.shape != (vocab_size,):
        raise ValueError(f"emission_prior must have shape ({vocab_size},), got {tuple(emission_prior.shape)}")
    return pseudocount * vocab_size * emission_prior


def normalise_counts(
    start: Tensor,
    transition: Tensor,
    emission: Tensor,
    pseudocount: float,
    emission_prior: Tensor | None = None,
    emission_pseudocount: float | None = None,
) -> HMMParameters:
    """Log of (counts + pseudocount), normalised along the last axis of each distribution.

    With ``emission_prior`` (a distribution over the V words) the emission rows get ``α·V·prior``
    instead of ``α`` per word: the same pseudo-mass per row, shaped like the prior (e.g. the training
    unigram, so a state with few counts backs off towards the unigram model instead of the uniform one).
    ``emission_pseudocount`` (``None``: ``pseudocount``) is the emission rows' own ``α``.
    """
    if emission_pseudocount is None:
        emission_pseudocount = pseudocount
    if min(pseudocount, emission_pseudocount) < 0:
        raise ValueError(f"pseudocount: must be >= 0, got {pseudocount}, {emission_pseudocount}")

    def log_normalise(counts: Tensor, added) -> Tensor:
        counts = counts + added
        return counts.log() - counts.sum(dim=-1, keepdim=True).log()

    extra = emission_pseudocounts(emission_pseudocount, emission_prior, emission.shape[-1])
    if torch.is_tensor(extra):
        extra = extra.to(emission.dtype)
    return HMMParameters(
        log_normalise(start, pseudocount),
        log_normalise(transition, pseudocount),
        log_normalise(emission, extra),
    )


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
    model: HMMLanguageModel,
    batches: Iterable[tuple[Tensor, Tensor]],
    pseudocount: float = 0.0,
    emission_prior: Tensor | None = None,
    emission_pseudocount: float | None = None,
) -> tuple[float, int]:
    """One EM iteration over ``batches`` of ``(obs, mask)``; updates a dense ``model`` in place
    (smoothing as :func:`normalise_counts`).

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
    model.load_log_probabilities(
        normalise_counts(start, transition, emission, pseudocount, emission_prior, emission_pseudocount)
    )
    return total, tokens
