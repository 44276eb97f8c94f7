"""LHT model: RoPE closed form, padding invariance, dense == flex, checkpointing, round trip."""

from __future__ import annotations

import warnings

import pytest
import torch

from latentlm.lht.config import EdgeConfig, HierarchyConfig, LHTConfig
from latentlm.lht.model import LHTForMaskedLM, apply_rope, autocast_context, rope_tables


def tiny_config(**overrides) -> LHTConfig:
    values = dict(
        vocab_size=50,
        hidden_size=16,
        num_layers=3,
        num_heads=2,
        intermediate_size=32,
        dropout=0.0,
        edges=EdgeConfig(local_window=2, neighbour_units=1),
        hierarchy=HierarchyConfig(target_ratios=[3.0, 2.0], router_layers=[1, 2]),
    )
    values.update(overrides)
    return LHTConfig(**values)


def tiny_model(**overrides) -> LHTForMaskedLM:
    torch.manual_seed(0)
    return LHTForMaskedLM(tiny_config(**overrides)).double().eval()


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 8, dtype=torch.float64)

    def score(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope_tables(torch.tensor([[pq]]), 8, 100.0, torch.float64)
        ck, sk = rope_tables(torch.tensor([[pk]]), 8, 100.0, torch.float64)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(3, 1), score(12, 10))
    torch.testing.assert_close(score(0, 0), (q * k).sum())


@pytest.mark.parametrize("attention", ["hierarchical", "full"])
def test_padding_does_not_change_real_tokens(attention):
    # capacity_factor 3 gives every level as many head slots as members, so no boundary overflows
    # (overflow depends on the padded length, by design).
    model = tiny_model(
        attention=attention, hierarchy=HierarchyConfig([3.0, 2.0], [1, 2], capacity_factor=3.0)
    )
    ids = torch.randint(1, 50, (1, 11), generator=torch.Generator().manual_seed(1))
    alone = model(ids)
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    padded = model(padded_ids, attention_mask=padded_ids != 0)
    torch.testing.assert_close(padded.logits[:, :11], alone.logits, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(padded.doc_state, alone.doc_state, atol=1e-9, rtol=1e-9)


def test_forward_shapes_losses_and_hierarchy():
    model = tiny_model()
    ids = torch.randint(1, 50, (2, 20), generator=torch.Generator().manual_seed(2))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    out = model(ids, labels=labels)
    assert out.logits is None  # with labels only the labelled positions are projected
    assert model(ids).logits.shape == (2, 20, 50)
    full = model(ids).logits
    picked = full[labels != -100]
    expected = torch.nn.functional.cross_entropy(picked, labels[labels != -100])
    torch.testing.assert_close(out.mlm_loss, expected)
    assert out.doc_state.shape == (2, 16)
    assert len(out.ratio_losses) == 2 and out.hierarchy is not None
    boundaries = out.hierarchy.token_boundaries()
    # Level-2 boundaries are a subset of level-1 boundaries and the first token starts a unit.
    assert not (boundaries[1] & ~boundaries[0]).any()
    assert boundaries[0][:, 0].all() and boundaries[1][:, 0].all()
    torch.testing.assert_close(out.loss, out.mlm_loss + out.router_loss)


def test_dense_and_flex_backends_give_the_same_model_output():
    ids = torch.randint(1, 50, (2, 24), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    dense = tiny_model(backend="dense")
    flex = tiny_model(backend="flex")
    flex.load_state_dict(dense.state_dict())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out_flex = flex(ids, mask)
    with torch.no_grad():
        out_dense = dense(ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(out_flex.logits[valid], out_dense.logits[valid], atol=1e-9, rtol=1e-9)


def test_gradient_checkpointing_gives_identical_gradients():
    ids = torch.randint(1, 50, (2, 16), generator=torch.Generator().manual_seed(4))
    grads = []
    for flag in (False, True):
        model = tiny_model(gradient_checkpointing=flag).train()
        out = model(ids, labels=ids)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-10, rtol=1e-10)


def test_mlm_gradient_reaches_router_without_ratio_loss():
    model = tiny_model(hierarchy=HierarchyConfig([3.0, 2.0], [1, 2], ratio_loss_weight=0.0)).train()
    ids = torch.randint(1, 50, (2, 16), generator=torch.Generator().manual_seed(5))
    model(ids, labels=ids).loss.backward()
    for router in model.hierarchy.routers:
        assert router.query.weight.grad.abs().sum() > 0


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    ids = torch.randint(1, 50, (1, 12), generator=torch.Generator().manual_seed(6))
    model.save_pretrained(tmp_path)
    loaded = LHTForMaskedLM.from_pretrained(tmp_path).double().eval()
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_bf16_autocast_runs_on_cpu():
    model = LHTForMaskedLM(tiny_config()).eval()
    ids = torch.randint(1, 50, (1, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = model(ids).logits
        with autocast_context(torch.device("cpu"), True):
            out = model(ids)
    assert torch.isfinite(out.logits).all()
    # bf16 keeps ~3 significant digits; logits of this model are O(0.1).
    torch.testing.assert_close(out.logits.float(), reference, atol=2e-2, rtol=0)
    assert not torch.equal(out.logits.float(), reference)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="router_layers"):
        tiny_config(hierarchy=HierarchyConfig([2.0], [5]))
    with pytest.raises(ValueError, match="model.attention"):
        tiny_config(attention="sparse")


def test_batch_without_labels_gives_zero_mlm_loss():
    model = tiny_model()
    ids = torch.randint(1, 50, (1, 8), generator=torch.Generator().manual_seed(8))
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.mlm_loss.item() == 0.0
    torch.testing.assert_close(out.loss, out.router_loss.to(out.loss.dtype))
