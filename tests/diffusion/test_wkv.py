"""Chunked vs naive vs brute-force bidirectional WKV (float64), and the joint time-mix layer."""

import pytest
import torch

from latentlm.diffusion.wkv import (
    JointTimeMix,
    bidirectional_token_shift,
    bidirectional_wkv,
    wkv_chunked,
    wkv_naive,
)


def _random_inputs(B=2, H=3, T=13, K=4, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k = (torch.randn(B, H, T, K, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, T, V, generator=g, dtype=torch.float64)
    log_w = -torch.rand(B, H, T, K, generator=g, dtype=torch.float64) * 3.0
    u = torch.randn(1, H, 1, K, generator=g, dtype=torch.float64)
    return r, k, v, log_w, u


def _bidirectional_double_loop(r, k, v, log_w, u):
    """y_t = sum_{s != t} r_t^T diag(prod_{j strictly between} w_j) k_s v_s + (r_t . u k_t) v_t."""
    B, H, T, K = r.shape
    y = torch.zeros(B, H, T, v.shape[-1], dtype=r.dtype)
    u = u.expand(B, H, T, K)
    for t in range(T):
        for s in range(T):
            if s == t:
                weight = (r[:, :, t] * u[:, :, t] * k[:, :, t]).sum(-1)
            else:
                lo, hi = min(s, t), max(s, t)
                decay = log_w[:, :, lo + 1 : hi].sum(2).exp()
                weight = (r[:, :, t] * decay * k[:, :, s]).sum(-1)
            y[:, :, t] += weight.unsqueeze(-1) * v[:, :, s]
    return y


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 13, 32])
def test_chunked_equals_naive_float64(chunk_size):
    r, k, v, log_w, _ = _random_inputs()
    torch.testing.assert_close(
        wkv_chunked(r, k, v, log_w, chunk_size), wkv_naive(r, k, v, log_w), rtol=1e-12, atol=1e-12
    )


def test_bidirectional_matches_double_loop():
    r, k, v, log_w, u = _random_inputs(T=9)
    expected = _bidirectional_double_loop(r, k, v, log_w, u)
    for impl in ("naive", "chunked"):
        got = bidirectional_wkv(r, k, v, log_w, u, impl=impl, chunk_size=4)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_strong_decay_stays_finite():
    r, k, v, log_w, u = _random_inputs(T=40)
    log_w = log_w * 200.0  # decays of exp(-600): exponents must never be positive
    y = bidirectional_wkv(r, k, v, log_w, u, impl="chunked", chunk_size=16)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, bidirectional_wkv(r, k, v, log_w, u, impl="naive"), rtol=1e-10, atol=1e-10)


def test_token_shift_brute_force():
    x = torch.arange(12, dtype=torch.float64).view(1, 4, 3)
    expected = torch.stack([(x[0, 1]) / 2, (x[0, 0] + x[0, 2]) / 2, (x[0, 1] + x[0, 3]) / 2, x[0, 2] / 2])
    torch.testing.assert_close(bidirectional_token_shift(x)[0], expected)


def test_joint_time_mix_impls_agree_and_names():
    torch.manual_seed(0)
    mix = JointTimeMix(d_model=16, num_heads=2, decay_lora_rank=4, impl="naive").double()
    with torch.no_grad():
        for p in mix.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x_text, x_lat = torch.randn(2, 7, 16, dtype=torch.float64), torch.randn(2, 3, 16, dtype=torch.float64)
    naive = mix(x_text, x_lat)
    for chunk in (4, 0):  # 0: automatic, about sqrt(10)
        mix.impl, mix.chunk_size = "chunked", chunk
        chunked = mix(x_text, x_lat)
        for a, b in zip(naive, chunked, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert naive[0].shape == (2, 7, 16) and naive[1].shape == (2, 3, 16)
    # Text output depends on latent tokens (joint mixing).
    out_text_2, _ = mix(x_text, x_lat + 1.0)
    assert not torch.allclose(out_text_2, chunked[0])
