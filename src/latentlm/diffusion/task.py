"""The diffusion system's engine ``Task``: data start-up, loss modes, freezing and the Stage II schedule.

Seed 002, "Two-Stage Training Pipeline" and "Partial Fine-Tuning":

* ``train.stage_schedule=stage1_coupling`` trains the denoiser on (text, external latent) pairs;
  ``stage2_variational`` adds q(z|x) and p(z) (``model.variational``), samples ``z ~ q(z|x)`` in place
  of the external latent and adds ``kl_weight * KL`` (with linear warm-up over ``loss.kl_warmup_steps``
  and ``loss.free_bits`` nats per dimension) and ``geom_weight * geometry``.  Stage II usually starts
  from a Stage I run (``model.checkpoint_path``) with the denoiser frozen; ``_apply_unfreeze_policy``
  unfreezes the parameters matching ``train.unfreeze_patterns`` from step ``unfreeze_after_steps`` on.
* ``train.loss_type`` picks the diffusion loss mode: ``stage1_coupling`` (independent times for both
  modalities; with probability ``clean_cond_prob`` one of them is clean), ``l2t`` (clean latent, text
  loss), ``t2l`` (clean text, latent loss) or ``sequential`` (phases from ``sequential_schedule``).
  The conditioning stream of a conditional mode is frozen (l2t: the latent stream, t2l: the text
  stream), and with probability ``cond_dropout`` the condition is replaced by its null version
  (the fully noised modality, ``t = 1``), which is what classifier-free guidance needs at sampling.

The loss per example is ``text_weight * NELBO/L + latent_weight * MSE + kl_weight(step) * KL_fb/L +
geom_weight * geometry`` (L = sequence length), so the text and KL terms are per token.

At start-up the task prepares the data folders from ``data.prepare.corpus`` if they do not exist yet,
checks them (latent rows = token rows, finite latents, ids inside the vocabulary: errors name the
file), builds the compact vocabulary (``data.compact_vocab``) and fills the data-derived model fields.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from torch import nn

from latentlm.core.checkpoint import load_tensors, verify_manifest
from latentlm.core.engine import StepOutput, Task, TrainState, adamw
from latentlm.core.lifecycle import train_task
from latentlm.core.run import RunDir
from latentlm.diffusion.autoregressive import AutoregressiveLM
from latentlm.diffusion.config import DiffusionConfig, ModelConfig
from latentlm.diffusion.data import (
    CompactVocab,
    DirectFileDataset,
    check_prepared,
    collate_batch,
    precompute_latents,
    read_latent_meta,
    read_token_meta,
)
from latentlm.diffusion.evaluate import heldout_nelbo, safe_perplexity
from latentlm.diffusion.model import MODE_FROZEN_STREAM, LatentDiffusionLM, stream_of
from latentlm.diffusion.schedules import sample_diffusion_times
from latentlm.diffusion.variational import free_bits_kl, kl_weight_at, latent_geometry_loss

__all__ = [
    "DiffusionTask",
    "AutoregressiveTask",
    "prepare_data",
    "load_stage1_checkpoint",
    "resolve_checkpoint_file",
]


def prepare_data(cfg: DiffusionConfig) -> bool:
    """Run ``precompute-latents`` into ``data.token_dir`` / ``data.latent_dir`` when they do not exist
    yet and ``data.prepare.corpus`` is set; returns True when it did. Existing folders are checked
    against ``data.prepare`` (a clear error when they were prepared with other settings)."""
    d = cfg.data
    if not d.prepare.corpus:
        return False
    if (Path(d.token_dir) / "meta.json").is_file():
        check_prepared(d.prepare, d.token_dir, d.latent_dir)
        return False
    print(f"[diffusion] preparing {d.token_dir} and {d.latent_dir} from {d.prepare.corpus}", flush=True)
    precompute_latents(d.prepare, d.token_dir, d.latent_dir)
    return True


def resolve_checkpoint_file(path: str | Path) -> Path:
    """A weights file from a .safetensors path, a model/checkpoint folder or a run folder (its model/, else
    its newest checkpoint whose files match their manifest)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "model.safetensors", path / "model" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    if (path / "checkpoints").is_dir():
        latest = RunDir(path, tensorboard=False).latest_intact_checkpoint()
        if latest is not None:
            return latest / "model.safetensors"
    raise FileNotFoundError(
        f"model.checkpoint_path={str(path)!r}: not a .safetensors file, a model/checkpoint folder or a run "
        "folder with a saved model or an intact checkpoint"
    )


def load_stage1_checkpoint(model: LatentDiffusionLM, path: str | Path) -> list[str]:
    """Load the denoiser (``rwkv.*``) weights of a Stage I (or any earlier) checkpoint.

    Every ``rwkv.*`` tensor of ``model`` must be present with the same shape; the Stage II modules
    (encoder, prior) and the buffers are loaded too when the checkpoint has them.

    Returns:
        names of model tensors left at their initial values (the Stage II modules of a Stage I file).
    """
    file = resolve_checkpoint_file(path)
    # Check the folder against its manifest (model/ and checkpoints carry one) before reading; the
    # engine's load_model_weights does the same but loads strictly, and a Stage I file lacks the
    # Stage II modules.
    verify_manifest(file.parent, required=False)
    tensors = load_tensors(file)
    own = model.state_dict()
    missing_denoiser = [k for k in own if k.startswith("rwkv.") and k not in tensors]
    if missing_denoiser:
        raise KeyError(
            f"{file}: missing denoiser weights {missing_denoiser[:5]} (is it a diffusion checkpoint?)"
        )
    for key, value in tensors.items():
        if key not in own:
            raise KeyError(f"{file}: unexpected weight {key!r}")
        if own[key].shape != value.shape:
            raise ValueError(
                f"{file}: weight {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[key].shape)} "
                "(model.* or the data's tokenizer/latent size differ from the checkpoint's run)"
            )
    model.load_state_dict(tensors, strict=False)
    return [k for k in own if k not in tensors]


class DiffusionTask(Task):
    """Stage I / Stage II joint text-latent diffusion on pre-computed sentence data."""

    def __init__(self, cfg: DiffusionConfig, run: RunDir | None = None) -> None:
        self.cfg = cfg
        self.run = run
        self.batch_size = cfg.batch_size
        prepare_data(cfg)
        d = cfg.data
        self.token_meta = read_token_meta(d.token_dir)
        latent_meta_file = Path(d.latent_dir) / "meta.json"
        self.latent_meta = read_latent_meta(d.latent_dir) if latent_meta_file.is_file() else None
        if d.use_external_latents and self.latent_meta is None:
            raise FileNotFoundError(f"data.use_external_latents=true but {latent_meta_file} does not exist")
        self.variational = cfg.train.stage_schedule == "stage2_variational"
        if not self.variational and not d.use_external_latents:
            raise ValueError(
                "stage1_coupling needs data.use_external_latents=true (the latents are its targets)"
            )
        # Fail at start-up, not mid-training: open (and range-check) both splits before the vocabulary.
        self._train_dataset = self._dataset("train", d.max_train_examples)
        self.val_dataset = self._dataset("val", cfg.eval.max_examples)
        self.vocab = None
        if d.compact_vocab:
            train_ids = self._train_dataset.tokens[: len(self._train_dataset)]  # (N, L)
            self.vocab = CompactVocab.build(train_ids, self.token_meta)
            for dataset in (self._train_dataset, self.val_dataset):
                dataset.id_map = torch.from_numpy(self.vocab.id_map)
        self.model_config = self._fill_model_config(cfg.model)
        self.starts_from_checkpoint = bool(cfg.model.checkpoint_path)

    def _fill_model_config(self, m: ModelConfig) -> ModelConfig:
        meta = self.token_meta
        latent_dim = m.latent_dim or (self.latent_meta.latent_dim if self.latent_meta else 0)
        if not latent_dim:
            raise ValueError("model.latent_dim: set it (or data.latent_dir) when no latent folder exists")
        if self.latent_meta is not None and latent_dim != self.latent_meta.latent_dim:
            raise ValueError(
                f"model.latent_dim={latent_dim} but {self.cfg.data.latent_dir}/meta.json says "
                f"{self.latent_meta.latent_dim}"
            )
        ids = {k: getattr(meta, k) for k in ("mask_token_id", "pad_token_id", "sep_token_id", "unk_token_id")}
        vocab_size = meta.vocab_size
        if self.vocab is not None:
            ids = {k: (self.vocab.compact_id(v) if v >= 0 else -1) for k, v in ids.items()}
            vocab_size = len(self.vocab)
        return dataclasses.replace(
            m,
            vocab_size=vocab_size,
            seq_len=meta.seq_len,
            latent_dim=latent_dim,
            tokenizer=m.tokenizer or meta.tokenizer,
            encoder=m.encoder or (self.latent_meta.encoder if self.latent_meta else ""),
            variational=self.variational,
            **ids,
        )

    def _dataset(self, split: str, max_examples: int) -> DirectFileDataset:
        d = self.cfg.data
        return DirectFileDataset(d.token_dir, d.latent_dir, split, d.use_external_latents, max_examples)

    def vocab_report(self) -> dict[str, int]:
        """Compact-vocabulary sizes and how many held-out tokens became [UNK] (empty when not compact)."""
        if self.vocab is None:
            return {}
        val = np.asarray(self.val_dataset.tokens[: len(self.val_dataset)])
        return {
            "compact_vocab_size": len(self.vocab),
            "tokenizer_vocab_size": self.token_meta.vocab_size,
            "heldout_tokens_mapped_to_unk": self.vocab.unknown_count(val, self.token_meta),
            "heldout_tokens": int((val != self.token_meta.pad_token_id).sum()),
        }

    # ------------------------------------------------------------------ engine hooks
    def build_model(self) -> LatentDiffusionLM:
        model = LatentDiffusionLM(self.model_config)
        if self.latent_meta is not None:
            model.latent_mean.copy_(torch.tensor(self.latent_meta.mean))
            model.latent_std.copy_(torch.tensor(self.latent_meta.std))
        if self.vocab is not None:
            model.original_ids.copy_(torch.from_numpy(self.vocab.original_ids))
        if self.starts_from_checkpoint:
            fresh = load_stage1_checkpoint(model, self.cfg.model.checkpoint_path)
            self._say(f"loaded {self.cfg.model.checkpoint_path}; freshly initialised: {len(fresh)} tensors")
        elif self.variational:
            self._say("stage2_variational without model.checkpoint_path: training the denoiser from scratch")
        self._apply_unfreeze_policy(model, 0)
        return model

    def train_dataset(self) -> DirectFileDataset:
        return self._train_dataset

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return collate_batch(items, self.model_config.latent_dim)

    def on_step_start(self, model: nn.Module, state: TrainState) -> None:
        changed = self._apply_unfreeze_policy(model, state.step)
        if changed and state.step > 0:
            self._say(
                f"step {state.step}: requires_grad changed for {len(changed)} tensors "
                f"(mode {self.mode_at(state.step)})"
            )
        if (
            state.step % self.cfg.train.param_log_every == 0
            and self.run is not None
            and PartialState().is_main_process
        ):
            active, frozen = self.parameter_counts(model)
            self.run.log(state.step, {"params/active": active, "params/frozen": frozen})

    def loss(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        out = self.compute_losses(model, batch, self.mode_at(state.step), state.step)
        metrics = {k: float(v) for k, v in out.items() if k != "loss"}
        return StepOutput(out["loss"], num_tokens=int(batch["input_ids"].numel()), metrics=metrics)

    def evaluate(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        return heldout_nelbo(model, self.val_dataset, num_draws=1, seed=self.cfg.eval.seed)

    # ------------------------------------------------------------------ modes and freezing
    def mode_at(self, step: int) -> str:
        """Diffusion loss mode of the optimizer step that starts at ``step`` (0-based)."""
        t = self.cfg.train
        if t.loss_type != "sequential":
            return t.loss_type
        end = 0
        for phase in t.sequential_schedule:
            end += phase.steps
            if step < end:
                return phase.type
        return t.sequential_schedule[-1].type

    def _trainable(self, name: str, step: int) -> bool:
        frozen_stream = MODE_FROZEN_STREAM[self.mode_at(step)]
        if frozen_stream is not None and stream_of(name) == frozen_stream:
            return False
        if self.variational and self.starts_from_checkpoint and name.startswith("rwkv."):
            t = self.cfg.train
            return step >= t.unfreeze_after_steps and any(re.search(p, name) for p in t.unfreeze_patterns)
        return True

    def _apply_unfreeze_policy(self, model: nn.Module, step: int) -> list[str]:
        """Set ``requires_grad`` of every parameter for ``step``; returns the names that changed.

        Stage II from a checkpoint: the denoiser is frozen until ``unfreeze_after_steps``, then the
        parameters matching ``unfreeze_patterns`` train; the encoder and prior always train.  On top,
        the loss mode freezes its conditioning stream.
        """
        changed = []
        for name, param in model.named_parameters():
            want = self._trainable(name, step)
            if param.requires_grad != want:
                param.requires_grad_(want)
                changed.append(name)
        return changed

    @staticmethod
    def parameter_counts(model: nn.Module) -> tuple[int, int]:
        """(active, frozen) parameter counts."""
        active = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return active, sum(p.numel() for p in model.parameters()) - active

    # ------------------------------------------------------------------ losses
    def sample_times(self, mode: str, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (t_text, t_latent) for a loss mode, with condition dropout to t = 1."""
        t = self.cfg.train
        low = self.cfg.loss.low_discrepancy
        t_text = sample_diffusion_times(batch_size, low_discrepancy=low, device=device)
        t_latent = sample_diffusion_times(batch_size, low_discrepancy=low, device=device)[
            torch.randperm(batch_size)
        ]
        zeros = torch.zeros(batch_size, device=device)
        ones = torch.ones(batch_size, dtype=torch.bool, device=device)
        if mode == "l2t":
            clean_latent, clean_text = ones, zeros.bool()
        elif mode == "t2l":
            clean_latent, clean_text = zeros.bool(), ones
        else:
            conditional = torch.rand(batch_size, device=device) < t.clean_cond_prob
            text_side = torch.rand(batch_size, device=device) < 0.5
            clean_text, clean_latent = conditional & text_side, conditional & ~text_side
        # Condition dropout: the clean condition becomes the null condition (fully noised).
        dropped = torch.rand(batch_size, device=device) < t.cond_dropout
        t_text = torch.where(clean_text, torch.where(dropped, 1.0, 0.0), t_text)
        t_latent = torch.where(clean_latent, torch.where(dropped, 1.0, 0.0), t_latent)
        return t_text, t_latent

    def compute_losses(
        self, model: nn.Module, batch: dict, mode: str, step: int = 0
    ) -> dict[str, torch.Tensor]:
        """All loss terms of one batch under a loss mode at optimizer step ``step`` (for the KL warm-up).

        Returns:
            dict with ``loss`` (scalar, differentiable) and detached terms for logging.
        """
        x0 = batch["input_ids"]
        B, L = x0.shape
        lw = self.cfg.loss
        if self.variational:
            latent = None
        else:
            if not bool(batch["has_latent"].all()):
                raise ValueError("a Stage I batch has examples without latents: check data.latent_dir")
            latent = batch["latent"]
        t_text, t_latent = self.sample_times(mode, B, x0.device)
        out = model(x0, latent, t_text, t_latent, mode)
        terms: dict[str, torch.Tensor] = {"mask_rate": out.mask_rate}
        loss = x0.new_zeros((), dtype=torch.float32)
        if out.kl is not None:
            weight = kl_weight_at(step, lw.kl_weight, lw.kl_warmup_steps)
            penalised = free_bits_kl(out.kl, lw.free_bits)
            loss = loss + weight * penalised / L
            terms |= {
                "kl": out.kl.sum(-1).mean(),
                "kl_penalised": penalised,
                "kl_weight": torch.tensor(weight),
                "mu_norm": out.mu.norm(dim=-1).mean(),
                "logvar_mean": out.logvar.mean(),
            }
            if lw.geom_weight:
                terms["geometry"] = latent_geometry_loss(out.mu, out.text_features)
                loss = loss + lw.geom_weight * terms["geometry"]
        if out.text_nelbo is not None:
            terms["text_nelbo_per_token"] = out.text_nelbo
            loss = loss + lw.text_weight * out.text_nelbo
        if out.latent_mse is not None:
            terms["latent_mse"] = out.latent_mse
            loss = loss + lw.latent_weight * out.latent_mse
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

    def max_steps(self, dataset_size: int) -> int:
        """``train.max_steps``, or ``num_epochs`` passes over the data when ``num_epochs > 0``."""
        t = self.cfg.train
        if not t.num_epochs:
            return t.max_steps
        world = PartialState().num_processes
        return t.num_epochs * max(1, math.floor(dataset_size / (self.batch_size * world * t.grad_accum)))

    def _say(self, message: str) -> None:
        if PartialState().is_main_process:
            print(f"[diffusion] {message}", flush=True)
            if self.run is not None:
                with (self.run.path / "events.log").open("a") as fh:
                    fh.write(message + "\n")


class AutoregressiveTask(Task):
    """The same-size autoregressive baseline on the same sentences (same run config, latents unused)."""

    def __init__(self, cfg: DiffusionConfig, run: RunDir | None = None) -> None:
        self.cfg = cfg
        self.run = run
        self.batch_size = cfg.batch_size
        self.data = DiffusionTask(cfg, run)
        self.model_config = self.data.model_config

    def build_model(self) -> AutoregressiveLM:
        model = AutoregressiveLM(self.model_config)
        if self.data.vocab is not None:
            model.original_ids.copy_(torch.from_numpy(self.data.vocab.original_ids))
        return model

    def train_dataset(self) -> DirectFileDataset:
        return self.data.train_dataset()

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.stack([item["input_ids"] for item in items])}

    def loss(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        out = model(batch["input_ids"])
        return StepOutput(out.loss, num_tokens=int(batch["input_ids"].numel()))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        """Held-out cross-entropy per real token and its perplexity (exact, not a bound)."""
        val = self.data.val_dataset
        device = next(model.parameters()).device
        nll, tokens = 0.0, 0
        for start in range(0, len(val), self.cfg.eval.batch_size):
            end = min(len(val), start + self.cfg.eval.batch_size)
            rows = torch.stack([val[i]["input_ids"] for i in range(start, end)])
            out = model(rows.to(device))
            nll, tokens = nll + float(out.nll_sum), tokens + int(out.num_tokens)
        return {"nll_per_token": nll / tokens, "ppl": safe_perplexity(nll, tokens)}


def step_rate(task: DiffusionTask | AutoregressiveTask, steps: int = 8) -> float:
    """Optimizer steps per second of `task` on a throw-away model (after one warm-up step)."""
    torch.manual_seed(0)
    model = task.build_model()
    if isinstance(task, DiffusionTask):  # time the regime after Stage II's unfreeze step
        task._apply_unfreeze_policy(model, 10**9)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dataset = task.train_dataset()

    def step(i: int) -> None:
        items = [dataset[(i * task.batch_size + j) % len(dataset)] for j in range(task.batch_size)]
        task.loss(model, task.collate(items), TrainState(step=1000)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return steps / (time.perf_counter() - start)


def train_for_seconds(
    task: DiffusionTask | AutoregressiveTask, cfg: DiffusionConfig, seconds: float, evals: int = 6
) -> dict:
    """Train `task` for about `seconds` of wall-clock (the equal-time comparisons of the benchmarks):
    max_steps = the budget x the step rate measured on 8 calibration steps, so the schedule ends on time."""
    rate = step_rate(task)
    steps = max(10, int(seconds * rate))
    cfg.train = dataclasses.replace(
        cfg.train,
        max_steps=steps,
        warmup_steps=min(cfg.train.warmup_steps, steps // 10),
        eval_every=max(steps // evals, 1),
        checkpoint_every=steps,
    )
    print(f"[train_for_seconds] {cfg.run_dir}: {rate:.2f} steps/s -> {steps} steps for {seconds:.0f} s")
    start = time.perf_counter()
    _, state = train_task(task, cfg, RunDir(cfg.run_dir))
    return {"steps": state.step, "seconds": time.perf_counter() - start, "calibrated_steps_per_s": rate}
