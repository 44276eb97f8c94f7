"""Issue 12: the context scope on tiny models — the exact sequence layout, span pooling, the
autoencoding loss against a hand-computed CE, baselines at equal positions, and the edge cases
(short context, empty question, over-long paragraph)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from latentlm.core.config import load_config
from latentlm.core.engine import TrainState
from latentlm.data.squad import SquadExample
from latentlm.data.synthetic_qa import synthetic_squad
from latentlm.wire.baselines import baseline_context_ids, selective_context, self_information, words_of
from latentlm.wire.config import WireRunConfig
from latentlm.wire.data import prepare_context_examples
from latentlm.wire.encoders import span_assignment
from latentlm.wire.evaluate import evaluate_context, evaluate_run
from latentlm.wire.features import (
    AUTOENCODE_INSTRUCTION,
    FeatureBuilder,
    autoencode_prompts,
    context_prompts,
)
from latentlm.wire.model import WireModel
from latentlm.wire.task import WireTask, train_wire
from tests.wire.context_configs import context_cfg

METHODS = ["latent", "no_context", "token_budget", "anchor_budget", "external", "text"]


# ------------------------------------------------------------------------------------------ layout
def test_context_layout_is_scaffold_soft_question_anchor(tiny_llama, tiny_qwen):
    """[chat scaffold][M soft tokens][question][anchor], against sequences built by hand."""
    question = "What is the capital of Velor?"
    soft = torch.randn(5, tiny_llama.d_model)
    embeds, mask = context_prompts(tiny_llama, [soft], [question])
    tok = tiny_llama.tokenizer  # plain prompting, the tokenizer adds BOS
    before = [tok.bos_token_id]
    after = tok("\nQuestion: " + question + "\n" + "Answer:", add_special_tokens=False)["input_ids"]
    expected = torch.cat([tiny_llama.embed(before), soft, tiny_llama.embed(after)])
    assert mask.tolist() == [[1] * expected.shape[0]] and torch.equal(embeds[0], expected)

    soft = torch.randn(3, tiny_qwen.d_model)
    embeds, _ = context_prompts(tiny_qwen, [soft], [question])
    tok = tiny_qwen.tokenizer  # ChatML template, no BOS
    before = tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    after = tok(
        "\nQuestion: " + question + "<|im_end|>\n<|im_start|>assistant\n" + "Answer:",
        add_special_tokens=False,
    )["input_ids"]
    expected = torch.cat([tiny_qwen.embed(before), soft, tiny_qwen.embed(after)])
    assert torch.equal(embeds[0], expected)


def test_context_layout_left_pads_different_lengths(tiny_llama):
    a, b = torch.randn(2, tiny_llama.d_model), torch.randn(6, tiny_llama.d_model)
    embeds, mask = context_prompts(tiny_llama, [a, b], ["Q?", "Q?"])
    assert mask[0].tolist()[:4] == [0, 0, 0, 0] and mask[1].all()
    single, _ = context_prompts(tiny_llama, [a], ["Q?"])
    assert torch.equal(embeds[0, 4:], single[0])


# ------------------------------------------------------------------------------------ span pooling
@pytest.mark.parametrize("ratio", [1, 2, 3, 4])
def test_span_pooling_assigns_every_token_to_exactly_one_position(ratio):
    token_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
    index, valid, span_of_token = span_assignment(token_mask, ratio, max_spans=100)
    for row in range(2):
        real = token_mask[row].nonzero().squeeze(-1).tolist()
        slots = [int(index[row].view(-1)[k]) for k in range(valid[row].numel()) if valid[row].view(-1)[k]]
        assert sorted(slots) == real and len(set(slots)) == len(real)  # each token once, in order
        assert slots == real
        assert int(valid[row][:, 0].sum()) == math.ceil(len(real) / ratio)
        for pos in range(10):
            expect = real.index(pos) // ratio if pos in real else -1
            assert int(span_of_token[row, pos]) == expect
            if expect >= 0:
                assert pos in index[row, expect][valid[row, expect].bool()].tolist()


def test_span_pooling_caps_positions():
    token_mask = torch.ones(1, 20, dtype=torch.long)
    _, valid, span_of_token = span_assignment(token_mask, 4, max_spans=3)
    assert int(valid[0, :, 0].sum()) == 3 and (span_of_token[0, 12:] == -1).all()


# ------------------------------------------------------------------------------------ autoencoding
def test_autoencoding_loss_equals_hand_computed_ce(tmp_path, tiny_llama, tiny_qwen, sentence):
    cfg = context_cfg(tmp_path / "ae", ("loss.answer_ce=0", "loss.first_token=0", "adapter.affine_l2=0"))
    features = FeatureBuilder([tiny_llama, tiny_qwen], sentence, 512, 64)
    examples = synthetic_squad(3, seed=4)
    task = WireTask(cfg, [tiny_llama, tiny_qwen], features, examples, [], tmp_path / "ae", sentence.dim)
    wire = task.build_model().eval()
    batch = task.collate(task.items)
    with torch.no_grad():
        got = task.loss(wire, batch, TrainState(step=0)).loss
        out = wire(features(batch["context"], wire.required_features))
    total = 0.0
    for index, lm in enumerate([tiny_llama, tiny_qwen]):
        nll, count = 0.0, 0
        for row, context in enumerate(batch["context"]):
            soft = out.soft_tokens[index][row, out.latent_mask[row].bool()]
            target = lm.encode(context)[:24]
            tail = lm.encode(AUTOENCODE_INSTRUCTION) + lm.parts.suffix
            seq = torch.cat([lm.embed(lm.parts.prefix), soft, lm.embed(tail), lm.embed(target)])[None]
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(inputs_embeds=seq).logits[0].float(), -1)
            start = seq.shape[1] - len(target) - 1  # the position that predicts target[0]
            for k, token in enumerate(target):
                nll -= float(logp[start + k, token])
                count += 1
        total += nll / count
    assert got.item() == pytest.approx(total, rel=1e-4)


def test_autoencode_prompts_layout(tiny_qwen):
    soft = torch.randn(4, tiny_qwen.d_model)
    embeds, _ = autoencode_prompts(tiny_qwen, [soft])
    tok = tiny_qwen.tokenizer
    after = tok(AUTOENCODE_INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    expected = torch.cat(
        [
            tiny_qwen.embed(tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]),
            soft,
            tiny_qwen.embed(after["input_ids"]),
        ]
    )
    assert torch.equal(embeds[0], expected)


# ---------------------------------------------------------------------------------------- baselines
def test_baselines_use_exactly_m_positions(tiny_llama, tiny_qwen, sentence):
    example = synthetic_squad(1, seed=9)[0]
    context = " ".join([example.context] * 3)
    for lm in (tiny_llama, tiny_qwen):
        full = lm.encode(context)
        external = selective_context(tiny_llama, context, 7)
        for method, expect in (
            ("no_context", 0),
            ("token_budget", 7),
            ("anchor_budget", 7),
            ("text", len(full)),
        ):
            ids = baseline_context_ids(method, lm, context, example.question, 7, sentence)
            assert len(ids) == expect, method
        ids = baseline_context_ids("external", lm, context, example.question, 7, sentence, external)
        assert 0 < len(ids) <= 7
    assert baseline_context_ids("token_budget", tiny_llama, context, "q", 7) == tiny_llama.encode(context)[:7]


def test_self_information_matches_prefix_by_prefix_scoring(tiny_llama):
    text = "The capital of Velor is Ostra."
    ids, info = self_information(tiny_llama, text)
    start = tiny_llama.tokenizer.bos_token_id
    for k, token in enumerate(ids):
        prefix = torch.tensor([[start, *ids[:k]]])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_llama.model(input_ids=prefix).logits[0, -1].float(), -1)
        assert info[k] == pytest.approx(-float(logp[token]), rel=1e-4, abs=1e-5)


def test_selective_context_keeps_the_most_informative_words(tiny_llama):
    text = "The capital of Velor is Ostra. The flag of Velor is red."
    ids, info = self_information(tiny_llama, text)
    words = words_of(tiny_llama, ids)
    assert sorted(p for w in words for p in w) == list(range(len(ids)))  # each token in one word
    assert selective_context(tiny_llama, text, 1_000) == tiny_llama.tokenizer.decode(ids).strip()
    # Hand-set information: word 3 is the most informative, then word 1, the rest nearly nothing.
    fake = [0.01] * len(ids)
    fake[words[3][0]], fake[words[1][0]] = 9.0, 5.0
    budget = len(words[1]) + len(words[3])
    expected = tiny_llama.tokenizer.decode([ids[p] for p in words[1] + words[3]]).strip()
    assert selective_context(tiny_llama, text, budget, (ids, fake)) == expected
    only_best = tiny_llama.tokenizer.decode([ids[p] for p in words[3]]).strip()
    assert selective_context(tiny_llama, text, len(words[3]), (ids, fake)) == only_best


# --------------------------------------------------------------------------------------- edge cases
def test_edge_cases_are_defined(tiny_tokenizer):
    short = SquadExample("short", "The", "What is it?", ("The",))
    count = len(tiny_tokenizer("The", add_special_tokens=False)["input_ids"])
    assert 0 < count < 4
    prepared = prepare_context_examples([short], tiny_tokenizer, 4, 16, 64)
    assert prepared[0].positions == 1 and prepared[0].context_tokens == count and not prepared[0].truncated
    with pytest.raises(ValueError, match="question q7: the question is empty"):
        prepare_context_examples([SquadExample("q7", "Some text.", "  ", ("x",))], tiny_tokenizer, 4, 16, 64)
    with pytest.raises(ValueError, match="question q8: the context is empty"):
        prepare_context_examples([SquadExample("q8", "", "Why?", ("x",))], tiny_tokenizer, 4, 16, 64)
    long_context = " ".join(e.context for e in synthetic_squad(12, seed=2))
    with pytest.warns(UserWarning, match="question ids: long"):
        cut = prepare_context_examples(
            [SquadExample("long", long_context, "Why?", ("x",))], tiny_tokenizer, 4, 8, 64
        )
    assert cut[0].truncated and cut[0].positions == 8 and cut[0].context_tokens == 32
    assert long_context.startswith(cut[0].context) and len(cut[0].context) < len(long_context)


# ----------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def context_run(tmp_path_factory, tiny_llama, tiny_qwen, sentence):
    run_dir = tmp_path_factory.mktemp("context") / "run"
    cfg = context_cfg(
        run_dir,
        (
            "data.dev_limit=3",
            "train.max_steps=4",
            "phases=[{name: a, steps: 4}]",
            "train.eval_every=2",
            "train.checkpoint_every=0",
        ),
    )
    train_wire(cfg, [tiny_llama, tiny_qwen], sentence)
    return run_dir


def test_context_run_evaluates_every_method_at_equal_positions(context_run, tiny_llama, tiny_qwen, sentence):
    import json

    metrics = evaluate_run(context_run, checkpoint="last", lms=[tiny_llama, tiny_qwen], sentence=sentence)
    assert set(metrics["methods"]["tiny_qwen"]) == set(METHODS)
    records = [json.loads(x) for x in (context_run / "eval" / "predictions.jsonl").read_text().splitlines()]
    cfg = load_config(WireRunConfig, context_run / "config.yaml")
    dev = prepare_context_examples(
        synthetic_squad(3, seed=1), sentence.tokenizer, 4, cfg.latent.length, cfg.encoder.max_tokens
    )
    budget = {e.id: e.positions for e in dev}
    for r in records:
        if r["method"] in ("latent", "token_budget", "anchor_budget"):
            assert r["positions"] == budget[r["id"]], r
        elif r["method"] == "external":
            assert 0 < r["positions"] <= budget[r["id"]]
        elif r["method"] == "no_context":
            assert r["positions"] == 0
    wire = WireModel.from_pretrained(context_run / "model").eval()
    again, _ = evaluate_context(
        cfg,
        wire,
        [tiny_llama, tiny_qwen],
        FeatureBuilder([tiny_llama, tiny_qwen], sentence, 512, 64),
        synthetic_squad(3, seed=1),
        ["latent"],
    )
    for name in ("tiny_llama", "tiny_qwen"):
        assert again["methods"][name]["latent"] == metrics["methods"][name]["latent"]


def test_context_forward_loss_uses_the_question_layout(context_run, tiny_llama, tiny_qwen, sentence):
    wire = WireModel.from_pretrained(context_run / "model").eval().attach([tiny_llama, tiny_qwen], sentence)
    examples = synthetic_squad(2, seed=3)
    _, features = wire.frozen()
    inputs = features([e.context for e in examples], wire.required_features)
    with torch.no_grad():
        out = wire(inputs, [e.question for e in examples], [e.answers[0] for e in examples])
    assert out.loss is not None and set(out.model_losses) == {"tiny_llama", "tiny_qwen"}
    with pytest.raises(ValueError, match="needs the questions"):
        wire(inputs, None, [e.answers[0] for e in examples])
    assert isinstance(wire.answer(examples[0].context, examples[0].question, max_new_tokens=2), dict)
    warnings.simplefilter("default")
    assert F is not None
