"""Hierarchical attention: every edge type against a brute-force double loop; dense == flex."""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import pytest
import torch

from latentlm.lht.attention import (
    DenseMaskBackend,
    EdgeConfig,
    FlexBackend,
    FullAttention,
    HierarchicalBias,
    block_density,
    build_layout,
)

# Two documents: 10 tokens and 7 tokens (3 padding). Level-1 units are token spans, level-2 units are
# spans of level-1 unit indices.
DOCS = [
    {"n": 10, "level1": [(0, 3), (3, 5), (5, 9), (9, 10)], "level2": [(0, 2), (2, 4)]},
    {"n": 7, "level1": [(0, 2), (2, 3), (3, 7)], "level2": [(0, 3)]},
]
N = 10
CAPACITY = [5, 3]


def token_units(doc: dict, level: int) -> list[int]:
    ids = [-1] * N
    spans = unit_token_spans(doc, level)
    for u, (a, b) in enumerate(spans):
        for t in range(a, b):
            ids[t] = u
    return ids


def unit_token_spans(doc: dict, level: int) -> list[tuple[int, int]]:
    if level == 0:
        return doc["level1"]
    lower = doc["level1"]
    return [(lower[a][0], lower[b - 1][1]) for a, b in doc["level2"]]


def brute_force_mask(doc: dict, edges: EdgeConfig, active: int, with_doc: bool) -> torch.Tensor:
    """Explicit node list and the edge definitions, one pair at a time."""
    offset = 1 if with_doc else 0
    size = offset + N + sum(CAPACITY)
    nodes: dict[int, tuple] = {}
    if with_doc:
        nodes[0] = ("doc",)
    for t in range(doc["n"]):
        nodes[offset + t] = ("tok", t)
    start = offset + N
    for level in range(len(CAPACITY)):
        if level < active:
            for u in range(len(unit_token_spans(doc, level))):
                nodes[start + u] = ("head", level, u)
        start += CAPACITY[level]

    def span(node):
        if node[0] == "tok":
            return (node[1], node[1] + 1)
        return unit_token_spans(doc, node[1])[node[2]]

    def level_of(node):
        return -1 if node[0] == "tok" else node[1]

    def parent_unit(node, level):
        a, b = span(node)
        for u, (c, d) in enumerate(unit_token_spans(doc, level)):
            if c <= a and b <= d:
                return u
        raise AssertionError

    mask = torch.zeros(size, size, dtype=torch.bool)
    for i, j in itertools.product(range(size), range(size)):
        if i == j:
            mask[i, j] = True
            continue
        if i not in nodes or j not in nodes:
            continue
        x, y = nodes[i], nodes[j]
        ok = False
        if edges.doc_token and ("doc",) in (x, y):
            ok = True
        elif x[0] == "tok" and y[0] == "tok":
            if edges.local_window > 0 and abs(x[1] - y[1]) <= edges.local_window:
                ok = True
            if edges.same_unit and active > 0 and parent_unit(x, 0) == parent_unit(y, 0):
                ok = True
        if "doc" not in (x[0], y[0]):
            if edges.parent_child:
                for h, o in ((x, y), (y, x)):
                    if h[0] == "head" and level_of(o) < h[1]:
                        a, b = span(o)
                        c, d = span(h)
                        if c <= a and b <= d:
                            ok = True
            if x[0] == "head" and y[0] == "head" and x[1] == y[1]:
                level = x[1]
                if edges.siblings and (
                    level + 1 >= active or parent_unit(x, level + 1) == parent_unit(y, level + 1)
                ):
                    ok = True
                if edges.neighbour_units > 0 and abs(x[2] - y[2]) <= edges.neighbour_units:
                    ok = True
        mask[i, j] = ok
    return mask


def layout_for(active: int, with_doc: bool):
    valid = torch.tensor([[t < d["n"] for t in range(N)] for d in DOCS])
    units = [torch.tensor([token_units(d, level) for d in DOCS]) for level in range(active)]
    return build_layout(valid, units, CAPACITY, with_doc)


def edge_set(*values) -> EdgeConfig:
    """One edge type in isolation: set after construction, since a run config refuses a token row with
    neither a window nor its unit (the patterns themselves stay defined for it)."""
    config = EdgeConfig()
    for field, value in zip(dataclasses.fields(EdgeConfig), values, strict=True):
        setattr(config, field.name, value)
    return config


ONLY = {
    "local": edge_set(2, False, False, False, 0, False),
    "same_unit": edge_set(0, True, False, False, 0, False),
    "parent_child": edge_set(0, False, True, False, 0, False),
    "siblings": edge_set(0, False, False, True, 0, False),
    "neighbours": edge_set(0, False, False, False, 1, False),
    "doc": edge_set(0, False, False, False, 0, True),
    "all": edge_set(3, True, True, True, 2, True),
}


@pytest.mark.parametrize("name", list(ONLY))
@pytest.mark.parametrize("active", [0, 1, 2])
def test_each_edge_type_matches_brute_force(name, active):
    edges = ONLY[name]
    layout = layout_for(active, with_doc=True)
    mask = HierarchicalBias(edges).materialize(layout)
    for b, doc in enumerate(DOCS):
        expected = brute_force_mask(doc, edges, active, with_doc=True)
        assert torch.equal(mask[b], expected), f"edge type {name}, doc {b}, levels {active}"


def test_layout_without_doc_slot():
    edges = ONLY["all"]
    layout = layout_for(2, with_doc=False)
    assert layout.size == N + sum(CAPACITY)
    mask = HierarchicalBias(edges).materialize(layout)
    for b, doc in enumerate(DOCS):
        assert torch.equal(mask[b], brute_force_mask(doc, edges, 2, with_doc=False))


def test_layout_metadata_of_heads():
    layout = layout_for(2, with_doc=True)
    heads0 = layout.head_slice(0)
    # Doc 0 has four level-1 units starting at tokens 0, 3, 5, 9; the fifth slot is unused.
    assert layout.position[0, heads0].tolist() == [0, 3, 5, 9, 0]
    assert layout.kind[0, heads0].tolist() == [2, 2, 2, 2, -1]
    assert layout.unit[1][0, heads0].tolist() == [0, 0, 1, 1, -1]
    assert layout.kind[1, layout.head_slice(1)].tolist() == [3, -1, -1]


def test_full_attention_masks_only_padding():
    layout = layout_for(0, with_doc=False)
    mask = FullAttention().materialize(layout)
    valid = layout.valid
    expected = (valid[:, :, None] & valid[:, None, :]) | torch.eye(layout.size, dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_dense_and_flex_backends_agree():
    torch.manual_seed(0)
    pattern = HierarchicalBias(ONLY["all"])
    layout = layout_for(2, with_doc=True)
    q, k, v = (torch.randn(2, 2, layout.size, 8, dtype=torch.float64) for _ in range(3))
    dense = DenseMaskBackend(pattern)
    flex = FlexBackend(pattern, block_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out_flex = flex.attend(q, k, v, flex.prepare(layout))
    out_dense = dense.attend(q, k, v, dense.prepare(layout))
    torch.testing.assert_close(out_flex, out_dense, atol=1e-10, rtol=1e-10)


def test_flex_refuses_cpu_training():
    pattern = HierarchicalBias(ONLY["all"])
    layout = layout_for(1, with_doc=True)
    flex = FlexBackend(pattern)
    q = torch.randn(2, 1, layout.size, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="cannot train on CPU"):
        flex.attend(q, q, q, flex.prepare(layout))


def test_block_density_of_segmented_layout_is_sparse():
    # A long document with regular units: window edges + unit heads in their own segment keep the
    # fraction of non-empty 16x16 tiles low (measured 0.118 at n=1024; full attention is 1.0).
    n, unit_len = 1024, 8
    valid = torch.ones(1, n, dtype=torch.bool)
    level1 = (torch.arange(n) // unit_len)[None]
    level2 = (torch.arange(n) // (unit_len * 4))[None]
    layout = build_layout(valid, [level1, level2], [n // unit_len, n // (unit_len * 4)], with_doc=True)
    edges = EdgeConfig(local_window=4, same_unit=True, parent_child=True, siblings=False, neighbour_units=1)
    mask = HierarchicalBias(edges).materialize(layout)
    assert block_density(mask, 16) < 0.15
    full = FullAttention().materialize(layout)
    assert block_density(full, 16) == 1.0
