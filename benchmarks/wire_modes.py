"""Extra LatentWire evaluation modes on the dev questions of a `wire_squad` run, per latent length M.

Text baselines need no trained wire, e.g. `anchor_budget` (the interlingua's selection as text: the
question, then the context sentences by MiniLM similarity, truncated to M tokens); latent modes such
as `latent_nearest` (each soft token replaced by the nearest vocabulary embedding) read the trained
runs `<run-root>/M<length>` of `benchmarks.wire_squad`. Same config, data and dev questions.

    python -m benchmarks.wire_modes --modes anchor_budget latent_nearest --lengths 16 32 --dev 200 \
        --run-root runs/bench-interlingua
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from latentlm.core.bench import REPO, data_dir, save_results
from latentlm.core.config import load_config, load_run_config
from latentlm.wire.config import WireRunConfig
from latentlm.wire.data import resolve_examples
from latentlm.wire.evaluate import evaluate_wire, load_wire
from latentlm.wire.features import build_features
from latentlm.wire.frozen import load_frozen_lms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", nargs="+", default=["anchor_budget"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--dev", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run-root", default=None, help="wire_squad run root (for latent modes)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--out", default="wire_modes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("LATENTLM_DATA", str(data_dir()))
    started = time.time()
    results: dict = {"settings": vars(args) | {"config": "configs/wire/squad.yaml"}, "runs": {}}
    cfg = load_config(WireRunConfig, REPO / "configs" / "wire" / "squad.yaml", [f"data.dev_limit={args.dev}"])
    lms = load_frozen_lms(cfg.models, cfg.prompt)
    features, _ = build_features(cfg.encoder, lms, needs_sentence="anchor_budget" in cfg.eval.baselines)
    dev = resolve_examples(cfg.data.dev, "validation", cfg.data.dev_limit, cfg.data.max_context_chars)
    for length in args.lengths:
        wire = None
        if args.run_root:
            run_dir = Path(args.run_root) / f"M{length}"
            run_cfg = load_run_config(WireRunConfig, run_dir, [f"data.dev_limit={args.dev}"])
            wire = load_wire(run_dir, args.checkpoint)
        else:
            run_cfg = load_config(
                WireRunConfig,
                REPO / "configs" / "wire" / "squad.yaml",
                [f"data.dev_limit={args.dev}", f"latent.length={length}"],
            )
        metrics, _ = evaluate_wire(run_cfg, wire, lms, features, dev, modes=args.modes)
        results["runs"][f"M{length}"] = {
            "models": {name: {m: per[m] for m in args.modes} for name, per in metrics["models"].items()},
            "checkpoint": args.checkpoint if wire is not None else None,
            "num_dev_questions": metrics["num_examples"],
        }
        print(length, results["runs"][f"M{length}"])
        save_results(args.out, results | {"total_seconds": time.time() - started, "complete": False})
    save_results(args.out, results | {"total_seconds": time.time() - started, "complete": True})


if __name__ == "__main__":
    main()
