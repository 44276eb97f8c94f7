"""Stage II variational components (seed 002, "Variational Modules"): q(z|x), p(z), KL, sampling.

``TextLatentEncoder`` maps the denoiser's text hidden states to a diagonal Gaussian q(z | x) (2-layer
GELU MLP on the masked mean of the hidden states, separate mu / logvar heads).  ``LatentPrior`` is
p(z): ``fixed_gaussian`` (N(0, I)) or ``learned_gaussian`` (learned mean and log-variance).
``kl_divergence`` is the closed-form KL between diagonal Gaussians, ``reparameterize`` draws
``z = mu + sigma * eps`` with gradients through mu and sigma, and ``latent_geometry_loss`` is the
``geom_weight`` regulariser: it asks the pairwise cosine similarities of the posterior means to follow
those of the (detached) pooled text features, so that similar sentences get nearby latents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentlm.diffusion.config import LATENT_PRIOR_TYPES

__all__ = [
    "TextLatentEncoder",
    "LatentPrior",
    "LATENT_PRIOR_TYPES",
    "kl_divergence",
    "diffused_gaussian",
    "reparameterize",
    "kl_weight_at",
    "free_bits_kl",
    "masked_mean",
    "latent_geometry_loss",
]


def masked_mean(hidden: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean over positions where ``keep`` is True.

    Args:
        hidden: (B, T, D).
        keep: (B, T) bool or None (all positions).

    Returns:
        (B, D).
    """
    if keep is None:
        return hidden.mean(1)
    weights = keep.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TextLatentEncoder(nn.Module):
    """q(z | x): 2-layer GELU MLP on pooled text hidden states with separate mu / logvar heads."""

    def __init__(self, d_model: int, latent_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU()
        )
        self.mu_head = nn.Linear(hidden_dim, latent_dim)
        self.logvar_head = nn.Linear(hidden_dim, latent_dim)
        # Start near the prior's scale: small means, unit variances.
        nn.init.zeros_(self.logvar_head.weight)
        nn.init.zeros_(self.logvar_head.bias)

    def forward(
        self, hidden: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: hidden (B, T, D), keep (B, T) bool. Returns: (mu (B, d), logvar (B, d))."""
        features = self.mlp(masked_mean(hidden, keep))
        return self.mu_head(features), self.logvar_head(features).clamp(-10.0, 10.0)


class LatentPrior(nn.Module):
    """p(z) = N(mu_p, diag(exp(logvar_p))): fixed at N(0, I) or learned."""

    def __init__(self, latent_dim: int, prior_type: str = "fixed_gaussian") -> None:
        super().__init__()
        if prior_type not in LATENT_PRIOR_TYPES:
            raise ValueError(
                f"model.latent_prior_type must be one of {LATENT_PRIOR_TYPES}, got {prior_type!r}"
            )
        self.prior_type = prior_type
        zeros = torch.zeros(latent_dim)
        if prior_type == "learned_gaussian":
            self.mu = nn.Parameter(zeros.clone())
            self.logvar = nn.Parameter(zeros.clone())
        else:
            self.register_buffer("mu", zeros.clone())
            self.register_buffer("logvar", zeros.clone())

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior parameters broadcast to a batch: (mu (B, d), logvar (B, d))."""
        return self.mu.expand(batch_size, -1), self.logvar.expand(batch_size, -1)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw (B, d) latents from the prior."""
        mu, logvar = self(batch_size)
        return reparameterize(mu, logvar, generator)


def diffused_gaussian(
    mu: torch.Tensor, logvar: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """N(mu, exp(logvar)) pushed through the forward process ``z_t = alpha z + sigma eps``:
    ``N(alpha mu, alpha^2 exp(logvar) + sigma^2)``, returned as (mean, log-variance)."""
    return alpha * mu, torch.log(alpha**2 * logvar.exp() + sigma**2)


def kl_divergence(
    mu_q: torch.Tensor,
    logvar_q: torch.Tensor,
    mu_p: torch.Tensor,
    logvar_p: torch.Tensor,
    reduce: bool = True,
) -> torch.Tensor:
    """KL(q || p) between diagonal Gaussians, summed over the last dimension (``reduce=False``: per dim).

    ``0.5 * sum( logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)^2) / exp(logvar_p) - 1 )``

    Args:
        mu_q, logvar_q, mu_p, logvar_p: (..., d), broadcastable.

    Returns:
        (...) KL in nats, or (..., d) with ``reduce=False``.
    """
    per_dim = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0)
    return per_dim.sum(-1) if reduce else per_dim


def kl_weight_at(step: int, kl_weight: float, warmup_steps: int) -> float:
    """KL warm-up: ``kl_weight * min(1, step / warmup_steps)`` (``kl_weight`` when warm-up is off)."""
    if warmup_steps <= 0:
        return kl_weight
    return kl_weight * min(1.0, step / warmup_steps)


def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL term with free bits (Kingma et al. 2016): ``sum_j max(free_bits, mean_batch KL_j)``.

    Dimensions whose batch-mean KL is below ``free_bits`` nats are not pushed further towards the prior
    (their gradient is zero), so the posterior keeps that much information per dimension.

    Args:
        kl_per_dim: (B, d) KL per example and latent dimension.
        free_bits: nats per dimension (0: the plain batch-mean KL).

    Returns:
        scalar: penalised KL per sentence.
    """
    per_dim = kl_per_dim.mean(0)  # (d,)
    if free_bits > 0:
        per_dim = per_dim.clamp_min(free_bits)
    return per_dim.sum()


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``z = mu + exp(logvar / 2) * eps``, eps ~ N(0, I) (differentiable in mu and logvar)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    return mu + (0.5 * logvar).exp() * eps


def latent_geometry_loss(mu: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of off-diagonal pairwise cosine similarities (mu vs detached features).

    Args:
        mu: (B, d) posterior means.
        features: (B, D) reference features (detached inside).

    Returns:
        scalar loss (0 for B < 2).
    """
    B = mu.shape[0]
    if B < 2:
        return mu.new_zeros(())
    sim_mu = F.normalize(mu, dim=-1) @ F.normalize(mu, dim=-1).T
    ref = F.normalize(features.detach(), dim=-1)
    sim_ref = ref @ ref.T
    off_diagonal = ~torch.eye(B, dtype=torch.bool, device=mu.device)
    return (sim_mu - sim_ref)[off_diagonal].pow(2).mean()
