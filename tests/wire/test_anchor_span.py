"""The `anchor_span` latent (context scope): at step 0 each model's soft tokens are exactly its
`anchor_budget` embeddings, positions are counted as the span encoder's, the span residual and the
select adapters are live for training, and a model with fewer selected tokens than positions reads
fewer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentlm.core.engine import TrainState
from latentlm.data.synthetic_qa import synthetic_squad
from latentlm.wire.baselines import baseline_context_ids
from latentlm.wire.config import EncoderConfig, WireRunConfig
from latentlm.wire.data import prepare_context_examples
from latentlm.wire.encoders import AnchorSpanEncoder, EncoderInputs
from latentlm.wire.evaluate import evaluate_context
from latentlm.wire.features import FeatureBuilder, context_prompts, context_text_prompts
from latentlm.wire.task import WireTask
from tests.wire.context_configs import context_cfg

D_Z = 32 + 48  # tiny_llama + tiny_qwen widths


def anchor_cfg(run_dir: Path, extra: tuple[str, ...] = ()) -> WireRunConfig:
    anchor = (
        "encoder.kind=anchor_span",
        "adapter.kind=select",
        "adapter.rank=8",
        f"latent.d_z={D_Z}",
        "loss.autoencode=0.5",
        "loss.autoencode_tokens=16",
        "loss.autoencode_only_steps=0",
    )
    return context_cfg(run_dir, anchor + tuple(extra))


@pytest.fixture()
def setup(tmp_path, tiny_llama, tiny_qwen, sentence):
    lms = [tiny_llama, tiny_qwen]
    cfg = anchor_cfg(tmp_path / "run")
    features = FeatureBuilder(lms, sentence, 512, 64)
    examples = synthetic_squad(4, seed=6)
    task = WireTask(cfg, lms, features, examples, [], tmp_path / "run", sentence.dim)
    return cfg, lms, features, task, task.build_model()


def test_step0_soft_tokens_equal_the_anchor_budget_embeddings(setup, sentence):
    cfg, lms, features, task, wire = setup
    prepared = prepare_context_examples(synthetic_squad(4, seed=6), sentence.tokenizer, 4, 16, 64)
    contexts, questions = [e.context for e in prepared], [e.question for e in prepared]
    with torch.no_grad():
        out = wire(features(contexts, wire.required_features, questions))
    assert out.latent.shape[-1] == D_Z
    assert out.latent_mask.sum(-1).tolist() == [e.positions for e in prepared]  # M = ceil(n / 4)
    for index, lm in enumerate(lms):
        ids = [
            baseline_context_ids("anchor_budget", lm, e.context, e.question, e.positions, sentence)
            for e in prepared
        ]
        assert [len(i) for i in ids] == [e.positions for e in prepared]
        for piece, row_ids in zip(out.pieces(index), ids, strict=True):
            assert torch.equal(piece, lm.embed(row_ids))  # bit for bit, not approximately
        soft_prompt = context_prompts(lm, out.pieces(index), questions)
        text_prompt = context_text_prompts(lm, ids, questions)
        assert torch.equal(soft_prompt[0], text_prompt[0]) and torch.equal(soft_prompt[1], text_prompt[1])


def test_step0_latent_scores_what_anchor_budget_scores(setup, tiny_llama, tiny_qwen):
    cfg, lms, features, task, wire = setup
    metrics, records = evaluate_context(
        cfg, wire.eval(), lms, features, synthetic_squad(5, seed=8), ["latent", "anchor_budget"]
    )
    for lm in lms:
        per = metrics["methods"][lm.name]
        assert per["latent"] == per["anchor_budget"]
        latent = [r["prediction"] for r in records if r["model"] == lm.name and r["method"] == "latent"]
        text = [r["prediction"] for r in records if r["model"] == lm.name and r["method"] == "anchor_budget"]
        assert latent == text


def test_training_reaches_the_residual_and_the_adapters(setup):
    cfg, lms, features, task, wire = setup
    batch = task.collate(task.items)
    out = task.loss(wire, batch, TrainState(step=0))
    assert {"tiny_llama/autoencode", "tiny_qwen/answer_ce"} <= {
        k[5:] for k in out.metrics if k[:5] == "loss/"
    }
    out.loss.backward()
    assert wire.encoder.residual.out.weight.grad.abs().sum() > 0
    for adapter in wire.adapters:
        assert adapter.delta[-1].weight.grad.abs().sum() > 0
    with torch.no_grad():  # once the zero-initialised layers move, the soft tokens move with them
        wire.encoder.residual.out.bias.fill_(0.5)
        moved = wire(features(batch["context"], wire.required_features, batch["question"]))
    ids = lms[0].encode(" ")  # any id: the moved soft tokens are no longer plain embeddings
    assert not torch.equal(moved.pieces(0)[0][:1], lms[0].embed(ids[:1]))


def test_a_model_with_fewer_selected_tokens_reads_fewer_positions():
    cfg = EncoderConfig(kind="anchor_span", width=8, layers=1, heads=2)
    encoder = AnchorSpanEncoder(cfg, slots=8, d_z=5, st_dim=4, model_dims=(2, 3), ratio=2)
    token_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0]])  # 6 tokens -> 3 positions
    inputs = EncoderInputs(
        st_states=torch.randn(1, 8, 4),
        st_mask=torch.ones(1, 8, dtype=torch.long),
        aligned_embeds=[torch.randn(1, 8, 2), torch.randn(1, 8, 3)],
        token_mask=token_mask,
        anchor_embeds=[torch.randn(1, 5, 2), torch.randn(1, 2, 3)],
        anchor_masks=[torch.ones(1, 5, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)],
    )
    z = encoder(inputs)
    assert encoder.latent_mask(inputs).tolist() == [[1, 1, 1]]
    assert [m.tolist() for m in encoder.model_masks(inputs)] == [[[1, 1, 1]], [[1, 1, 0]]]
    assert torch.equal(z[0, :, :2], inputs.anchor_embeds[0][0, :3])
    assert torch.equal(z[0, :2, 2:], inputs.anchor_embeds[1][0])
    assert torch.equal(z[0, 2, 2:], torch.zeros(3))


def test_anchor_span_checks_its_settings(tmp_path):
    with pytest.raises(ValueError, match=r"latent.d_z: .* must be 2 \+ 3 = 5; got 6"):
        AnchorSpanEncoder(EncoderConfig(kind="anchor_span", width=8, heads=2), 4, 6, 4, (2, 3))
    with pytest.raises(ValueError, match="adapter.kind: select reads an anchor_span latent"):
        anchor_cfg(tmp_path, ("adapter.kind=mlp",))
    with pytest.raises(ValueError, match="needs latent.scope: context"):
        anchor_cfg(tmp_path, ("latent.scope=prompt",))


def test_benchmark_keeps_step0_when_training_does_not_lower_the_dev_nll(
    tmp_path, tiny_llama, tiny_qwen, sentence
):
    import argparse
    import time

    from benchmarks import wire_context

    from latentlm.core.config import save_config

    cfg = anchor_cfg(tmp_path / "run", ("data.dev_limit=4", "eval.in_training_examples=3", "train.lr=0.5"))
    save_config(cfg, tmp_path / "anchor_tiny.yaml")
    args = argparse.Namespace(
        config=str(tmp_path / "anchor_tiny.yaml"),
        run_dir=str(tmp_path / "run"),
        steps=2,
        batch=2,
        train=4,
        dev=4,
        ratios=[4],
        methods=["latent", "anchor_budget"],
        ae_only_fraction=0.0,
        set=["train.eval_every=1", "train.best_metric=gold_nll_mean"],
        select_step0=True,
    )
    lms = [tiny_llama, tiny_qwen]
    wire_context.train(args, lms, sentence)
    result = wire_context.evaluate(args, lms, sentence, deadline=time.time() + 600)
    selection = result["selection"]["4x"]
    assert selection["step0_equals_anchor_budget"] is True
    trained = selection["gold_nll_mean"]
    assert selection["checkpoint"] == ("step0" if selection["step0_gold_nll_mean"] <= trained else "best")
    rows = {(r["model"], r["method"]): r for r in result["rows"]}
    if selection["checkpoint"] == "step0":  # then the latent is the anchor selection, score for score
        for lm in lms:
            assert rows[(lm.name, "latent")]["f1"] == rows[(lm.name, "anchor_budget")]["f1"]
    args.dev = 5
    with pytest.raises(ValueError, match="--dev 5: the selection questions start after data.dev_limit = 4"):
        wire_context.evaluate(args, lms, sentence, deadline=time.time() + 600)
