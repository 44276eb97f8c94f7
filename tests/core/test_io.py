from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from latentlm.core import PretrainedMixin, Report, RunDir, line_plot
from latentlm.core.checkpoint import read_json, write_json
from latentlm.data.cache import cached_arrays, content_hash


@dataclass
class TinyConfig:
    width: int = 4


class TinyModel(PretrainedMixin, nn.Module):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.width, config.width)

    def forward(self, x):
        return self.proj(x)


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = TinyModel(TinyConfig(width=3))
    model.save_pretrained(tmp_path / "m")
    again = TinyModel.from_pretrained(tmp_path / "m")
    x = torch.randn(2, 3)
    torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)
    assert again.config == TinyConfig(width=3)


def test_cache_computes_once_and_memory_maps(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(6, dtype=np.float16).reshape(2, 3)}

    key = content_hash("emb", {"k": 3})
    first = cached_arrays(tmp_path, key, compute)
    second = cached_arrays(tmp_path, key, compute)
    assert len(calls) == 1
    assert isinstance(second["a"], np.memmap)
    np.testing.assert_array_equal(first["a"], second["a"])


def test_content_hash_follows_file_bytes(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("a b c")
    before = content_hash(path, 1)
    assert before == content_hash(path, 1) and before != content_hash(path, 2)
    path.write_text("a b d")
    assert content_hash(path, 1) != before


def test_json_errors_name_file_and_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"x\.json:2:\d+: malformed JSON"):
        read_json(path)
    write_json(tmp_path / "ok.json", {"p": Path("a")})
    assert read_json(tmp_path / "ok.json") == {"p": "a"}


def test_metrics_log_survives_torn_last_line(tmp_path):
    run = RunDir(tmp_path, tensorboard=False)
    run.log(1, {"loss": 2.0})
    run.log(2, {"loss": 1.0})
    with run.metrics_path.open("a") as fh:
        fh.write('{"step": 3, "lo')
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.truncate_metrics(1)
    assert run.read_metrics() == [{"step": 1, "loss": 2.0}]


def test_report_writes_markdown_and_png(tmp_path):
    report = Report("demo")
    report.table([{"model": "a", "ppl": 12.3456}])
    report.figure(line_plot({"a": ([0, 1], [2, 1])}, "step", "loss", vlines=[(0.5, "switch")]), "loss")
    path = report.save(tmp_path)
    text = path.read_text()
    assert "| a | 12.35 |" in text and "plots/loss.png" in text
    assert (tmp_path / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_state_files_round_trip_without_pickle(tmp_path):
    from latentlm.core.checkpoint import load_state, save_state

    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "foreach": None}],
        "rng": (3, tuple(range(5)), None),
        "keys": np.arange(4, dtype=np.uint32),
        "nan": float("nan"),
    }
    save_state(state, tmp_path, "opt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.json", "opt.safetensors"]
    again = load_state(tmp_path, "opt")
    assert again["param_groups"] == state["param_groups"] and again["rng"] == state["rng"]
    assert list(again["state"]) == [0]
    torch.testing.assert_close(again["state"][0]["exp_avg"], state["state"][0]["exp_avg"], rtol=0, atol=0)
    assert again["state"][0]["step"].shape == () and again["keys"].dtype == np.uint32
    np.testing.assert_array_equal(again["keys"], state["keys"])
    assert np.isnan(again["nan"])
