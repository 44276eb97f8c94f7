"""``latentlm diffusion precompute-latents | train | eval | sample`` (seed 002, "Usage").

Configs are YAML files or names under ``configs/diffusion/`` (``--config-name rwkv_mmdit``) plus
dotted overrides, e.g.::

    latentlm diffusion precompute-latents corpus=../shared/data/pydocs corpus_format=pydocs \\
        out_dir=data/diffusion/pydocs
    latentlm diffusion train --config-name rwkv_mmdit run_dir=runs/stage1 training.max_steps=2000
    latentlm diffusion train --config-name rwkv_mmdit run_dir=runs/stage2 \\
        training.stage_schedule=stage2_variational data.use_external_latents=false \\
        model.checkpoint_path=runs/stage1 training.unfreeze_after_steps=500
    latentlm diffusion eval run_dir=runs/stage1
    latentlm diffusion sample run_dir=runs/stage1 sampling.mode=l2t sampling.top_p=0.9

``eval`` and ``sample`` read ``<run_dir>/config.yaml`` and apply the remaining overrides on top.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from latentlm.core.config import ConfigError, load_config, load_run_config, split_cli_args, split_run_dir

__all__ = ["main", "resolve_config_name"]


def resolve_config_name(name: str, config_dir: str | None = None) -> Path:
    """``configs/diffusion/<name>.yaml`` in ``config_dir``, the working directory or the source checkout."""
    filename = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    candidates = [Path(config_dir) / filename] if config_dir else []
    candidates += [
        Path("configs/diffusion") / filename,
        Path(__file__).resolve().parents[3] / "configs/diffusion" / filename,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"--config-name {name!r}: none of {[str(c) for c in candidates]} exists")


def _parse(argv: list[str]) -> tuple[str, Path | None, list[str]]:
    parser = argparse.ArgumentParser(prog="latentlm diffusion", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["precompute-latents", "train", "eval", "sample"])
    parser.add_argument("--config-name", help="a config under configs/diffusion/ (e.g. rwkv_mmdit, tiny)")
    parser.add_argument("--config-dir", help="folder to look for --config-name in first")
    parser.add_argument("args", nargs="*", help="[config.yaml] key=value ...")
    ns = parser.parse_intermixed_args(argv)
    path, overrides = split_cli_args(ns.args)
    if ns.config_name:
        if path is not None:
            raise ConfigError(
                f"give either a config file ({path}) or --config-name ({ns.config_name}), not both"
            )
        path = str(resolve_config_name(ns.config_name, ns.config_dir))
    return ns.command, Path(path) if path else None, overrides


def _run_config(path: Path | None, overrides: list[str]):
    """An existing run's config: ``run_dir=X`` reads ``X/config.yaml`` unless a file is given."""
    from latentlm.diffusion.config import DiffusionConfig

    if path is not None:
        return load_config(DiffusionConfig, path, overrides)
    run_dir, _ = split_run_dir(overrides)
    return load_run_config(DiffusionConfig, run_dir, overrides)


def _precompute(path: Path | None, overrides: list[str]) -> int:
    from latentlm.diffusion.config import PrecomputeConfig
    from latentlm.diffusion.data import precompute_latents

    cfg = load_config(PrecomputeConfig, path, overrides)
    folders = precompute_latents(cfg)
    meta = json.loads((folders["token_dir"] / "meta.json").read_text())
    print(
        f"wrote {meta['num_train']} train / {meta['num_val']} val sentences "
        f"({meta['num_truncated']} truncated to {cfg.seq_len} tokens)"
    )
    print(f"data.token_dir={folders['token_dir']} data.latent_dir={folders['latent_dir']}")
    return 0


def _train(path: Path | None, overrides: list[str]) -> int:
    from latentlm.core.engine import Trainer
    from latentlm.core.run import RunDir
    from latentlm.diffusion.config import DiffusionConfig
    from latentlm.diffusion.training import DiffusionTask

    cfg = load_config(DiffusionConfig, path, overrides)
    run = RunDir(cfg.run_dir)
    task = DiffusionTask(cfg, run)
    steps = task.max_steps(len(task.train_dataset()))
    if steps != cfg.training.max_steps:
        print(f"[diffusion] training.num_epochs={cfg.training.num_epochs} -> training.max_steps={steps}")
        cfg.training = dataclasses.replace(cfg.training, max_steps=steps)
    run.save_config(cfg)
    state = Trainer(task, cfg.training, run).fit()
    print(f"finished at step {state.step} ({state.tokens_seen} tokens); run: {run.path}")
    return 0


def _eval(path: Path | None, overrides: list[str]) -> int:
    from latentlm.core.run import RunDir
    from latentlm.diffusion.evaluation import run_evaluation
    from latentlm.diffusion.training import DiffusionTask

    cfg = _run_config(path, overrides)
    run = RunDir(cfg.run_dir)
    metrics = run_evaluation(DiffusionTask(cfg, run), run)
    print(json.dumps({k: metrics[k] for k in ("nelbo", "checks_passed", "checks_total")}, indent=2))
    print(f"report: {run.path / 'report.md'}")
    return 0


def _sample(path: Path | None, overrides: list[str]) -> int:
    from latentlm.core.checkpoint import atomic_write_text
    from latentlm.core.engine import load_model_weights
    from latentlm.core.run import RunDir
    from latentlm.diffusion.data import DirectFileDataset, denormalize_latent
    from latentlm.diffusion.sampling import sample_joint, sample_latent_from_text, sample_text_from_latent
    from latentlm.diffusion.training import DiffusionTask

    cfg = _run_config(path, overrides)
    run = RunDir(cfg.run_dir)
    task = DiffusionTask(cfg, run)
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise FileNotFoundError(f"{run.path}: no checkpoint to sample from")
    model = load_model_weights(task.build_model(), checkpoint).eval()
    s = cfg.sampling
    g = torch.Generator().manual_seed(s.seed)
    have_latents = task.latent_meta is not None
    val = DirectFileDataset(cfg.data.token_dir, cfg.data.latent_dir, "val", have_latents, s.num_samples)
    refs = val.texts()
    records = []
    if s.mode == "l2t":
        if have_latents:
            latents = torch.stack([val[i]["latent"] for i in range(len(val))])
        elif task.variational:
            latents = model.latent_prior.sample(s.num_samples, g)
            refs = [""] * s.num_samples
        else:
            raise ValueError("sampling.mode=l2t needs external latents or a Stage II model (prior samples)")
        ids = sample_text_from_latent(
            model,
            latents,
            num_steps=s.num_steps,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            guidance_scale=s.guidance_scale,
            generator=g,
        )
        records = [{"reference": r, "sample": t} for r, t in zip(refs, _decode(task, ids), strict=True)]
    elif s.mode == "t2l":
        ids = torch.stack([val[i]["input_ids"] for i in range(len(val))])
        z = sample_latent_from_text(
            model,
            ids,
            num_steps=s.num_steps,
            guidance_scale=s.guidance_scale,
            prediction=cfg.model.latent_prediction,
            generator=g,
        )
        if have_latents and not task.variational:  # Stage I latents live in the encoder's space
            z = denormalize_latent(z, task.latent_meta)
        records = [{"text": r, "latent": row} for r, row in zip(refs, z.tolist(), strict=True)]
    else:
        ids, z = sample_joint(
            model,
            s.num_samples,
            num_steps=s.num_steps,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            prediction=cfg.model.latent_prediction,
            generator=g,
        )
        records = [{"sample": t} for t in _decode(task, ids)]
    out = run.path / f"samples_{s.mode}.jsonl"
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    for record in records[:10]:
        print(record.get("sample", record.get("text")))
    print(f"wrote {len(records)} records to {out}")
    return 0


def _decode(task, ids: torch.Tensor) -> list[str]:
    from latentlm.diffusion.sampling import decode_samples
    from latentlm.teachers import load_tokenizer

    meta = task.token_meta
    return decode_samples(load_tokenizer(meta.tokenizer), ids, meta.sep_token_id, meta.pad_token_id)


_COMMANDS = {"precompute-latents": _precompute, "train": _train, "eval": _eval, "sample": _sample}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``latentlm diffusion``; returns the exit status."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    try:
        command, path, overrides = _parse(argv)
        return _COMMANDS[command](path, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
