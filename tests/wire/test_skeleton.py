"""Issue 9 for wire: the role files, the saved model that reproduces the run's own evaluation, the
model's `forward` (transformers' convention), the CLI as written, and the documented Python lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentlm.core.config import load_run_config
from latentlm.data.synthetic_qa import synthetic_squad
from latentlm.wire import WireModel, WireOutput
from latentlm.wire.config import WireRunConfig
from latentlm.wire.evaluate import evaluate_run, evaluate_wire
from latentlm.wire.features import build_features
from latentlm.wire.losses import masked_token_ce
from latentlm.wire.task import train_wire
from tests.wire.test_task import tiny_cfg

REPO = Path(__file__).resolve().parents[2]
ROLE_FILES = ("__init__.py", "config.py", "model.py", "task.py", "evaluate.py", "cli.py", "data.py")


def test_role_files():
    folder = REPO / "src" / "latentlm" / "wire"
    assert all((folder / name).is_file() for name in ROLE_FILES)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama, tiny_qwen):
    run_dir = tmp_path_factory.mktemp("skeleton") / "run"
    cfg = tiny_cfg(run_dir, "byte", ("loss.kd=0", "grad_diag_every=0", "eval.baselines=[token_budget]"))
    train_wire(cfg, [tiny_llama, tiny_qwen])
    return run_dir


def test_from_pretrained_reproduces_the_runs_evaluation(tiny_run, tiny_llama, tiny_qwen):
    lms = [tiny_llama, tiny_qwen]
    metrics = evaluate_run(tiny_run, ["data.dev_limit=4"], checkpoint="last", lms=lms)
    saved = (tiny_run / "eval" / "metrics.json").read_text()
    assert '"latent"' in saved
    cfg = load_run_config(WireRunConfig, tiny_run, ["data.dev_limit=4"])
    wire = WireModel.from_pretrained(tiny_run / "model").eval()
    features, _ = build_features(cfg.encoder, lms)
    dev = synthetic_squad(4, seed=1)
    again, _ = evaluate_wire(cfg, wire, lms, features, dev, modes=["latent"])
    for name in ("tiny_llama", "tiny_qwen"):
        assert again["models"][name]["latent"] == metrics["models"][name]["latent"]


def test_forward_returns_the_mean_answer_loss(tiny_run, tiny_llama, tiny_qwen):
    wire = WireModel.from_pretrained(tiny_run / "model").eval().attach([tiny_llama, tiny_qwen])
    examples = synthetic_squad(3, seed=5)
    contexts, questions = [e.context for e in examples], [e.question for e in examples]
    answers = [e.answers[0] for e in examples]
    lms, features = wire.frozen()
    inputs = features(wire.encoder_texts(contexts, questions), wire.required_features)
    with torch.no_grad():
        out = wire(inputs, questions, answers, max_answer_tokens=8)
        plain = wire(inputs)
    assert isinstance(out, WireOutput) and plain.loss is None
    by_hand = []
    for index, lm in enumerate(lms):
        prompt, mask = wire.prompt(index, out.soft_tokens[index], out.latent_mask, questions)
        gold = [lm.answer_ids(a)[:8] for a in answers]
        ids, gold_mask = lm.pad_answers(gold), lm.answer_mask(gold, max(len(g) for g in gold))
        logits = lm.teacher_forced_logits(prompt, mask, ids, gold_mask)
        by_hand.append(masked_token_ce(logits, ids, gold_mask))
    assert out.loss.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-6)
    assert out.latent.shape[1] == wire.config.latent.shared_length + 2 * wire.config.latent.private_length


def test_the_model_folder_names_its_frozen_models(tiny_run):
    config = WireModel.from_pretrained(tiny_run / "model").config
    assert config.model_names == ["tiny_llama", "tiny_qwen"] and config.prompt.anchor_text == "Answer: "


def python_snippet() -> str:
    """The code block under "Use a trained model in Python" in docs/wire.md."""
    doc = (REPO / "docs" / "wire.md").read_text()
    section = doc.split("## Use a trained model in Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_snippet_is_at_most_five_lines():
    assert len(python_snippet().strip().splitlines()) <= 5


@pytest.mark.slow
@pytest.mark.real_model
def test_tiny_yaml_trains_as_written_and_the_snippet_answers(tmp_path):
    """`latentlm wire train configs/wire/tiny.yaml` (SmolLM2) as the docs show it, then the doc lines."""
    extra = {"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env = {**os.environ, **extra}
    (tmp_path / "configs" / "wire").mkdir(parents=True)
    (tmp_path / "configs" / "wire" / "tiny.yaml").write_text((REPO / "configs/wire/tiny.yaml").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "latentlm.cli", "wire", "train", "configs/wire/tiny.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "wire-tiny" / "model" / "config.json").is_file()
    assert (tmp_path / "runs" / "wire-tiny" / "eval" / "metrics.json").is_file()
    ran = subprocess.run(
        [sys.executable, "-c", python_snippet()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "smollm2" in ran.stdout
