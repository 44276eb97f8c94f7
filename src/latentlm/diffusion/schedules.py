"""Noise schedules for the two modalities of the joint diffusion (seed 002, "Model").

* Text: absorbing-state (masking) diffusion with the MDLM **log-linear** schedule
  ``alpha_t = 1 - (1 - eps) t`` (probability that a token is still clean at time ``t``).
* Latent: Gaussian diffusion with the **cosine** schedule ``alpha_t = cos(pi/2 * s(t))``,
  ``sigma_t = sin(pi/2 * s(t))`` where ``s`` maps ``[0, 1]`` into ``[t_min, t_max]`` so that neither
  ``alpha`` nor ``sigma`` is exactly zero (variance preserving: ``alpha^2 + sigma^2 = 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LogLinearMaskingSchedule", "CosineGaussianSchedule", "sample_diffusion_times"]


@dataclass(frozen=True)
class LogLinearMaskingSchedule:
    """MDLM log-linear masking schedule.

    Attributes:
        eps: smallest probability of staying clean at t = 1 (``alpha_1 = eps``).
    """

    eps: float = 1e-3

    def move_chance(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is masked at time t: ``1 - alpha_t = (1 - eps) t``."""
        return (1.0 - self.eps) * t

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is still clean at time t."""
        return 1.0 - self.move_chance(t)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous-time NELBO weight ``-alpha'_t / (1 - alpha_t)``, which is exactly ``1 / t``."""
        return 1.0 / t


@dataclass(frozen=True)
class CosineGaussianSchedule:
    """Variance-preserving cosine schedule for the latent modality.

    Attributes:
        t_min: schedule position reached at t = 0 (``sigma_0 = sin(pi/2 t_min)``, small but non-zero).
        t_max: schedule position reached at t = 1 (``alpha_1 = cos(pi/2 t_max)``, small but non-zero).
    """

    t_min: float = 1e-4
    t_max: float = 0.9999

    def __post_init__(self) -> None:
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"CosineGaussianSchedule: need 0 <= t_min < t_max <= 1, got {self}")

    def _angle(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi * (self.t_min + (self.t_max - self.t_min) * t)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal and noise scales at time t (same shape as t)."""
        angle = self._angle(t)
        return angle.cos(), angle.sin()

    def neg_log_snr_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """``-d log SNR / dt`` with ``SNR = alpha^2 / sigma^2 = cot^2(angle)``: ``4 angle' / sin(2 angle)``.

        The continuous-time ELBO weight of the epsilon error (Kingma et al. 2021, VDM)."""
        return 2.0 * math.pi * (self.t_max - self.t_min) / (2.0 * self._angle(t)).sin()


def sample_diffusion_times(
    batch_size: int,
    generator: torch.Generator | None = None,
    low_discrepancy: bool = True,
    t_floor: float = 1e-4,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw ``t ~ U(t_floor, 1)`` per example, optionally stratified (MDLM's low-discrepancy sampler).

    Args:
        batch_size: number of times B.
        generator: torch generator for reproducibility.
        low_discrepancy: if True, ``t_i = (u + i / B) mod 1`` with one shared ``u`` (lower variance).
        t_floor: smallest time (the 1/t weight is unbounded at 0).
        device: device of the result.

    Returns:
        (B,) float32 times.
    """
    if low_discrepancy:
        u = torch.rand(1, generator=generator)
        t = (u + torch.arange(batch_size) / batch_size) % 1.0
    else:
        t = torch.rand(batch_size, generator=generator)
    return (t_floor + (1.0 - t_floor) * t).to(device)
