r"""Joint text-latent diffusion with a two-stream RWKV denoiser (seed 002).

    latentlm diffusion precompute-latents configs/diffusion/rwkv_mmdit.yaml
    latentlm diffusion train configs/diffusion/tiny.yaml
    latentlm diffusion train configs/diffusion/rwkv_mmdit.yaml run_dir=runs/stage2 \
        train.stage_schedule=stage2_variational data.use_external_latents=false \
        model.checkpoint_path=runs/diffusion_stage1 train.unfreeze_after_steps=500
    latentlm diffusion eval run_dir=runs/diffusion_tiny
    latentlm diffusion sample run_dir=runs/diffusion_tiny sampling.mode=joint

`train` prepares the data folders from `data.prepare.corpus` when they do not exist yet. `eval` and
`sample` read `<run_dir>/config.yaml` and `<run_dir>/model/`, with further overrides on top.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from latentlm.core.checkpoint import atomic_write_text
from latentlm.core.cli import Command, system_cli
from latentlm.core.lifecycle import load_finished_run, load_trained_model, train_task
from latentlm.core.run import RunDir
from latentlm.diffusion.config import DiffusionConfig

__all__ = ["main"]


def precompute(cfg: DiffusionConfig) -> dict:
    """Prepare `data.token_dir` / `data.latent_dir` from `data.prepare` (always rewrites them)."""
    from latentlm.diffusion.data import precompute_latents

    folders = precompute_latents(cfg.data.prepare, cfg.data.token_dir, cfg.data.latent_dir)
    meta = json.loads((folders["token_dir"] / "meta.json").read_text())
    return {
        "train sentences": meta["num_train"],
        "val sentences": meta["num_val"],
        f"truncated to {cfg.data.prepare.seq_len} tokens": meta["num_truncated"],
        "data.token_dir": folders["token_dir"],
        "data.latent_dir": folders["latent_dir"],
    }


def train(cfg: DiffusionConfig) -> dict:
    """Train (resuming from the run's latest checkpoint) and save `<run_dir>/model/`."""
    from latentlm.diffusion.task import DiffusionTask

    run = RunDir(cfg.run_dir)
    task = DiffusionTask(cfg, run)
    steps = task.max_steps(len(task.train_dataset()))
    if steps != cfg.train.max_steps:
        print(f"[diffusion] train.num_epochs={cfg.train.num_epochs} -> train.max_steps={steps}")
        cfg.train = dataclasses.replace(cfg.train, max_steps=steps)
    _, state = train_task(task, cfg, run)
    final = [r for r in run.read_metrics() if "eval/nelbo_per_token" in r]
    summary = {"finished at step": state.step, "tokens": state.tokens_seen, "run": run.path}
    if final:
        summary["held-out NELBO per token"] = round(final[-1]["eval/nelbo_per_token"], 4)
    return summary | task.vocab_report()


def _finished(run_dir: Path, overrides: list[str]):
    from latentlm.diffusion.task import DiffusionTask

    cfg = load_finished_run(run_dir, DiffusionConfig, overrides)
    return cfg, DiffusionTask(cfg)


def evaluate(run_dir: Path, overrides: list[str]) -> dict:
    """Held-out NELBO bounds, checklist, T2L / L2T, samples and judge perplexity -> `<run>/eval/`."""
    from latentlm.diffusion.evaluate import run_evaluation

    _, task = _finished(run_dir, overrides)
    metrics = run_evaluation(task, run_dir)
    return {
        "held-out NELBO per token": metrics["nelbo"]["nelbo_per_token"],
        "checks passed": f"{metrics['checks_passed']}/{metrics['checks_total']}",
        "report": Path(run_dir) / "eval" / "report.md",
    }


def sample(run_dir: Path, overrides: list[str]) -> Path:
    """Write `<run>/samples_<mode>.jsonl` (`sampling.mode`: l2t | t2l | joint)."""
    from latentlm.diffusion.model import LatentDiffusionLM
    from latentlm.diffusion.sampling import sample_joint, sample_latent_from_text, sample_text_from_latent

    cfg, task = _finished(run_dir, overrides)
    model = load_trained_model(run_dir, LatentDiffusionLM)
    s = cfg.sampling
    g = torch.Generator().manual_seed(s.seed)
    val = task.val_dataset
    n = min(s.num_samples, len(val))
    refs = val.texts()[:n]
    if s.mode == "l2t":
        if val.latents is not None:
            latents = torch.stack([val[i]["latent"] for i in range(n)])
        elif model.latent_prior is not None:
            latents, refs = model.latent_prior.sample(s.num_samples, g), [""] * s.num_samples
        else:
            raise ValueError("sampling.mode=l2t needs external latents or a Stage II model (prior samples)")
        ids = sample_text_from_latent(
            model, latents, guidance_scale=s.guidance_scale, generator=g, **s.text_kwargs()
        )
        records = [{"reference": r, "sample": t} for r, t in zip(refs, model.decode(ids), strict=True)]
    elif s.mode == "t2l":
        ids = torch.stack([val[i]["input_ids"] for i in range(n)])
        z = sample_latent_from_text(
            model,
            ids,
            num_steps=s.num_steps,
            guidance_scale=s.t2l_guidance,
            prediction=model.config.latent_prediction,
            generator=g,
        )
        z = model.denormalize_latent(z)  # the sentence encoder's space
        records = [{"text": r, "latent": row} for r, row in zip(refs, z.tolist(), strict=True)]
    else:
        ids, _ = sample_joint(
            model,
            s.num_samples,
            prediction=model.config.latent_prediction,
            generator=g,
            order=s.joint_order,
            guidance_scale=s.joint_guidance_scale,
            **s.text_kwargs(),
        )
        records = [{"sample": t} for t in model.decode(ids)]
    out = Path(run_dir) / f"samples_{s.mode}.jsonl"
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    for record in records[:10]:
        print(record.get("sample", record.get("text")))
    return out


main = system_cli(
    "diffusion",
    __doc__,
    [
        Command(
            "precompute-latents",
            precompute,
            "sentences -> token ids + sentence-encoder latents",
            config=DiffusionConfig,
        ),
        Command("train", train, "train Stage I or Stage II; saves <run_dir>/model/", config=DiffusionConfig),
        Command("eval", evaluate, "evaluate a finished run into <run_dir>/eval/", on_run=DiffusionConfig),
        Command(
            "sample",
            sample,
            "sample from a finished run (sampling.mode=l2t|t2l|joint)",
            on_run=DiffusionConfig,
        ),
    ],
)
