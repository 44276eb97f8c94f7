"""The run lifecycle every system shares: train → load a finished run → evaluate.

runs/<name>/config.yaml          the resolved config (written before step 0)
runs/<name>/model/               `save_pretrained` of the trained model (what `from_pretrained` loads)
runs/<name>/eval/metrics.json    what `latentlm <system> eval run_dir=...` measured
runs/<name>/eval/report.md       ... with its plots in eval/plots/
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from latentlm.core.config import load_run_config
from latentlm.core.engine import Task, Trainer, TrainState
from latentlm.core.report import Report
from latentlm.core.run import RunDir

T = TypeVar("T")
MODEL_DIR = "model"
EVAL_DIR = "eval"


def train_task(task: Task, cfg: Any, run: RunDir) -> tuple[nn.Module, TrainState]:
    """Save `cfg`, train `task` with `cfg.train` (resuming from the run's latest checkpoint), and save
    the trained model to `<run>/model/`. Returns the trained (unwrapped) model and the final state.

    The main process holds the run's lock throughout; on resume, `save_config` refuses a config that
    changed more than the resumable fields (before anything is written)."""
    trainer = Trainer(task, cfg.train, run)
    main = trainer.accelerator.is_main_process
    with run.lock() if main else contextlib.nullcontext():
        if main:
            run.save_config(cfg)
        state = trainer.fit()
        if main:
            trainer.model.save_pretrained(run.path / MODEL_DIR)
    return trainer.model, state


def load_finished_run(run_dir: str | Path, schema: type[T], overrides: Sequence[str] = ()) -> T:
    """The config a finished run saved, with further dotted overrides (e.g. another held-out file)."""
    return load_run_config(schema, run_dir, overrides)


def load_trained_model(run_dir: str | Path, model_class: type, device: Any = "cpu") -> nn.Module:
    """The model a finished run saved in `<run_dir>/model/`, in eval mode."""
    folder = Path(run_dir) / MODEL_DIR
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no saved model (has the run finished training?)")
    return model_class.from_pretrained(folder, device=device).eval()


def eval_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVAL_DIR


def write_eval(run_dir: str | Path, metrics: dict, report: Report | None = None) -> Path:
    """Write `eval/metrics.json` (and `eval/report.md` with its plots) into a run; returns the folder."""
    folder = eval_dir(run_dir)
    run = RunDir(folder, tensorboard=False)
    run.write_json("metrics.json", metrics)
    if report is not None:
        report.save(folder)
    return folder
