"""LatentWire losses (issue 3; seed 004's objectives), each a plain function of tensors.

Teacher-forced answer CE, first-token CE with a schedule, K-token CE, top-k KD of the first K
steps from the text-prompted teacher, first-token entropy, latent alignment to the gold first-token
embedding, reconstruction of the prompt embeddings, and the generation-weight schedule
(reconstruction warm-up, anneal, automatic back-off). PAD never reaches a loss: every function
takes an explicit mask of real answer tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from latentlm.wire.config import LossConfig


def masked_token_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean CE over positions with mask 1.

    Args:
        logits: (B, T, V); targets: (B, T); mask: (B, T) in {0, 1}.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    weight = mask.float()
    return (nll * weight).sum() / weight.sum().clamp(min=1.0)


def first_k_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """CE averaged over the first `k` real answer tokens (k=1: the first-token CE)."""
    return masked_token_ce(logits[:, :k], targets[:, :k], mask[:, :k])


def kd_top_k(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """KL(teacher || student) on the teacher's top-k support, per step, times tau^2.

    The teacher keeps its top-k log-probabilities (renormalised over the k ids at temperature tau);
    the student is the full-vocabulary softmax at temperature tau, read at those ids.

    Args:
        student_logits: (B, K, V) latent-prompted logits of the first K steps.
        teacher_ids: (B, K, k) teacher top-k token ids.
        teacher_logp: (B, K, k) teacher log-probabilities at those ids (temperature 1).
        mask: (B, K) 1 where step t is a real answer position.
        tau: temperature.

    Returns:
        Scalar mean over masked steps.
    """
    teacher = torch.log_softmax(teacher_logp.float() / tau, dim=-1)  # (B, K, k)
    student = torch.log_softmax(student_logits.float() / tau, dim=-1).gather(
        -1, teacher_ids.long()
    )  # (B, K, k)
    kl = (teacher.exp() * (teacher - student)).sum(-1)  # (B, K)
    weight = mask.float()
    return (kl * weight).sum() / weight.sum().clamp(min=1.0) * tau**2


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of softmax(logits) over leading dims: (..., V) -> scalar."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos(a, b) over leading dims."""
    return (1 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean()


def segment_mean_pool(embeds: torch.Tensor, mask: torch.Tensor, segments: int) -> torch.Tensor:
    """Split each sequence's real tokens into `segments` contiguous, near-equal runs and average each.

    Segment j of a sequence with n real tokens covers positions [floor(j n / S), floor((j+1) n / S));
    when n < S some segments are empty and become zero vectors.

    Args:
        embeds: (B, L, d) with real tokens where mask is 1 (left- or right-aligned).
        mask: (B, L).
        segments: S.

    Returns:
        (B, S, d).
    """
    rank = mask.long().cumsum(-1) - 1  # (B, L) index among real tokens
    count = mask.long().sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
    # Token r is in segment j iff floor(j n / S) <= r < floor((j+1) n / S),
    # i.e. j = floor(((r+1) S - 1) / n).
    segment = torch.div((rank + 1) * segments - 1, count, rounding_mode="floor").clamp(
        0, segments - 1
    )  # (B, L)
    onehot = F.one_hot(segment, segments).to(embeds.dtype) * mask.unsqueeze(-1).to(embeds.dtype)  # (B, L, S)
    sums = onehot.transpose(1, 2) @ embeds  # (B, S, d)
    sizes = onehot.sum(1).unsqueeze(-1)  # (B, S, 1)
    return sums / sizes.clamp(min=1.0)


def reconstruction(
    soft: torch.Tensor, content: torch.Tensor, mask: torch.Tensor, embed_rms: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft tokens vs the M-segment mean pool of the prompt embeddings.

    Returns:
        (loss, cosine): MSE normalised by embed_rms^2, and the mean cosine (a diagnostic).
    """
    target = segment_mean_pool(content, mask, soft.shape[1])  # (B, M, d)
    mse = (soft.float() - target.float()).pow(2).mean() / embed_rms**2
    cos = F.cosine_similarity(soft.float(), target.float(), dim=-1).mean()
    return mse, cos


def token_reconstruction(
    soft: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token soft embeddings (B, L, d) vs a model's own embeddings of the same tokens.

    Returns:
        (loss, cosine): mean cosine distance over tokens with mask 1, and the mean cosine.
    """
    weights = mask.to(soft.dtype)
    cos = F.cosine_similarity(soft.float(), target.float(), dim=-1)  # (B, L)
    mean_cos = (cos * weights).sum() / weights.sum().clamp_min(1.0)
    return 1 - mean_cos, mean_cos.detach()


def first_token_weight(cfg: LossConfig, phase_step: int, phase_steps: int, scale: float = 1.0) -> float:
    """First-token CE weight at `phase_step` of a phase of `phase_steps` steps.

    constant: base; cosine: base -> peak -> base (half a cosine period); taper: peak decaying to base.
    """
    progress = min(max(phase_step / max(phase_steps - 1, 1), 0.0), 1.0)
    base, peak = cfg.first_token, cfg.first_token_peak
    if cfg.first_token_schedule == "constant":
        weight = base
    elif cfg.first_token_schedule == "cosine":
        weight = base + (peak - base) * math.sin(math.pi * progress)
    else:
        weight = base + (peak - base) * 0.5 * (1 + math.cos(math.pi * progress))
    return weight * scale


def generation_scale(cfg: LossConfig, step: int, backed_off: bool) -> float:
    """Multiplier of the generation losses: 0 during the reconstruction warm-up, a linear anneal,
    then 1 — times `backoff_factor` while reconstruction cosine is below the threshold."""
    if step < cfg.recon_warmup_steps:
        return 0.0
    ramp = 1.0
    if cfg.gen_anneal_steps > 0:
        ramp = min(1.0, (step - cfg.recon_warmup_steps + 1) / cfg.gen_anneal_steps)
    return ramp * (cfg.backoff_factor if backed_off else 1.0)


def first_token_diagnostics(logits0: torch.Tensor, gold0: torch.Tensor) -> dict[str, float]:
    """Top-1/top-5 accuracy, entropy and top-1/top-2 logit margin of the first answer step.

    Args:
        logits0: (B, V) logits of answer step 0.
        gold0: (B,) gold first tokens.
    """
    top = logits0.float().topk(min(5, logits0.shape[-1]), dim=-1)
    top1 = (top.indices[:, 0] == gold0).float().mean().item()
    top5 = (top.indices == gold0.unsqueeze(-1)).any(-1).float().mean().item()
    margin = (top.values[:, 0] - top.values[:, 1]).mean().item() if top.values.shape[-1] > 1 else 0.0
    return {
        "first_top1": top1,
        "first_top5": top5,
        "first_entropy": entropy(logits0).item(),
        "first_margin": margin,
    }
