"""KL closed form vs Monte Carlo, reparameterisation statistics, priors, encoder and geometry loss."""

import math

import pytest
import torch

from latentlm.diffusion.variational import (
    LatentPrior,
    TextLatentEncoder,
    diffused_gaussian,
    kl_divergence,
    latent_geometry_loss,
    masked_mean,
    reparameterize,
)


def _log_normal(z, mu, logvar):
    return (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp())).sum(-1)


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = (
        torch.randn(3, generator=g, dtype=torch.float64),
        torch.randn(3, generator=g, dtype=torch.float64),
    )
    logvar_q = 0.5 * torch.randn(3, generator=g, dtype=torch.float64)
    logvar_p = 0.5 * torch.randn(3, generator=g, dtype=torch.float64)
    n = 400_000
    z = reparameterize(mu_q.expand(n, -1), logvar_q.expand(n, -1), generator=g)
    log_ratio = _log_normal(z, mu_q, logvar_q) - _log_normal(z, mu_p, logvar_p)
    closed = kl_divergence(mu_q, logvar_q, mu_p, logvar_p)
    stderr = log_ratio.std() / math.sqrt(n)
    assert abs(float(log_ratio.mean() - closed)) < 4 * float(stderr)
    # Zero for identical distributions; matches the textbook formula against N(0, I).
    torch.testing.assert_close(
        kl_divergence(mu_q, logvar_q, mu_q, logvar_q), torch.tensor(0.0, dtype=torch.float64)
    )
    textbook = -0.5 * (1 + logvar_q - mu_q**2 - logvar_q.exp()).sum()
    torch.testing.assert_close(
        kl_divergence(mu_q, logvar_q, torch.zeros(3).double(), torch.zeros(3).double()), textbook
    )


def test_diffused_gaussian_is_the_forward_process_marginal():
    """N(mu, e^logvar) through z_t = alpha z + sigma eps: sample moments match; the KL between two pushed-
    forward Gaussians never exceeds theirs (data processing) and vanishes at alpha = 0, sigma = 1."""
    g = torch.Generator().manual_seed(1)
    mu, logvar = (
        torch.randn(4, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    alpha, sigma = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    n = 400_000
    z = reparameterize(mu.expand(n, -1), logvar.expand(n, -1), generator=g)
    z_t = alpha * z + sigma * torch.randn(z.shape, generator=g, dtype=torch.float64)
    mean, log_var = diffused_gaussian(mu, logvar, alpha, sigma)
    torch.testing.assert_close(z_t.mean(0), mean, rtol=0, atol=4 * float(z_t.std(0).max()) / math.sqrt(n))
    torch.testing.assert_close(z_t.var(0).log(), log_var, rtol=0, atol=0.01)
    mu_p, logvar_p = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    before = kl_divergence(mu, logvar, mu_p, logvar_p)
    for a in (0.9, 0.6, 0.2):
        s = torch.tensor(math.sqrt(1 - a * a), dtype=torch.float64)
        a = torch.tensor(a, dtype=torch.float64)
        after = kl_divergence(*diffused_gaussian(mu, logvar, a, s), *diffused_gaussian(mu_p, logvar_p, a, s))
        assert float(after) <= float(before) + 1e-12
        before = after
    gone = kl_divergence(*diffused_gaussian(mu, logvar, 0.0 * alpha, 1.0 + 0.0 * sigma), mu_p, logvar_p)
    torch.testing.assert_close(gone, torch.tensor(0.0, dtype=torch.float64))


def test_reparameterize_moments_and_gradients():
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([0.0, math.log(4.0)], dtype=torch.float64, requires_grad=True)
    z = reparameterize(mu.expand(200_000, -1), logvar.expand(200_000, -1), torch.Generator().manual_seed(1))
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0], dtype=torch.float64), atol=0.02, rtol=0)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None
    a = reparameterize(mu.detach(), logvar.detach(), torch.Generator().manual_seed(2))
    b = reparameterize(mu.detach(), logvar.detach(), torch.Generator().manual_seed(3))
    assert not torch.equal(a, b)  # stochastic


def test_priors():
    fixed = LatentPrior(4, "fixed_gaussian")
    assert list(fixed.parameters()) == []
    mu, logvar = fixed(2)
    assert mu.shape == (2, 4) and torch.all(mu == 0) and torch.all(logvar == 0)
    learned = LatentPrior(4, "learned_gaussian")
    assert sum(p.numel() for p in learned.parameters()) == 8
    with pytest.raises(ValueError, match="latent_prior_type"):
        LatentPrior(4, "vamp")


def test_encoder_shapes_and_masked_pooling():
    torch.manual_seed(0)
    enc = TextLatentEncoder(d_model=8, latent_dim=3, hidden_dim=16)
    hidden = torch.randn(2, 5, 8)
    keep = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    mu, logvar = enc(hidden, keep)
    assert mu.shape == (2, 3) and logvar.shape == (2, 3) and torch.isfinite(logvar).all()
    torch.testing.assert_close(masked_mean(hidden, keep)[0], hidden[0, :2].mean(0))
    changed = hidden.clone()
    changed[0, 3] += 100.0  # a padded position must not change q(z|x)
    torch.testing.assert_close(enc(changed, keep)[0], mu)


def test_geometry_loss_zero_when_geometry_matches():
    f = torch.randn(5, 6, dtype=torch.float64)
    assert float(latent_geometry_loss(2.0 * f, f)) < 1e-20
    assert float(latent_geometry_loss(torch.randn(5, 6, dtype=torch.float64), f)) > 0
