"""A small Stage I -> Stage II run on CPU with every evaluation metric (real data, real models).

1. Stage I (``stage1_coupling``) on pydocs sentences with MiniLM latents (``precompute-latents``).
2. ``latentlm diffusion eval`` of Stage I: checklist, NELBO bounds, T2L / L2T cosines and recall@1,
   joint samples judged by SmolLM2, unigram entropy, distinct-n.
3. Stage II (``stage2_variational``) from the Stage I run: denoiser frozen, q(z|x) and p(z) trained,
   the recurrent ``time_mix`` / ``channel_mix`` parameters unfrozen after ``--unfreeze-after`` steps.
4. Eval of Stage II (KL, reconstruction, prior samples).

Everything goes through the CLI exactly as a user would run it; the summary JSON collects the two
``eval_metrics.json`` files and the commands.

    python benchmarks/diffusion_stage_run.py [--stage1-steps 1500] [--stage2-steps 500]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latentlm.core.bench import data_dir, save_results
from latentlm.diffusion.cli import main as diffusion


def _trained(run: Path, steps: int) -> bool:
    """True if ``run`` already holds its final checkpoint (a re-run then skips that training)."""
    return (run / "checkpoints" / f"step_{steps}" / "state.json").is_file()


def _run(argv: list[str]) -> float:
    print("latentlm diffusion " + " ".join(argv), flush=True)
    start = time.perf_counter()
    if diffusion(argv) != 0:
        raise SystemExit(f"failed: latentlm diffusion {' '.join(argv)}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/diffusion_bench")
    parser.add_argument("--data", default="runs/diffusion_data/pydocs")
    parser.add_argument("--stage1-steps", type=int, default=1500)
    parser.add_argument("--stage2-steps", type=int, default=500)
    parser.add_argument("--unfreeze-after", type=int, default=250)
    parser.add_argument(
        "--extra", nargs="*", default=[], help="overrides for both stages (e.g. model.d_model=128)"
    )
    args = parser.parse_args()
    out, data = Path(args.out), Path(args.data)
    commands, seconds = {}, {}
    if not (data / "tokens" / "meta.json").is_file():
        commands["precompute"] = [
            "precompute-latents",
            "configs/diffusion/rwkv_mmdit.yaml",
            f"data.token_dir={data / 'tokens'}",
            f"data.latent_dir={data / 'latents'}",
            f"data.prepare.corpus={data_dir() / 'pydocs'}",
        ]
        seconds["precompute"] = _run(commands["precompute"])
    common = [
        "configs/diffusion/rwkv_mmdit.yaml",
        f"data.token_dir={data / 'tokens'}",
        f"data.latent_dir={data / 'latents'}",
        *args.extra,
    ]
    stage1, stage2 = out / "stage1", out / "stage2"
    commands["stage1_train"] = [
        "train",
        *common,
        f"run_dir={stage1}",
        f"train.max_steps={args.stage1_steps}",
        f"train.eval_every={max(args.stage1_steps // 4, 1)}",
        f"train.checkpoint_every={max(args.stage1_steps // 4, 1)}",
    ]
    if not _trained(stage1, args.stage1_steps):
        seconds["stage1_train"] = _run(commands["stage1_train"])
    commands["stage1_eval"] = ["eval", f"run_dir={stage1}"]
    seconds["stage1_eval"] = _run(commands["stage1_eval"])
    commands["stage2_train"] = [
        "train",
        *common,
        f"run_dir={stage2}",
        "train.stage_schedule=stage2_variational",
        "data.use_external_latents=false",
        f"model.checkpoint_path={stage1}",
        f"train.max_steps={args.stage2_steps}",
        "train.warmup_steps=20",
        f"train.unfreeze_after_steps={args.unfreeze_after}",
        f"train.eval_every={max(args.stage2_steps // 2, 1)}",
        f"train.checkpoint_every={max(args.stage2_steps // 2, 1)}",
    ]
    if not _trained(stage2, args.stage2_steps):
        seconds["stage2_train"] = _run(commands["stage2_train"])
    commands["stage2_eval"] = ["eval", f"run_dir={stage2}"]
    seconds["stage2_eval"] = _run(commands["stage2_eval"])

    def summary(run: Path) -> dict:
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        records = [
            json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()
        ]
        train = [r for r in records if "train/tokens_per_s" in r]
        metrics["train_tokens_per_s_median"] = sorted(r["train/tokens_per_s"] for r in train)[len(train) // 2]
        metrics["final_train_loss"] = train[-1]["train/loss"]
        params = [r for r in records if "params/active" in r]
        metrics["param_counts"] = [
            {k: r[k] for k in ("step", "params/active", "params/frozen")} for r in params
        ]
        return metrics

    save_results(
        "diffusion_stage_run",
        {
            "description": "Stage I -> Stage II on pydocs sentences (MiniLM latents, SmolLM2 judge), CPU",
            "note": "CPU shared with four other engineers' jobs; wall-clock seconds include that contention",
            "commands": {k: "latentlm diffusion " + " ".join(v) for k, v in commands.items()},
            "seconds": seconds,
            "stage1": summary(stage1),
            "stage2": summary(stage2),
        },
    )


if __name__ == "__main__":
    main()
