"""Loss functions against brute force / closed forms on tiny cases (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from latentlm.wire import losses as L
from latentlm.wire.config import LossConfig


def test_masked_ce_matches_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    targets = torch.tensor([[1, 2, 0], [4, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = []
    for b in range(2):
        for t in range(3):
            if mask[b, t]:
                expected.append(-torch.log_softmax(logits[b, t], -1)[targets[b, t]])
    torch.testing.assert_close(
        L.masked_token_ce(logits, targets, mask).double(), torch.stack(expected).mean()
    )
    # first-k CE only sees the first k positions
    torch.testing.assert_close(
        L.first_k_ce(logits, targets, mask, 1).double(), (expected[0] + expected[2]) / 2
    )


def test_kd_top_k_matches_explicit_kl():
    torch.manual_seed(1)
    student = torch.randn(1, 2, 6, dtype=torch.float64)
    teacher_full = torch.randn(1, 2, 6, dtype=torch.float64)
    tau = 2.0
    top = torch.log_softmax(teacher_full, -1).topk(3, -1)
    got = L.kd_top_k(student, top.indices, top.values, torch.tensor([[1, 1]]), tau)
    total = 0.0
    for t in range(2):
        ids = top.indices[0, t]
        p = torch.softmax(top.values[0, t] / tau, -1)  # renormalised teacher on its top-3
        log_q = torch.log_softmax(student[0, t] / tau, -1)[ids]
        total += float((p * (p.log() - log_q)).sum())
    assert got.item() == pytest.approx(total / 2 * tau**2, rel=1e-5)
    # masked steps do not count
    got_masked = L.kd_top_k(student, top.indices, top.values, torch.tensor([[1, 0]]), tau)
    p = torch.softmax(top.values[0, 0] / tau, -1)
    log_q = torch.log_softmax(student[0, 0] / tau, -1)[top.indices[0, 0]]
    assert got_masked.item() == pytest.approx(float((p * (p.log() - log_q)).sum()) * tau**2, rel=1e-5)


def test_entropy_closed_form():
    assert L.entropy(torch.zeros(3, 7, dtype=torch.float64)).item() == pytest.approx(math.log(7))
    peaked = torch.tensor([[0.0, -1e9]], dtype=torch.float64)
    assert L.entropy(peaked).item() == pytest.approx(0.0, abs=1e-9)


def test_segment_mean_pool_matches_loop():
    torch.manual_seed(2)
    embeds = torch.randn(2, 7, 3, dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]])  # left- and right-aligned
    segments = 4
    got = L.segment_mean_pool(embeds, mask, segments)
    for b in range(2):
        real = embeds[b][mask[b].bool()]
        n = real.shape[0]
        for j in range(segments):
            lo, hi = (j * n) // segments, ((j + 1) * n) // segments
            expected = real[lo:hi].mean(0) if hi > lo else torch.zeros(3, dtype=torch.float64)
            torch.testing.assert_close(got[b, j], expected)


def test_first_token_schedules_and_generation_scale():
    cfg = LossConfig(first_token=1.0, first_token_peak=3.0, first_token_schedule="cosine")
    assert L.first_token_weight(cfg, 0, 11) == pytest.approx(1.0)
    assert L.first_token_weight(cfg, 5, 11) == pytest.approx(3.0)
    assert L.first_token_weight(cfg, 10, 11) == pytest.approx(1.0, abs=1e-9)
    taper = LossConfig(first_token=1.0, first_token_peak=3.0, first_token_schedule="taper")
    assert L.first_token_weight(taper, 0, 11) == pytest.approx(3.0)
    assert L.first_token_weight(taper, 10, 11) == pytest.approx(1.0)
    assert L.first_token_weight(LossConfig(first_token=0.5), 3, 10, scale=2.0) == pytest.approx(1.0)
    anneal = LossConfig(recon_warmup_steps=2, gen_anneal_steps=4, backoff_factor=0.5)
    assert [L.generation_scale(anneal, s, False) for s in range(7)] == [0, 0, 0.25, 0.5, 0.75, 1, 1]
    assert L.generation_scale(anneal, 10, True) == 0.5


def test_first_token_diagnostics():
    logits = torch.tensor([[5.0, 4.0, 0.0, 0, 0, 0], [0.0, 1.0, 2.0, 3, 4, 5]])
    diag = L.first_token_diagnostics(logits, torch.tensor([0, 0]))
    assert diag["first_top1"] == 0.5 and diag["first_top5"] == 0.5
    assert diag["first_margin"] == pytest.approx(1.0)
