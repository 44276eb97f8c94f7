"""Skeleton (issue 9): tiny.yaml trains as written, the saved model reloads with `from_pretrained` and
scores the held-out set exactly as the run's own evaluation did, the docs' Python snippet runs, and bad
input ends in one line naming the field or file with exit status 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from latentlm.core.config import load_config
from latentlm.lht import LHTForMaskedLM, cli
from latentlm.lht.config import LHTRunConfig
from latentlm.lht.evaluate import heldout_metrics
from latentlm.lht.task import LHTPretrainTask
from latentlm.teachers import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "lht" / "tiny.yaml"


def fast_tiny(tmp_path) -> list[str]:
    """tiny.yaml as written, shortened to a few steps and a small held-out set."""
    return [
        f"run_dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.max_steps=3",
        "train.checkpoint_every=0",
        "data.max_documents=30",
        "eval.max_chunks=6",
        "eval.probe_max_documents=20",
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    tmp_path = tmp_path_factory.mktemp("tiny")
    assert cli.main(["train", str(TINY), *fast_tiny(tmp_path)]) == 0
    assert cli.main(["eval", f"run_dir={tmp_path / 'run'}"]) == 0
    return tmp_path / "run"


@pytest.mark.real_model
def test_tiny_yaml_trains_and_from_pretrained_gives_the_runs_score(tiny_run):
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    model = LHTForMaskedLM.from_pretrained(tiny_run / "model").eval()
    assert model.config.tokenizer == "minilm"
    cfg = load_config(LHTRunConfig, tiny_run / "config.yaml")
    task = LHTPretrainTask(cfg, model.load_tokenizer())
    again = heldout_metrics(task, model)
    assert again["perplexity"] == pytest.approx(metrics["heldout"]["perplexity"], rel=1e-6)
    assert again["masked_tokens"] == metrics["heldout"]["masked_tokens"] > 0
    assert (tiny_run / "eval" / "report.md").is_file()


@pytest.mark.real_model
def test_python_snippet_of_the_docs_runs(tiny_run, monkeypatch):
    text = (REPO / "docs" / "lht.md").read_text()
    section = text.split("## Use a trained model in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 5
    monkeypatch.chdir(tiny_run.parent)
    (tiny_run.parent / "runs").mkdir(exist_ok=True)
    link = tiny_run.parent / "runs" / "lht-tiny"
    if not link.exists():
        link.symlink_to(tiny_run)
    scope: dict = {}
    exec(compile(code, "docs/lht.md", "exec"), scope)
    answers = scope["model"].fill_mask("The [MASK] statement raises an exception.")
    assert len(answers) == 1 and len(answers[0]) == 5
    assert all(0 <= p <= 1 for _, p in answers[0])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model.hidden_size=0", "model.hidden_size"),
        ("model.hierarchy.target_ratios=[0.5,4.0]", "model.hierarchy.target_ratios"),
        ("model.hierarchy.router_layers=[1,5]", "model.hierarchy.router_layers"),
        ("model.hierarchy.router_layers=[2,1]", "model.hierarchy.router_layers"),
        ("model.hierarchy.router_layers=[-1,1]", "model.hierarchy.router_layers"),
        ("model.edges.same_unit=false model.edges.local_window=0", "model.edges.local_window"),
        ("model.backend=fast", "model.backend"),
        ("model.hierarchy.boundaries=oracle", "model.hierarchy.boundaries"),
        ("eval.probe_folds=1", "eval.probe_folds"),
        ("batch_size=0", "batch_size"),
    ],
)
def test_bad_fields_exit_2_naming_the_field(override, field, capsys):
    assert cli.main(["train", str(TINY), *override.split()]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "Traceback" not in err


@pytest.mark.real_model
def test_non_utf8_source_is_refused_naming_file_and_offset(tmp_path, capsys):
    docs = tmp_path / "docs" / "library"
    docs.mkdir(parents=True)
    (docs / "good.rst").write_text("Title\n=====\n\nSome text here. " * 20)
    (docs / "bad.rst").write_bytes(b"Title\n=====\n\nCaf\xe9 latin-1 bytes.\n")
    args = [
        f"run_dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.sources=[{{kind: rst, path: {tmp_path / 'docs'}}}]",
    ]
    assert cli.main(["train", str(TINY), *args]) == 2
    err = capsys.readouterr().err
    assert "bad.rst" in err and "byte offset 16" in err and "UTF-8" in err


@pytest.mark.real_model
def test_no_heldout_data_fails_before_training(tmp_path, capsys):
    docs = tmp_path / "docs" / "library"
    docs.mkdir(parents=True)
    (docs / "only.rst").write_text("Title\n=====\n\nSome text here. " * 20)
    args = [
        f"run_dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.sources=[{{kind: rst, path: {tmp_path / 'docs'}}}]",
        "data.heldout_fraction=0.0",
    ]
    assert cli.main(["train", str(TINY), *args]) == 2
    assert "data.heldout_fraction" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_help_lists_fields_with_docstrings(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "model.hierarchy.boundaries" in out and "model.backend" in out and "Chunks per micro-batch" in out


def test_tokenizer_is_saved_inside_the_model_folder(tmp_path):
    from latentlm.lht.config import LHTConfig

    model = LHTForMaskedLM(
        LHTConfig(
            vocab_size=40, hidden_size=8, num_heads=2, intermediate_size=8, num_layers=3, tokenizer="minilm"
        )
    )
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["config"]["tokenizer"] == "minilm"
    assert LHTForMaskedLM.from_pretrained(tmp_path / "m").config.tokenizer == "minilm"


def test_tokenizer_fixture_has_mask():
    assert load_tokenizer("minilm").mask_token_id is not None
