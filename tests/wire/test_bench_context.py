"""benchmarks/wire_context.py's train and evaluate steps on tiny models (the real run needs hours of CPU)."""

from __future__ import annotations

import argparse
import time

from latentlm.core.checkpoint import read_json
from latentlm.core.config import load_run_config, save_config
from latentlm.wire.config import WireRunConfig
from tests.wire.test_context import context_cfg


def test_benchmark_rows_have_the_issue_fields(tmp_path, tiny_llama, tiny_qwen, sentence):
    from benchmarks import wire_context

    cfg = context_cfg(tmp_path / "run", ("data.dev_limit=3", "train.eval_every=0", "latent.length=40"))
    config_path = tmp_path / "context_tiny.yaml"
    save_config(cfg, config_path)
    args = argparse.Namespace(
        config=str(config_path),
        run_dir=str(tmp_path / "run"),
        steps=2,
        batch=2,
        train=4,
        dev=10,
        ratios=[4, 2],
        methods=["latent", *wire_context.BASELINES],
        ae_only_fraction=0.5,
        set=[],
        select_step0=False,
    )
    lms = [tiny_llama, tiny_qwen]
    info = wire_context.train(args, lms, sentence)
    assert info["4x"]["steps"] == 2 and read_json(tmp_path / "run" / "4x" / "bench_train.json")["steps"] == 2
    assert load_run_config(WireRunConfig, tmp_path / "run" / "2x").latent.ratio == 2
    result = wire_context.evaluate(args, lms, sentence, deadline=time.time() + 600)
    rows = result["rows"]
    assert {"compression", "model", "method", "f1", "em", "positions"} <= set(rows[0])
    at4 = {(r["model"], r["method"]) for r in rows if r["compression"] == 4}
    assert at4 == {(m, x) for m in ("tiny_llama", "tiny_qwen") for x in ["latent", *wire_context.BASELINES]}
    at2 = {r["method"] for r in rows if r["compression"] == 2}
    assert at2 == {"latent", *wire_context.BASELINES}  # a latent per ratio; ratio-free rows repeated
    latent = next(r for r in rows if r["method"] == "latent" and r["model"] == "tiny_qwen")
    budget = next(
        r
        for r in rows
        if r["method"] == "token_budget" and r["model"] == "tiny_qwen" and r["compression"] == 4
    )
    assert latent["positions"] == budget["positions"] > 0
    half = next(
        r
        for r in rows
        if r["method"] == "token_budget" and r["model"] == "tiny_qwen" and r["compression"] == 2
    )
    assert half["positions"] > budget["positions"]
    assert result["per_ratio"]["4x"]["questions"] == 10
    kept = (tmp_path / "run" / "4x" / "bench_records_4x.jsonl").read_text().splitlines()
    assert len(kept) == 10 * 2 * (1 + len(wire_context.BASELINES))  # questions x models x methods
    wire_context.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_paired_differences_by_hand():
    from benchmarks import wire_context

    f1 = {"latent": [50.0, 0.0, 100.0, 20.0], "anchor_budget": [40.0, 0.0, 50.0, 30.0]}
    records = [
        {"compression": 4, "model": "m", "method": method, "id": f"q{i}", "f1": value}
        for method, values in f1.items()
        for i, value in enumerate(values)
    ]
    (row,) = wire_context.paired_differences(records, samples=2000)
    assert (row["baseline"], row["questions"]) == ("anchor_budget", 4)
    assert row["f1_difference"] == (10 + 0 + 50 - 10) / 4
    assert (row["wins"], row["ties"], row["losses"]) == (2, 1, 1)
    assert -10 <= row["ci95"][0] <= row["f1_difference"] <= row["ci95"][1] <= 50
