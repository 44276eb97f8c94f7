"""Reports of HMM runs: loss and held-out perplexity against tokens, with the LVD switch marked."""

from __future__ import annotations

from pathlib import Path

from latentlm.core.report import Report, line_plot
from latentlm.core.run import RunDir

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
