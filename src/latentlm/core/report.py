"""Markdown reports with PNG plots, written into a run directory.

report = Report("LVD vs random init")
report.table([{"run": "lvd", "ppl": 123.4}, {"run": "random", "ppl": 150.2}])
report.figure(line_plot({"lvd": (steps, losses)}, "step", "loss"), "loss", "Training loss")
report.save(run.path)
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentlm.core.checkpoint import atomic_write_bytes, atomic_write_text  # noqa: E402


class Report:
    """Collects markdown blocks and figures; `save` writes report.md and plots/*.png."""

    def __init__(self, title: str):
        self.blocks: list[str] = [f"# {title}\n"]
        self.figures: list[tuple[str, plt.Figure]] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(f"{'#' * level} {text}\n")

    def text(self, markdown: str) -> None:
        self.blocks.append(markdown.rstrip() + "\n")

    def table(self, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
        if not rows:
            self.blocks.append("_(no rows)_\n")
            return
        columns = list(columns or dict.fromkeys(key for row in rows for key in row))
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
        self.blocks.append("\n".join(lines) + "\n")

    def figure(self, fig: plt.Figure, name: str, caption: str = "") -> None:
        self.figures.append((name, fig))
        self.blocks.append(
            f"![{caption or name}](plots/{name}.png)\n" + (f"\n*{caption}*\n" if caption else "")
        )

    def to_markdown(self) -> str:
        return "\n".join(self.blocks)

    def save(self, directory: str | Path) -> Path:
        """Write `report.md` and its plots under `directory`; returns the report path."""
        directory = Path(directory)
        for name, fig in self.figures:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            atomic_write_bytes(directory / "plots" / f"{name}.png", buffer.getvalue())
        self.figures.clear()
        path = directory / "report.md"
        atomic_write_text(path, self.to_markdown())
        return path


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    vlines: Sequence[tuple[float, str]] = (),
    logy: bool = False,
) -> plt.Figure:
    """One axes with a line per series; `vlines` marks events such as a phase switch."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label, linewidth=1.4)
    for x, label in vlines:
        ax.axvline(x, color="gray", linestyle="--", linewidth=1)
        ax.annotate(
            label,
            (x, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
            color="gray",
        )
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
