"""The LHT's CUDA paths (run when a GPU is lent; skipped elsewhere): the compiled FlexAttention backend
trains and matches the dense-mask backend, the sparse backend matches too, and a bf16 step is finite."""

from __future__ import annotations

import pytest
import torch

from latentlm.lht.config import EdgeConfig, HierarchyConfig, LHTConfig
from latentlm.lht.model import LHTForMaskedLM

pytestmark = pytest.mark.gpu


def config(backend: str) -> LHTConfig:
    return LHTConfig(
        vocab_size=300,
        hidden_size=64,
        num_layers=3,
        num_heads=4,
        intermediate_size=128,
        dropout=0.0,
        backend=backend,
        edges=EdgeConfig(local_window=4, neighbour_units=1),
        hierarchy=HierarchyConfig(target_ratios=[4.0, 4.0], router_layers=[0, 1], boundaries="random"),
    )


def batch(device: str):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (2, 256), generator=generator)
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, 200:] = False
    labels = torch.where(torch.rand(ids.shape, generator=generator) < 0.2, ids, -100)
    return ids.to(device), valid.to(device), labels.to(device)


@pytest.mark.parametrize("backend", ["flex", "sparse"])
def test_cuda_backend_matches_dense_mask_with_gradients(backend):
    torch.manual_seed(0)
    reference = LHTForMaskedLM(config("dense")).cuda()
    model = LHTForMaskedLM(config(backend)).cuda()
    model.load_state_dict(reference.state_dict())
    ids, valid, labels = batch("cuda")
    expected = reference(ids, valid, labels)
    got = model(ids, valid, labels)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-4, rtol=1e-4)
    expected.loss.backward()
    got.loss.backward()
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, atol=1e-3, rtol=1e-3)


def test_bf16_training_step_on_cuda_is_finite():
    model = LHTForMaskedLM(config("flex")).cuda()
    ids, valid, labels = batch("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, valid, labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
