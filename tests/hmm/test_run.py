"""The run lifecycle: tiny.yaml trains as written, from_pretrained reproduces the run's evaluation,
eval on a new file uses the saved vocabulary, and the docs' Python snippet runs as written."""

import json
import re
from pathlib import Path

import pytest

from latentlm.core.config import load_config
from latentlm.hmm.cli import main
from latentlm.hmm.config import HMMRunConfig
from latentlm.hmm.data import heldout_units
from latentlm.hmm.evaluate import heldout_metrics
from latentlm.hmm.model import HMMLanguageModel

pytestmark = pytest.mark.real_model  # the MiniLM teacher shipped on PyPI

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "hmm" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    """configs/hmm/tiny.yaml trained for 2 EM steps on 100 sentences (the file unchanged otherwise)."""
    import os

    root = tmp_path_factory.mktemp("tiny")
    os.environ.setdefault("LATENTLM_DATA", str(data_dir))
    run_dir = root / "runs" / "hmm-tiny"
    args = [
        f"run_dir={run_dir}",
        "train.max_steps=2",
        "data.max_train_units=100",
        f"lvd.cache_dir={root / 'cache'}",
    ]
    assert main(["train", str(TINY), *args]) == 0
    return run_dir


def test_tiny_yaml_is_self_contained():
    cfg = load_config(HMMRunConfig, TINY)
    assert cfg.data.path and not Path(cfg.data.path).is_absolute()  # found under $LATENTLM_DATA
    assert cfg.lvd.phase == "closed_form" and cfg.train.optimizer == "em"


def test_from_pretrained_gives_the_runs_own_evaluation(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    report_before = (tiny_run / "report.md").read_text()
    assert main(["eval", f"run_dir={tiny_run}"]) == 0
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert (tiny_run / "eval" / "report.md").is_file()
    assert (tiny_run / "report.md").read_text() == report_before  # eval never rewrites the run's report

    model = HMMLanguageModel.from_pretrained(tiny_run / "model")
    cfg = load_config(HMMRunConfig, tiny_run / "config.yaml")
    sequences = model.vocabulary.encode_units(heldout_units(cfg.data))
    again = heldout_metrics(model, sequences, 64)
    assert again["heldout_ppl"] == pytest.approx(summary["heldout_ppl"], rel=1e-6)
    assert metrics["heldout_ppl"] == pytest.approx(summary["heldout_ppl"], rel=1e-6)
    assert metrics["heldout_tokens"] == summary["heldout_tokens"] == again["heldout_tokens"]


def test_whitespace_tokens_are_counted_as_in_the_file(tiny_run, tmp_path):
    lines = ["mr. smith 's company rose N % <unk>", "the u.s. dollar fell"]
    path = tmp_path / "new.txt"
    path.write_text("\n".join(lines) + "\n")
    assert main(["eval", f"run_dir={tiny_run}", f"data.heldout_path={path}"]) == 0
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert metrics["heldout_tokens"] == sum(len(line.split()) + 1 for line in lines)  # + <eos> per line
    model = HMMLanguageModel.from_pretrained(tiny_run / "model")
    ids = model.encode(lines)["input_ids"]
    known = set(model.vocabulary.tokens)
    expected_unk = sum(w not in known or w == "<unk>" for line in lines for w in line.split())
    assert int((ids == 1).sum()) == expected_unk
    assert metrics["heldout_unk_rate"] == pytest.approx(expected_unk / metrics["heldout_tokens"])


def test_forward_loss_is_the_mean_negative_log_likelihood(tiny_run):
    model = HMMLanguageModel.from_pretrained(tiny_run / "model")
    batch = model.encode(["the company said", "it expects higher earnings in the fourth quarter"])
    out = model(**batch, labels=batch["input_ids"])
    direct = model.log_likelihood(batch["input_ids"], batch["attention_mask"])
    assert out.num_tokens == int(batch["attention_mask"].sum())
    assert out.loss.item() == pytest.approx((-direct.sum() / out.num_tokens).item(), rel=1e-6)
    wrong = batch["input_ids"].clone()
    wrong[0, 0] = (wrong[0, 0] + 1) % model.config.vocab_size
    with pytest.raises(ValueError, match="labels"):
        model(**batch, labels=wrong)


def test_docs_python_snippet_runs_as_written(tiny_run, monkeypatch, capsys):
    doc = (REPO / "docs" / "hmm.md").read_text()
    section = doc.split("## Use a trained model in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 5
    monkeypatch.chdir(tiny_run.parent.parent)  # the snippet loads runs/hmm-tiny/model
    exec(compile(code, "docs/hmm.md", "exec"), {})
    assert re.search(r"perplexity \d+\.\d", capsys.readouterr().out)


def test_quickstart_takes_overrides_only_and_says_so(capsys):
    assert main(["quickstart", "configs/hmm/gelato.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'configs/hmm/gelato.yaml'" in err and "latentlm hmm distill FILE" in err
    assert main(["quickstart", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: latentlm hmm quickstart [key=value ...]\n")
