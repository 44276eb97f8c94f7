"""The run directory: one folder per run holding everything it produced.

Layout:
    config.yaml        the resolved configuration, written before step 0
    metrics.jsonl      one JSON record per logged step ({"step": ..., "train/loss": ...})
    tb/                TensorBoard events of the same scalars
    checkpoints/       step_N/ folders written by the engine (atomic)
    plots/  report.md  written by `latentlm.core.report.Report`
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from latentlm.core.checkpoint import DamagedFileError, atomic_write_text, verify_manifest, write_json
from latentlm.core.config import save_config


class RunDir:
    """A run directory; created on construction. Only the main process should write to it."""

    def __init__(self, path: str | Path, tensorboard: bool = True):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.tensorboard = tensorboard
        self._tb_writer = None
        self._verified: dict[tuple[Path, int], str | None] = {}

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    def save_config(self, cfg: Any) -> None:
        save_config(cfg, self.path / "config.yaml")

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.path / name
        write_json(path, obj)
        return path

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one record to metrics.jsonl (flushed at once) and to TensorBoard."""
        record = {"step": int(step)}
        for key, value in metrics.items():
            record[key] = value if isinstance(value, str | int) else float(value)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tensorboard:
            writer = self._writer()
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    writer.add_scalar(key, value, step)
            writer.flush()

    def read_metrics(self) -> list[dict]:
        """All records of metrics.jsonl; a torn last line (crash mid-write) is ignored."""
        if not self.metrics_path.is_file():
            return []
        records = []
        lines = self.metrics_path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number == len(lines):
                    break
                raise ValueError(f"{self.metrics_path}:{number}: malformed JSON record: {err.msg}") from err
        return records

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records logged after `last_step` (used on resume, so the log matches the trajectory)."""
        kept = [r for r in self.read_metrics() if r["step"] <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (those with a `state.json`), oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for child in self.checkpoints_dir.iterdir():
            match = re.fullmatch(r"step_(\d+)", child.name)
            if match and (child / "state.json").is_file():
                found.append((int(match.group(1)), child))
        return [path for _, path in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def checkpoint_problem(self, checkpoint: Path) -> str | None:
        """None when every file of `checkpoint` matches its manifest, else the damage, naming the file.
        Verdicts are remembered per manifest modification time."""
        manifest = checkpoint / "manifest.json"
        key = (checkpoint, manifest.stat().st_mtime_ns if manifest.is_file() else -1)
        if key not in self._verified:
            try:
                verify_manifest(checkpoint, required=True)
                self._verified[key] = None
            except DamagedFileError as err:
                self._verified[key] = str(err)
        return self._verified[key]

    def latest_intact_checkpoint(self) -> Path | None:
        """The newest checkpoint whose files match its manifest (None if there is none)."""
        for checkpoint in reversed(self.checkpoints()):
            if self.checkpoint_problem(checkpoint) is None:
                return checkpoint
        return None

    def set_aside(self, checkpoint: Path) -> Path:
        """Rename a damaged checkpoint to `damaged_step_N` (kept for inspection, ignored by resume)."""
        target = checkpoint.with_name(f"damaged_{checkpoint.name}")
        number = 1
        while target.exists():
            number += 1
            target = checkpoint.with_name(f"damaged_{checkpoint.name}_{number}")
        checkpoint.rename(target)
        return target

    def close(self) -> None:
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None

    def _writer(self):
        if self._tb_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb_writer = SummaryWriter(log_dir=str(self.path / "tb"))
        return self._tb_writer


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kwargs) -> tqdm:
    """A tqdm progress bar with rate and ETA; silent when `disable=True` is passed (non-main ranks)."""
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, smoothing=0.1, **kwargs)
