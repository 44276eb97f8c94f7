"""Seed-001 stages on tiny models, the stage judge, config files, and CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentlm.core.config import ConfigError, load_config
from latentlm.wire.cli import main
from latentlm.wire.config import WireRunConfig
from latentlm.wire.stages import judge, run_stage

REPO = Path(__file__).resolve().parents[2]


def test_judge_scales_seed_targets_to_text_f1():
    ok = judge(3, text_f1=41.0, f1=15.0, first_top1=0.2)  # target 30/82 of 41 = 15
    assert ok["passed"] and ok["target_fraction_of_text"] == pytest.approx(30 / 82)
    assert not judge(3, text_f1=41.0, f1=14.9, first_top1=None)["passed"]
    assert not judge(1, text_f1=0.0, f1=0.0, first_top1=None)["passed"]


def _overrides(tmp_path: Path, name: str) -> list[str]:
    return [
        f"run_dir={tmp_path / name}",
        "models=[tiny_llama,tiny_qwen]",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.dev_limit=3",
        "eval.baselines=[text,token_budget]",
    ]


def test_stage1_adapter_only(tmp_path, tiny_llama, tiny_qwen):
    report = run_stage(1, str(REPO / "configs/wire/tiny.yaml"), _overrides(tmp_path, "s1"), lms=[tiny_llama])
    assert report["model"] == "tiny_llama" and report["stage"] == 1
    assert 0 < report["pca_explained_variance"] <= 1
    assert report["passed"] == (report["text_f1"] > 0 and report["f1"] >= 70 / 82 * report["text_f1"])
    assert report["nearest"]["f1"] == report["adapter_nearest"]["f1"]
    assert (tmp_path / "s1" / "stage_report.json").is_file()


def test_stage4_shared_latent_two_models(tmp_path, tiny_llama, tiny_qwen):
    report = run_stage(
        4, str(REPO / "configs/wire/tiny.yaml"), _overrides(tmp_path, "s4"), lms=[tiny_llama, tiny_qwen]
    )
    assert [r["model"] for r in report["models"]] == ["tiny_llama", "tiny_qwen"]
    assert report["passed"] == all(r["passed"] for r in report["models"])


def test_every_config_loads():
    for path in sorted((REPO / "configs" / "wire").glob("*.yaml")):
        cfg = load_config(WireRunConfig, path)
        assert sum(p.steps for p in cfg.phases) == cfg.train.max_steps


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="latent.private_length"):
        load_config(WireRunConfig, REPO / "configs/wire/tiny.yaml", ["latent.private_length=8"])
    with pytest.raises(ConfigError, match="phases: steps add up to 8 but train.max_steps is 9"):
        load_config(WireRunConfig, REPO / "configs/wire/tiny.yaml", ["train.max_steps=9"])
    with pytest.raises(ConfigError, match="encoder.kind"):
        load_config(WireRunConfig, REPO / "configs/wire/tiny.yaml", ["encoder.kind=bytes"])


def test_cli_errors(capsys, tmp_path):
    assert main(["eval"]) == 2
    assert "run_dir" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
