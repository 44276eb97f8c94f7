"""BERT masking: selection rate and the 80/10/10 split, checked against binomial bounds."""

import math

import torch

from latentlm.lht.config import MaskingConfig
from latentlm.lht.masking import mask_tokens


def test_masking_statistics_80_10_10():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 30000, (64, 512), generator=generator)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :8] = False  # e.g. special tokens
    masked, labels = mask_tokens(ids, maskable, 103, (100, 30000), MaskingConfig(), generator)
    selected = labels != -100
    n = int(maskable.sum())
    k = int(selected.sum())

    def within(count: int, total: int, p: float) -> bool:
        return abs(count - total * p) < 5 * math.sqrt(total * p * (1 - p))

    assert within(k, n, 0.15)
    assert not selected[~maskable].any()
    assert torch.equal(labels[selected], ids[selected])
    assert within(int((masked[selected] == 103).sum()), k, 0.8)
    changed = (masked[selected] != 103) & (masked[selected] != ids[selected])
    # A random draw equals the original with probability 1/29900; bounds are far wider than that.
    assert within(int(changed.sum()), k, 0.1)
    assert within(int((masked[selected] == ids[selected]).sum()), k, 0.1)
    assert torch.equal(masked[~selected], ids[~selected])


def test_masking_is_reproducible_from_seed():
    ids = torch.arange(1000).view(4, 250) + 200
    maskable = torch.ones_like(ids, dtype=torch.bool)
    a = mask_tokens(ids, maskable, 103, (200, 1200), MaskingConfig(), torch.Generator().manual_seed(3))
    b = mask_tokens(ids, maskable, 103, (200, 1200), MaskingConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
