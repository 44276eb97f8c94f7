"""Bidirectional RWKV-6/7-style linear recurrence ("WKV") and the time-mix / channel-mix layers.

Seed 002 ("RWKV diffusion denoiser"): the sequence mixer of the two-stream denoiser is an RWKV-style
linear recurrence with a *data-dependent* per-channel decay (RWKV-6 "Finch"; RWKV-7 keeps the same
diagonal-decay state update).  For denoising, every position must see the whole sequence, so the scan
runs forward and backward and the two are added, with the current token counted once through the
"bonus" ``u``.

Notation (per head): ``r_t, k_t, w_t in R^K``, ``v_t in R^V``, state ``S in R^{K x V}``,
``log_w_t <= 0`` (the decay is ``w_t = exp(log_w_t)``)::

    forward  past-only scan:  y_t = r_t^T S_{t-1},       S_t = diag(w_t) S_{t-1} + k_t v_t^T
    backward past-only scan:  the same on the reversed sequence
    bidirectional:            y_t = fwd_t + bwd_t + (r_t . (u_t * k_t)) v_t

so that position ``s != t`` contributes ``r_t^T diag(prod_{j strictly between s and t} w_j) k_s v_s^T``.

Two implementations of the past-only scan are given and tested equal in float64:
``wkv_naive`` (one step per token, ``T`` sequential steps) and ``wkv_chunked`` (the gated-linear-
attention chunk form, Yang et al. 2024: inside a chunk the decayed scores are one matmul, between
chunks a recurrence over ``N = T / C`` states; all heavy work is matmuls and only ``N`` steps are
sequential).  On CUDA, ``impl="fla"`` uses the ``flash-linear-attention`` kernels when that optional
package is installed (RWKV-6 chunk kernel with zero bonus), else the chunked form.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK_SIZE = 32
"""Chunk length of the chunked WKV when ``model.wkv_chunk_size = 0`` (fastest on our CPU, see docs)."""
LOG_DECAY_MIN = -5.0
"""Smallest per-token log decay (a channel keeps at least e^-5 = 0.7 % of its state per token)."""

__all__ = [
    "bidirectional_wkv",
    "wkv_naive",
    "wkv_chunked",
    "bidirectional_wkv_chunked",
    "wkv_fla",
    "fla_available",
    "TimeMixStream",
    "JointTimeMix",
    "ChannelMix",
    "bidirectional_token_shift",
]


def _check_wkv_inputs(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_w: torch.Tensor) -> None:
    if r.dim() != 4 or r.shape != k.shape or r.shape != log_w.shape:
        raise ValueError(
            f"wkv: r, k, log_w must share shape (B, H, T, K); got {tuple(r.shape)}, "
            f"{tuple(k.shape)}, {tuple(log_w.shape)}"
        )
    if v.dim() != 4 or v.shape[:3] != r.shape[:3]:
        raise ValueError(f"wkv: v must be (B, H, T, V) matching r's (B, H, T); got {tuple(v.shape)}")


def _scan_from_zero(
    r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_w: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``y_t = r_t^T S_{t-1}``, ``S_t = diag(w_t) S_{t-1} + k_t v_t^T`` along ``dim`` from ``S = 0``.

    The inputs are unbound once along ``dim`` (indexing a step at a time would make autograd allocate a
    full-size zero gradient per step).

    Returns:
        (outputs stacked along ``dim``, final state of shape (..., K, V)).
    """
    steps = zip(*(x.unbind(dim) for x in (r, k, v, log_w.exp())), strict=True)
    state = r.new_zeros(*r.shape[:dim], *r.shape[dim + 1 :], v.shape[-1])  # (..., K, V)
    outputs = []
    for r_t, k_t, v_t, w_t in steps:
        outputs.append((r_t.unsqueeze(-2) @ state).squeeze(-2))
        state = w_t.unsqueeze(-1) * state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
    return torch.stack(outputs, dim=dim), state


def wkv_naive(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """Past-only WKV scan, one step per token (the reference recurrence).

    Args:
        r: receptance, (B, H, T, K).
        k: keys, (B, H, T, K).
        v: values, (B, H, T, V).
        log_w: log decay (<= 0), (B, H, T, K).

    Returns:
        y: (B, H, T, V) with ``y_t = r_t^T S_{t-1}``.
    """
    _check_wkv_inputs(r, k, v, log_w)
    return _scan_from_zero(r, k, v, log_w, dim=2)[0]


def wkv_chunked(
    r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_w: torch.Tensor, chunk_size: int = 32
) -> torch.Tensor:
    """Past-only WKV scan in the gated-linear-attention chunk form (same result as ``wkv_naive``).

    The sequence is cut into ``N = T / C`` chunks. With ``A_t`` the within-chunk cumulative log decay
    (inclusive, ``A_0 = 0`` before the chunk):

    * intra-chunk, one masked matmul pair per chunk:
      ``y_t += sum_{s<t} (r_t e^{A_{t-1}}) . (k_s e^{-A_s}) v_s``
      (the product of the two factors is ``e^{A_{t-1} - A_s} <= 1``: the decay between s and t);
    * what a chunk adds to the state: ``(k e^{-A} e^{A_C})^T v`` (a (K, C) @ (C, V) matmul);
    * inter-chunk: a recurrence over the N chunk states, then ``y_t += (r_t e^{A_{t-1}}) S_n``.

    Only two exponentials of full size are taken.  The factors ``e^{A}`` and ``e^{-A}`` stay normal
    numbers while the total decay inside a chunk is below the dtype's exponent range minus 10 (float32:
    78, float64: 699); beyond that the chunk size is halved (at 1, the plain recurrence runs), so the
    result stays exact for any decay.  Products for ``s >= t`` may be large; they
    are masked out before use (their gradient is zero).

    Args:
        r, k, v, log_w: as in ``wkv_naive``.
        chunk_size: tokens per chunk ``C`` (capped at T).

    Returns:
        y: (B, H, T, V).
    """
    _check_wkv_inputs(r, k, v, log_w)
    if chunk_size < 1:
        raise ValueError(f"wkv_chunked: chunk_size must be >= 1, got {chunk_size}")
    B, H, T, K = r.shape
    V = v.shape[-1]
    found = _chunk_cumsum(log_w, chunk_size)
    if found is None:  # a single token's decay exceeds the range: the plain recurrence
        return wkv_naive(r, k, v, log_w)
    C, pad, chunks, cum = found  # chunks, cum: (B, H, N, C, K)
    if pad:
        r, k = (F.pad(x, (0, 0, 0, pad)) for x in (r, k))
        v = F.pad(v, (0, 0, 0, pad))
    N = (T + pad) // C
    r, k = (x.reshape(B, H, N, C, K) for x in (r, k))  # (B, H, N, C, K)
    v = v.reshape(B, H, N, C, V)  # (B, H, N, C, V)

    r_decayed = r * (cum - chunks).exp()  # r_t e^{A_{t-1}}
    k_grown = k * (-cum).exp()  # k_s e^{-A_s}
    # Intra-chunk: decayed scores as one matmul, strictly causal inside the chunk.
    scores = r_decayed @ k_grown.transpose(-1, -2)  # (B, H, N, C, C)
    causal = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(-1)
    y = scores.masked_fill(~causal, 0.0) @ v  # (B, H, N, C, V)

    # Inter-chunk: what each chunk adds to the state, a recurrence over chunks, then its read-out.
    total = cum[:, :, :, -1:]  # (B, H, N, 1, K)
    chunk_kv = (k_grown * total.exp()).transpose(-1, -2) @ v  # (B, H, N, K, V)
    chunk_decay = total.squeeze(3).exp()  # (B, H, N, K)
    states = []
    state = r.new_zeros(B, H, K, V)
    for n in range(N):
        states.append(state)
        state = chunk_decay[:, :, n].unsqueeze(-1) * state + chunk_kv[:, :, n]
    entering = torch.stack(states, dim=2)  # (B, H, N, K, V)
    y = y + r_decayed @ entering
    return y.reshape(B, H, N * C, V)[:, :, :T]


def _chunk_cumsum(log_w: torch.Tensor, chunk_size: int) -> tuple[int, int, torch.Tensor, torch.Tensor] | None:
    """Largest chunk size <= ``chunk_size`` whose total decay fits the dtype's exponent range (see
    ``wkv_chunked``): (C, padding, per-chunk log decays (B, H, N, C, K), their inclusive cumsum); None
    when even single tokens do not fit (the plain recurrence must run)."""
    B, H, T, K = log_w.shape
    limit = math.log(torch.finfo(log_w.dtype).max) - 10.0
    C = min(chunk_size, T)
    while True:
        pad = (-T) % C
        # Zero log-decay after the end changes nothing before it (and r/k/v are zero there).
        chunks = (F.pad(log_w, (0, 0, 0, pad)) if pad else log_w).reshape(B, H, -1, C, K)  # (B, H, N, C, K)
        cum = chunks.cumsum(dim=3)  # A_t
        if float(-cum[:, :, :, -1].detach().min()) <= limit:
            return C, pad, chunks, cum
        if C == 1:
            return None
        C //= 2


def bidirectional_wkv_chunked(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_w: torch.Tensor,
    u: torch.Tensor,
    chunk_size: int = 32,
) -> torch.Tensor:
    """Bidirectional WKV in one chunked pass (no reversed copy of the sequence).

    With ``E1 = e^{A_{t-1}}`` and ``E2 = e^{-A_t}`` inside each chunk, the decay between s and t is
    ``E1_t E2_s`` for s < t (forward) and ``E2_t E1_s`` for s > t (backward), so one (C, C) score matrix
    ``tril(rE1 (kE2)^T) + triu(rE2 (kE1)^T)`` carries both directions through a single ``@ v``; the
    bonus ``(r . u k) v`` is added per token.  Between chunks: chunk n passes its keys/values on as
    ``F_n = (kE2 e^{a_n})^T v`` to the right and ``G_n = (kE1)^T v`` to the left (``a_n`` = the chunk's
    total log decay), and a left-to-right and a right-to-left recurrence over the N chunk states
    (``_entering_states``) give what enters each chunk from either side.  Same result as ``forward +
    backward + bonus`` of two ``wkv_naive`` scans.  After the bonus, one autograd function
    (``_ChunkedScan``) with a hand-written backward.

    Args:
        r, k, v, log_w, u: as in ``bidirectional_wkv``.
        chunk_size: tokens per chunk (capped at T; halved while a chunk's decay exceeds the range).

    Returns:
        y: (B, H, T, V).
    """
    _check_wkv_inputs(r, k, v, log_w)
    if chunk_size < 1:
        raise ValueError(f"wkv chunk_size must be >= 1, got {chunk_size}")
    found = _chunk_cumsum(log_w, chunk_size)
    if found is None:  # a single token's decay exceeds the range: the plain recurrence, both ways
        return bidirectional_wkv(r, k, v, log_w, u, impl="naive")
    C, pad, chunks, cum = found
    B, H, T, K = r.shape
    V = v.shape[-1]
    bonus = (r * u * k).sum(-1)  # (B, H, T): weight of the current token
    if pad:
        r, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (r, k, v))
        bonus = F.pad(bonus, (0, pad))
    N = (T + pad) // C
    r, k = (x.reshape(B, H, N, C, K) for x in (r, k))  # (B, H, N, C, K)
    y = _ChunkedScan.apply(r, k, v.reshape(B, H, N, C, V), chunks, cum, bonus.view(B, H, N, C))
    return y.view(B, H, N * C, V)[:, :, :T]  # (B, H, N, C, V) -> (B, H, T, V)


class _ChunkedScan(torch.autograd.Function):
    """``bidirectional_wkv_chunked`` after the per-token bonus is formed, with a hand-written backward.

    Autograd's backward of the same formulas allocates a gradient for every factor and product and sums
    them, about 1.6x the time of this backward on our CPU: here each full-size gradient is formed once,
    and the decay gradients come from the saved products (``d/dA (r e^{A}) = r e^{A}``).

    Forward (per chunk, see ``bidirectional_wkv_chunked``): ``e1 = e^{A_{t-1}}``, ``e2 = e^{-A_t}``,
    ``e3 = e^{a - A_t}``; ``r1 = r e1`` and so on; scores ``tril(r1 k2^T) + triu(r2 k1^T)`` with the
    bonus on the diagonal; the chunk passes ``F = k3^T v`` to the right and ``G = k1^T v`` to the left;
    ``y = scores v + r1 L + r3 R`` with L / R the states entering from the left / right
    (``_entering_states``).

    Inputs: r, k (B, H, N, C, K); v (B, H, N, C, V); chunks: the per-token log decays and cum their
    inclusive cumsum inside each chunk, (B, H, N, C, K) each; bonus (B, H, N, C).  Output: (B, H, N, C, V).
    """

    @staticmethod
    def forward(ctx, r, k, v, chunks, cum, bonus):
        # One dtype for forward and backward (the backward runs outside autocast): under bf16 autocast the
        # scan computes in float32, and autograd casts the gradients back to the inputs' dtypes.
        with torch.autocast(r.device.type, enabled=False):
            dtype = functools.reduce(torch.promote_types, (x.dtype for x in (r, k, v, chunks, cum, bonus)))
            return _ChunkedScan._forward(ctx, *(x.to(dtype) for x in (r, k, v, chunks, cum, bonus)))

    @staticmethod
    def _forward(ctx, r, k, v, chunks, cum, bonus):
        e1, e2 = (cum - chunks).exp_(), cum.neg().exp_()  # e^{A_{t-1}}, e^{-A_t}
        r1, k1, r2, k2 = r * e1, k * e1, r * e2, k * e2
        scores = (r1 @ k2.transpose(-1, -2)).tril_(-1)  # forward direction, s < t: (B, H, N, C, C)
        scores.add_((r2 @ k1.transpose(-1, -2)).triu_(1))  # backward direction, s > t
        scores.diagonal(dim1=-2, dim2=-1).copy_(bonus)  # s = t
        y = scores @ v  # (B, H, N, C, V)
        if r.shape[2] == 1:
            ctx.save_for_backward(v, e1, e2, r1, k1, r2, k2, scores)
            return y
        decay = cum[:, :, :, -1:].exp()  # (B, H, N, 1, K): e^{a_n}, a chunk's total decay
        e3 = e2 * decay  # e^{a_n - A_t}
        r3, k3 = r * e3, k * e3
        passed_right = k3.transpose(-1, -2) @ v  # F: (B, H, N, K, V)
        passed_left = k1.transpose(-1, -2) @ v  # G: (B, H, N, K, V)
        from_left, from_right = _entering_states(decay, passed_right, passed_left)
        y.add_(r1 @ from_left).add_(r3 @ from_right)
        ctx.save_for_backward(v, e1, e2, r1, k1, r2, k2, scores, e3, r3, k3, decay, from_left, from_right)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        v, e1, e2, r1, k1, r2, k2, scores, *carried = ctx.saved_tensors
        grad_scores = grad_y @ v.transpose(-1, -2)  # (B, H, N, C, C)
        grad_v = scores.transpose(-1, -2) @ grad_y
        grad_bonus = grad_scores.diagonal(dim1=-2, dim2=-1).clone()
        grad_fwd = grad_scores.tril(-1)
        grad_bwd = grad_scores.triu_(1)
        grad_r1, grad_k2 = grad_fwd @ k2, grad_fwd.transpose(-1, -2) @ r1
        grad_r2, grad_k1 = grad_bwd @ k1, grad_bwd.transpose(-1, -2) @ r2
        grad_r = torch.mul(grad_r2, e2)
        grad_k = torch.mul(grad_k2, e2)
        grad_cum = torch.mul(grad_r2, r2).addcmul_(grad_k2, k2).neg_()  # d loss / d A_t through e2
        if carried:  # more than one chunk
            e3, r3, k3, decay, from_left, from_right = carried
            grad_r1 += grad_y @ from_left.transpose(-1, -2)
            grad_r3 = grad_y @ from_right.transpose(-1, -2)
            grad_right, grad_left, grad_decay = _entering_states_backward(
                decay, from_left, from_right, r1.transpose(-1, -2) @ grad_y, r3.transpose(-1, -2) @ grad_y
            )
            grad_k3 = v @ grad_right.transpose(-1, -2)
            grad_k1 += v @ grad_left.transpose(-1, -2)
            grad_v.add_(k3 @ grad_right).add_(k1 @ grad_left)
            grad_r.addcmul_(grad_r3, e3)
            grad_k.addcmul_(grad_k3, e3)
            through_e3 = torch.mul(grad_r3, r3).addcmul_(grad_k3, k3)  # d loss / d log e3, log e3 = a - A_t
            grad_cum.sub_(through_e3)
            grad_cum[:, :, :, -1:] += through_e3.sum(3, keepdim=True).addcmul_(grad_decay, decay)  # via a
        grad_r.addcmul_(grad_r1, e1)
        grad_k.addcmul_(grad_k1, e1)
        through_e1 = torch.mul(grad_r1, r1).addcmul_(grad_k1, k1)  # d loss / d log e1 = A_t - log w_t
        return grad_r, grad_k, grad_v, through_e1.neg(), grad_cum.add_(through_e1), grad_bonus


def _entering_states(
    decay: torch.Tensor, passed_right: torch.Tensor, passed_left: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States entering each chunk from the left and from the right, (B, H, N, K, V) each, by a
    left-to-right and a right-to-left recurrence over the chunks: ``L_{n+1} = e^{a_n} L_n + F_n`` and
    ``R_{n-1} = e^{a_n} R_n + G_n`` from zero (``decay``: (B, H, N, 1, K), each chunk's e^{a_n};
    ``passed_right`` / ``passed_left``: F_n / G_n, (B, H, N, K, V))."""
    decays = decay.transpose(-1, -2).unbind(2)  # N x (B, H, K, 1)
    entering = []
    for passed, order in ((passed_right, range(len(decays))), (passed_left, reversed(range(len(decays))))):
        steps = passed.unbind(2)
        state = torch.zeros_like(steps[0])
        states = [state] * len(decays)
        for n in order:
            states[n] = state
            state = decays[n] * state + steps[n]
        entering.append(torch.stack(states, dim=2))  # (B, H, N, K, V)
    return entering[0], entering[1]


def _entering_states_backward(
    decay: torch.Tensor,
    from_left: torch.Tensor,
    from_right: torch.Tensor,
    grad_left: torch.Tensor,
    grad_right: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of ``_entering_states``: given the gradients of the entering states (B, H, N, K, V),
    the gradients of F_n and G_n (B, H, N, K, V) and of the decays (B, H, N, 1, K), by the two
    recurrences run the other way: with ``lam_n = gL_n + e^{a_n} lam_{n+1}``, ``dF_n = lam_{n+1}``;
    with ``rho_n = gR_n + e^{a_n} rho_{n-1}``, ``dG_n = rho_{n-1}``."""
    decays = decay.transpose(-1, -2).unbind(2)  # N x (B, H, K, 1)
    N = len(decays)
    grad_decay = torch.zeros_like(decay.transpose(-1, -2))  # (B, H, N, K, 1)
    grads = []
    for states, grad_states, order in (
        (from_left, grad_left, range(N - 1, -1, -1)),
        (from_right, grad_right, range(N)),
    ):
        states, grad_states = states.unbind(2), grad_states.unbind(2)
        grad_passed = [torch.zeros_like(states[0])] * N
        carried = None  # total gradient of the state the previous chunk in this order entered with
        for n in order:
            if carried is not None:
                grad_passed[n] = carried  # F_n (or G_n) reaches that state with weight 1
                grad_decay[:, :, n] += (carried * states[n]).sum(-1, keepdim=True)
                carried = grad_states[n] + decays[n] * carried
            else:
                carried = grad_states[n]
        grads.append(torch.stack(grad_passed, dim=2))
    return grads[0], grads[1], grad_decay.transpose(-1, -2)


def fla_available(device: torch.device) -> bool:
    """True on CUDA when the optional ``flash-linear-attention`` package (``fla``) is importable."""
    if device.type != "cuda":
        return False
    try:
        import fla.ops.rwkv6  # noqa: F401
    except ImportError:
        return False
    return True


def wkv_fla(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """Past-only WKV with flash-linear-attention's RWKV-6 chunk kernel (CUDA), bonus u = 0.

    RWKV-6's output is ``r_t^T (S_{t-1} + diag(u) k_t v_t^T)``, so with ``u = 0`` it is exactly
    ``wkv_naive``'s ``r_t^T S_{t-1}``.  Inputs and output are (B, H, T, .) as in ``wkv_naive``.
    """
    import inspect

    from fla.ops.rwkv6 import chunk_rwkv6

    _check_wkv_inputs(r, k, v, log_w)
    u = r.new_zeros(r.shape[1], r.shape[3])  # (H, K)
    if "head_first" in inspect.signature(chunk_rwkv6).parameters:
        out = chunk_rwkv6(r, k, v, log_w, u, scale=1.0, head_first=True)
        return out[0] if isinstance(out, tuple) else out
    # Newer releases take (B, T, H, K) only.
    r, k, v, log_w = (x.transpose(1, 2).contiguous() for x in (r, k, v, log_w))  # (B, T, H, .)
    out = chunk_rwkv6(r, k, v, log_w, u, scale=1.0)
    out = out[0] if isinstance(out, tuple) else out
    return out.transpose(1, 2)  # (B, H, T, V)


def bidirectional_wkv(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_w: torch.Tensor,
    u: torch.Tensor,
    impl: str = "chunked",
    chunk_size: int = 32,
) -> torch.Tensor:
    """Bidirectional WKV: forward scan + backward scan + the current-token bonus.

    Args:
        r, k, v, log_w: as in ``wkv_naive``.
        u: bonus for the current token, broadcastable to (B, H, T, K) (e.g. (H, 1, K) or per token).
        impl: ``"chunked"``, ``"naive"`` or ``"fla"`` (flash-linear-attention on CUDA when installed,
            else ``"chunked"``).
        chunk_size: chunk length for ``"chunked"``.

    Returns:
        y: (B, H, T, V).
    """
    if impl not in ("chunked", "naive", "fla"):
        raise ValueError(f"bidirectional_wkv: impl must be 'chunked', 'naive' or 'fla', got {impl!r}")
    if impl == "chunked" or (impl == "fla" and not fla_available(r.device)):
        return bidirectional_wkv_chunked(r, k, v, log_w, u, chunk_size)
    B = r.shape[0]
    # Both directions in one scan: the reversed sequence is stacked on the batch dimension.
    both = [torch.cat([x, x.flip(2)], dim=0) for x in (r, k, v, log_w)]
    scanned = wkv_fla(*both) if impl == "fla" else wkv_naive(*both)
    forward, backward = scanned[:B], scanned[B:].flip(2)
    bonus = (r * u * k).sum(-1, keepdim=True) * v  # (B, H, T, V)
    return forward + backward + bonus


def _neighbour_mean(x: torch.Tensor) -> torch.Tensor:
    """(x_{t-1} + x_{t+1}) / 2 along dim 1, zero beyond the ends, written into one new tensor."""
    out = torch.empty_like(x)
    if x.shape[1] == 1:
        return out.zero_()
    torch.add(x[:, :-2], x[:, 2:], out=out[:, 1:-1])
    out[:, 0] = x[:, 1]
    out[:, -1] = x[:, -2]
    return out.mul_(0.5)


class _NeighbourMean(torch.autograd.Function):
    """The neighbour mean is a symmetric linear map, so its backward is the same map of the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _neighbour_mean(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _neighbour_mean(grad)


def bidirectional_token_shift(x: torch.Tensor) -> torch.Tensor:
    """Mean of the left and right neighbours (zero beyond the ends): RWKV's token shift, both ways.

    Args:
        x: (B, T, D).

    Returns:
        (B, T, D) with row t = (x_{t-1} + x_{t+1}) / 2.
    """
    return _NeighbourMean.apply(x)


class _LerpStack(torch.autograd.Function):
    """``x + (n - x) * m_p`` for a (P, D) stack of weights, in groups of consecutive rows (a group of
    one gives a (B, T, D) tensor, a larger one a (P_g, B, T, D) stack), with a hand-written backward.

    Autograd's backward of one broadcast ``torch.lerp`` multiplies the (P, B, T, D) gradient by weights
    broadcast over two middle dimensions and reduces it three times, about 2.5x slower on our CPU than
    accumulating the P slices one at a time, as done here; separate outputs per group also spare the
    concatenation of their gradients that splitting one output would cost.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: torch.Tensor, mixes: torch.Tensor, groups: tuple[int, ...]):
        ctx.save_for_backward(x, n, mixes)
        ctx.set_materialize_grads(False)  # an unused group's gradient stays None
        ctx.groups = groups
        outputs, start = [], 0
        for size in groups:
            weight = mixes[start] if size == 1 else mixes[start : start + size, None, None, :]
            outputs.append(torch.lerp(x, n, weight))
            start += size
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        x, n, mixes = ctx.saved_tensors
        shift = n - x
        grad_sum, grad_n = torch.zeros_like(x), torch.zeros_like(x)
        grad_mixes = torch.zeros_like(mixes)
        start = 0
        for size, grad in zip(ctx.groups, grads, strict=True):
            if grad is not None:  # an unused group has no gradient
                for p, grad_p in enumerate(grad.unsqueeze(0) if size == 1 else grad.unbind(0)):
                    grad_sum += grad_p
                    grad_n.addcmul_(grad_p, mixes[start + p])
                    grad_mixes[start + p] = (grad_p * shift).sum((0, 1))
            start += size
        return grad_sum - grad_n, grad_n, grad_mixes, None


def lerp_to_neighbours(
    x: torch.Tensor, mixes: torch.Tensor, groups: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """RWKV's token-shift interpolations, all in one op: ``x + (n - x) * m_p`` for every row m_p of
    ``mixes``, with n the mean of both neighbours (``bidirectional_token_shift``).

    Args:
        x: (B, T, D).
        mixes: (P, D).
        groups: sizes of consecutive groups of rows, summing to P.

    Returns:
        one tensor per group: (B, T, D) for a group of one, else (size, B, T, D).
    """
    if sum(groups) != mixes.shape[0]:
        raise ValueError(f"lerp_to_neighbours: groups {groups} do not add up to {mixes.shape[0]} weights")
    return _LerpStack.apply(x, bidirectional_token_shift(x), mixes, tuple(groups))


class TimeMixStream(nn.Module):
    """One stream's time-mix projections: token-shift lerps, r/k/v, data-dependent decay, output gate.

    The decay is ``log w_t = -exp(time_decay + tanh(x_w W1) W2)`` (RWKV-6's LoRA decay), so every
    token chooses how fast each key channel forgets.  As in RWKV-7, the output gate is a LoRA,
    ``g = sigmoid(x_g G1) G2``, so the block's full-size projections are r, k, v and the output
    (the same count as attention's q, k, v and output).  The five lerps are one op and r, k, v one
    batched matmul.
    """

    def __init__(
        self, d_model: int, num_heads: int, decay_lora_rank: int = 16, gate_lora_rank: int = 32
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"TimeMixStream: d_model={d_model} not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        ratio = torch.arange(d_model, dtype=torch.float32) / d_model
        # Token-shift interpolation weights (one per channel and target), RWKV's time_maa_*.
        self.time_maa_r = nn.Parameter(0.5 * ratio)
        self.time_maa_k = nn.Parameter(0.5 * ratio)
        self.time_maa_v = nn.Parameter(0.5 * ratio + 0.25)
        self.time_maa_w = nn.Parameter(0.5 * ratio)
        self.time_maa_g = nn.Parameter(0.5 * ratio)
        # Base decay spread over channels as in RWKV-6 init: slow channels and fast channels.
        self.time_decay = nn.Parameter(-6.0 + 5.0 * ratio**0.7)
        self.time_decay_w1 = nn.Parameter(torch.zeros(d_model, decay_lora_rank))
        self.time_decay_w2 = nn.Parameter(torch.empty(decay_lora_rank, d_model).uniform_(-0.01, 0.01))
        self.time_faaaa = nn.Parameter(torch.zeros(num_heads, self.head_dim))  # current-token bonus u
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.gate_w1 = nn.Parameter(torch.zeros(d_model, gate_lora_rank))
        self.gate_w2 = nn.Parameter(torch.empty(gate_lora_rank, d_model))
        nn.init.orthogonal_(self.gate_w2, gain=0.1 * math.sqrt(d_model / gate_lora_rank))
        self.output = nn.Linear(d_model, d_model, bias=False)
        self.ln_x = nn.GroupNorm(num_heads, d_model)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The scan inputs of one stream.

        Args:
            x: (B, T, D).

        Returns:
            rkv (3, B, T, D) = r, k, v stacked; log decay (B, T, D); output gate g (B, T, D).
        """
        B, T, D = x.shape
        mixes = torch.stack(
            [self.time_maa_r, self.time_maa_k, self.time_maa_v, self.time_maa_w, self.time_maa_g]
        )
        x_rkv, x_w, x_g = lerp_to_neighbours(x, mixes, (3, 1, 1))  # (3, B, T, D), (B, T, D), (B, T, D)
        weights = torch.stack([self.receptance.weight, self.key.weight, self.value.weight]).transpose(1, 2)
        rkv = torch.bmm(x_rkv.view(3, B * T, D), weights).view(3, B, T, D)
        decay = self.time_decay + torch.tanh(x_w @ self.time_decay_w1) @ self.time_decay_w2
        log_w = -decay.clamp(max=math.log(-LOG_DECAY_MIN)).exp()
        return rkv, log_w, torch.sigmoid(x_g @ self.gate_w1) @ self.gate_w2

    def finish(self, normed: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The affine part of the per-head GroupNorm (``ln_x``), the gate and the output projection.

        Args:
            normed: this stream's scan output, each head normalised to zero mean and unit variance
                (``normalize_heads``), (B, T, D).
            g: gate from ``project``, (B, T, D).

        Returns:
            (B, T, D).
        """
        return self.output(torch.addcmul(self.ln_x.bias, normed, self.ln_x.weight) * g)


def normalize_heads(y: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm's normalisation (one group per head, no affine) of a token-major (B, T, H, K) tensor,
    returned as (B, T, H * K)."""
    B, T, H, K = y.shape
    return F.layer_norm(y, (K,), eps=eps).view(B, T, H * K)


class JointTimeMix(nn.Module):
    """MMDiT-style joint time mix: each stream has its own projections, one scan runs over both.

    The joint sequence is ``[latent tokens; text tokens]``, so latent tokens and text tokens exchange
    information in both directions inside a single bidirectional WKV.  There the text reads the latent
    only through the forward scan, at a distance that grows along the sentence; with ``latent_both_ends``
    the sequence is ``[latent; text; latent]`` (the same latent projections twice, the two copies' outputs
    averaged), so both scans reach every text token from the latent at its own distance from the nearer
    end.  The joint sequence is cut into equal chunks of at most ``chunk_size`` tokens (0:
    ``DEFAULT_CHUNK_SIZE``).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        decay_lora_rank: int = 16,
        gate_lora_rank: int = 32,
        impl: str = "chunked",
        chunk_size: int = 0,
        latent_both_ends: bool = False,
    ) -> None:
        super().__init__()
        self.text = TimeMixStream(d_model, num_heads, decay_lora_rank, gate_lora_rank)
        self.latent = TimeMixStream(d_model, num_heads, decay_lora_rank, gate_lora_rank)
        self.impl = impl
        self.chunk_size = chunk_size
        self.latent_both_ends = latent_both_ends

    def forward(self, x_text: torch.Tensor, x_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix both streams.

        Args:
            x_text: (B, T, D); x_latent: (B, M, D).

        Returns:
            (text output (B, T, D), latent output (B, M, D)).
        """
        B, M, D = x_latent.shape
        T = x_text.shape[1]
        tail = M if self.latent_both_ends else 0
        L = M + T + tail
        H, K = self.text.num_heads, self.text.head_dim
        (rkv_l, log_w_l, g_l), (rkv_t, log_w_t, g_t) = (
            self.latent.project(x_latent),
            self.text.project(x_text),
        )
        # Chunks of equal length near the chosen one (36 tokens: 2 x 18, not 2 x 32 with 28 of padding).
        chunk = math.ceil(L / math.ceil(L / (self.chunk_size or DEFAULT_CHUNK_SIZE)))
        # The joint sequence, already padded to whole chunks for the chunk form (zero r, k, v and log
        # decay after the end change nothing before it), so the scan does not pad r, k, v again.
        pad = (-L) % chunk if self.impl != "naive" else 0
        # Concatenated straight into head-major order, so that the scan's reshapes into chunks are views.
        rkv_l, rkv_t = (x.view(3, B, -1, H, K).transpose(2, 3) for x in (rkv_l, rkv_t))  # (3, B, H, ., K)
        log_w_l, log_w_t = (x.view(B, -1, H, K).transpose(1, 2) for x in (log_w_l, log_w_t))  # (B, H, ., K)
        tail_rkv, tail_log_w = ([rkv_l], [log_w_l]) if tail else ([], [])
        r, k, v = torch.cat(
            [rkv_l, rkv_t, *tail_rkv, rkv_t.new_zeros(3, B, H, pad, K)], dim=3
        )  # (B, H, L + pad, K)
        log_w = torch.cat([log_w_l, log_w_t, *tail_log_w, log_w_t.new_zeros(B, H, pad, K)], dim=2)
        bonus_l, bonus_t = self.latent.time_faaaa.unsqueeze(1), self.text.time_faaaa.unsqueeze(1)  # (H, 1, K)
        u = torch.cat(
            [
                bonus_l.expand(H, M, K),
                bonus_t.expand(H, T, K),
                bonus_l.expand(H, tail, K),
                bonus_t.expand(H, pad, K),
            ],
            dim=1,
        )  # (H, L + pad, K): each stream's bonus
        y = bidirectional_wkv(r, k, v, log_w, u, impl=self.impl, chunk_size=chunk)[:, :, :L]  # (B, H, L, K)
        normed = normalize_heads(y.transpose(1, 2), self.text.ln_x.eps)  # (B, L, D)
        latent = normed[:, :M] if not tail else 0.5 * (normed[:, :M] + normed[:, M + T :])  # (B, M, D)
        return self.text.finish(normed[:, M : M + T], g_t), self.latent.finish(latent, g_l)


class _SquaredReLU(torch.autograd.Function):
    """``relu(x)^2`` with the backward ``2 relu(x) g`` in one pass (autograd's chain of square and relu
    takes three)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x)
        ctx.save_for_backward(h)
        return h * h

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors
        return torch.mul(h, grad).mul_(2.0)


class ChannelMix(nn.Module):
    """RWKV-7 channel mix: token-shift lerp and a squared-ReLU MLP (RWKV-6's receptance gate dropped)."""

    def __init__(self, d_model: int, hidden_mult: int = 4) -> None:
        super().__init__()
        ratio = torch.arange(d_model, dtype=torch.float32) / d_model
        self.time_maa_k = nn.Parameter(0.5 * ratio)
        self.key = nn.Linear(d_model, hidden_mult * d_model, bias=False)
        self.value = nn.Linear(hidden_mult * d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, T, D). Returns: (B, T, D)."""
        return self.value(_SquaredReLU.apply(self.key(lerp_to_neighbours(x, self.time_maa_k[None], (1,))[0])))
