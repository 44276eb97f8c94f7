"""A tiny regression task for engine tests (also run under torchrun by the distributed test)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from latentlm.core import StepOutput, Task


class ToyRegression(Task):
    batch_size = 4

    def __init__(self, n: int = 64, dim: int = 5):
        generator = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=generator)
        self.y = self.x @ torch.randn(dim, 1, generator=generator) + 0.1 * torch.randn(
            n, 1, generator=generator
        )

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.x.shape[1], 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 1))

    def train_dataset(self):
        return TensorDataset(self.x, self.y)

    def loss(self, model, batch, state):
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return StepOutput(loss, num_tokens=x.shape[0], metrics={"mse": loss.item()})

    def evaluate(self, model, state):
        device = next(model.parameters()).device
        return {"mse": ((model(self.x.to(device)) - self.y.to(device)) ** 2).mean().item()}
