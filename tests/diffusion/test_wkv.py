"""Chunked vs naive vs brute-force bidirectional WKV (float64), and the joint time-mix layer."""

import math

import pytest
import torch

from latentlm.diffusion.wkv import (
    ChannelMix,
    JointTimeMix,
    bidirectional_token_shift,
    bidirectional_wkv,
    lerp_to_neighbours,
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


@pytest.mark.parametrize(
    ("regime", "low", "high"),
    [("near 1", -1e-6, -1e-9), ("near 0", -12.0, -8.0), ("mixed", -12.0, -1e-9), ("model floor", -5.0, -4.0)],
)
@pytest.mark.parametrize("chunk_size", [4, 16, 64])
def test_chunk_form_equals_naive_both_directions_forward_and_backward(regime, low, high, chunk_size):
    """The matmul chunk form == the step-by-step scan to 1e-10 in float64, values and gradients, with
    decays near 1 (w = 1 - 1e-6), near 0 (w ~ e^-12) and mixed, in both scan directions."""
    g = torch.Generator().manual_seed(1)
    B, H, T, K, V = 2, 2, 70, 4, 3
    leaves = [torch.randn(B, H, T, d, generator=g, dtype=torch.float64) for d in (K, K, V)]
    log_w = low + (high - low) * torch.rand(B, H, T, K, generator=g, dtype=torch.float64)
    u = torch.randn(1, H, 1, K, generator=g, dtype=torch.float64)
    leaves = [x.requires_grad_() for x in (*leaves, log_w)]
    cotangent = torch.randn(B, H, T, V, generator=g, dtype=torch.float64)
    results = {}
    for impl in ("naive", "chunked"):
        for direction in ("forward", "backward"):
            inputs = [x.flip(2) if direction == "backward" else x for x in leaves]
            y = wkv_chunked(*inputs, chunk_size) if impl == "chunked" else wkv_naive(*inputs)
            grads = torch.autograd.grad((y * cotangent).sum(), leaves)
            results[impl, direction] = (y, *grads)
        y = bidirectional_wkv(*leaves, u, impl=impl, chunk_size=chunk_size)
        results[impl, "both"] = (y, *torch.autograd.grad((y * cotangent).sum(), leaves))
    for direction in ("forward", "backward", "both"):
        for a, b in zip(results["naive", direction], results["chunked", direction], strict=True):
            assert torch.isfinite(b).all()
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_chunk_size_falls_back_when_decay_exceeds_the_exponent_range():
    r, k, v, log_w, _ = _random_inputs(T=24)
    log_w = log_w.float() * 100.0  # up to -300 per token: e^{+-300} does not fit float32
    r, k, v = r.float(), k.float(), v.float()
    y = wkv_chunked(r, k, v, log_w, chunk_size=16)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, wkv_naive(r, k, v, log_w), rtol=1e-5, atol=1e-5)


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
    for chunk in (4, 0):  # 0: DEFAULT_CHUNK_SIZE, capped at the joint length
        mix.impl, mix.chunk_size = "chunked", chunk
        chunked = mix(x_text, x_lat)
        for a, b in zip(naive, chunked, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert naive[0].shape == (2, 7, 16) and naive[1].shape == (2, 3, 16)
    # Text output depends on latent tokens (joint mixing).
    out_text_2, _ = mix(x_text, x_lat + 1.0)
    assert not torch.allclose(out_text_2, chunked[0])


@pytest.mark.gpu
def test_flash_linear_attention_kernel_equals_chunked_on_cuda():
    # The `gpu` marker skips this without CUDA (tests/conftest.py); flash-linear-attention is optional.
    pytest.importorskip(
        "fla", reason="flash-linear-attention is optional: pip install flash-linear-attention"
    )
    from latentlm.diffusion.wkv import wkv_fla

    g = torch.Generator().manual_seed(0)
    B, H, T, K = 2, 4, 256, 64
    r, k, v = (0.3 * torch.randn(B, H, T, K, generator=g) for _ in range(3))
    log_w = -torch.rand(B, H, T, K, generator=g).mul(2.0).exp()
    u = torch.randn(1, H, 1, K, generator=g)
    cuda = [x.cuda() for x in (r, k, v, log_w)]
    torch.testing.assert_close(wkv_fla(*cuda).cpu(), wkv_chunked(r, k, v, log_w, 32), rtol=2e-3, atol=2e-3)
    both = bidirectional_wkv(*cuda, u.cuda(), impl="fla").cpu()
    torch.testing.assert_close(
        both, bidirectional_wkv(r, k, v, log_w, u, chunk_size=32), rtol=2e-3, atol=2e-3
    )


def _reference_joint_time_mix(mix: JointTimeMix, x_text, x_lat):
    """The time mix written out plainly: one lerp and one Linear per projection, the decay and gate
    LoRAs, two naive scans plus the bonus, nn.GroupNorm, the gate and the output projection."""
    outputs, joint = {}, {}
    streams = {"latent": (mix.latent, x_lat), "text": (mix.text, x_text)}
    for name, (s, x) in streams.items():
        B, T, D = x.shape
        shift = bidirectional_token_shift(x) - x

        def heads(z, B=B, T=T, s=s):
            return z.view(B, T, s.num_heads, s.head_dim).transpose(1, 2)

        decay = s.time_decay + torch.tanh((x + shift * s.time_maa_w) @ s.time_decay_w1) @ s.time_decay_w2
        joint[name] = {
            "r": heads(s.receptance(x + shift * s.time_maa_r)),
            "k": heads(s.key(x + shift * s.time_maa_k)),
            "v": heads(s.value(x + shift * s.time_maa_v)),
            "log_w": heads(-decay.clamp(max=math.log(5.0)).exp()),
            "u": s.time_faaaa[None, :, None, :].expand(B, -1, T, -1),
        }
        outputs[name] = torch.sigmoid((x + shift * s.time_maa_g) @ s.gate_w1) @ s.gate_w2
    order = ["latent", "text", "latent"] if mix.latent_both_ends else ["latent", "text"]
    cat = {key: torch.cat([joint[name][key] for name in order], dim=2) for key in joint["text"]}
    y = bidirectional_wkv(**cat, impl="naive")  # (B, H, M+T(+M), K)
    M, T = x_lat.shape[1], x_text.shape[1]
    result = []
    for name, part in (("text", y[:, :, M : M + T]), ("latent", y[:, :, :M]), ("latent", y[:, :, M + T :])):
        if part.shape[2] == 0:
            continue
        s = streams[name][0]
        B, H, N, K = part.shape
        normed = s.ln_x(part.transpose(1, 2).reshape(B * N, H * K)).view(B, N, H * K)
        result.append(normed)
    text, *latent = result
    latent = sum(latent) / len(latent)  # both_ends: the two copies averaged
    return mix.text.output(text * outputs["text"]), mix.latent.output(latent * outputs["latent"])


@pytest.mark.parametrize("both_ends", [False, True])
@pytest.mark.parametrize("chunk", [3, 5, 0])  # 5: the joint length 12 (15) is padded to 15 (20)
def test_joint_time_mix_equals_the_plain_formulas(chunk, both_ends):
    """The batched lerps/projections, the joint per-head normalisation and the chunk form == the time mix
    written out one projection at a time (float64, values and gradients), with the latent tokens at the
    start or at both ends (then the two copies' outputs averaged)."""
    torch.manual_seed(0)
    mix = JointTimeMix(
        d_model=16,
        num_heads=2,
        decay_lora_rank=4,
        gate_lora_rank=3,
        chunk_size=chunk,
        latent_both_ends=both_ends,
    ).double()
    with torch.no_grad():
        for p in mix.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x_text = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    x_lat = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    got, expected = mix(x_text, x_lat), _reference_joint_time_mix(mix, x_text, x_lat)
    leaves = [x_text, x_lat, *mix.parameters()]
    cotangents = [torch.randn_like(t) for t in got]
    grads = [
        torch.autograd.grad(sum((t * c).sum() for t, c in zip(out, cotangents, strict=True)), leaves)
        for out in (got, expected)
    ]
    for a, b in zip((*got, *grads[0]), (*expected, *grads[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_channel_mix_equals_the_plain_formula():
    """Values and gradients (the squared ReLU's hand-written backward included) in float64."""
    torch.manual_seed(0)
    cm = ChannelMix(8, hidden_mult=3).double()
    with torch.no_grad():
        cm.time_maa_k.uniform_(0, 1)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    shift = bidirectional_token_shift(x) - x
    expected = cm.value(torch.relu(cm.key(x + shift * cm.time_maa_k)) ** 2)
    got = cm(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    cotangent = torch.randn_like(got)
    leaves = [x, *cm.parameters()]
    for a, b in zip(
        torch.autograd.grad((got * cotangent).sum(), leaves),
        torch.autograd.grad((expected * cotangent).sum(), leaves),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_stacked_lerp_backward_equals_autograd_of_the_plain_lerp():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mixes = torch.rand(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64)
    plain = torch.stack([x + (bidirectional_token_shift(x) - x) * m for m in mixes])
    first, rest = lerp_to_neighbours(x, mixes, (1, 2))  # (B, T, D) and (2, B, T, D)
    got = torch.cat([first.unsqueeze(0), rest])
    torch.testing.assert_close(got, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad((got * cotangent).sum(), (x, mixes)),
        torch.autograd.grad((plain * cotangent).sum(), (x, mixes)),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # A group whose output is unused gets no gradient; the others are unaffected.
    _, rest = lerp_to_neighbours(x, mixes, (1, 2))
    (only_rest,) = torch.autograd.grad((rest * cotangent[1:]).sum(), (x,))
    plain_rest = torch.stack([x + (bidirectional_token_shift(x) - x) * m for m in mixes[1:]])
    (plain_rest,) = torch.autograd.grad((plain_rest * cotangent[1:]).sum(), (x,))
    torch.testing.assert_close(only_rest, plain_rest, rtol=1e-12, atol=1e-12)


def test_many_chunks_stay_exact():
    """70 chunks of 2 tokens: the recurrence over chunk states, values and gradients."""
    r, k, v, log_w, u = _random_inputs(B=1, H=2, T=140, K=3, V=2)
    leaves = [x.requires_grad_() for x in (r, k, v, log_w)]
    results = []
    for impl in ("naive", "chunked"):
        y = bidirectional_wkv(*leaves, u, impl=impl, chunk_size=2)
        results.append((y, *torch.autograd.grad(y.square().sum(), leaves)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", [1, 2, 5])
def test_token_shift_gradient_and_short_sequences(T):
    x = torch.randn(2, T, 3, dtype=torch.float64, requires_grad=True)
    padded = torch.nn.functional.pad(x, (0, 0, 1, 1))
    expected = 0.5 * (padded[:, :-2] + padded[:, 2:])
    torch.testing.assert_close(bidirectional_token_shift(x), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(bidirectional_token_shift, (x,))


def test_chunk_form_keeps_float32_precision_on_long_sequences():
    """A long float32 sequence with slow and floor-level decays (the chunk form's exponent range and the
    carried states) matches the float64 step-by-step scan to float32 rounding."""
    g = torch.Generator().manual_seed(3)
    B, H, T, K = 1, 2, 2048, 8
    r, k, v = (torch.randn(B, H, T, K, generator=g, dtype=torch.float64) for _ in range(3))
    log_w = -torch.rand(B, H, T, K, generator=g, dtype=torch.float64) * 0.05
    log_w[..., :2] = -5.0  # channels at the decay floor: prefix sums reach -10,240
    u = torch.randn(H, 1, K, generator=g, dtype=torch.float64)
    expected = bidirectional_wkv(r, k, v, log_w, u, impl="naive")
    got = bidirectional_wkv(*(x.float() for x in (r, k, v, log_w, u)), impl="chunked", chunk_size=32)
    scale = expected.abs().max()
    assert float((got.double() - expected).abs().max() / scale) < 2e-5


@pytest.mark.parametrize(("T", "chunk_size"), [(7, 8), (11, 4), (12, 3)])
def test_chunked_backward_passes_gradcheck(T, chunk_size):
    """The hand-written backward of the chunk form (one chunk, padded chunks, whole chunks) against
    finite differences, float64."""
    r, k, v, log_w, u = _random_inputs(B=1, H=2, T=T, K=3, V=2, seed=T)
    inputs = tuple(x.requires_grad_() for x in (r, k, v, log_w))
    assert torch.autograd.gradcheck(
        lambda r, k, v, log_w: bidirectional_wkv(r, k, v, log_w, u, impl="chunked", chunk_size=chunk_size),
        inputs,
    )
