"""The core CLI builder (system_cli) and the top-level `latentlm` dispatcher, on a toy system."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import latentlm.cli as top
from latentlm.core.cli import Command, UserError, describe_fields, system_cli
from latentlm.core.config import check_range


@dataclass
class ToyModel:
    """Architecture."""

    d_model: int = 8
    """Width of every layer."""
    kinds: list[str] = field(default_factory=lambda: ["a", "b"])
    """Layer kinds,
    one per layer."""

    def __post_init__(self):
        check_range("model.d_model", self.d_model, 1)


@dataclass
class ToyRun:
    run_dir: str = "runs/toy"
    """Where the run writes."""
    batch_size: int = 4
    model: ToyModel = field(default_factory=ToyModel)


CALLS: list = []


def _train(cfg: ToyRun):
    CALLS.append(cfg)
    if cfg.run_dir == "fail":
        raise UserError("data.path: corpus.txt not found\n(looked under $LATENTLM_DATA)")
    if cfg.run_dir == "bug":
        raise RuntimeError("a bug")
    if cfg.run_dir == "nan":
        raise FloatingPointError("step 3: loss is nan")
    return {"loss": 1.5}


def _evaluate(run_dir: Path, overrides: list[str]):
    CALLS.append((run_dir, overrides))
    return run_dir / "eval"


main = system_cli(
    "toy",
    "Toy system: a test double.",
    [
        Command("train", _train, "train a toy model", config=ToyRun),
        Command("eval", _evaluate, "evaluate a finished run", on_run=ToyRun),
    ],
)


def test_describe_fields_walks_the_tree_with_docstrings():
    assert describe_fields(ToyRun) == [
        ("run_dir", "str", "runs/toy", "Where the run writes."),
        ("batch_size", "int", 4, ""),
        ("model.d_model", "int", 8, "Width of every layer."),
        ("model.kinds", "list[str]", ["a", "b"], "Layer kinds, one per layer."),
    ]


def test_command_help_lists_every_field_with_default_and_docstring(capsys):
    assert main(["train", "--help"]) == 0
    assert capsys.readouterr().out == (
        "usage: latentlm toy train [config.yaml] [key=value ...]\n"
        "\n"
        "train a toy model\n"
        "\n"
        "config fields (ToyRun; defaults ⊕ YAML file ⊕ key=value):\n"
        "  run_dir: str = 'runs/toy'\n"
        "      Where the run writes.\n"
        "  batch_size: int = 4\n"
        "  model.d_model: int = 8\n"
        "      Width of every layer.\n"
        "  model.kinds: list[str] = ['a', 'b']\n"
        "      Layer kinds, one per layer.\n"
        "\n"
        "  --debug   show the full traceback of an error\n"
    )
    assert main(["eval", "-h"]) == 0
    assert capsys.readouterr().out.startswith("usage: latentlm toy eval run_dir=PATH [key=value ...]\n")


def test_system_help_lists_commands(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out == (
        "usage: latentlm toy <command> [config.yaml] [key=value ...]\n"
        "\n"
        "Toy system: a test double.\n"
        "\n"
        "commands:\n"
        "  train      train a toy model\n"
        "  eval       evaluate a finished run\n"
        "\n"
        "`latentlm toy <command> --help` lists every config field with its default;\n"
        "add --debug to see the traceback of an error.\n"
    )
    assert main(["--help"]) == 0


def test_runs_with_config_and_prints_the_result(capsys, tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("batch_size: 2\n")
    assert main(["train", str(path), "model.d_model=3", "model.kinds=[x]"]) == 0
    assert CALLS[-1] == ToyRun(batch_size=2, model=ToyModel(d_model=3, kinds=["x"]))
    assert capsys.readouterr().out == "  loss: 1.5\n"
    assert main(["eval", "run_dir=runs/a", "eval.n=3"]) == 0
    assert CALLS[-1] == (Path("runs/a"), ["eval.n=3"])
    assert capsys.readouterr().out == "done: runs/a/eval\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "run_dir=fail"],
            "latentlm toy train: error: data.path: corpus.txt not found (looked under $LATENTLM_DATA)",
        ),
        (["train", "run_dir=nan"], "latentlm toy train: error: step 3: loss is nan"),
        (
            ["train", "model.d_model=0"],
            "latentlm toy train: error: command line: model.d_model: must be >= 1, got 0",
        ),
        (
            ["train", "model.width=3"],
            "latentlm toy train: error: command line: unknown config key 'model.width'",
        ),
        (["train", "missing.yaml"], "latentlm toy train: error: config file not found: missing.yaml"),
        (
            ["train", "oops"],
            "latentlm toy train: error: argument 'oops' is neither a .yaml config file "
            "nor a key=value override",
        ),
        (
            ["eval", "eval.n=3"],
            "latentlm toy eval: error: give exactly one run_dir=PATH naming a finished run",
        ),
        (["fit"], "latentlm toy: error: unknown command 'fit'; choose one of train, eval"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == message + "\n"
    assert captured.out == ""


def test_debug_reraises_and_bugs_keep_their_traceback():
    with pytest.raises(UserError, match="corpus.txt not found"):
        main(["train", "run_dir=fail", "--debug"])
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "run_dir=bug"])


@pytest.fixture
def toy_system(monkeypatch):
    """`latentlm toy` registered as a system of the top-level dispatcher."""
    module = types.ModuleType("latentlm.toy.cli")
    module.main = main
    monkeypatch.setitem(sys.modules, "latentlm.toy", types.ModuleType("latentlm.toy"))
    monkeypatch.setitem(sys.modules, "latentlm.toy.cli", module)
    monkeypatch.setattr(top, "SYSTEMS", {"toy": "a test double"})


def test_top_level_help_has_the_system_help_layout(capsys, toy_system):
    assert top.main(["--help"]) == 0
    assert capsys.readouterr().out == (
        "usage: latentlm <system> <command> [config.yaml] [key=value ...]\n"
        "       latentlm fetch <model-alias> ...\n"
        "\n"
        f"{top.ABOUT}\n"
        "\n"
        "systems:\n"
        "  toy        a test double\n"
        f"  fetch      {top.FETCH_HELP}\n"
        "\n"
        "`latentlm <system> --help` lists its commands; `latentlm <system> <command> --help` lists\n"
        "every config field with its default; add --debug to see the traceback of an error.\n"
    )
    assert top.main(["toy", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: latentlm toy <command>")


def test_top_level_dispatches_and_reports_unknown_systems(capsys, toy_system):
    assert top.main(["toy", "train", "batch_size=5"]) == 0
    assert CALLS[-1].batch_size == 5
    capsys.readouterr()
    assert top.main(["hmmm", "train"]) == 2
    assert capsys.readouterr().err == "latentlm: error: unknown system 'hmmm'; choose one of toy, fetch\n"
    with pytest.raises(UserError):
        top.main(["--debug", "toy", "train", "run_dir=fail"])
