"""The block-sparse CPU backend equals the dense-mask backend (float64, outputs and gradients), the
sliding-window baseline is a band, and fixed boundary modes produce exactly the requested rate."""

from __future__ import annotations

import math

import pytest
import torch

from latentlm.lht.attention import (
    DenseMaskBackend,
    FullAttention,
    HierarchicalBias,
    LocalWindowAttention,
    SparseBlockBackend,
    build_layout,
    sparse_block_size,
)
from latentlm.lht.config import EdgeConfig, HierarchyConfig, LHTConfig
from latentlm.lht.model import LHTForMaskedLM
from latentlm.lht.routers import fixed_boundaries
from tests.lht.test_model import tiny_config as tiny_model_config


def edges(**fields) -> EdgeConfig:
    """An edge set with some types off (set after construction: single edge types in isolation)."""
    config = EdgeConfig()
    for name, value in fields.items():
        setattr(config, name, value)
    return config


def random_layout(generator: torch.Generator, with_doc: bool, active: int):
    """Three documents (one fully padded, one short), random level-1 and level-2 units, spare head slots."""
    n = 70
    lengths = [n, 23, 0]
    valid = torch.tensor([[t < length for t in range(n)] for length in lengths])
    level1, level2 = [], []
    for length in lengths:
        starts = (torch.rand(n, generator=generator) < 0.3) & (torch.arange(n) < length)
        starts[0] = length > 0
        ids1 = torch.where(torch.arange(n) < length, starts.long().cumsum(0) - 1, -1)
        units = int(ids1.max()) + 1
        upper_starts = torch.rand(max(units, 1), generator=generator) < 0.4
        upper_starts[0] = True
        upper = upper_starts.long().cumsum(0) - 1
        level1.append(ids1)
        level2.append(torch.where(ids1 >= 0, upper[ids1.clamp(min=0)], -1))
    capacity = [40, 20]
    units = [torch.stack(level1), torch.stack(level2)][:active]
    return build_layout(valid, units, capacity, with_doc)


PATTERNS = {
    "all": lambda: HierarchicalBias(EdgeConfig(3, True, True, True, 2, True)),
    "no_window": lambda: HierarchicalBias(edges(local_window=0, neighbour_units=0, doc_token=False)),
    "heads_only": lambda: HierarchicalBias(edges(local_window=0, same_unit=False, siblings=False)),
    "wide_window": lambda: HierarchicalBias(EdgeConfig(20, False, True, False, 1, True)),
    "full": FullAttention,
    "window": lambda: LocalWindowAttention(5),
}


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("active", [0, 1, 2])
@pytest.mark.parametrize("block_size", [8, 16])
def test_sparse_backend_equals_dense_mask_backend(name, active, block_size):
    generator = torch.Generator().manual_seed(hash((name, active, block_size)) % 1000)
    layout = random_layout(generator, with_doc=name != "window", active=active)
    pattern = PATTERNS[name]()
    dense, sparse = DenseMaskBackend(pattern), SparseBlockBackend(pattern, block_size)
    # The block mask covers every tile of the exact mask.
    mask = pattern.materialize(layout)
    needed = pattern.key_block_mask(layout, block_size)
    size = layout.size
    for qb in range(needed.shape[1]):
        for kb in range(needed.shape[2]):
            tile = mask[:, qb * block_size : (qb + 1) * block_size, kb * block_size : (kb + 1) * block_size]
            assert not (tile.flatten(1).any(1) & ~needed[:, qb, kb]).any()
    shape = (3, 2, size, 6)
    q, k, v = (
        torch.randn(shape, dtype=torch.float64, generator=generator).requires_grad_() for _ in range(3)
    )
    weight = torch.randn(shape, dtype=torch.float64, generator=generator)
    out_dense = dense.attend(q, k, v, dense.prepare(layout))
    grads_dense = torch.autograd.grad((out_dense * weight).sum(), (q, k, v))
    out_sparse = sparse.attend(q, k, v, sparse.prepare(layout))
    grads_sparse = torch.autograd.grad((out_sparse * weight).sum(), (q, k, v))
    torch.testing.assert_close(out_sparse, out_dense, atol=1e-5, rtol=0)
    for a, b in zip(grads_sparse, grads_dense, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # Sparsity is real for the hierarchy: fewer key blocks than all of them.
    if name in ("all", "no_window") and active > 0 and block_size == 8:
        assert needed.float().mean() < 0.9


def tiny_config(**fields) -> LHTConfig:
    """test_model's tiny LHT with routers on layers 0 and 1 and head slots at exactly the target rate."""
    hierarchy = HierarchyConfig(target_ratios=[3.0, 2.0], router_layers=[0, 1], capacity_factor=1.0)
    return tiny_model_config(**{"hierarchy": hierarchy, **fields})


def test_sparse_model_equals_dense_model_with_padding_and_overflow():
    torch.manual_seed(0)
    dense = LHTForMaskedLM(tiny_config(backend="dense")).double()
    sparse = LHTForMaskedLM(tiny_config(backend="sparse", block_size=8)).double()
    sparse.load_state_dict(dense.state_dict())
    ids = torch.randint(5, 50, (3, 41))
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, 30:] = False
    valid[2, 9:] = False
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100)
    out_dense = dense(ids, valid, labels)
    out_sparse = sparse(ids, valid, labels)
    assert sum(out_dense.hierarchy.overflow) > 0  # capacity factor 1: some boundaries overflow
    torch.testing.assert_close(out_sparse.loss, out_dense.loss, atol=1e-5, rtol=0)
    out_dense.loss.backward()
    out_sparse.loss.backward()
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=0, msg=name)


def test_sliding_window_mask_is_a_band():
    n, window = 12, 3
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[1, 8:] = False
    layout = build_layout(valid, [], [], with_doc=False)
    mask = LocalWindowAttention(window).materialize(layout)
    expected = torch.zeros(2, n, n, dtype=torch.bool)
    for b, length in enumerate((12, 8)):
        for i in range(n):
            expected[b, i, i] = True
            for j in range(n):
                if i < length and j < length and abs(i - j) <= window:
                    expected[b, i, j] = True
    assert torch.equal(mask, expected)


def test_window_model_uses_the_band():
    model = LHTForMaskedLM(tiny_config(attention="window", edges=EdgeConfig(local_window=2)))
    ids = torch.randint(5, 50, (1, 10))
    out = model(ids)
    assert out.hierarchy is None and out.logits.shape == (1, 10, 50)


@pytest.mark.parametrize("mode", ["random", "stride"])
@pytest.mark.parametrize("ratio", [2.0, 3.5, 25.0])
def test_fixed_boundaries_have_exactly_the_requested_rate(mode, ratio):
    lengths = [100, 37, 1, 0, 64]
    valid = torch.tensor([[t < length for t in range(100)] for length in lengths])
    seeds = torch.arange(len(lengths)) * 7 + 1
    flags = fixed_boundaries(valid, ratio, mode, seeds)
    for row, length in enumerate(lengths):
        expected = max(1, math.floor(length / ratio + 0.5)) if length else 0
        assert int(flags[row].sum()) == expected
        assert not flags[row, length:].any()
        if length:
            assert bool(flags[row, 0])
    if mode == "stride":
        starts = flags[0].nonzero().flatten()
        gaps = starts.diff()
        assert int(gaps.max() - gaps.min()) <= 1  # evenly spaced
    else:
        again = fixed_boundaries(valid, ratio, mode, seeds)
        assert torch.equal(flags, again)  # the same document always gets the same boundaries
        other = fixed_boundaries(valid, ratio, mode, seeds + 1)
        assert not torch.equal(flags, other) or ratio == 25.0


def test_sparse_backend_keeps_checkpointing_and_bf16_working():
    torch.manual_seed(1)
    config = tiny_config(backend="sparse", block_size=8, gradient_checkpointing=True)
    model = LHTForMaskedLM(config).train()
    plain = LHTForMaskedLM(tiny_config(backend="sparse", block_size=8))
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(5, 50, (2, 30))
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100)
    model(ids, labels=labels).loss.backward()
    plain.train()(ids, labels=labels).loss.backward()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = plain(ids, labels=labels).loss
    assert torch.isfinite(loss)


def test_sparse_layout_serves_several_dtypes_and_layers():
    """One prepared layout (shared by the layers) gives the dense-mask result in float64 and float32."""
    generator = torch.Generator().manual_seed(5)
    layout = random_layout(generator, with_doc=True, active=2)
    pattern = PATTERNS["all"]()
    dense, sparse = DenseMaskBackend(pattern), SparseBlockBackend(pattern, 8)
    prepared, mask = sparse.prepare(layout), dense.prepare(layout)
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-5), (torch.float64, 1e-10)):
        q, k, v = (torch.randn(3, 2, layout.size, 6, generator=generator, dtype=dtype) for _ in range(3))
        expected = dense.attend(q, k, v, mask)
        torch.testing.assert_close(sparse.attend(q, k, v, prepared), expected, atol=tolerance, rtol=0)
    assert sorted(map(str, prepared.buckets[0].additive)) == ["torch.float32", "torch.float64"]


def test_block_size_by_length_and_its_errors():
    assert [sparse_block_size(size) for size in (1, 4096, 4097, 10753)] == [16, 16, 64, 64]
    assert sparse_block_size(10753, 8) == 8  # an explicit size wins
    assert LHTConfig(vocab_size=10).block_size == 0
    with pytest.raises(ValueError, match="model.block_size"):
        LHTConfig(vocab_size=10, block_size=-1)
