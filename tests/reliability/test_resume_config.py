"""Fault injection: resuming a run with a changed config."""

import json

import pytest
import yaml

from latentlm.core import ConfigError, RunDir
from latentlm.core.lifecycle import load_finished_run
from tests.reliability.faults import ToyRunConfig, toy_config, train_run


def test_changed_lr_and_max_steps_are_applied_and_recorded(tmp_path):
    train_run(toy_config(tmp_path, "train.checkpoint_every=3"))
    _, state = train_run(
        toy_config(tmp_path, "train.checkpoint_every=3", "train.lr=0.005", "train.max_steps=10")
    )
    assert state.step == 10
    changes = [json.loads(line) for line in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"step": 6, "changes": {"train.lr": [0.01, 0.005], "train.max_steps": [6, 10]}}]
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.005 and saved["train"]["max_steps"] == 10
    lrs = {r["step"]: r["train/lr"] for r in RunDir(tmp_path).read_metrics() if "train/lr" in r}
    assert [lrs[s] for s in range(1, 11)] == [0.01] * 6 + [0.005] * 4


@pytest.mark.parametrize(
    ("override", "listed"),
    [
        ("model.hidden=32", "model.hidden: 16 -> 32"),
        ("train.warmup_steps=5", "train.warmup_steps: 0 -> 5"),
        ("train.seed=3", "train.seed: 0 -> 3"),
    ],
)
def test_other_changes_are_refused_and_nothing_is_overwritten(tmp_path, override, listed):
    train_run(toy_config(tmp_path, "train.checkpoint_every=3"))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "tb" not in p.parts}
    with pytest.raises(ConfigError, match="cannot resume with these changes") as err:
        train_run(toy_config(tmp_path, "train.checkpoint_every=3", "train.lr=0.005", override))
    assert listed in str(err.value) and "train.lr" not in str(err.value).split("fields that may")[0]
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "tb" not in p.parts}
    assert after == before  # config.yaml, checkpoints, model/, metrics untouched
    assert not (tmp_path / "config_changes.jsonl").exists()
    assert load_finished_run(tmp_path, ToyRunConfig).model.hidden == 16  # eval still reads the run


def test_unchanged_config_resumes_without_a_record(tmp_path):
    train_run(toy_config(tmp_path))
    train_run(toy_config(tmp_path))
    assert not (tmp_path / "config_changes.jsonl").exists()


def test_a_run_that_never_trained_takes_any_config(tmp_path):
    RunDir(tmp_path).save_config(toy_config(tmp_path))
    train_run(toy_config(tmp_path, "model.hidden=8"))
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["hidden"] == 8


def _drop_saved_field(run_dir, section: str, field: str) -> None:
    """Make the saved config look like one written before `section.field` existed."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved[section][field]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))


def test_a_field_added_since_the_run_resumes_at_its_default_only(tmp_path):
    train_run(toy_config(tmp_path, "train.checkpoint_every=3"))
    _drop_saved_field(tmp_path, "model", "hidden")
    _, state = train_run(toy_config(tmp_path, "train.checkpoint_every=3", "train.max_steps=8"))
    assert state.step == 8  # model.hidden absent -> 16, its default: the run resumed
    _drop_saved_field(tmp_path, "model", "hidden")
    with pytest.raises(ConfigError, match=r"model.hidden: \(absent\) -> 8"):
        train_run(toy_config(tmp_path, "train.checkpoint_every=3", "train.max_steps=10", "model.hidden=8"))
