"""Shipped configs validate and round-trip; the CLI trains and resumes; real-model precompute/eval/sample."""

from pathlib import Path

import pytest
import yaml

from latentlm.core.config import ConfigError, config_from_dict, config_to_dict, load_config
from latentlm.diffusion.cli import main
from latentlm.diffusion.config import DiffusionConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "diffusion"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(DiffusionConfig, path)
    again = config_from_dict(DiffusionConfig, config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)
    assert cfg.train.unfreeze_patterns == ["rwkv.*time_mix", "rwkv.*channel_mix"]


def test_seed_overrides_parse():
    cfg = load_config(
        DiffusionConfig,
        CONFIG_DIR / "rwkv_mmdit.yaml",
        [
            "train.stage_schedule=stage2_variational",
            'train.unfreeze_patterns=["rwkv.*time_mix"]',
            "train.loss_type=sequential",
            'train.sequential_schedule=[{"type": "stage1_coupling", "steps": 10000},'
            ' {"type": "l2t", "steps": 5000}]',
            "model.latent_prior_type=learned_gaussian",
            "loss.kl_weight=0.001",
        ],
    )
    assert cfg.train.unfreeze_patterns == ["rwkv.*time_mix"]
    assert [(p.type, p.steps) for p in cfg.train.sequential_schedule] == [
        ("stage1_coupling", 10000),
        ("l2t", 5000),
    ]
    with pytest.raises(ConfigError, match="latent_pred_from"):
        load_config(DiffusionConfig, None, ["model.latent_pred_from=middle"])
    with pytest.raises(ConfigError, match="model.latent_placement"):
        load_config(DiffusionConfig, None, ["model.latent_placement=middle"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(DiffusionConfig, None, ["train.num_epoch=3"])


def test_cli_train_and_resume(tiny_overrides, tiny_data, capsys):
    run_dir = tiny_data["root"] / "run"
    args = [*tiny_overrides, f"run_dir={run_dir}", "train.checkpoint_every=2"]
    assert main(["train", *args, "train.max_steps=2"]) == 0
    assert main(["train", *args, "train.max_steps=4"]) == 0  # resumes from step 2
    out = capsys.readouterr().out
    assert "resumed from" in out and "finished at step: 4" in out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 4
    assert (run_dir / "model" / "config.json").is_file()
    assert main(["train", "no_such_config.yaml"]) == 2


def test_cli_help_lists_fields_with_docstrings(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "model.d_model: int = 256" in out and "Width of both streams." in out
    assert "loss.free_bits" in out and "sampling.float64" in out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.d_model=0", "model.d_model: must be >= 1, got 0"),
        ("batch_size=0", "batch_size: must be >= 1, got 0"),
        ("eval.num_samples=0", "eval.num_samples: must be >= 1"),
        ("loss.free_bits=-1", "loss.free_bits: must be >= 0"),
        ("sampling.latent_guidance_scale=-2", "sampling.latent_guidance_scale: must be >= 0"),
        ("sampling.joint_guidance_scale=4", "sampling.joint_guidance_scale: applies to joint_order=latent"),
        ("sampling.remasking=conf", "sampling.remasking: must be one of none, cap, loop"),
        ("sampling.remask_eta=1.5", "sampling.remask_eta: must be in [0, 1], got 1.5"),
        ("sampling.loop_alpha_on=1", "sampling.loop_alpha_on: must be in (0, 1), got 1"),
    ],
)
def test_out_of_range_fields_are_refused_with_exit_2(override, message, capsys):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_t2l_guidance_falls_back_to_the_shared_scale():
    assert load_config(DiffusionConfig, None, ["sampling.guidance_scale=8"]).sampling.t2l_guidance == 8.0
    both = ["sampling.guidance_scale=8", "sampling.latent_guidance_scale=16"]
    assert load_config(DiffusionConfig, None, both).sampling.t2l_guidance == 16.0


def test_bad_data_is_a_one_line_error_naming_the_file(tiny_overrides, tiny_data, capsys):
    import numpy as np

    latent_file = f"{tiny_data['latent_dir']}/train.npy"
    latents = np.load(latent_file)
    np.save(latent_file, latents[:-1])
    assert main(["train", *tiny_overrides, f"run_dir={tiny_data['root'] / 'r1'}"]) == 2
    assert "train.npy" in capsys.readouterr().err
    latents[3, 2] = np.nan
    np.save(latent_file, latents)
    assert main(["train", *tiny_overrides, f"run_dir={tiny_data['root'] / 'r2'}"]) == 2
    err = capsys.readouterr().err
    assert "latents/train.npy" in err and "NaN" in err
    np.save(latent_file, np.nan_to_num(latents))
    token_file = f"{tiny_data['token_dir']}/val.npy"
    ids = np.load(token_file)
    ids[0, 0] = 999
    np.save(token_file, ids)
    assert main(["train", *tiny_overrides, f"run_dir={tiny_data['root'] / 'r3'}"]) == 2
    err = capsys.readouterr().err
    assert "tokens/val.npy" in err and "out of range" in err and "first 999" in err


@pytest.mark.parametrize("bad_id", [20, -1], ids=["too_large", "negative"])
def test_bad_ids_with_compact_vocab_are_the_same_one_line_error(tiny_overrides, tiny_data, bad_id, capsys):
    import numpy as np

    token_file = f"{tiny_data['token_dir']}/train.npy"
    ids = np.load(token_file)
    ids[1, 0] = bad_id  # tiny_data's vocabulary has 20 ids
    np.save(token_file, ids)
    args = [*tiny_overrides, "data.compact_vocab=true", f"run_dir={tiny_data['root'] / 'r'}"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "tokens/train.npy" in err and f"first {bad_id}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.real_model
@pytest.mark.slow
def test_real_precompute_train_eval(tmp_path, data_dir):
    """MiniLM latents for 80 Shakespeare sentences, 6 training steps, eval with the SmolLM2 judge, sample."""
    out = tmp_path / "data"
    folders = [f"data.token_dir={out / 'tokens'}", f"data.latent_dir={out / 'latents'}"]
    assert (
        main(
            [
                "precompute-latents",
                *folders,
                f"data.prepare.corpus={data_dir / 'tinyshakespeare' / 'input.txt'}",
                "data.prepare.corpus_format=shakespeare",
                "data.prepare.max_sentences=80",
                "data.prepare.seq_len=16",
                "data.prepare.val_fraction=0.2",
            ]
        )
        == 0
    )
    meta = yaml.safe_load((out / "tokens" / "meta.json").read_text())
    assert meta["num_train"] == 64 and meta["num_val"] == 16 and meta["mask_token_id"] == 103
    run_dir = tmp_path / "run"
    common = [
        f"run_dir={run_dir}",
        *folders,
        "model.d_model=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "batch_size=16",
        "train.max_steps=6",
        "eval.max_examples=16",
        "eval.num_samples=4",
        "sampling.num_steps=4",
        "eval.nelbo_samples=1",
        "data.compact_vocab=true",
    ]
    assert main(["train", *common]) == 0
    evaluated = [f"run_dir={run_dir}", "eval.num_samples=4", "sampling.num_steps=4", "eval.nelbo_samples=1"]
    assert main(["eval", *evaluated]) == 0
    metrics = yaml.safe_load((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["nelbo"]["ppl_bound"] > 1.0
    for key in ("t2l", "l2t"):
        assert -1.0 <= metrics[key]["cosine"] <= 1.0 and 0.0 <= metrics[key]["recall_at_1"] <= 1.0
        likelihood = metrics[f"{key}_likelihood"]  # the PMI retrieval among the same 16 candidates
        assert 0.0 <= likelihood["recall_at_1"] <= 1.0 and 1.0 <= likelihood["mean_rank"] <= 16.0
        assert likelihood["num_candidates"] == 16 and likelihood["num_draws"] == 4
    assert metrics["samples"]["reference"]["generative_perplexity"] > 1.0
    assert {c["check"] for c in metrics["checklist"]} >= {
        "forward shapes",
        "freezing (l2t: latent stream frozen)",
    }
    assert metrics["sampling"] == {
        "judge": "smollm2",
        "sampling_precision": "float64",
        "sampling_steps": 4,
        "joint_order": "together",
        "joint_guidance_scale": 1.0,
        "unmask_order": "random",
        "remasking": "none",
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
    }
    assert (run_dir / "eval" / "plots" / "t2l_cosine.png").is_file()
    unk = f"{metrics['heldout_tokens_mapped_to_unk']} of the {metrics['heldout_tokens']} held-out tokens"
    assert f"{unk} mapped to [UNK]" in (run_dir / "eval" / "report.md").read_text()
    for order in ("together", "latent_first"):
        joint = ["sampling.mode=joint", "sampling.num_samples=2", f"sampling.joint_order={order}"]
        assert main(["sample", f"run_dir={run_dir}", *joint]) == 0
        assert len((run_dir / "samples_joint.jsonl").read_text().splitlines()) == 2


@pytest.mark.real_model
@pytest.mark.slow
def test_tiny_yaml_trains_as_written(tmp_path, data_dir, monkeypatch):
    """`latentlm diffusion train configs/diffusion/tiny.yaml` from the repo root (fewer steps/sentences)."""
    monkeypatch.setenv("LATENTLM_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    config = CONFIG_DIR / "tiny.yaml"
    args = ["train.max_steps=2", "data.prepare.max_sentences=60"]
    assert main(["train", str(config), *args]) == 0
    run_dir = tmp_path / "runs" / "diffusion_tiny"
    assert (run_dir / "model" / "model.safetensors").is_file()
    meta = yaml.safe_load((tmp_path / "runs/diffusion_data/pydocs_tiny/tokens/meta.json").read_text())
    assert meta["corpus_format"] == "pydocs" and meta["num_train"] + meta["num_val"] == 60
