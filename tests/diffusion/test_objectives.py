"""MDLM loss vs brute-force expectation over every mask; SUBS; Gaussian v/eps algebra; schedules."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from latentlm.diffusion.objectives import (
    apply_masking,
    gaussian_latent_loss,
    latent_target,
    linear_cross_entropy,
    mdlm_loss,
    noise_latent,
    perplexity_bound,
    predicted_clean_latent,
    subs_log_probs,
)
from latentlm.diffusion.schedules import (
    CosineGaussianSchedule,
    LogLinearMaskingSchedule,
    sample_diffusion_times,
)

MASK = 4  # vocab {0, 1, 2, 3, [MASK]=4}


def _table_model(seed=0, L=3, V=5):
    """A denoiser whose logits depend on the whole mask pattern of x_t (a lookup table)."""
    table = torch.randn(2**L, L, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    powers = 2 ** torch.arange(L)

    def full_logits(x_t):
        code = ((x_t == MASK).long() * powers).sum(-1)  # (B,)
        return table[code]  # (B, L, V)

    def denoise_fn(x_t, masked):
        return full_logits(x_t)[masked]

    return full_logits, denoise_fn


def _brute_force_nelbo(x0, t, schedule, full_logits):
    """sum over all 2^L masks of P(mask | t) * (1/t) * sum_{l masked} -log p(x0_l | x_t)."""
    L = x0.shape[-1]
    p_mask = float(schedule.move_chance(torch.tensor(t)))
    total = 0.0
    for pattern in itertools.product([False, True], repeat=L):
        masked = torch.tensor(pattern)
        prob = math.prod(p_mask if m else 1 - p_mask for m in pattern)
        x_t = x0.masked_fill(masked, MASK)
        logits = full_logits(x_t[None])[0]  # (L, V)
        # Softmax over the real vocabulary only: SUBS never predicts [MASK].
        log_p = logits[:, :MASK] - torch.logsumexp(logits[:, :MASK], -1, keepdim=True)
        nll = sum(-float(log_p[l, x0[l]]) for l in range(L) if pattern[l])
        total += prob * nll / t
    return total


def test_mdlm_loss_equals_mask_enumeration_in_expectation():
    schedule = LogLinearMaskingSchedule(eps=1e-3)
    full_logits, denoise_fn = _table_model()
    x0 = torch.tensor([0, 2, 1])
    t_value, n = 0.37, 200_000
    exact = _brute_force_nelbo(x0, t_value, schedule, full_logits)
    nelbo, masked = mdlm_loss(
        denoise_fn,
        x0.expand(n, -1),
        torch.full((n,), t_value, dtype=torch.float64),
        schedule,
        MASK,
        generator=torch.Generator().manual_seed(0),
    )
    mean, stderr = nelbo.double().mean(), nelbo.double().std() / math.sqrt(n)
    assert abs(float(mean) - exact) < 4 * float(stderr), (float(mean), exact, float(stderr))
    expected_rate = schedule.move_chance(torch.tensor(t_value, dtype=torch.float64))
    torch.testing.assert_close(masked.double().mean(), expected_rate, atol=5e-3, rtol=0)


def test_mdlm_single_mask_is_weighted_cross_entropy():
    schedule = LogLinearMaskingSchedule()
    full_logits, _ = _table_model(seed=1)
    x0 = torch.tensor([[3, 0, 2]])
    # Force the mask: move_chance(t=1) = 1 - eps, so draw with maskable restricting positions 0 and 2.
    maskable = torch.tensor([[True, False, True]])
    t = torch.tensor([1.0])
    torch.manual_seed(0)
    x_t, masked = apply_masking(x0, t, LogLinearMaskingSchedule(eps=0.0), MASK, maskable=maskable)
    assert masked.tolist() == [[True, False, True]]
    log_p = subs_log_probs(full_logits(x_t), x_t, MASK)
    expected = -(log_p[0, 0, 3] + log_p[0, 2, 2]) / 1.0
    nelbo, _ = mdlm_loss(
        lambda xt, m: full_logits(xt)[m], x0, t, LogLinearMaskingSchedule(eps=0.0), MASK, maskable=maskable
    )
    torch.testing.assert_close(nelbo.double(), expected.double().view(1))
    assert schedule.loss_weight(torch.tensor(0.25)) == 4.0


def test_subs_log_probs_properties():
    logits = torch.randn(2, 4, 5, dtype=torch.float64)
    x_t = torch.tensor([[MASK, 1, MASK, 3], [0, MASK, 2, MASK]])
    log_p = subs_log_probs(logits, x_t, MASK)
    probs = log_p.exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, dtype=torch.float32))
    assert (probs[..., MASK] == 0).all()
    assert probs[0, 1, 1] == 1.0 and probs[1, 2, 2] == 1.0  # carry-over unmasking


def test_gaussian_v_and_eps_algebra():
    schedule = CosineGaussianSchedule()
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64)
    z_t, eps = noise_latent(z0, t, schedule, generator=g)
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    for prediction in ("v", "eps"):
        target = latent_target(z0, eps, t, schedule, prediction)
        z0_hat, eps_hat = predicted_clean_latent(target, z_t, t, schedule, prediction)
        torch.testing.assert_close(z0_hat, z0)
        torch.testing.assert_close(eps_hat, eps)
        loss = gaussian_latent_loss(target + 0.5, z0, eps, t, schedule, prediction)
        torch.testing.assert_close(loss, torch.full((6,), 0.25, dtype=torch.float64))


def test_low_discrepancy_times_are_stratified():
    t = sample_diffusion_times(8, torch.Generator().manual_seed(3), t_floor=0.0)
    bins = torch.sort((t * 8).floor()).values
    assert bins.tolist() == list(range(8))


def test_perplexity_bound():
    assert math.isclose(perplexity_bound(2.0 * 10, 10), math.exp(2.0))


@pytest.mark.parametrize("excluded", [2, None])
def test_linear_cross_entropy_equals_autograd_of_the_logits_and_a_softmax_by_hand(excluded):
    """The fused output layer + cross-entropy == ``F.cross_entropy`` of the logits (the excluded column
    at -inf), values and both gradients (float64), and == a softmax without the excluded word by hand."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 3, 4, 5])
    row_grad = torch.randn(5, generator=g, dtype=torch.float64)  # a weighted sum, as in the NELBO
    fused = linear_cross_entropy(hidden, weight, targets, excluded)
    logits = hidden @ weight.T
    without = (
        logits.index_fill(1, torch.tensor([excluded]), float("-inf")) if excluded is not None else logits
    )
    plain = F.cross_entropy(without, targets, reduction="none")
    for a, b in zip(
        (fused, *torch.autograd.grad((fused * row_grad).sum(), (hidden, weight))),
        (plain, *torch.autograd.grad((plain * row_grad).sum(), (hidden, weight))),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    keep = [i for i in range(6) if i != excluded]
    logits = logits.detach()
    by_hand = logits[:, keep].exp().sum(-1).log() - logits[torch.arange(5), targets]
    torch.testing.assert_close(fused.detach(), by_hand, rtol=1e-12, atol=1e-12)


def test_linear_cross_entropy_refuses_a_second_backward():
    hidden = torch.randn(3, 2, requires_grad=True)
    loss = linear_cross_entropy(hidden, torch.randn(4, 2), torch.tensor([0, 1, 3])).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()
