"""BERT masking for MLM pretraining (seed 003, "Training Utilities": 80/10/10).

Each maskable token is selected with probability `mask_prob`; a selected token becomes `[MASK]` with
probability 0.8, a uniformly random ordinary token with probability 0.1 and stays itself with
probability 0.1. Labels hold the original id at selected positions and -100 elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentlm.lht.config import MaskingConfig


def mask_tokens(
    input_ids: Tensor,
    maskable: Tensor,
    mask_token_id: int,
    random_token_range: tuple[int, int],
    config: MaskingConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Apply BERT 80/10/10 masking.

    Args:
        input_ids: (B, N) token ids.
        maskable: (B, N) bool, positions that may be selected (real, non-special tokens).
        mask_token_id: id of `[MASK]`.
        random_token_range: [low, high) ids that random replacements are drawn from.
        config: probabilities.
        generator: CPU generator (masking is reproducible from its seed).

    Returns:
        (masked_ids, labels), both (B, N); labels are -100 where no prediction is asked.
    """
    shape = input_ids.shape
    selected = (torch.rand(shape, generator=generator) < config.mask_prob) & maskable.cpu()
    action = torch.rand(shape, generator=generator)
    to_mask = selected & (action < config.replace_with_mask)
    to_random = (
        selected
        & (action >= config.replace_with_mask)
        & (action < config.replace_with_mask + config.replace_with_random)
    )
    low, high = random_token_range
    random_ids = torch.randint(low, high, shape, generator=generator)
    ids = input_ids.cpu()
    masked = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    return masked.to(input_ids.device), labels.to(input_ids.device)
