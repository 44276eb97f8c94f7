"""Exact inference for HMM language models, written as batched GEMMs.

Notation: ``K`` hidden states, vocabulary ``V``, a batch of ``B`` sequences of (padded) length ``T``.
The model is given by three tensors of *log* parameters (they need not be normalised; gradients are
taken with respect to them):

* ``log_start``      ``(K,)``   log π
* ``log_transition`` ``(K, K)`` log A, row ``i`` = distribution of the next state after state ``i``
* ``log_emission``   ``(K, V)`` log B, row ``k`` = distribution of the word emitted by state ``k``

The forward algorithm runs in probability space with per-step scaling (Rabiner's scaled α): each
step is one ``(B, K) @ (K, K)`` GEMM followed by ``O(B·K)`` element-wise work, so no ``(B, K, K)``
broadcast and no ``(B, T, V)`` emission tensor is ever built; only the emission columns of the words
that occur in the batch are exponentiated. Emission columns are max-shifted per
word (``exp(log B[:, v] - max_k log B[k, v])``) so that a word that is very unlikely under every
state cannot underflow to zero; the shift is added back to the log-likelihood.

The gradient of ``log P(O)`` with respect to the log parameters is the vector of expected counts
(posterior state marginals and expected transitions), computed by the scaled backward recursion in
:class:`ForwardLogLikelihood` instead of back-propagating through the time loop; only the scaled
α's (``(T, B, K)``, i.e. ``O(B·K)`` per step) are kept between the two passes.

Padding: ``mask`` is ``(B, T)`` bool, ``True`` on real tokens; every row must be a non-empty prefix
(right padding). Rows are processed longest first (sorted internally, results returned in the caller's
order), so the sequences still running at a step are a prefix of the rows and each step's GEMM and
element-wise work cover only them: padding costs no compute (a batch of random sentences is often half
padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ExpectedCounts",
    "ForwardLogLikelihood",
    "check_observations",
    "expected_counts",
    "forward_log_likelihood",
    "joint_log_likelihood",
    "posterior_marginals",
    "viterbi",
]


def check_observations(obs: Tensor, mask: Tensor | None, vocab_size: int | None = None) -> Tensor:
    """Validate a batch of observations and return its (possibly default) padding mask.

    Args:
        obs: ``(B, T)`` integer word ids.
        mask: ``(B, T)`` bool, ``True`` on real tokens, or ``None`` for "no padding".
        vocab_size: when given, every id under the mask must be ``< vocab_size``.

    Returns:
        The ``(B, T)`` bool mask.

    Raises:
        ValueError: wrong shapes or dtypes, empty sequences, masks that are not right-padded, or ids
            outside the vocabulary.
    """
    if obs.dim() != 2:
        raise ValueError(f"obs must be (B, T), got shape {tuple(obs.shape)}")
    if obs.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"obs must hold integer word ids, got {obs.dtype}")
    if obs.shape[1] == 0:
        raise ValueError("obs has length 0: every sequence needs at least one token")
    if mask is None:
        mask = torch.ones_like(obs, dtype=torch.bool)
    if mask.shape != obs.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be bool of shape {tuple(obs.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    if not bool(mask[:, 0].all()):
        raise ValueError("mask: every sequence must start with a real token (empty or left-padded sequence)")
    if obs.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask must be right-padded: a real token follows a padding position")
    if vocab_size is not None:
        ids = obs[mask]
        if bool((ids < 0).any()) or bool((ids >= vocab_size).any()):
            raise ValueError(f"obs holds word ids outside [0, {vocab_size})")
    return mask


def _shifted_emission_table(log_emission: Tensor, words: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(E, shift)`` for the words ``words``: ``E[u, k] = exp(log B[k, w_u] - shift[u])`` with
    ``shift[u] = max_k log B[k, w_u]``.

    ``E`` is ``(U, K)`` so that gathering the rows of a batch of words gives a contiguous ``(B, K)``.
    The rows of the transposed view are gathered straight into a contiguous ``(U, K)`` table (one
    strided copy; gathering ``(K, U)`` columns and then transposing them took about 1.3× as long at
    K = 1024, U = 3,400), then shifted and exponentiated in place.
    """
    table = log_emission.t().index_select(0, words)  # (U, K), contiguous
    shift = table.amax(dim=1)  # (U,)
    table.sub_(shift.unsqueeze(1)).exp_()
    return table, shift


@dataclass
class _ForwardPass:
    """What the scaled forward pass leaves for the backward pass (rows in length order, see `order`)."""

    log_likelihood: Tensor  # (B,), in the caller's row order
    alphas: Tensor | None  # (T, B, K) scaled α, rows sum to one
    scales: Tensor  # (T, B) normaliser c_t (1 on padded steps)
    order: Tensor | None = None  # (B,) the caller's row of each sorted row; None: already sorted


def _scaled_forward(
    start: Tensor, transition: Tensor, table: Tensor, shift: Tensor, obs: Tensor, mask: Tensor, keep: bool
) -> _ForwardPass:
    # Rows are sorted by length (longest first), so the sequences still running at step t are the first
    # `active[t]` rows: every per-step call works on that prefix and padding costs nothing.
    # Per step: one gather of the emission rows into a reused buffer, one GEMM written in place (into
    # α_t when kept, else into the other half of a ping-pong pair), and three in-place element-wise
    # calls (⊙ e_t, row sum into c_t, ÷ c_t). No per-step allocation, no (T, B, K) emission tensor,
    # and no log/exp inside the loop (one log of all c_t at the end).
    batch, length = obs.shape
    num_states = start.shape[0]
    active = mask.sum(dim=0).tolist()  # sequences still running at each step
    steps_obs = obs.t().contiguous()  # (T, B)
    factory = {"dtype": start.dtype, "device": start.device}
    alphas = torch.empty(length, batch, num_states, **factory) if keep else None
    buffers = None if keep else torch.empty(2, batch, num_states, **factory)  # ping-pong α's
    emission = torch.empty(batch, num_states, **factory)  # (B, K) e_t, reused every step
    scales = torch.ones(length, batch, **factory)
    alpha = alphas[0] if keep else buffers[0]
    torch.index_select(table, 0, steps_obs[0], out=emission)
    torch.mul(start.unsqueeze(0), emission, out=alpha)  # (B, K)
    torch.sum(alpha, dim=1, out=scales[0])
    alpha.div_(scales[0].unsqueeze(1))
    for t in range(1, length):
        n = active[t]
        new = alphas[t] if keep else buffers[t % 2]
        torch.index_select(table, 0, steps_obs[t, :n], out=emission[:n])
        torch.mm(alpha[:n], transition, out=new[:n])
        new[:n].mul_(emission[:n])
        torch.sum(new[:n], dim=1, out=scales[t, :n])
        new[:n].div_(scales[t, :n].unsqueeze(1))
        if keep and n < batch:
            new[n:] = alpha[n:]  # finished rows carry their last α (the backward masks them out)
        alpha = new
    emission_shift = torch.where(
        mask, shift[obs], torch.zeros((), dtype=shift.dtype, device=shift.device)
    ).sum(dim=1)
    log_likelihood = scales.log().sum(dim=0) + emission_shift
    return _ForwardPass(log_likelihood, alphas, scales)


@dataclass
class ExpectedCounts:
    """Posterior expected counts of one batch (weighted by per-sequence weights).

    Attributes:
        start: ``(K,)`` Σ_b w_b P(s_1 = k | O_b).
        transition: ``(K, K)`` Σ_b w_b Σ_t P(s_t = i, s_{t+1} = j | O_b).
        emission: ``(K, V)`` Σ_b w_b Σ_t P(s_t = k | O_b) [o_t = v].
        log_likelihood: ``(B,)`` log P(O_b).
        posteriors: ``(B, T, K)`` state marginals when requested, else ``None``.
    """

    start: Tensor
    transition: Tensor
    emission: Tensor
    log_likelihood: Tensor
    posteriors: Tensor | None = None


def _scaled_backward(
    transition: Tensor,
    table: Tensor,
    obs: Tensor,
    mask: Tensor,
    fwd: _ForwardPass,
    weights: Tensor,
    keep_posteriors: bool,
) -> ExpectedCounts:
    """Expected counts of the rows of `fwd` (sorted by length; `weights` and the returned posteriors are
    in the caller's row order)."""
    length, batch, num_states = fwd.alphas.shape
    vocab_size = table.shape[0]
    dtype = transition.dtype
    factory = {"dtype": dtype, "device": transition.device}
    active = mask.sum(dim=0).tolist()  # sequences still running at each step: a prefix of the rows
    if fwd.order is not None:
        weights = weights[fwd.order]
    # β̂_T = w_b: the recursion is linear in β, so the per-sequence weights (the incoming gradient)
    # are folded in at the end and every count comes out already weighted.
    beta = weights.to(dtype).unsqueeze(1).expand(batch, num_states).contiguous()  # (B, K)
    emission_t = torch.zeros(vocab_size, num_states, **factory)  # (V, K)
    messages = torch.empty(length, batch, num_states, **factory)  # (T, B, K), u_t (row 0 unused)
    posteriors = torch.zeros(length, batch, num_states, **factory) if keep_posteriors else None
    steps_obs = obs.t().contiguous()  # (T, B)
    emission = torch.empty(batch, num_states, **factory)  # (B, K) e_t
    gamma = torch.empty(batch, num_states, **factory)  # (B, K)
    betas = torch.empty(2, batch, num_states, **factory)  # ping-pong β̂'s
    inverse_scales = fwd.scales.reciprocal().unsqueeze(2)  # (T, B, 1)
    transition_t = transition.t()
    for t in range(length - 1, 0, -1):
        n = active[t]
        torch.mul(fwd.alphas[t, :n], beta[:n], out=gamma[:n])  # (n, K) = w_b P(s_t | O)
        if keep_posteriors:
            posteriors[t, :n] = gamma[:n]
        emission_t.index_add_(0, steps_obs[t, :n], gamma[:n])
        torch.index_select(table, 0, steps_obs[t, :n], out=emission[:n])
        message = messages[t]
        torch.mul(emission[:n], beta[:n], out=message[:n])  # (n, K) u_t = e_t β̂_t / c_t
        message[:n].mul_(inverse_scales[t, :n])
        message[n:] = 0.0  # rows that have not started send nothing (the transition GEMM reads all)
        new_beta = betas[t % 2]
        torch.mm(message[:n], transition_t, out=new_beta[:n])  # (n, K) β̂_{t-1} = A u_t
        new_beta[n:] = beta[n:]  # ... and keep β̂ = w until their last step
        beta = new_beta
    gamma = fwd.alphas[0] * beta
    if keep_posteriors:
        posteriors[0] = gamma
    emission_t.index_add_(0, steps_obs[0], gamma)
    # Σ_t α̂_{t-1}ᵀ u_t as one (K, T·B) @ (T·B, K) GEMM, then ⊙ A gives the expected transitions.
    if length > 1:
        previous = fwd.alphas[:-1].reshape(-1, num_states)
        transition_counts = torch.mm(previous.t(), messages[1:].reshape(-1, num_states)) * transition
    else:
        transition_counts = torch.zeros_like(transition)
    if keep_posteriors:
        posteriors = posteriors.transpose(0, 1)  # (B, T, K)
        if fwd.order is not None:
            posteriors = _unsorted(posteriors, fwd.order)
    return ExpectedCounts(
        start=gamma.sum(dim=0),
        transition=transition_counts,
        emission=emission_t.t(),
        log_likelihood=fwd.log_likelihood,
        posteriors=posteriors,
    )


def _unsorted(rows: Tensor, order: Tensor) -> Tensor:
    """Rows computed in `order` (row i belongs to the caller's row order[i]) back in the caller's order."""
    return torch.empty_like(rows).index_copy_(0, order, rows)


def _forward_pass(log_start, log_transition, log_emission, obs, mask, keep):
    # Global max shifts keep exp() in range for unnormalised inputs; they are added back exactly:
    # once for π, once per real transition for A, and per word for B (see _shifted_emission_table).
    start_shift = log_start.amax()
    transition_shift = log_transition.amax()
    start = torch.exp(log_start - start_shift)
    transition = torch.exp(log_transition - transition_shift)
    # Only the emission columns of the words in this batch are exponentiated: O(K·U), U ≤ min(V, B·T).
    words, local_obs = torch.unique(obs, return_inverse=True)  # (U,), (B, T) ids into `words`
    table, shift = _shifted_emission_table(log_emission, words)  # (U, K), (U,)
    lengths = mask.sum(dim=1)
    order = None
    if bool((lengths[1:] > lengths[:-1]).any()):  # longest first, so running rows form a prefix
        order = torch.argsort(lengths, descending=True, stable=True)
        local_obs, mask = local_obs[order], mask[order]
    fwd = _scaled_forward(start, transition, table, shift, local_obs, mask, keep)
    if order is not None:
        fwd.order = order
        fwd.log_likelihood = _unsorted(fwd.log_likelihood, order)
    num_transitions = (lengths - 1).to(log_start.dtype)
    fwd.log_likelihood = fwd.log_likelihood + start_shift + num_transitions * transition_shift
    return fwd, transition, table, words, local_obs, mask


def _full_emission_counts(counts: ExpectedCounts, words: Tensor, vocab_size: int) -> ExpectedCounts:
    """Scatter the ``(K, U)`` emission counts of the batch's words into a ``(K, V)`` matrix."""
    emission = counts.emission.new_zeros(counts.emission.shape[0], vocab_size)
    emission[:, words] = counts.emission
    counts.emission = emission
    return counts


class ForwardLogLikelihood(torch.autograd.Function):
    """``log P(O)`` per sequence, with the gradient given by forward–backward expected counts."""

    @staticmethod
    def forward(ctx, log_start, log_transition, log_emission, obs, mask):  # noqa: D102
        with torch.no_grad():
            keep = any(ctx.needs_input_grad[:3])
            fwd, transition, table, words, local_obs, mask = _forward_pass(
                log_start.detach(), log_transition.detach(), log_emission.detach(), obs, mask, keep
            )
        if keep:
            ctx.fwd = fwd
            ctx.vocab_size = log_emission.shape[1]
            ctx.save_for_backward(transition, table, words, local_obs, mask)
        return fwd.log_likelihood

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        transition, table, words, local_obs, mask = ctx.saved_tensors
        with torch.no_grad():
            counts = _scaled_backward(transition, table, local_obs, mask, ctx.fwd, grad_output, False)
            counts = _full_emission_counts(counts, words, ctx.vocab_size)
        del ctx.fwd
        return counts.start, counts.transition, counts.emission, None, None


def forward_log_likelihood(
    log_start: Tensor, log_transition: Tensor, log_emission: Tensor, obs: Tensor, mask: Tensor | None = None
) -> Tensor:
    """``log P(O)`` of every sequence by the scaled forward algorithm.

    Args:
        log_start: ``(K,)`` log π.
        log_transition: ``(K, K)`` log A.
        log_emission: ``(K, V)`` log B.
        obs: ``(B, T)`` word ids.
        mask: ``(B, T)`` bool padding mask (right-padded), or ``None``.

    Returns:
        ``(B,)`` log-likelihoods. Differentiable in the three parameter tensors; the backward pass
        is the scaled β recursion (expected counts), not autograd through time.
    """
    mask = check_observations(obs, mask, log_emission.shape[1])
    return ForwardLogLikelihood.apply(log_start, log_transition, log_emission, obs, mask)


def expected_counts(
    log_start: Tensor,
    log_transition: Tensor,
    log_emission: Tensor,
    obs: Tensor,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    posteriors: bool = False,
) -> ExpectedCounts:
    """Posterior expected counts of one batch by forward–backward (the E-step of EM).

    Args:
        log_start, log_transition, log_emission: log parameters, shapes as above.
        obs: ``(B, T)`` word ids; mask: ``(B, T)`` padding mask or ``None``.
        weights: ``(B,)`` per-sequence weights (default ones).
        posteriors: also return the ``(B, T, K)`` state marginals.

    Returns:
        :class:`ExpectedCounts`.
    """
    mask = check_observations(obs, mask, log_emission.shape[1])
    if weights is None:
        weights = torch.ones(obs.shape[0], dtype=log_transition.dtype, device=obs.device)
    with torch.no_grad():
        fwd, transition, table, words, local_obs, mask = _forward_pass(
            log_start.detach(), log_transition.detach(), log_emission.detach(), obs, mask, True
        )
        counts = _scaled_backward(transition, table, local_obs, mask, fwd, weights, posteriors)
        return _full_emission_counts(counts, words, log_emission.shape[1])


def posterior_marginals(
    log_start: Tensor, log_transition: Tensor, log_emission: Tensor, obs: Tensor, mask: Tensor | None = None
) -> Tensor:
    """``(B, T, K)`` posterior state marginals ``P(s_t = k | O)`` (zero on padded steps)."""
    return expected_counts(log_start, log_transition, log_emission, obs, mask, posteriors=True).posteriors


def joint_log_likelihood(
    log_start: Tensor,
    log_transition: Tensor,
    log_emission: Tensor,
    obs: Tensor,
    states: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """``log P(O, S)`` for given state sequences, by direct gather.

    ``log π[s_1] + Σ_t log A[s_t, s_{t+1}] + Σ_t log B[s_t, o_t]`` over the real (unmasked) tokens.

    Args:
        log_start, log_transition, log_emission: log parameters.
        obs: ``(B, T)`` word ids; states: ``(B, T)`` state ids; mask: ``(B, T)`` or ``None``.

    Returns:
        ``(B,)`` joint log-likelihoods, differentiable in the parameters.
    """
    mask = check_observations(obs, mask, log_emission.shape[1])
    if states.shape != obs.shape:
        raise ValueError(f"states must have the shape of obs {tuple(obs.shape)}, got {tuple(states.shape)}")
    ids = states[mask]
    if bool((ids < 0).any()) or bool((ids >= log_start.shape[0]).any()):
        raise ValueError(f"states hold ids outside [0, {log_start.shape[0]})")
    zero = torch.zeros((), dtype=log_emission.dtype, device=log_emission.device)
    states = torch.where(mask, states, torch.zeros_like(states))
    emission = torch.where(mask, log_emission[states, obs], zero).sum(dim=1)  # (B, T) gather -> (B,)
    transition = torch.where(mask[:, 1:], log_transition[states[:, :-1], states[:, 1:]], zero).sum(dim=1)
    return log_start[states[:, 0]] + transition + emission


def viterbi(
    log_start: Tensor,
    log_transition: Tensor,
    log_emission: Tensor,
    obs: Tensor,
    mask: Tensor | None = None,
    max_chunk_elements: int = 1 << 24,
) -> tuple[Tensor, Tensor]:
    """Most likely state sequence (max-product in log space).

    The max over previous states is taken in chunks of target states so that the temporary
    ``(B, K, chunk)`` stays below ``max_chunk_elements`` entries.

    Returns:
        ``(paths, scores)``: ``(B, T)`` state ids (0 on padded steps) and ``(B,)`` ``log P(O, S*)``.
    """
    mask = check_observations(obs, mask, log_emission.shape[1])
    batch, length = obs.shape
    num_states = log_start.shape[0]
    chunk = max(1, min(num_states, max_chunk_elements // max(1, batch * num_states)))
    with torch.no_grad():
        emission_t = log_emission.t()  # (V, K) view
        score = log_start.unsqueeze(0) + emission_t[obs[:, 0]]  # (B, K)
        backpointers = torch.zeros(length, batch, num_states, dtype=torch.long, device=obs.device)
        for t in range(1, length):
            best = torch.empty_like(score)
            for lo in range(0, num_states, chunk):
                cand = score.unsqueeze(2) + log_transition[:, lo : lo + chunk].unsqueeze(0)  # (B, K, c)
                values, argmax = cand.max(dim=1)
                best[:, lo : lo + chunk] = values
                backpointers[t, :, lo : lo + chunk] = argmax
            new = best + emission_t[obs[:, t]]
            step_mask = mask[:, t : t + 1]
            score = torch.where(step_mask, new, score)
        scores, last = score.max(dim=1)
        lengths = mask.sum(dim=1)
        paths = torch.zeros(batch, length, dtype=torch.long, device=obs.device)
        current = last
        rows = torch.arange(batch, device=obs.device)
        for t in range(length - 1, -1, -1):
            active = t < lengths
            paths[:, t] = torch.where(active, current, torch.zeros_like(current))
            if t > 0:
                previous = backpointers[t, rows, current]
                current = torch.where(active, previous, current)
    return paths, scores
