"""`latentlm lht train|eval`: pretrain the Learned Hierarchical Transformer and evaluate a run.

    latentlm lht train configs/lht/tiny.yaml [key=value ...]
    latentlm lht eval  run_dir=runs/lht-tiny [eval.max_chunks=32 ...]

`train` writes a run directory (config, metrics.jsonl, TensorBoard, checkpoints, `model/`) and
resumes from its latest checkpoint when run again. `eval` reloads the run's config and model and
writes `metrics.json` and `report.md` (perplexity, boundary P/R/F1 per level, compression, the
classification probe, a picture of learned boundaries).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from latentlm.core.config import load_config, load_run_config, split_cli_args, split_run_dir
from latentlm.core.engine import Trainer, load_model_weights
from latentlm.core.report import Report
from latentlm.core.run import RunDir
from latentlm.lht.evaluate import (
    boundary_picture,
    boundary_text,
    classification_probe,
    document_vectors,
    evaluate_boundaries,
    learned_boundaries,
    probe_documents,
    random_boundary_scores,
)
from latentlm.lht.model import LHTForMaskedLM
from latentlm.lht.train import LHTPretrainTask, LHTRunConfig, heldout_chunks, heldout_metrics
from latentlm.teachers import load_tokenizer


def train(argv: list[str]) -> Path:
    """Train from a config file and overrides; returns the run directory."""
    path, overrides = split_cli_args(argv)
    cfg = load_config(LHTRunConfig, path, overrides)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run = RunDir(cfg.run_dir)
    run.save_config(cfg)
    task = LHTPretrainTask(cfg, load_tokenizer(cfg.data.tokenizer))
    print(f"lht: {len(task.corpus.train)} training chunks, {len(task.corpus.heldout)} held-out chunks")
    trainer = Trainer(task, cfg.train, run)
    trainer.fit()
    trainer.model.save_pretrained(run.path / "model")
    run.close()
    print(f"lht: model saved to {run.path / 'model'}")
    return run.path


def load_run(run_dir: Path, overrides: list[str]) -> tuple[LHTRunConfig, LHTForMaskedLM, LHTPretrainTask]:
    """Config, trained model and task of a run directory (model/ if present, else latest checkpoint)."""
    cfg = load_run_config(LHTRunConfig, run_dir, overrides)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    task = LHTPretrainTask(cfg, load_tokenizer(cfg.data.tokenizer))
    if (run_dir / "model" / "config.json").is_file():
        model = LHTForMaskedLM.from_pretrained(run_dir / "model")
    else:
        checkpoint = RunDir(run_dir, tensorboard=False).latest_checkpoint()
        if checkpoint is None:
            raise FileNotFoundError(f"{run_dir}: holds neither model/ nor a checkpoint")
        model = load_model_weights(task.build_model(), checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return cfg, model.to(device).eval(), task


def evaluate_run(run_dir: Path, overrides: list[str]) -> dict:
    """Every evaluation of the module docstring; writes metrics.json and report.md into the run."""
    cfg, model, task = load_run(run_dir, overrides)
    chunks = heldout_chunks(task)
    metrics: dict = {"heldout": heldout_metrics(task, model)}
    boundaries = evaluate_boundaries(model, chunks, cfg.eval.tolerance)
    report = Report(f"LHT evaluation: {run_dir}")
    report.text(
        f"Model: `{cfg.model.attention}` attention, {cfg.model.num_layers} layers, width "
        f"{cfg.model.hidden_size}; {len(chunks)} held-out chunks of at most {cfg.data.max_length} tokens."
    )
    report.heading("MLM perplexity (held-out)")
    report.table([{k: round(v, 4) for k, v in metrics["heldout"].items()}])
    if boundaries is not None:
        metrics["boundaries"] = boundaries.as_dict(cfg.eval.tolerance)
        report.heading(f"Boundaries vs gold (tolerance ±{cfg.eval.tolerance} tokens, position 0 excluded)")
        rows = []
        for level, kinds in boundaries.scores.items():
            rate = 1.0 / boundaries.tokens_per_unit[level]
            random_scores = random_boundary_scores(chunks, cfg.eval.tolerance, rate, seed=level)
            metrics["boundaries"]["levels"][f"level{level + 1}"]["random_same_rate"] = {
                k: s.as_dict() for k, s in random_scores.items()
            }
            for kind, scores in kinds.items():
                rows.append(
                    {
                        "level": level + 1,
                        "gold": kind,
                        "tokens/unit": round(boundaries.tokens_per_unit[level], 2),
                        "P": round(scores.precision, 3),
                        "R": round(scores.recall, 3),
                        "F1": round(scores.f1, 3),
                        "F1 random, same rate": round(random_scores[kind].f1, 3),
                    }
                )
        report.table(rows)
    documents = probe_documents(
        task.corpus.train + task.corpus.heldout, cfg.eval.probe_min_documents, cfg.eval.probe_max_documents
    )
    categories = {d.category for d in documents}
    if len(categories) < 2:
        report.text(
            f"Classification probe skipped: {len(categories)} docs folder(s) with at least "
            f"{cfg.eval.probe_min_documents} documents."
        )
    else:
        probe = classification_probe(
            document_vectors(model, documents), [d.category for d in documents], cfg.eval.probe_folds
        )
        metrics["probe"] = probe
        report.heading("Document-classification probe (docs folder, logistic regression, cross-validated)")
        report.table([{k: round(v, 4) for k, v in probe.items()}])
    if boundaries is not None and chunks:
        # The picture shows a reST document when there is one: its markup gives all three gold kinds.
        candidates = [c for c in chunks if c.source.endswith((".rst", ".rst.txt"))][:16] or chunks[:16]
        sample = max(candidates, key=lambda c: len(c.gold["paragraph"]))
        learned = learned_boundaries(model, sample, next(model.parameters()).device)
        tokens = min(cfg.eval.sample_tokens, len(sample.ids))
        report.heading(f"Learned boundaries on a held-out document ({sample.source})")
        report.figure(boundary_picture(sample, learned, tokens, sample.source), "boundaries")
        report.text("```\n" + boundary_text(task.tokenizer, sample, learned, tokens) + "\n```")
    run = RunDir(run_dir, tensorboard=False)
    run.write_json("metrics.json", metrics)
    report.save(run.path)
    return metrics


def main(argv: list[str]) -> int:
    """Entry point of `latentlm lht ...`."""
    parser = argparse.ArgumentParser(prog="latentlm lht", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["train", "eval"])
    parser.add_argument("args", nargs="*", help="config.yaml and key=value overrides (eval: run_dir=...)")
    parsed = parser.parse_args(argv)
    if parsed.command == "train":
        train(parsed.args)
        return 0
    run_dir, overrides = split_run_dir(parsed.args)
    metrics = evaluate_run(run_dir, overrides)
    heldout = metrics["heldout"]
    print(f"lht eval: held-out perplexity {heldout['perplexity']:.3f}; report in {run_dir}/report.md")
    return 0
