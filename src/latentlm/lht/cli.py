"""`latentlm lht train|eval`: pretrain the Learned Hierarchical Transformer and evaluate a run.

    latentlm lht train configs/lht/tiny.yaml [key=value ...]
    latentlm lht eval  run_dir=runs/lht-tiny [eval.max_chunks=32 ...]

`train` writes a run directory (config, metrics.jsonl, TensorBoard, checkpoints, `model/`) and resumes
from its latest checkpoint when run again. `eval` reloads the run's config and saved model and writes
`eval/metrics.json` and `eval/report.md` (perplexity, boundary P/R/F1 per level, compression, the
classification probe, a picture of learned boundaries).
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentlm.core.cli import Command, system_cli
from latentlm.core.lifecycle import load_finished_run, load_trained_model, train_task, write_eval
from latentlm.core.run import RunDir
from latentlm.lht.config import LHTRunConfig
from latentlm.lht.evaluate import evaluate_model
from latentlm.lht.model import LHTForMaskedLM
from latentlm.lht.task import LHTPretrainTask
from latentlm.teachers import load_tokenizer


def train(cfg: LHTRunConfig) -> Path:
    """Train from a loaded config; returns the run directory (with the saved model in `model/`)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    task = LHTPretrainTask(cfg, load_tokenizer(cfg.data.tokenizer))
    print(f"lht: {len(task.corpus.train)} training chunks, {len(task.corpus.heldout)} held-out chunks")
    run = RunDir(cfg.run_dir)
    train_task(task, cfg, run)
    run.close()
    return run.path / "model"


def evaluate(run_dir: str | Path, overrides: list[str]) -> dict:
    """Evaluate a finished run; writes `<run>/eval/metrics.json` and `report.md`."""
    cfg = load_finished_run(run_dir, LHTRunConfig, overrides)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    task = LHTPretrainTask(cfg, load_tokenizer(cfg.data.tokenizer))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_trained_model(run_dir, LHTForMaskedLM, device)
    metrics, report = evaluate_model(task, model, f"LHT evaluation: {run_dir}")
    folder = write_eval(run_dir, metrics, report)
    heldout = metrics["heldout"]
    return {"heldout perplexity": round(heldout["perplexity"], 3), "report": str(folder / "report.md")}


main = system_cli(
    "lht",
    __doc__,
    [
        Command(
            "train", train, "pretrain an LHT (or a dense / sliding-window baseline)", config=LHTRunConfig
        ),
        Command("eval", evaluate, "evaluate a finished run into <run>/eval/", on_run=LHTRunConfig),
    ],
)
