"""Stage A/B training on tiny random models: run directory, diagnostics, best checkpoint, and a
checkpoint round trip that reproduces the evaluation outputs exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentlm.core.config import load_config, load_run_config
from latentlm.core.engine import load_model_weights
from latentlm.data.synthetic_qa import synthetic_squad
from latentlm.wire.config import PhaseConfig, WireRunConfig
from latentlm.wire.evaluate import evaluate_run, evaluate_wire
from latentlm.wire.features import build_features
from latentlm.wire.frozen import FrozenLM, format_content
from latentlm.wire.model import WireModel
from latentlm.wire.task import is_text_batch, phase_at, train_wire
from tests.wire.conftest import build_model

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(run_dir: Path, kind: str = "anchor", extra: tuple[str, ...] = ()) -> WireRunConfig:
    return load_config(
        WireRunConfig,
        REPO / "configs" / "wire" / "tiny.yaml",
        [
            f"run_dir={run_dir}",
            "models=[tiny_llama,tiny_qwen]",
            f"encoder.kind={kind}",
            f"data.cache_dir={run_dir}/cache",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama, tiny_qwen, sentence):
    run_dir = tmp_path_factory.mktemp("wire") / "run"
    cfg = tiny_cfg(run_dir)
    train_wire(cfg, [tiny_llama, tiny_qwen], sentence)
    return run_dir


def test_run_directory_and_diagnostics(trained):
    rows = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in rows) and any("eval/gold_nll_mean" in r for r in rows)
    diags = [json.loads(x) for x in (trained / "diagnostics.jsonl").read_text().splitlines()]
    latent = [d for d in diags if not d["text_batch"]]
    assert latent, "no latent-batch diagnostics"
    for key in ("tiny_llama/answer_ce", "tiny_llama/first_ce", "tiny_llama/kd", "tiny_qwen/k_ce"):
        assert latent[0]["grad_norms"][key] > 0
    model_diag = latent[0]["models"]["tiny_qwen"]
    assert {"first_top1", "first_top5", "first_entropy", "first_margin", "predicted_first_tokens"} <= set(
        model_diag
    )
    assert model_diag["prefix_rms"] == pytest.approx(
        model_diag["embed_rms"], rel=0.2
    )  # calibrated (+ affine)
    assert {d["phase"] for d in diags} == {"stage_a", "stage_b"}
    assert (trained / "best" / "model.safetensors").is_file() and (
        trained / "model" / "config.json"
    ).is_file()


def test_checkpoint_roundtrip_reproduces_eval(trained, tiny_llama, tiny_qwen, sentence):
    lms = [tiny_llama, tiny_qwen]
    cfg = load_run_config(WireRunConfig, trained)
    saved = WireModel.from_pretrained(trained / "model").eval()
    rebuilt = WireModel(saved.config)
    latest = sorted((trained / "checkpoints").iterdir(), key=lambda p: int(p.name.split("_")[1]))[-1]
    load_model_weights(rebuilt, latest).eval()
    features, _ = build_features(cfg.encoder, lms, sentence)
    dev = synthetic_squad(5, seed=11)
    pca_texts = [format_content(e.context, e.question) for e in synthetic_squad(6, seed=12)]
    a, rec_a = evaluate_wire(cfg, saved, lms, features, dev, pca_texts, modes=["token_budget"])
    b, rec_b = evaluate_wire(cfg, rebuilt, lms, features, dev, pca_texts, modes=["token_budget"])
    assert [r["prediction"] for r in rec_a] == [r["prediction"] for r in rec_b]
    assert a["models"] == b["models"]
    metrics = evaluate_run(trained, ["data.dev_limit=4"], checkpoint="last", lms=lms, sentence=sentence)
    assert set(metrics["models"]["tiny_llama"]) >= {"text", "token_budget", "pca", "mean_pool", "latent"}
    assert (trained / "eval" / "report.md").is_file()
    lines = (trained / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 2 * len(cfg.eval.baselines + ["latent"])


def test_training_lowers_answer_nll(tmp_path, tiny_tokenizer):
    # A random tiny LM with 0.02 init barely reacts to its input; a wider init gives it opinions.
    lm = FrozenLM(build_model("llama", len(tiny_tokenizer), init=0.3), tiny_tokenizer, "tiny_llama")
    cfg = tiny_cfg(
        tmp_path / "overfit",
        "byte",
        (
            "models=[tiny_llama]",
            "data.train_limit=4",
            "loss.kd=0",
            "train.max_steps=30",
            "train.lr=0.01",
            "phases=[{name: stage_a, steps: 30}]",
            "train.eval_every=0",
            "train.warmup_steps=0",
        ),
    )
    train_wire(cfg, [lm])
    rows = [json.loads(x) for x in (tmp_path / "overfit" / "metrics.jsonl").read_text().splitlines()]
    nll = [r["train/tiny_llama/answer_nll"] for r in rows if "train/tiny_llama/answer_nll" in r]
    assert nll[-1] < 0.9 * nll[0]


def test_phases_and_text_batches():
    phases = [PhaseConfig(name="a", steps=3), PhaseConfig(name="b", steps=4, text_warmup_steps=2)]
    assert [(p.name, s) for p, s in (phase_at(phases, k) for k in range(7))] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    assert [is_text_batch(phases[1], s, 0, 0) for s in range(4)] == [False, True, False, False]
    tail = PhaseConfig(name="t", steps=1000, text_tail_prob=0.25)
    share = sum(is_text_batch(tail, s, s, 0) for s in range(1000)) / 1000
    assert 0.2 < share < 0.3


def test_generation_backs_off_when_reconstruction_is_poor(tmp_path, tiny_llama):
    cfg = tiny_cfg(
        tmp_path / "backoff",
        "byte",
        (
            "models=[tiny_llama]",
            "loss.kd=0",
            "loss.recon_cos_threshold=0.99",
            "loss.backoff_factor=0.25",
            "train.max_steps=2",
            "phases=[{name: stage_a, steps: 2}]",
            "train.eval_every=0",
            "train.log_every=1",
        ),
    )
    train_wire(cfg, [tiny_llama])
    rows = [json.loads(x) for x in (tmp_path / "backoff" / "metrics.jsonl").read_text().splitlines()]
    scales = [r["train/tiny_llama/gen_scale"] for r in rows if "train/tiny_llama/gen_scale" in r]
    cosines = [r["train/tiny_llama/recon_cos"] for r in rows if "train/tiny_llama/recon_cos" in r]
    assert max(cosines) < 0.99 and scales == [0.25, 0.25]
    state = json.loads((tmp_path / "backoff" / "checkpoints" / "step_2" / "state.json").read_text())
    assert "tiny_llama" in state["extra"]["recon_cos_ema"]


def test_teacher_cache_key_changes_with_the_anchor_text_and_precision(monkeypatch, tmp_path):
    """The KD targets depend on the anchor's trailing whitespace (it starts the answer ids) and on the
    frozen model's precision: each is its own cache entry, never a stale one."""
    import torch

    from latentlm.wire import task as task_module
    from latentlm.wire.data import QAItem

    keys = []

    def recording_cache(cache_dir, key, compute):
        keys.append(key)
        return {"ids": None, "logp": None}

    monkeypatch.setattr(task_module, "cached_arrays", recording_cache)
    parts = type("Parts", (), {"prefix": [1], "suffix": [2], "anchor": [3]})()
    items = [QAItem(index=0, content="Paris is in France.", answer="Paris", answers=("Paris",))]
    for anchor, dtype in (
        ("Answer: ", torch.float32),
        ("Answer:", torch.float32),
        ("Answer: ", torch.bfloat16),
    ):
        lm = type("LM", (), {"name": "smollm2", "parts": parts, "anchor_text": anchor, "dtype": dtype})()
        task_module.TeacherCache.build(lm, items, 3, 8, 16, str(tmp_path))
    assert len(set(keys)) == 3
