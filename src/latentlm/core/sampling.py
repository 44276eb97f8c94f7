"""Drawing tokens from logits, shared by every system that samples text.

``filter_logits`` applies top-k / top-p; ``sample_categorical`` draws one token per row in float64 by
default (float32 noise biases low-probability tokens).
"""

from __future__ import annotations

import torch

SAMPLING_METHODS = ("gumbel", "inverse_cdf")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k set and outside the top-p nucleus to ``-inf``.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``
    (the most likely token is always kept).

    Args:
        logits: (..., V).
        top_k: keep the k largest (0: off).
        top_p: nucleus mass in (0, 1] (1: off).

    Returns:
        filtered logits, same shape.
    """
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_categorical(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    float64: bool = True,
    method: str = "gumbel",
) -> torch.Tensor:
    """Draw one index per row (Gumbel-max in float64 unless ``float64=False``; ``inverse_cdf`` always
    uses float32 weights with float64 sums and ignores ``float64``).

    Args:
        logits: (..., V) (``-inf`` entries are never drawn).
        temperature: divides the logits (> 0).
        top_k, top_p: see ``filter_logits``.
        generator: torch generator (CPU).
        method: ``gumbel`` (Gumbel-max: V uniforms per row; the diffusion samplers' draws) or
            ``inverse_cdf`` (one uniform per row against the cumulative softmax: the same distribution
            with V-fold fewer random numbers, for large vocabularies; see ``_inverse_cdf_draw``).

    Returns:
        (...) long indices.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if method not in SAMPLING_METHODS:
        raise ValueError(f"method must be one of {SAMPLING_METHODS}, got {method!r}")
    # inverse_cdf keeps its own precision (float32 weights, float64 sums; see _inverse_cdf_draw)
    dtype = torch.float64 if float64 and method == "gumbel" else torch.float32
    scaled = logits.to(dtype) if temperature == 1.0 else logits.to(dtype) / temperature
    scaled = filter_logits(scaled, top_k, top_p)
    if method == "inverse_cdf":
        return _inverse_cdf_draw(scaled, generator)
    uniform = torch.rand(scaled.shape, generator=generator, dtype=dtype).to(scaled.device)
    uniform = uniform.clamp(torch.finfo(dtype).tiny, 1.0 - torch.finfo(dtype).eps)
    gumbel = -torch.log(-torch.log(uniform))
    return (scaled + gumbel).argmax(-1)


def _inverse_cdf_draw(
    scaled: torch.Tensor, generator: torch.Generator | None, block: int = 256
) -> torch.Tensor:
    """One uniform per row against the cumulative softmax of ``scaled`` (..., V), searched in two levels.

    The weights exp(logit - max) and their block totals are float32 (a relative error of about 1e-7 on
    every probability; no underflow above p = 1e-38); the totals' cumulative sum, the uniform and the
    search within the chosen block are float64. Two levels (V / block totals, then one block) replace a
    cumulative sum over the whole vocabulary, the slowest step at V = 49k.
    """
    shape, vocab = scaled.shape[:-1], scaled.shape[-1]
    rows = scaled.reshape(-1, vocab)  # (N, V)
    weights = (rows - rows.amax(-1, keepdim=True)).exp()
    blocks = torch.nn.functional.pad(weights, (0, -vocab % block)).view(
        len(rows), -1, block
    )  # (N, nb, block)
    block_cdf = blocks.sum(-1).double().cumsum(-1)  # (N, nb)
    uniform = torch.rand((len(rows), 1), generator=generator, dtype=torch.float64).to(rows.device)
    target = uniform * block_cdf[:, -1:]  # (N, 1)
    chosen = torch.searchsorted(block_cdf, target, right=True).clamp_max(block_cdf.shape[1] - 1)  # (N, 1)
    before = torch.where(chosen > 0, block_cdf.gather(1, (chosen - 1).clamp_min(0)), 0.0)  # (N, 1)
    within = (
        blocks[torch.arange(len(rows), device=rows.device), chosen[:, 0]].double().cumsum(-1)
    )  # (N, block)
    offset = torch.searchsorted(within, target - before, right=True)  # (N, 1)
    # the float32 total can exceed the float64 sum by rounding: never step past the block's last token
    last_drawable = (within < within[:, -1:]).sum(-1, keepdim=True)  # (N, 1)
    return (chosen * block + torch.minimum(offset, last_drawable)).view(shape)
