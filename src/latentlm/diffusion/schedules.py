"""Noise schedules for the two modalities of the joint diffusion (seed 002, "Model").

* Text: absorbing-state (masking) diffusion with the MDLM **log-linear** schedule
  ``alpha_t = 1 - (1 - eps) t`` (probability that a token is still clean at time ``t``).
* Text sampling: ``RemaskingSchedule`` is the reverse process step by step, MDLM's ancestral sampler
  or ReMDM's remasking (Wang et al. 2025), which lets a revealed token be masked again and redrawn.
* Latent: Gaussian diffusion with the **cosine** schedule ``alpha_t = cos(pi/2 * s(t))``,
  ``sigma_t = sin(pi/2 * s(t))`` where ``s`` maps ``[0, 1]`` into ``[t_min, t_max]`` so that neither
  ``alpha`` nor ``sigma`` is exactly zero (variance preserving: ``alpha^2 + sigma^2 = 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "LogLinearMaskingSchedule",
    "RemaskingSchedule",
    "CosineGaussianSchedule",
    "sample_diffusion_times",
]

REMASKING = ("none", "cap", "loop")


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
class RemaskingSchedule:
    """The reverse text process of one sampling step ``t -> s`` (ReMDM, Wang et al. 2025).

    With clean-token probability ``alpha`` and remasking probability ``sigma``, a revealed token is
    masked again with probability ``sigma`` and a masked one revealed with
    ``(alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)``, so a token is masked at ``s`` with probability
    ``1 - alpha_s`` whatever ``sigma`` is (the marginals of the forward process are kept).

    * ``none``: ``sigma = 0``, MDLM's ancestral sampler (revealed tokens never change).
    * ``cap``: ``sigma = min(eta, (1 - alpha_s) / alpha_t)``.
    * ``loop``: ``alpha`` goes from 0 to ``alpha_on`` over ``t in [1, t_on]``, stays at ``alpha_on``
      while a fraction ``eta`` of the revealed tokens is masked and redrawn at every step in
      ``(t_off, t_on]``, then goes to 1 over ``[t_off, 0]``; ``sigma = 0`` outside the loop.

    Attributes:
        strategy: none | cap | loop.
        eta: remasking probability of a revealed token per step (cap: its ceiling).
        t_on, t_off: the loop's time window (``0 <= t_off < t_on <= 1``).
        alpha_on: clean-token probability held during the loop.
        masking: the training schedule (it maps ``alpha`` back to the time the denoiser is given).
    """

    strategy: str = "none"
    eta: float = 0.02
    t_on: float = 0.55
    t_off: float = 0.05
    alpha_on: float = 0.9
    masking: LogLinearMaskingSchedule = LogLinearMaskingSchedule()

    def __post_init__(self) -> None:
        if self.strategy not in REMASKING:
            raise ValueError(f"remasking: must be one of {REMASKING}, got {self.strategy!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"remask_eta: must be in [0, 1], got {self.eta}")
        if not 0.0 <= self.t_off < self.t_on <= 1.0:
            raise ValueError(
                f"loop_t_off, loop_t_on: need 0 <= t_off < t_on <= 1, got {self.t_off}, {self.t_on}"
            )
        if not 0.0 < self.alpha_on < 1.0:
            raise ValueError(f"loop_alpha_on: must be in (0, 1), got {self.alpha_on}")
        if self.strategy == "loop" and self.eta * self.alpha_on > 1.0 - self.alpha_on:
            raise ValueError(f"remask_eta: at most (1 - alpha_on) / alpha_on in a loop, got {self.eta}")

    def alpha(self, t: float) -> float:
        """Probability that a token is clean at grid time t along this sampler's path."""
        if self.strategy != "loop":
            return float(self.masking.alpha(torch.tensor(t)))
        if t > self.t_on:
            return (1.0 - t) * self.alpha_on / (1.0 - self.t_on)
        if t <= self.t_off:
            return 1.0 - t * (1.0 - self.alpha_on) / self.t_off
        return self.alpha_on

    def step(self, t: float, s: float) -> tuple[float, float, float]:
        """``(denoiser time, P(reveal | masked), P(mask again | revealed))`` of the step t -> s."""
        alpha_t, alpha_s = self.alpha(t), self.alpha(s)
        if self.strategy == "cap":
            sigma = min(self.eta, (1.0 - alpha_s) / alpha_t) if alpha_t > 0 else self.eta
        elif self.strategy == "loop" and self.t_off < t <= self.t_on:
            sigma = self.eta
        else:
            sigma = 0.0
        reveal = 1.0 if s == 0.0 else (alpha_s - (1.0 - sigma) * alpha_t) / (1.0 - alpha_t)
        if self.strategy == "none":
            return t, reveal, sigma
        time = min(1.0, (1.0 - alpha_t) / (1.0 - self.masking.eps))  # the time whose mask rate is 1 - alpha_t
        return time, reveal, sigma


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
