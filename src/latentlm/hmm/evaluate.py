"""Evaluation of HMM language models: held-out perplexity, samples, and the reports of runs.

One function per measurement (:func:`heldout_nll`, :func:`sample_strings`), the report writers of a run
and of a comparison (:func:`write_run_report`, :func:`write_comparison_report`), and
:func:`evaluate_run`, the ``latentlm hmm eval`` of a finished run: it scores the run's held-out split
or any other file with the vocabulary saved in ``<run>/model/`` and writes ``eval/metrics.json`` +
``eval/report.md`` (the run's own ``report.md`` is never rewritten).
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentlm.core.lifecycle import load_finished_run, load_trained_model, write_eval
from latentlm.core.report import Report, line_plot
from latentlm.core.run import RunDir
from latentlm.hmm.config import HMMRunConfig
from latentlm.hmm.data import SequenceSet, heldout_units, pad_batch
from latentlm.hmm.forward import forward_log_likelihood
from latentlm.hmm.model import HMMLanguageModel
from latentlm.metrics.perplexity import perplexity


@torch.no_grad()
def heldout_nll(
    model: HMMLanguageModel, sequences: SequenceSet, batch_size: int, limit: int = 0
) -> tuple[float, int]:
    """``(Σ −log P(O), Σ tokens)`` over held-out sequences, each scored from π (EOS included)."""
    count = len(sequences) if not limit else min(limit, len(sequences))
    if count == 0:
        raise ValueError("the held-out split is empty: set data.heldout_fraction > 0 or data.heldout_path")
    params = model.log_parameters()
    order = sorted(range(count), key=lambda i: len(sequences.sequence(i)))
    total, tokens = 0.0, 0
    for start in range(0, count, batch_size):
        batch = pad_batch(
            [{"index": i, "obs": sequences.sequence(i)} for i in order[start : start + batch_size]]
        )
        obs, mask = batch["obs"].to(params.log_start.device), batch["mask"].to(params.log_start.device)
        total -= float(forward_log_likelihood(*params, obs, mask).to(torch.float64).sum())
        tokens += int(batch["mask"].sum())
    return total, tokens


def heldout_metrics(model: HMMLanguageModel, sequences: SequenceSet, batch_size: int, limit: int = 0) -> dict:
    """Held-out perplexity with the token count and the ``<unk>`` rate of the scored tokens."""
    nll, tokens = heldout_nll(model, sequences, batch_size, limit)
    count = len(sequences) if not limit else min(limit, len(sequences))
    ids = sequences.ids[: sequences.offsets[count]]
    return {
        "heldout_ppl": perplexity(nll, tokens),
        "heldout_nll": nll / tokens,
        "heldout_tokens": tokens,
        "heldout_unk_rate": float((ids == 1).mean()),
    }


def sample_strings(model: HMMLanguageModel, vocab: list[str], count: int = 5, length: int = 30) -> list[str]:
    """Text sampled from the model (ends at ``<eos>``), for reports."""
    words, _, mask = model.sample(count, length, generator=torch.Generator().manual_seed(0), eos_id=2)
    texts = []
    for row, row_mask in zip(words.tolist(), mask.tolist(), strict=True):
        tokens = [vocab[i] for i, keep in zip(row, row_mask, strict=True) if keep]
        texts.append(" ".join(tokens).replace("Ġ", "").replace("|", "\\|"))
    return texts


def evaluate_run(run_dir: str | Path, overrides: list[str] = ()) -> dict:
    """Held-out perplexity of a finished run, with the vocabulary saved in its model folder.

    ``data.heldout_path=FILE`` scores any file; without it the run's own held-out split is scored.
    Writes ``eval/metrics.json`` and ``eval/report.md``; returns the metrics.
    """
    cfg = load_finished_run(run_dir, HMMRunConfig, overrides)
    model = load_trained_model(run_dir, HMMLanguageModel)
    if model.vocabulary is None:
        raise FileNotFoundError(f"{Path(run_dir) / 'model'}: no vocab.json (trained by an older version?)")
    sequences = model.vocabulary.encode_units(heldout_units(cfg.data))
    metrics = heldout_metrics(model, sequences, cfg.eval.batch_size, cfg.eval.max_sequences)
    source = cfg.data.heldout_path or f"{cfg.data.path} (held-out tail, fraction {cfg.data.heldout_fraction})"
    metrics["heldout_source"] = str(source)
    report = Report("HMM evaluation")
    report.text(
        f"Run `{run_dir}`, model K={model.config.num_states}, V={model.config.vocab_size}, "
        f"{model.vocabulary.tokenizer} tokenizer; held-out text `{source}`."
    )
    report.table([{k: v for k, v in metrics.items() if k != "heldout_source"}])
    report.text(PROTOCOL)
    write_eval(run_dir, metrics, report)
    return metrics


PROTOCOL = (
    "Held-out perplexity = exp(Σ −log P(O) / Σ tokens) over the held-out sequences, `<eos>` included "
    "as a predicted token; each sequence is scored from the start distribution π (sentence-level "
    "reset, no state carried across sequences); `<unk>` is a regular token of the vocabulary."
)


def curves(run: RunDir) -> dict[str, tuple[list[float], list[float]]]:
    """``train_loss`` and ``heldout_ppl`` as (tokens, values) from a run's metrics.jsonl."""
    loss_x, loss_y, ppl_x, ppl_y = [], [], [], []
    for record in run.read_metrics():
        if "train/loss" in record:
            loss_x.append(record["train/tokens_seen"])
            loss_y.append(record["train/loss"])
        if "eval/heldout_ppl" in record:
            ppl_x.append(record["eval/tokens_seen"])
            ppl_y.append(record["eval/heldout_ppl"])
    return {"train_loss": (loss_x, loss_y), "heldout_ppl": (ppl_x, ppl_y)}


def _switch_lines(summaries: dict[str, dict]) -> list[tuple[float, str]]:
    """One vertical line per distinct switch point, labelled with the runs that switch there."""
    by_tokens: dict[float, list[str]] = {}
    for label, summary in summaries.items():
        if summary.get("switch_tokens") is not None:
            by_tokens.setdefault(summary["switch_tokens"], []).append(label)
    return [(tokens, f"LVD → log P(O): {', '.join(labels)}") for tokens, labels in by_tokens.items()]


def write_comparison_report(
    title: str,
    runs: dict[str, RunDir],
    summaries: dict[str, dict],
    out: Path,
    intro: str = "",
    samples: list[str] | None = None,
) -> Path:
    """One report over several runs: curves against tokens (switches marked) and a results table."""
    report = Report(title)
    if intro:
        report.text(intro)
    report.heading("Results")
    report.table([{"run": label, **summary} for label, summary in summaries.items()])
    report.text(PROTOCOL)
    all_curves = {label: curves(run) for label, run in runs.items()}
    vlines = _switch_lines(summaries)
    loss = {label: c["train_loss"] for label, c in all_curves.items() if c["train_loss"][0]}
    ppl = {label: c["heldout_ppl"] for label, c in all_curves.items() if c["heldout_ppl"][0]}
    report.heading("Training loss")
    report.text(
        "Per-token training loss. Before the marked switch an LVD run minimises −log P(O, S) with the stored "
        "teacher clusters S (an upper bound of −log P(O)); after it, −log P(O)."
    )
    report.figure(
        line_plot(loss, "tokens", "loss (nats / token)", "training loss", vlines=vlines), "train_loss"
    )
    if ppl:
        report.heading("Held-out perplexity")
        report.figure(
            line_plot(ppl, "tokens", "perplexity", "held-out perplexity", vlines=vlines), "heldout_ppl"
        )
    if samples:
        report.heading("Samples from the trained HMM")
        report.text("\n".join(f"- {sample}" for sample in samples))
    return report.save(out)


def write_run_report(run: RunDir, summary: dict, samples: list[str] | None = None) -> Path:
    """report.md of a single run."""
    return write_comparison_report(
        "HMM language model run", {"run": run}, {"run": summary}, run.path, samples=samples
    )
