"""The skeleton contract: a trained run's saved model reloads with the same held-out loss, without the data;
the "Use a trained model in Python" lines of docs/diffusion.md run as written."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from latentlm.core.config import load_config
from latentlm.diffusion import LatentDiffusionLM
from latentlm.diffusion.cli import main
from latentlm.diffusion.config import DiffusionConfig
from latentlm.diffusion.data import DirectFileDataset
from latentlm.diffusion.evaluate import heldout_nelbo

DOC = Path(__file__).resolve().parents[2] / "docs" / "diffusion.md"


def _train(tiny_overrides, run_dir, *extra):
    assert main(["train", *tiny_overrides, f"run_dir={run_dir}", *extra]) == 0
    return [
        r
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "eval/nelbo_per_token" in r
    ]


def test_from_pretrained_gives_the_runs_own_evaluation_loss(tiny_overrides, tiny_data):
    run_dir = tiny_data["root"] / "run"
    evals = _train(
        tiny_overrides, run_dir, "data.compact_vocab=true", "data.max_train_examples=4", "batch_size=4"
    )
    model = LatentDiffusionLM.from_pretrained(run_dir / "model").eval()
    assert model.config.vocab_size < 20 and model.config.seq_len == 8 and model.config.latent_dim == 6
    cfg = load_config(DiffusionConfig, run_dir / "config.yaml")
    val = DirectFileDataset(
        tiny_data["token_dir"],
        tiny_data["latent_dir"],
        "val",
        True,
        cfg.eval.max_examples,
        id_map=_id_map(model),
    )
    again = heldout_nelbo(model, val, num_draws=1, seed=cfg.eval.seed)
    assert again["nelbo_per_token"] == evals[-1]["eval/nelbo_per_token"]
    # forward returns the loss terms (transformers' convention)
    batch = torch.stack([val[i]["input_ids"] for i in range(4)])
    latent = torch.stack([val[i]["latent"] for i in range(4)])
    out = model(batch, latent, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.loss, out.text_nelbo + out.latent_mse)


def _id_map(model):
    id_map = torch.full((20,), int(model.config.unk_token_id))
    id_map[model.original_ids] = torch.arange(model.config.vocab_size)
    return id_map.numpy()


def test_use_a_trained_model_in_python_snippet(tiny_overrides, tiny_data, monkeypatch):
    meta_file = Path(tiny_data["token_dir"]) / "meta.json"
    meta = json.loads(meta_file.read_text()) | {"tokenizer": "minilm"}
    meta_file.write_text(json.dumps(meta))
    run_dir = tiny_data["root"] / "runs" / "diffusion_tiny"
    _train(tiny_overrides, run_dir, "train.max_steps=1")
    shutil.rmtree(tiny_data["token_dir"])  # the saved model needs no training data
    section = DOC.read_text().split("## Use a trained model in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 5
    monkeypatch.chdir(tiny_data["root"])
    printed = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append(a))
    exec(compile(code, str(DOC), "exec"), {})
    (samples,) = printed[-1]
    assert isinstance(samples, list) and len(samples) == 4 and all(isinstance(t, str) for t in samples)


def test_overflowing_bound_is_recorded_not_raised(tiny_overrides, tiny_data):
    import math

    from latentlm.diffusion.evaluate import safe_perplexity

    assert safe_perplexity(1e6, 10) == math.inf and safe_perplexity(math.log(7.0) * 3, 3) == pytest.approx(
        7.0
    )
    run_dir = tiny_data["root"] / "run"
    _train(tiny_overrides, run_dir, "train.max_steps=1")
    model = LatentDiffusionLM.from_pretrained(run_dir / "model").eval()
    with torch.no_grad():
        model.rwkv.token_embedding.weight.mul_(1e4)  # absurd logits: a NELBO of millions of nats
    val = DirectFileDataset(tiny_data["token_dir"], tiny_data["latent_dir"], "val", True, 8)
    bounds = heldout_nelbo(model, val, num_draws=1)
    assert bounds["ppl_bound"] == math.inf and bounds["ppl_bound_overflow"] == 1.0
    with pytest.raises(ValueError, match="vae_latent_time"):
        heldout_nelbo(model, val, vae_latent_time=1.0)
    assert math.isfinite(bounds["nelbo_per_token"])
