"""The diffusion system's engine ``Task``: loss modes, freezing and the Stage II unfreeze policy.

Seed 002, "Two-Stage Training Pipeline" and "Partial Fine-Tuning":

* ``training.stage_schedule=stage1_coupling`` trains the denoiser on (text, external latent) pairs;
  ``stage2_variational`` adds ``TextLatentEncoder`` q(z|x) and ``LatentPrior`` p(z), samples
  ``z ~ q(z|x)`` in place of the external latent and adds ``kl_weight * KL`` and
  ``geom_weight * geometry``.  Stage II usually starts from a Stage I checkpoint
  (``model.checkpoint_path``) with the denoiser frozen; ``_apply_unfreeze_policy`` unfreezes the
  parameters matching ``training.unfreeze_patterns`` from step ``unfreeze_after_steps`` on.
* ``training.loss_type`` picks the diffusion loss mode: ``stage1_coupling`` (independent times for both
  modalities; with probability ``clean_cond_prob`` one of them is clean), ``l2t`` (clean latent, text
  loss), ``t2l`` (clean text, latent loss) or ``sequential`` (phases from ``sequential_schedule``).
  The conditioning stream of a conditional mode is frozen (l2t: the latent stream, t2l: the text
  stream), and with probability ``cond_dropout`` the condition is replaced by its null version
  (the fully noised modality, ``t = 1``), which is what classifier-free guidance needs at sampling.

The loss per example is ``text_weight * NELBO/L + latent_weight * MSE + kl_weight * KL/L +
geom_weight * geometry`` (L = sequence length), so the text and KL terms are per token.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from accelerate import PartialState
from torch import nn

from latentlm.core.checkpoint import load_tensors
from latentlm.core.engine import StepOutput, Task, TrainState
from latentlm.core.run import RunDir
from latentlm.diffusion.config import DiffusionConfig
from latentlm.diffusion.data import DirectFileDataset, collate_batch, read_latent_meta, read_token_meta
from latentlm.diffusion.denoiser import DenoiserConfig, LatentDiffusionLM
from latentlm.diffusion.objectives import apply_masking, gaussian_latent_loss, masked_nelbo, noise_latent
from latentlm.diffusion.schedules import (
    CosineGaussianSchedule,
    LogLinearMaskingSchedule,
    sample_diffusion_times,
)
from latentlm.diffusion.variational import kl_divergence, latent_geometry_loss, reparameterize

__all__ = [
    "DiffusionTask",
    "build_denoiser_config",
    "load_stage1_checkpoint",
    "resolve_checkpoint_file",
    "stream_of",
    "MODE_FROZEN_STREAM",
]

# The conditioning stream of each mode is frozen (it only encodes a clean condition).
MODE_FROZEN_STREAM = {"stage1_coupling": None, "l2t": "latent", "t2l": "text"}
_STREAM_PATTERNS = {
    "text": re.compile(
        r"^rwkv\.(token_embedding|text_position|time_embed_text|final_modulation\.text|final_norm\.text"
        r"|blocks\.\d+\.[\w.]*\btext\b)"
    ),
    "latent": re.compile(
        r"^rwkv\.(latent_in|latent_position|latent_head|time_embed_latent|final_modulation\.latent"
        r"|final_norm\.latent|blocks\.\d+\.[\w.]*\blatent\b)"
    ),
}


def stream_of(name: str) -> str | None:
    """``"text"``, ``"latent"`` or None (shared / not part of the denoiser) for a parameter name."""
    for stream, pattern in _STREAM_PATTERNS.items():
        if pattern.search(name):
            return stream
    return None


def build_denoiser_config(cfg: DiffusionConfig, latent_dim: int | None = None) -> DenoiserConfig:
    """The denoiser architecture from the run config and the data folders' meta files."""
    meta = read_token_meta(cfg.data.token_dir)
    if latent_dim is None:
        latent_dim = cfg.model.latent_dim or read_latent_meta(cfg.data.latent_dir).latent_dim
    m = cfg.model
    return DenoiserConfig(
        vocab_size=meta.vocab_size,
        mask_token_id=meta.mask_token_id,
        latent_dim=latent_dim,
        seq_len=meta.seq_len,
        d_model=m.d_model,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_latent_tokens=m.num_latent_tokens,
        ffn_mult=m.ffn_mult,
        decay_lora_rank=m.decay_lora_rank,
        sequence_mixer=m.sequence_mixer,
        wkv_impl=m.wkv_impl,
        wkv_chunk_size=m.wkv_chunk_size,
        latent_pred_from=m.latent_pred_from,
        prefix_length=m.prefix_length,
    )


def resolve_checkpoint_file(path: str | Path) -> Path:
    """A weights file from a .safetensors path, a checkpoint folder or a run folder (latest checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    if (path / "checkpoints").is_dir():
        latest = RunDir(path, tensorboard=False).latest_checkpoint()
        if latest is not None:
            return latest / "model.safetensors"
    raise FileNotFoundError(
        f"model.checkpoint_path={str(path)!r}: not a .safetensors file, a checkpoint folder or a run folder "
        "with checkpoints"
    )


def load_stage1_checkpoint(model: LatentDiffusionLM, path: str | Path) -> list[str]:
    """Load the denoiser (``rwkv.*``) weights of a Stage I (or any earlier) checkpoint.

    Every ``rwkv.*`` tensor of ``model`` must be present with the same shape; the Stage II modules
    (encoder, prior) are loaded too when the checkpoint has them.

    Returns:
        names of model tensors left at their initial values (the Stage II modules of a Stage I file).
    """
    file = resolve_checkpoint_file(path)
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
        self.batch_size = cfg.data.batch_size
        self.token_meta = read_token_meta(cfg.data.token_dir)
        latent_meta_file = Path(cfg.data.latent_dir) / "meta.json"
        self.latent_meta = read_latent_meta(cfg.data.latent_dir) if latent_meta_file.is_file() else None
        if cfg.data.use_external_latents and self.latent_meta is None:
            raise FileNotFoundError(f"data.use_external_latents=true but {latent_meta_file} does not exist")
        if not cfg.model.latent_dim and self.latent_meta is None:
            raise ValueError("model.latent_dim: set it (or data.latent_dir) when no latent folder exists")
        latent_dim = cfg.model.latent_dim or self.latent_meta.latent_dim
        if self.latent_meta is not None and latent_dim != self.latent_meta.latent_dim:
            raise ValueError(
                f"model.latent_dim={latent_dim} but {latent_meta_file} says {self.latent_meta.latent_dim}"
            )
        self.denoiser_config = build_denoiser_config(cfg, latent_dim)
        self.variational = cfg.training.stage_schedule == "stage2_variational"
        if not self.variational and not cfg.data.use_external_latents:
            raise ValueError(
                "stage1_coupling needs data.use_external_latents=true (the latents are its targets)"
            )
        self.text_schedule = LogLinearMaskingSchedule(cfg.loss.mask_eps)
        self.latent_schedule = CosineGaussianSchedule()
        self.starts_from_checkpoint = bool(cfg.model.checkpoint_path)
        self._last_logged_counts: tuple[int, int] | None = None

    # ------------------------------------------------------------------ engine hooks
    def build_model(self) -> LatentDiffusionLM:
        m = self.cfg.model
        model = LatentDiffusionLM(
            self.denoiser_config, self.variational, m.latent_encoder_hidden, m.latent_prior_type
        )
        if self.starts_from_checkpoint:
            fresh = load_stage1_checkpoint(model, m.checkpoint_path)
            self._say(
                f"loaded {m.checkpoint_path}; freshly initialised: {len(fresh)} tensors (Stage II modules)"
            )
        elif self.variational:
            self._say("stage2_variational without model.checkpoint_path: training the denoiser from scratch")
        self._apply_unfreeze_policy(model, 0)
        return model

    def train_dataset(self) -> DirectFileDataset:
        d = self.cfg.data
        return DirectFileDataset(
            d.token_dir, d.latent_dir, "train", d.use_external_latents, d.max_train_examples
        )

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return collate_batch(items, self.denoiser_config.latent_dim)

    def on_step_start(self, model: nn.Module, state: TrainState) -> None:
        changed = self._apply_unfreeze_policy(model, state.step)
        if changed and state.step > 0:
            self._say(
                f"step {state.step}: requires_grad changed for {len(changed)} tensors "
                f"(mode {self.mode_at(state.step)})"
            )
        if (
            state.step % self.cfg.training.param_log_every == 0
            and self.run is not None
            and PartialState().is_main_process
        ):
            active, frozen = self.parameter_counts(model)
            self.run.log(state.step, {"params/active": active, "params/frozen": frozen})

    def loss(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        out = self.compute_losses(model, batch, self.mode_at(state.step))
        metrics = {k: float(v) for k, v in out.items() if k != "loss"}
        return StepOutput(out["loss"], num_tokens=int(batch["input_ids"].numel()), metrics=metrics)

    def evaluate(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        from latentlm.diffusion.evaluation import heldout_nelbo

        d = self.cfg.data
        val = DirectFileDataset(
            d.token_dir, d.latent_dir, "val", d.use_external_latents, self.cfg.eval.max_examples
        )
        return heldout_nelbo(model, val, self, num_draws=1, seed=self.cfg.eval.seed)

    # ------------------------------------------------------------------ modes and freezing
    def mode_at(self, step: int) -> str:
        """Diffusion loss mode of the optimizer step that starts at ``step`` (0-based)."""
        t = self.cfg.training
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
            t = self.cfg.training
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
        t = self.cfg.training
        low = self.cfg.loss.low_discrepancy
        t_text = sample_diffusion_times(batch_size, low_discrepancy=low, device=device)
        t_latent = sample_diffusion_times(batch_size, low_discrepancy=low, device=device)[
            torch.randperm(batch_size)
        ]
        zeros = torch.zeros(batch_size, device=device)
        if mode == "l2t":
            clean_latent, clean_text = torch.ones(batch_size, dtype=torch.bool, device=device), zeros.bool()
        elif mode == "t2l":
            clean_latent, clean_text = zeros.bool(), torch.ones(batch_size, dtype=torch.bool, device=device)
        else:
            conditional = torch.rand(batch_size, device=device) < t.clean_cond_prob
            text_side = torch.rand(batch_size, device=device) < 0.5
            clean_text, clean_latent = conditional & text_side, conditional & ~text_side
        # Condition dropout: the clean condition becomes the null condition (fully noised).
        dropped = torch.rand(batch_size, device=device) < t.cond_dropout
        t_text = torch.where(clean_text, torch.where(dropped, 1.0, 0.0), t_text)
        t_latent = torch.where(clean_latent, torch.where(dropped, 1.0, 0.0), t_latent)
        return t_text, t_latent

    def compute_losses(self, model: nn.Module, batch: dict, mode: str) -> dict[str, torch.Tensor]:
        """All loss terms of one batch under a loss mode.

        Args:
            model: the ``LatentDiffusionLM``.
            batch: ``collate_batch`` output on the model's device.
            mode: ``stage1_coupling`` | ``l2t`` | ``t2l``.

        Returns:
            dict with ``loss`` (scalar, differentiable) and detached terms for logging.
        """
        x0 = batch["input_ids"]
        B, L = x0.shape
        device = x0.device
        terms: dict[str, torch.Tensor] = {}
        if self.variational:
            keep = x0 != self.token_meta.pad_token_id
            mu, logvar, features = model.encode_text(x0, keep)
            z0 = reparameterize(mu, logvar)
            kl = kl_divergence(mu, logvar, *model.latent_prior(B))
            terms["kl"] = kl.mean()
            terms["mu_norm"] = mu.norm(dim=-1).mean()
            terms["logvar_mean"] = logvar.mean()
            regulariser = self.cfg.loss.kl_weight * kl.mean() / L
            if self.cfg.loss.geom_weight:
                terms["geometry"] = latent_geometry_loss(mu, features)
                regulariser = regulariser + self.cfg.loss.geom_weight * terms["geometry"]
        else:
            if not bool(batch["has_latent"].all()):
                raise ValueError("a Stage I batch has examples without latents: check data.latent_dir")
            z0 = batch["latent"]
            regulariser = z0.new_zeros(())
        t_text, t_latent = self.sample_times(mode, B, device)
        x_t, masked = apply_masking(x0, t_text, self.text_schedule, self.token_meta.mask_token_id)
        z_t, eps = noise_latent(z0, t_latent, self.latent_schedule)
        out = model.rwkv(x_t, z_t, t_text, t_latent)

        text_rows = t_text > 0
        latent_rows = (t_latent > 0) & (mode != "l2t")
        loss = regulariser
        if mode != "t2l" and masked.any():
            logits = model.rwkv.text_logits(out.text_hidden[masked])
            nelbo = masked_nelbo(
                logits, x0, masked, t_text, self.text_schedule, self.token_meta.mask_token_id
            )
            text_loss = nelbo.sum() / (L * text_rows.sum().clamp_min(1))
            terms["text_nelbo_per_token"] = text_loss
            loss = loss + self.cfg.loss.text_weight * text_loss
        if latent_rows.any():
            mse = gaussian_latent_loss(
                out.latent_output, z0, eps, t_latent, self.latent_schedule, self.cfg.model.latent_prediction
            )
            latent_loss = mse[latent_rows].mean()
            terms["latent_mse"] = latent_loss
            loss = loss + self.cfg.loss.latent_weight * latent_loss
        terms["mask_rate"] = masked.float().mean()
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

    def max_steps(self, dataset_size: int) -> int:
        """``training.max_steps``, or ``num_epochs`` passes over the data when ``num_epochs > 0``."""
        t = self.cfg.training
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
