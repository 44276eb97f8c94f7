"""What a user sees: every reliability fault through `system_cli` is one line on stderr and exit status 2."""

import pytest

from latentlm.core.cli import Command, system_cli
from latentlm.core.lifecycle import load_trained_model
from tests.reliability.faults import ToyNet, ToyRunConfig, train_run
from tests.reliability.test_checkpoints import truncate


def _eval(run_dir, overrides):
    load_trained_model(run_dir, ToyNet)
    return {"ok": 1}


main = system_cli(
    "toy",
    "A toy system for fault injection.",
    [
        Command("train", lambda cfg: train_run(cfg) and None, "train the toy", config=ToyRunConfig),
        Command("eval", _eval, "load the toy", on_run=ToyRunConfig),
    ],
)


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("latentlm toy")]
    assert len(err) == 1, err
    return err[0]


def test_cli_messages(tmp_path, capsys):
    run = f"run_dir={tmp_path}"
    assert main(["train", run, "train.checkpoint_every=2", "nan_step=5"]) == 2
    assert _error_line(capsys) == (
        f"latentlm toy train: error: step 5: gradient norm is nan; the step was not applied; the last good "
        f"checkpoint is {tmp_path}/checkpoints/step_4; rerun the same command to resume from it"
    )
    assert main(["train", run, "train.checkpoint_every=2"]) == 0  # resumes from step 4 and finishes
    capsys.readouterr()

    assert main(["train", run, "train.checkpoint_every=2", "model.hidden=4"]) == 2
    assert "cannot resume with these changes: model.hidden: 16 -> 4." in _error_line(capsys)

    assert main(["train", run, "train.log_every=0"]) == 2
    assert (
        _error_line(capsys) == "latentlm toy train: error: command line: train.log_every: must be >= 1, got 0"
    )

    truncate(tmp_path / "model" / "model.safetensors")
    assert main(["eval", run]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"latentlm toy eval: error: {tmp_path}/model/model.safetensors: damaged: ")


@pytest.mark.parametrize("debug", [False, True])
def test_locked_run_is_one_line(tmp_path, capsys, debug):
    from latentlm.core import RunDir

    with RunDir(tmp_path).lock():
        if debug:
            with pytest.raises(OSError, match="in use by pid"):
                main(["train", f"run_dir={tmp_path}", "--debug"])
        else:
            assert main(["train", f"run_dir={tmp_path}"]) == 2
            assert f"error: run directory {tmp_path} is in use by pid" in _error_line(capsys)
