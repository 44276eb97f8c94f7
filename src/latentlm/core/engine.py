"""The one training loop, shared by every system.

A system describes *what* to train with a small `Task` (model, data, loss, evaluation); the `Trainer`
does the rest on Hugging Face Accelerate, so the same code runs on one CPU, one GPU, or several
processes under `accelerate launch` / `torchrun`: AdamW, learning-rate schedule, gradient
accumulation and clipping, mixed precision, JSONL + TensorBoard logging, a progress bar, evaluation
cadence, best-checkpoint tracking, atomic checkpoints and exact resume.

Reliability (docs/reliability.md): a step whose loss, gradient norm or updated parameters are not finite
is never applied nor checkpointed (`train.nonfinite: stop | skip`); an evaluation that fails numerically is
recorded in metrics.jsonl instead of ending the run; every checkpoint ends with a manifest of its files'
sizes and SHA-256, and resume falls back to the newest intact checkpoint; the main process holds the run
directory's lock while training.

Exact resume: a checkpoint holds the model, optimizer, scheduler, every RNG (per rank) and a
`TrainState` with the data position and the open log window, as safetensors + JSON (no pickles). The
data order is a pure function of (seed, epoch), so a run stopped at step k and resumed reaches step N
with the same parameters as an uninterrupted run.
Multi-stage recipes (LVD's two phases, LatentWire's stages, diffusion's loss modes) are decided inside
`Task.loss` from the `TrainState`, never by flags in this loop.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from latentlm.core.checkpoint import (
    load_state,
    load_tensors,
    read_json,
    save_state,
    save_tensors,
    verify_manifest,
    write_json,
    write_manifest,
)
from latentlm.core.config import check_choice, check_range
from latentlm.core.run import RunDir, progress
from latentlm.core.seed import seed_everything

CHECKPOINT_FORMAT_VERSION = 2
"""2: optimizer/scheduler/RNG state as JSON + safetensors and a manifest (1: torch pickles)."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings shared by every system (`train:` in a run config)."""

    resumable_fields: ClassVar[tuple[str, ...]] = (
        "lr",
        "max_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "early_stop_patience",
        "max_minutes",
        "nonfinite",
        "max_nonfinite_skips",
    )
    """Fields a resumed run may change (recorded in `config_changes.jsonl`); any other change is refused."""

    max_steps: int = 1000
    """Optimizer steps to train for."""
    max_minutes: float = 0.0
    """Also stop once the training steps have taken this many minutes of wall-clock, summed over resumes
    (evaluations and checkpoints not counted; 0: no limit). The step where time runs out is evaluated and
    checkpointed like the last one; the schedule still spans `max_steps`. For runs compared at equal time."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (or the step size of a task's own optimizer)."""
    optimizer: str = "adamw"
    """adamw, or the name of an optimizer the task builds itself in `Task.build_optimizer` (hmm: em)."""
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    """Linear warm-up from 0 to `lr` over this many steps."""
    schedule: str = "constant"
    """After warm-up: constant | linear | cosine (decaying to `min_lr_ratio * lr` at `max_steps`)."""
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    mixed_precision: str = "no"
    """no | bf16 | fp16 (fp16 needs a GPU)."""
    log_every: int = 10
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end)."""
    eval_at_start: bool = False
    """Also evaluate before the first step, so `best/` keeps the untrained model when training never beats it
    (for a model initialised at a strong baseline)."""
    checkpoint_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    best_metric: str = ""
    """Eval metric (without the `eval/` prefix) whose best value is kept in `best/`; empty: off."""
    best_mode: str = "min"
    """min | max: whether a lower or higher `best_metric` is better."""
    early_stop_patience: int = 0
    """Stop once `best_metric` has not improved for this many evaluations (a held-out plateau); 0: off."""
    find_unused_parameters: bool = False
    """For DDP when some parameters get no gradient in a step (frozen branches, loss modes)."""
    cpu: bool = False
    """Train on CPU even when a GPU is present."""
    seed: int = 0
    nonfinite: str = "stop"
    """What to do with a step whose loss, gradient norm or updated parameters are not finite (the step is
    never applied): stop (raise, naming the last good checkpoint) | skip (drop the batch and go on)."""
    max_nonfinite_skips: int = 10
    """With nonfinite=skip: stop after this many consecutive skipped steps."""

    def __post_init__(self):
        for name, low in (
            ("max_steps", 1),
            ("grad_accum", 1),
            ("log_every", 1),
            ("keep_checkpoints", 1),
            ("max_nonfinite_skips", 1),
            ("warmup_steps", 0),
            ("eval_every", 0),
            ("checkpoint_every", 0),
            ("early_stop_patience", 0),
        ):
            check_range(f"train.{name}", getattr(self, name), low)
        check_range("train.seed", self.seed, 0, 2**32 - 1024, high_open=True)
        check_range("train.lr", self.lr, 0, low_open=True)
        check_range("train.weight_decay", self.weight_decay, 0)
        check_range("train.grad_clip", self.grad_clip, 0)
        check_range("train.min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_range("train.max_minutes", self.max_minutes, 0)
        if len(self.betas) != 2:
            raise ValueError(f"train.betas: need two values, got {list(self.betas)}")
        for index, beta in enumerate(self.betas):
            check_range(f"train.betas[{index}]", beta, 0, 1, high_open=True)
        if not self.optimizer:
            raise ValueError("train.optimizer: must name an optimizer (adamw), got ''")
        check_choice("train.schedule", self.schedule, ("constant", "linear", "cosine"))
        check_choice("train.mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))
        check_choice("train.best_mode", self.best_mode, ("min", "max"))
        check_choice("train.nonfinite", self.nonfinite, ("stop", "skip"))
        if self.early_stop_patience and not self.best_metric:
            raise ValueError("train.early_stop_patience: needs train.best_metric to watch")


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint as `state.json`."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    log_window: dict[str, list[float]] = field(default_factory=dict)
    """Sum and count of each training metric since the last log record (kept across a resume)."""
    train_seconds: float = 0.0
    """Wall-clock seconds spent in training steps so far, summed over resumes (for `max_minutes`)."""
    skipped_steps: int = 0
    """Steps dropped by `train.nonfinite=skip` so far (not counted in `step`)."""
    best_value: float | None = None
    evals_since_best: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """JSON-able task state (e.g. the step at which a phase switched)."""


@dataclass
class StepOutput:
    """What `Task.loss` returns for one micro-batch."""

    loss: torch.Tensor
    num_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class Task:
    """What a system plugs into the `Trainer`. Subclass it and override the methods below."""

    batch_size: int = 8
    """Micro-batch size per process."""

    def build_model(self) -> nn.Module:
        """The trainable module (frozen helpers such as LLMs stay on the task)."""
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        """A map-style dataset; items are batched by `collate`."""
        raise NotImplementedError

    def collate(self, items: list) -> Any:
        return default_collate(items)

    def loss(self, model: nn.Module, batch: Any, state: TrainState) -> StepOutput:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        """Held-out metrics; runs on the main process under `torch.no_grad()` in eval mode."""
        return {}

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        """Optional optimizer parameter groups (e.g. a lower learning rate for an encoder)."""
        return None

    def on_step_start(self, model: nn.Module, state: TrainState) -> None:
        """Hook before each optimizer step (e.g. an unfreeze policy)."""

    def build_optimizer(self, groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
        """The optimizer of `cfg.optimizer` over the parameter `groups`; AdamW unless a task adds its own
        (e.g. the HMM's EM, which reads expected counts from the gradient of log P(O))."""
        if cfg.optimizer != "adamw":
            raise ValueError(
                f"train.optimizer: {cfg.optimizer!r} is not available for this system (use adamw)"
            )
        return adamw(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused (one kernel per parameter and step instead of about ten) where torch has the fused
    kernel: floating-point parameters on CPU or CUDA.  On our CPU its step is 3x faster."""
    params = list(params)
    tensors = (
        [p for group in params for p in group["params"]] if params and isinstance(params[0], dict) else params
    )
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.AdamW(params, fused=fused, **kwargs)


class Trainer:
    """Runs a `Task` for `cfg.max_steps` optimizer steps, resuming from the run's latest checkpoint."""

    def __init__(self, task: Task, cfg: TrainConfig, run: RunDir, accelerator: Accelerator | None = None):
        self.task = task
        self.cfg = cfg
        self.run = run
        self.accelerator = accelerator or _make_accelerator(cfg)
        self.model: nn.Module | None = None
        self.state = TrainState()
        self._consecutive_skips = 0

    # ------------------------------------------------------------------ public
    def fit(self) -> TrainState:
        """Train to `max_steps`; the main process holds the run directory's lock meanwhile."""
        with self.run.lock() if self.accelerator.is_main_process else contextlib.nullcontext():
            return self._fit()

    def _fit(self) -> TrainState:
        acc, cfg, task = self.accelerator, self.cfg, self.task
        seed_everything(cfg.seed + acc.process_index)
        model = task.build_model()
        groups = task.param_groups(model) or [{"params": list(model.parameters())}]
        optimizer = task.build_optimizer(groups, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda)
        self.model = model
        wrapped, optimizer = acc.prepare(model, optimizer)
        self._resume(model, optimizer, scheduler)

        dataset = task.train_dataset()
        steps_per_epoch = self._steps_per_epoch(dataset)
        bar = progress(
            total=cfg.max_steps, initial=self.state.step, desc="train", disable=not acc.is_main_process
        )
        # The log window (sums and counts since the last record) lives in the TrainState, so the first record
        # after a resume averages the same steps as an uninterrupted run; throughput counts this process only.
        window_tokens, window_start = 0, time.perf_counter()
        batches = self._batches(dataset, steps_per_epoch)
        clock = time.perf_counter()
        # A resumed run that had used up max_minutes, or had stopped early, trains no further.
        stopped = self._out_of_time() or (self.state.step > 0 and self._plateaued())
        if cfg.eval_at_start and self.state.step == 0:
            self._evaluate(model, wrapped)

        wrapped.train()
        try:
            while self.state.step < cfg.max_steps and not stopped:
                task.on_step_start(model, self.state)
                applied = self._optimizer_step(wrapped, model, optimizer, batches)
                if applied is None:  # a non-finite step, skipped (train.nonfinite=skip)
                    continue
                values, step_tokens = applied
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                self.state.tokens_seen += step_tokens
                window_tokens += step_tokens
                for key, items in values.items():
                    total = self.state.log_window.setdefault(key, [0.0, 0])
                    for item in items:
                        total[0] += item
                        total[1] += 1
                bar.update(1)

                if self.state.step % cfg.log_every == 0 or self.state.step == cfg.max_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    record = {
                        f"train/{k}": total / count for k, (total, count) in self.state.log_window.items()
                    }
                    record["train/lr"] = scheduler.get_last_lr()[0]
                    record["train/tokens_seen"] = self.state.tokens_seen
                    if window_tokens:
                        record["train/tokens_per_s"] = window_tokens / elapsed
                    if acc.is_main_process:
                        self.run.log(self.state.step, record)
                        bar.set_postfix(loss=f"{record['train/loss']:.4g}")
                    self.state.log_window = {}
                    window_tokens, window_start = 0, time.perf_counter()

                now = time.perf_counter()
                self.state.train_seconds += now - clock
                clock = now
                timed_out = self.state.step < cfg.max_steps and self._out_of_time()
                if timed_out and acc.is_main_process:
                    self.run.log(self.state.step, {"train/time_limit": 1})
                    print(f"stopped at step {self.state.step}: train.max_minutes={cfg.max_minutes} used up")
                is_last = self.state.step == cfg.max_steps or timed_out
                if (cfg.eval_every and self.state.step % cfg.eval_every == 0) or is_last:
                    self._evaluate(model, wrapped)
                    if not is_last and self._plateaued():
                        is_last = True
                        if acc.is_main_process:
                            self.run.log(self.state.step, {"train/early_stop": 1})
                            print(
                                f"early stop at step {self.state.step}: eval/{cfg.best_metric} has not "
                                f"improved for {cfg.early_stop_patience} evaluations"
                            )
                if (cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0) or is_last:
                    self._save_checkpoint(model, optimizer, scheduler)
                if is_last:
                    break
                clock = time.perf_counter()  # evaluation and checkpoints do not count against max_minutes
        finally:
            bar.close()  # also on an error, so its message starts on a line of its own
        acc.wait_for_everyone()
        return self.state

    # ------------------------------------------------------------------ steps
    def _optimizer_step(
        self, wrapped: nn.Module, model: nn.Module, optimizer, batches: Iterator[Any]
    ) -> tuple[dict[str, list[float]], int] | None:
        """Accumulate `grad_accum` micro-batches and apply the update unless a loss, the gradient norm or
        an updated parameter is not finite. Returns the step's metric values and token count, or None for
        a skipped step (`_reject_step` raises instead under train.nonfinite=stop)."""
        acc, cfg = self.accelerator, self.cfg
        values: dict[str, list[float]] = defaultdict(list)
        step_tokens, problems = 0, []
        for micro in range(cfg.grad_accum):
            out = self._micro_step(wrapped, next(batches), last=micro == cfg.grad_accum - 1)
            step_tokens += int(acc.reduce(torch.tensor(out.num_tokens, device=acc.device), "sum").item())
            loss = out.loss.item()
            if not math.isfinite(loss):
                problems.append(f"loss is {loss} (metrics {out.metrics})")
            values["loss"].append(loss)
            for key, value in out.metrics.items():
                values[key].append(float(value))
        grad_norm = self._grad_norm(model)
        if grad_norm is not None:
            values["grad_norm"].append(grad_norm)
            if not math.isfinite(grad_norm):
                problems.append(f"gradient norm is {grad_norm}")
        if not self._all_finite(problems):
            self._reject_step(optimizer, problems or ["a non-finite value on another process"])
            return None
        before = self._snapshot(model, optimizer) if cfg.nonfinite == "skip" else None
        optimizer.step()
        bad_params = self._nonfinite_parameters(model)
        if not self._all_finite(bad_params):
            if before is not None:
                self._restore(model, optimizer, before)
            self._reject_step(
                optimizer, [f"the update made parameters non-finite: {', '.join(bad_params[:5])}"]
            )
            return None
        self._consecutive_skips = 0
        return values, step_tokens

    def _micro_step(self, wrapped: nn.Module, batch: Any, last: bool) -> StepOutput:
        acc = self.accelerator
        batch = to_device(batch, acc.device)
        # Gradients are all-reduced only on the last micro-batch of an optimizer step. A non-finite loss
        # is still back-propagated, so every process takes part in the all-reduce; the step is then
        # rejected on every process by `_all_finite`.
        with acc.no_sync(wrapped) if not last else contextlib.nullcontext():
            with acc.autocast():
                out = self.task.loss(wrapped, batch, self.state)
            acc.backward(out.loss / self.cfg.grad_accum)
        return out

    def _grad_norm(self, model: nn.Module) -> float | None:
        """The global gradient norm (clipped to `grad_clip` when set); None when no parameter has a gradient.

        Under fp16 the gradient scaler owns overflow handling (it skips such steps itself), so the norm is
        not judged there."""
        acc, params = self.accelerator, [p for p in model.parameters() if p.grad is not None]
        if not params:
            return None
        if self.cfg.grad_clip > 0:
            norm = float(acc.clip_grad_norm_(model.parameters(), self.cfg.grad_clip))
        else:
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        return norm if acc.scaler is None or math.isfinite(norm) else None

    def _nonfinite_parameters(self, model: nn.Module) -> list[str]:
        names = [name for name, p in model.named_parameters() if p.numel()]
        if not names:
            return []
        # min and max propagate NaN and ±inf: one read of each parameter, no temporary of its size
        extremes = torch.stack(
            [torch.stack(torch.aminmax(p.detach())).float() for p in model.parameters() if p.numel()]
        )  # (P, 2)
        bad = (~torch.isfinite(extremes).all(1)).nonzero().flatten().tolist()
        return [names[i] for i in bad]

    def _all_finite(self, problems: list[str]) -> bool:
        """Whether no process found a problem in this step (every process takes the same decision)."""
        flag = torch.tensor([float(bool(problems))], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, "sum")
        return flag.item() == 0

    def _snapshot(self, model: nn.Module, optimizer) -> tuple[list[torch.Tensor], dict]:
        """Parameters and optimizer state before an update, to undo it (only kept with nonfinite=skip)."""
        return [p.detach().clone() for p in model.parameters()], copy.deepcopy(optimizer.state_dict())

    def _restore(self, model: nn.Module, optimizer, snapshot: tuple[list[torch.Tensor], dict]) -> None:
        params, optimizer_state = snapshot
        with torch.no_grad():
            for param, saved in zip(model.parameters(), params, strict=True):
                param.copy_(saved)
        optimizer.load_state_dict(optimizer_state)

    def _reject_step(self, optimizer, problems: list[str]) -> None:
        """Drop a non-finite step (nothing applied or checkpointed); then stop or skip (`train.nonfinite`)."""
        optimizer.zero_grad(set_to_none=True)
        step = self.state.step + 1
        what = "; ".join(problems)
        self._consecutive_skips += 1
        skip = self.cfg.nonfinite == "skip" and self._consecutive_skips <= self.cfg.max_nonfinite_skips
        if self.accelerator.is_main_process:
            self.run.log(self.state.step, {"train/nonfinite_step": step, "train/nonfinite": what})
        if skip:
            self.state.skipped_steps += 1
            if self.accelerator.is_main_process:
                tqdm.write(f"warning: step {step} skipped: {what}", file=sys.stderr)
            return
        good = self.run.latest_intact_checkpoint()
        where = (
            f"the last good checkpoint is {good}; rerun the same command to resume from it"
            if good is not None
            else "no checkpoint was written yet; a rerun starts from step 0"
        )
        limit = (
            f" ({self._consecutive_skips} consecutive non-finite steps, train.max_nonfinite_skips="
            f"{self.cfg.max_nonfinite_skips})"
            if self.cfg.nonfinite == "skip"
            else ""
        )
        raise FloatingPointError(f"step {step}: {what}; the step was not applied{limit}; {where}")

    def _evaluate(self, model: nn.Module, wrapped: nn.Module) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            model.eval()
            failure = None
            try:
                with torch.no_grad():
                    metrics = self.task.evaluate(model, self.state)
            except (ArithmeticError, ValueError) as err:
                # A numerical failure (overflow, a math domain error) is recorded; the run and its weights are
                # kept. Anything else is a bug and raises.
                metrics, failure = {}, f"{type(err).__name__}: {err}"
            finally:
                wrapped.train()
            nonfinite = sorted(k for k, v in metrics.items() if not _is_finite_number(v))
            if nonfinite and failure is None:
                failure = f"non-finite values for {', '.join(nonfinite)}"
            finite = {f"eval/{k}": v for k, v in metrics.items() if k not in nonfinite}
            if failure is not None:
                tqdm.write(
                    f"warning: evaluation at step {self.state.step} failed: {failure}", file=sys.stderr
                )
                self.run.log(self.state.step, {**finite, "eval/failed": 1, "eval/error": failure})
                if self.cfg.best_metric:
                    self.state.evals_since_best += 1
            elif metrics:
                self.run.log(self.state.step, finite)
                self._track_best(model, metrics)
        acc.wait_for_everyone()

    def _out_of_time(self) -> bool:
        """Whether `max_minutes` of training have passed (process 0's clock decides for every rank)."""
        if not self.cfg.max_minutes:
            return False
        over = torch.tensor(
            [int(self.state.train_seconds >= 60 * self.cfg.max_minutes)], device=self.accelerator.device
        )
        return bool(broadcast(over, from_process=0).item())

    def _plateaued(self) -> bool:
        """Whether `best_metric` stalled for `early_stop_patience` evaluations (all ranks agree)."""
        if not self.cfg.early_stop_patience:
            return False
        stop = torch.tensor(
            [int(self.state.evals_since_best >= self.cfg.early_stop_patience)], device=self.accelerator.device
        )
        return bool(broadcast(stop, from_process=0).item())

    def _track_best(self, model: nn.Module, metrics: dict[str, float]) -> None:
        name = self.cfg.best_metric
        if not name:
            return
        if name not in metrics:
            raise KeyError(f"train.best_metric: {name!r} is not among the eval metrics {sorted(metrics)}")
        value = float(metrics[name])
        best = self.state.best_value
        better = best is None or (value < best if self.cfg.best_mode == "min" else value > best)
        self.state.evals_since_best = 0 if better else self.state.evals_since_best + 1
        if better:
            self.state.best_value = value
            best_dir, tmp = self.run.path / "best", self.run.path / ".best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_tensors(model.state_dict(), tmp / "model.safetensors")
            write_json(tmp / "state.json", {"step": self.state.step, name: value})
            write_manifest(tmp)
            shutil.rmtree(best_dir, ignore_errors=True)
            tmp.rename(best_dir)

    # ------------------------------------------------------------------ data
    def _steps_per_epoch(self, dataset: Dataset) -> int:
        world = self.accelerator.num_processes
        per_epoch = len(dataset) // (self.task.batch_size * world)
        if per_epoch == 0:
            raise ValueError(
                f"the training set has {len(dataset)} items, fewer than one batch "
                f"({self.task.batch_size} per process x {world} processes)"
            )
        return per_epoch

    def _batches(self, dataset: Dataset, steps_per_epoch: int) -> Iterator[Any]:
        """Micro-batches from the saved data position on; the order depends only on (seed, epoch)."""
        acc, size = self.accelerator, self.task.batch_size
        while True:
            order = torch.randperm(
                len(dataset),
                generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.state.epoch),
            )
            shard = order[: steps_per_epoch * size * acc.num_processes][
                acc.process_index :: acc.num_processes
            ]
            while self.state.batch_in_epoch < steps_per_epoch:
                start = self.state.batch_in_epoch * size
                self.state.batch_in_epoch += 1
                yield self.task.collate([dataset[int(i)] for i in shard[start : start + size]])
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    # ------------------------------------------------------------------ schedule
    def _lr_lambda(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress_ = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        decay = 1.0 - progress_ if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress_))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model: nn.Module, optimizer, scheduler) -> None:
        """Write `checkpoints/step_N/` atomically: every file in a temp folder, `state.json`, then the
        manifest last, then one rename. Only called after a step whose parameters are all finite."""
        acc = self.accelerator
        final = self.run.checkpoints_dir / f"step_{self.state.step}"
        tmp = self.run.checkpoints_dir / f".step_{self.state.step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        save_state(_rng_state(), tmp, f"rng_rank{acc.process_index}")
        if acc.is_main_process:
            save_tensors(acc.unwrap_model(model).state_dict(), tmp / "model.safetensors")
            save_state(optimizer.state_dict(), tmp, "optimizer")
            save_state(scheduler.state_dict(), tmp, "scheduler")
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json(
                tmp / "state.json",
                {"format_version": CHECKPOINT_FORMAT_VERSION, **dataclasses.asdict(self.state)},
            )
            write_manifest(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.run.checkpoints()[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _pick_checkpoint(self) -> tuple[Path | None, list[tuple[Path, str]]]:
        """The newest checkpoint that matches its manifest (decided by the main process, shared with all),
        and the newer damaged ones with their problem."""
        acc = self.accelerator
        chosen, damaged, failure = -1, [], ""
        if acc.is_main_process:
            found = self.run.checkpoints()
            for checkpoint in reversed(found):
                problem = self.run.checkpoint_problem(checkpoint)
                if problem is None:
                    chosen = int(checkpoint.name.removeprefix("step_"))
                    break
                damaged.append((checkpoint, problem))
            if found and chosen < 0:
                chosen = -2
                failure = (
                    f"no intact checkpoint in {self.run.checkpoints_dir}: "
                    + "; ".join(problem for _, problem in damaged)
                    + f". Move {self.run.checkpoints_dir} away to train this run from step 0"
                )
        if acc.num_processes > 1:
            chosen = int(broadcast(torch.tensor([chosen], device=acc.device), from_process=0).item())
        if chosen == -2:
            raise ValueError(failure or "the main process found no intact checkpoint")
        if chosen < 0:
            return None, []
        return self.run.checkpoints_dir / f"step_{chosen}", damaged

    def _resume(self, model: nn.Module, optimizer, scheduler) -> None:
        acc = self.accelerator
        checkpoint, damaged = self._pick_checkpoint()
        if checkpoint is None:
            if acc.is_main_process and self.run.metrics_path.is_file():
                self.run.truncate_metrics(0)  # records of an attempt that never checkpointed: start over
            return
        meta = read_json(checkpoint / "state.json")
        version = meta.pop("format_version", None)
        if version != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"{checkpoint}: checkpoint format {version} is not supported (this latentlm writes and reads "
                f"format {CHECKPOINT_FORMAT_VERSION})"
            )
        written = len(list(checkpoint.glob("rng_rank*.json")))
        if written != acc.num_processes:
            raise ValueError(
                f"{checkpoint}: written by {written} processes, resumed with {acc.num_processes}; "
                f"resume with {written} processes (exact resume needs each process's RNG state)"
            )
        self.state = TrainState(**meta)
        configured = list(scheduler.base_lrs)  # from this run's config (LambdaLR read them at start)
        acc.unwrap_model(model).load_state_dict(load_tensors(checkpoint / "model.safetensors"))
        optimizer.load_state_dict(load_state(checkpoint, "optimizer"))
        scheduler.load_state_dict(load_state(checkpoint, "scheduler"))
        # The learning rate of this run's config applies from here on (unchanged: the same numbers as the
        # saved ones, since LambdaLR sets lr = base_lr * lambda(step) the same way).
        scheduler.base_lrs = list(configured)
        for group, base in zip(optimizer.param_groups, configured, strict=True):
            group["initial_lr"] = base
            group["lr"] = base * self._lr_lambda(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        _set_rng_state(load_state(checkpoint, f"rng_rank{acc.process_index}"))
        if acc.is_main_process:
            self.run.truncate_metrics(self.state.step)
            for bad, problem in damaged:
                moved = self.run.set_aside(bad)
                print(
                    f"warning: checkpoint {bad} is damaged ({problem}); moved to {moved}; "
                    f"resuming from the older {checkpoint}",
                    file=sys.stderr,
                )
            if damaged:
                self.run.log(
                    self.state.step,
                    {
                        "resume/damaged_checkpoints": "; ".join(problem for _, problem in damaged),
                        "resume/from": str(checkpoint),
                    },
                )
            print(f"resumed from {checkpoint} (step {self.state.step}, {self.state.tokens_seen} tokens)")
        acc.wait_for_everyone()


def _make_accelerator(cfg: TrainConfig) -> Accelerator:
    # Accelerate keeps process-wide state; its precision part is reset so that runs with different
    # settings can follow each other in one process (the distributed group itself is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    has_accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
    return Accelerator(
        cpu=cfg.cpu or not has_accelerator,  # without cpu=True, torchrun on CPUs would not start gloo
        mixed_precision=cfg.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
    )


def load_model_weights(model: nn.Module, checkpoint_dir: str | Path) -> nn.Module:
    """Load `model.safetensors` from a checkpoint (or `best/`) folder into `model`, after checking the
    folder against its manifest (a damaged file raises `DamagedFileError` naming it)."""
    verify_manifest(checkpoint_dir, required=False)
    model.load_state_dict(load_tensors(Path(checkpoint_dir) / "model.safetensors"))
    return model


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts/lists/tuples/dataclasses to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(
            batch, **{f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch)}
        )
    return batch


def _is_finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number (a string, a list): not judged here


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list | tuple) else value
