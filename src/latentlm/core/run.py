"""The run directory: one folder per run holding everything it produced.

Layout:
    config.yaml        the resolved configuration, written before step 0 (rewritten when a resume
                       changes a field that may change, see `check_resume_config`)
    config_changes.jsonl  one record per resume that changed such fields: the step they took effect at
    metrics.jsonl      one JSON record per logged step ({"step": ..., "train/loss": ...})
    tb/                TensorBoard events of the same scalars
    checkpoints/       step_N/ folders written by the engine (atomic)
    plots/  report.md  written by `latentlm.core.report.Report`
    .lock              the advisory lock of the process training into the run (pid and host inside)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from latentlm.core.checkpoint import DamagedFileError, atomic_write_text, verify_manifest, write_json
from latentlm.core.config import ConfigError, config_to_yaml, save_config

ALWAYS_RESUMABLE = ("run_dir", "num_threads")
"""Field names that may differ on resume wherever they sit in a config (they do not change the results)."""


class RunLockedError(OSError):
    """Another process is training into the same run directory."""


class RunDir:
    """A run directory; created on construction. Only the main process should write to it."""

    def __init__(self, path: str | Path, tensorboard: bool = True):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.tensorboard = tensorboard
        self._tb_writer = None
        self._verified: dict[tuple[Path, int], str | None] = {}
        self._lock_fd: int | None = None
        self._lock_depth = 0

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def save_config(self, cfg: Any, resume_policy: str = "check") -> None:
        """Write `config.yaml`. With `resume_policy="check"` (the default) and a run that already has
        checkpoints or a saved model, the new config is first compared with the saved one
        (`check_resume_config`): resumable changes are recorded, any other difference is refused and
        nothing is written. `resume_policy="overwrite"` writes unconditionally."""
        if resume_policy not in ("check", "overwrite"):
            raise ValueError(f"resume_policy: must be check or overwrite, got {resume_policy!r}")
        resuming = resume_policy == "check" and self.config_path.is_file() and self.has_progress()
        if resuming and not check_resume_config(self, cfg):
            return
        save_config(cfg, self.config_path)

    def has_progress(self) -> bool:
        """Whether training wrote anything a rerun would continue from (a checkpoint or `model/`)."""
        started = self.checkpoints_dir.is_dir() and any(self.checkpoints_dir.glob("step_*"))
        return started or (self.path / "model").is_dir()

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

    @contextlib.contextmanager
    def lock(self):
        """Hold the run's advisory lock (`fcntl.flock` on `<run>/.lock`) for the `with` block.

        Re-entrant on this object. A lock held by another process raises `RunLockedError` at once; a lock
        file left by a process that died (the kernel released its flock) is taken over with a warning.
        """
        if self._lock_fd is None:
            self._lock_fd = _acquire_lock(self.path)
        self._lock_depth += 1
        try:
            yield self
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                fd, self._lock_fd = self._lock_fd, None
                os.ftruncate(fd, 0)  # an empty lock file: released cleanly, nothing stale
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def close(self) -> None:
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None

    def _writer(self):
        if self._tb_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb_writer = SummaryWriter(log_dir=str(self.path / "tb"))
        return self._tb_writer


def _acquire_lock(run_path: Path) -> int:
    path = run_path / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
        raise RunLockedError(
            f"run directory {run_path} is in use by {who}; wait for it to finish or use another run_dir"
        ) from None
    except OSError as err:  # a filesystem without flock (some network mounts): train, but say so
        print(f"warning: {path}: cannot lock the run directory ({err}); not protected", file=sys.stderr)
    holder = _lock_holder(fd)
    if holder:
        here = holder.get("host") == socket.gethostname()
        state = "is no longer running" if here and not _alive(holder.get("pid")) else "does not hold it"
        who = f"pid {holder.get('pid')} on {holder.get('host')}"
        print(f"warning: {path}: taking over a stale lock ({who} {state})", file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n", 0)
    return fd


def _lock_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", errors="replace") or "{}")
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?"}
    return holder if isinstance(holder, dict) else {"pid": "?", "host": "?"}


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def check_resume_config(run: RunDir, cfg: Any) -> dict[str, list]:
    """Compare `cfg` with the config a run saved, before it resumes.

    Fields listed in a config dataclass's `resumable_fields` (TrainConfig: lr, max_steps, the logging,
    evaluation and checkpoint cadence, ...) and `run_dir`/`num_threads` anywhere may change: the changes are
    appended to `config_changes.jsonl` with the step they take effect at, and the caller rewrites
    `config.yaml`. A field the saved config lacks (added to latentlm after the run was made) may resume
    at its default, which by convention keeps the earlier behaviour. Any other difference (architecture,
    data, tokenizer) is refused.

    Returns:
        The changed resumable fields as {dotted name: [old, new]} (empty: nothing changed).

    Raises:
        ConfigError: listing every difference that cannot change; nothing is written then.
    """
    saved_path = run.config_path
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{saved_path}: malformed YAML, cannot compare it with the new config") from err
    if not isinstance(saved, dict):
        raise ConfigError(
            f"{saved_path}: not a mapping of config fields, cannot compare it with the new config"
        )
    # Compared in saved form (an `${oc.env:...}` field stays its interpolation on both sides).
    old, new = _flatten(saved), _flatten(yaml.safe_load(config_to_yaml(cfg)))
    missing = object()
    differences = {
        key: [old.get(key, missing), new.get(key, missing)]
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    }
    differences = {
        k: v for k, v in differences.items() if not (v[0] is missing and v[1] == _default_of(cfg, k, missing))
    }
    resumable = _resumable_paths(cfg)
    allowed = {k: v for k, v in differences.items() if k in resumable or k.split(".")[-1] in ALWAYS_RESUMABLE}
    refused = {k: v for k, v in differences.items() if k not in allowed}
    if refused:
        listed = "; ".join(
            f"{k}: {_show(o, missing)} -> {_show(n, missing)}" for k, (o, n) in refused.items()
        )
        raise ConfigError(
            f"{run.path}: this run was trained with another configuration and cannot resume with these "
            f"changes: {listed}. Restore them or use a new run_dir (fields that may change on resume: "
            f"{', '.join(sorted(resumable))})"
        )
    if allowed:
        checkpoint = run.latest_intact_checkpoint()
        step = int(checkpoint.name.removeprefix("step_")) if checkpoint is not None else 0
        with (run.path / "config_changes.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, "changes": allowed}) + "\n")
        listed = ", ".join(f"{k} {o} -> {n}" for k, (o, n) in allowed.items())
        print(
            f"resuming with changed settings from step {step}: {listed} (config_changes.jsonl)",
            file=sys.stderr,
        )
    return allowed


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1} (lists and empty mappings stay leaves)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _resumable_paths(cfg: Any, prefix: str = "") -> set[str]:
    """Dotted names of the fields that config dataclasses declare in `resumable_fields`."""
    if not dataclasses.is_dataclass(cfg):
        return set()
    found = {f"{prefix}{name}" for name in getattr(cfg, "resumable_fields", ())}
    for item in dataclasses.fields(cfg):
        found |= _resumable_paths(getattr(cfg, item.name), f"{prefix}{item.name}.")
    return found


def _default_of(cfg: Any, dotted: str, missing: object) -> Any:
    """The declared default of the config field at `dotted` (`missing` if it has none)."""
    *parents, name = dotted.split(".")
    for parent in parents:
        cfg = getattr(cfg, parent, None)
    if not dataclasses.is_dataclass(cfg):
        return missing
    for item in dataclasses.fields(cfg):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
    return missing


def _show(value: Any, missing: object) -> str:
    return "(absent)" if value is missing else repr(value)


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kwargs) -> tqdm:
    """A tqdm progress bar with rate and ETA; silent when `disable=True` is passed (non-main ranks)."""
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, smoothing=0.1, **kwargs)
