"""Tiny in-process tasks that misbehave on purpose, and a one-call trainer for the fault-injection tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from latentlm.core import PretrainedMixin, RunDir, TrainConfig, Trainer, load_config
from latentlm.core.lifecycle import train_task
from tests.core.toy_task import ToyRegression


def train(path, max_steps: int = 10, task=None, **overrides):
    """Train `task` (the toy regression by default) into run directory `path`; returns (trainer, state)."""
    cfg = TrainConfig(**{"max_steps": max_steps, "lr": 1e-2, "log_every": 1, **overrides})
    trainer = Trainer(task or ToyRegression(), cfg, RunDir(path, tensorboard=False))
    state = trainer.fit()
    return trainer, state


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class NaNGradient(ToyRegression):
    """A finite loss whose gradient is NaN at the given steps (sqrt at 0 times 0), as in a blown-up run;
    with `once`, each of those steps fails only at its first try."""

    def __init__(self, bad_steps=(5,), once: bool = False):
        super().__init__()
        self.bad_steps, self.once = set(bad_steps), once

    def loss(self, model, batch, state):
        out = super().loss(model, batch, state)
        if state.step in self.bad_steps:
            if self.once:
                self.bad_steps.discard(state.step)
            out.loss = out.loss + torch.sqrt((model[0].weight * 0).sum())
        return out


class _PoisonedAdamW(torch.optim.AdamW):
    """AdamW whose n-th update writes inf into the first parameter (an overflowing update)."""

    def __init__(self, *args, poison_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.poison_at, self.calls = poison_at, 0

    @torch.no_grad()
    def step(self, closure=None):
        result = super().step(closure)
        self.calls += 1
        if self.calls == self.poison_at:
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return result


class OverflowingUpdate(ToyRegression):
    def __init__(self, poison_at: int = 6):
        super().__init__()
        self.poison_at = poison_at

    def build_optimizer(self, groups, cfg):
        return _PoisonedAdamW(groups, lr=cfg.lr, poison_at=self.poison_at)


class FailingEvaluation(ToyRegression):
    """Evaluation that overflows (as diffusion's did after a blow-up) or returns inf."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def evaluate(self, model, state):
        if self.how == "raise":
            raise OverflowError("int too large to convert to float")
        return {"mse": float("inf"), "ok": 1.0}


@dataclass
class ToyNetConfig:
    dim: int = 5
    """Input features."""
    hidden: int = 16
    """Hidden units."""


@dataclass
class ToyRunConfig:
    resumable_fields: ClassVar[tuple[str, ...]] = ("nan_step",)
    run_dir: str = ""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=6, lr=1e-2, log_every=1))
    model: ToyNetConfig = field(default_factory=ToyNetConfig)
    nan_step: int = 0
    """Fault injection: a NaN gradient in this step (0: none)."""


class ToyNet(PretrainedMixin, nn.Module):
    """The toy regressor as a saveable model (what `train_task` saves to `<run>/model/`)."""

    config_class = ToyNetConfig

    def __init__(self, config: ToyNetConfig):
        super().__init__()
        self.config = config
        self.hidden = nn.Linear(config.dim, config.hidden)
        self.out = nn.Linear(config.hidden, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


class ToyNetTask(ToyRegression):
    def __init__(self, cfg: ToyRunConfig):
        super().__init__(dim=cfg.model.dim)
        self.cfg = cfg

    def build_model(self):
        return ToyNet(self.cfg.model)

    def loss(self, model, batch, state):
        out = super().loss(model, batch, state)
        if state.step + 1 == self.cfg.nan_step:
            out.loss = out.loss + torch.sqrt((model.hidden.weight * 0).sum())
        return out


def toy_config(run_dir, *overrides: str) -> ToyRunConfig:
    return load_config(ToyRunConfig, None, [f"run_dir={run_dir}", *overrides])


def train_run(cfg: ToyRunConfig):
    """The system path: `train_task` (config check, lock, training, `model/`)."""
    return train_task(ToyNetTask(cfg), cfg, RunDir(cfg.run_dir, tensorboard=False))
