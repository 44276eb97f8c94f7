"""Shipped configs validate and round-trip; the CLI trains and resumes; real-model precompute/eval/sample."""

from pathlib import Path

import pytest
import yaml

from latentlm.core.config import ConfigError, config_from_dict, config_to_dict, load_config
from latentlm.diffusion.cli import main, resolve_config_name
from latentlm.diffusion.config import DiffusionConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "diffusion").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(DiffusionConfig, path)
    again = config_from_dict(DiffusionConfig, config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)
    assert cfg.training.unfreeze_patterns == ["rwkv.*time_mix", "rwkv.*channel_mix"]


def test_seed_overrides_parse():
    cfg = load_config(
        DiffusionConfig,
        resolve_config_name("rwkv_mmdit"),
        [
            "training.stage_schedule=stage2_variational",
            'training.unfreeze_patterns=["rwkv.*time_mix"]',
            "training.loss_type=sequential",
            'training.sequential_schedule=[{"type": "stage1_coupling", "steps": 10000},'
            ' {"type": "l2t", "steps": 5000}]',
            "model.latent_prior_type=learned_gaussian",
            "loss.kl_weight=0.001",
        ],
    )
    assert cfg.training.unfreeze_patterns == ["rwkv.*time_mix"]
    assert [(p.type, p.steps) for p in cfg.training.sequential_schedule] == [
        ("stage1_coupling", 10000),
        ("l2t", 5000),
    ]
    with pytest.raises(ConfigError, match="latent_pred_from"):
        load_config(DiffusionConfig, None, ["model.latent_pred_from=middle"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(DiffusionConfig, None, ["training.num_epoch=3"])


def test_cli_train_and_resume(tiny_overrides, tiny_data, capsys):
    run_dir = tiny_data["root"] / "run"
    args = [*tiny_overrides, f"run_dir={run_dir}", "training.checkpoint_every=2"]
    assert main(["train", *args, "training.max_steps=2"]) == 0
    assert main(["train", *args, "training.max_steps=4"]) == 0  # resumes from step 2
    out = capsys.readouterr().out
    assert "resumed from" in out and "finished at step 4" in out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["training"]["max_steps"] == 4
    assert main(["train", "--config-name", "no_such_config"]) == 2


def test_config_name_with_overrides_in_any_order():
    from latentlm.diffusion.cli import _parse

    command, path, overrides = _parse(
        ["train", "--config-name", "rwkv_mmdit", "model.d_model=64", "run_dir=x"]
    )
    assert (
        command == "train"
        and path.name == "rwkv_mmdit.yaml"
        and overrides == ["model.d_model=64", "run_dir=x"]
    )
    assert _parse(["eval", "run_dir=x", "--config-name", "tiny"])[1].name == "tiny.yaml"


@pytest.mark.real_model
@pytest.mark.slow
def test_real_precompute_train_eval(tmp_path, data_dir):
    """MiniLM latents for 80 Shakespeare sentences, 6 training steps, eval with the SmolLM2 judge, sample."""
    out = tmp_path / "data"
    assert (
        main(
            [
                "precompute-latents",
                f"corpus={data_dir / 'tinyshakespeare' / 'input.txt'}",
                "corpus_format=shakespeare",
                f"out_dir={out}",
                "max_sentences=80",
                "seq_len=16",
                "val_fraction=0.2",
            ]
        )
        == 0
    )
    meta = yaml.safe_load((out / "tokens" / "meta.json").read_text())
    assert meta["num_train"] == 64 and meta["num_val"] == 16 and meta["mask_token_id"] == 103
    run_dir = tmp_path / "run"
    common = [
        f"run_dir={run_dir}",
        f"data.token_dir={out / 'tokens'}",
        f"data.latent_dir={out / 'latents'}",
        "model.d_model=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "data.batch_size=16",
        "training.max_steps=6",
        "eval.max_examples=16",
        "eval.num_samples=4",
        "sampling.num_steps=4",
        "eval.nelbo_samples=1",
    ]
    assert main(["train", *common]) == 0
    assert main(["eval", *common]) == 0
    metrics = yaml.safe_load((run_dir / "eval_metrics.json").read_text())
    assert metrics["nelbo"]["ppl_bound"] > 1.0
    for key in ("t2l", "l2t"):
        assert -1.0 <= metrics[key]["cosine"] <= 1.0 and 0.0 <= metrics[key]["recall_at_1"] <= 1.0
    assert metrics["samples"]["reference"]["generative_perplexity"] > 1.0
    assert {c["check"] for c in metrics["checklist"]} >= {
        "forward shapes",
        "freezing (l2t: latent stream frozen)",
    }
    assert (run_dir / "report.md").is_file() and (run_dir / "plots" / "t2l_cosine.png").is_file()
    assert main(["sample", *common, "sampling.mode=joint", "sampling.num_samples=2"]) == 0
    assert len((run_dir / "samples_joint.jsonl").read_text().splitlines()) == 2
