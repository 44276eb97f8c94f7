"""LatentWire on SQuAD with the real frozen pair (SmolLM2-135M + Qwen2.5-Coder-0.5B), on CPU.

For each M in --lengths: Stage A + Stage B (configs/wire/squad.yaml) on the train subset, then
`wire eval` on dev questions: text (once, M-independent), token-budget, PCA, mean-pool and latent
F1/EM per model, first-token top-1, compression and prefill speed-up. The peer of the latent is the
token-budget baseline measured in the same run (ratio latent F1 / token-budget F1).

    python -m benchmarks.wire_squad [--lengths 16 32] [--steps-a 24 --steps-b 12] [--dev 48]
    python -m benchmarks.wire_squad --recon-steps 600 --set encoder.kind=interlingua ...
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from latentlm.core.bench import REPO, data_dir, save_results
from latentlm.core.config import load_config
from latentlm.wire.config import WireRunConfig
from latentlm.wire.evaluate import evaluate_run
from latentlm.wire.features import build_features
from latentlm.wire.frozen import load_frozen_lms
from latentlm.wire.task import train_wire


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--steps-a", type=int, default=24)
    parser.add_argument("--steps-b", type=int, default=12)
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--dev", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--baselines",
        nargs="+",
        default=["text", "token_budget", "pca", "mean_pool"],
        help="baselines of the first M (text is M-independent and run once)",
    )
    parser.add_argument(
        "--later-baselines",
        nargs="+",
        default=["token_budget", "mean_pool"],
        help="baselines of the other lengths",
    )
    parser.add_argument(
        "--recon-steps",
        type=int,
        default=0,
        help="reconstruction-only warm-up steps before Stage A (no frozen-LLM pass; interlingua)",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra config overrides, e.g. encoder.kind=interlingua",
    )
    parser.add_argument("--out", default="wire_squad")
    parser.add_argument("--run-root", default=str(REPO / "runs" / "bench-wire"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("LATENTLM_DATA", str(data_dir()))
    started = time.time()
    warmup = f"{{name: recon_warmup, steps: {args.recon_steps}}}, " if args.recon_steps else ""
    total = args.recon_steps + args.steps_a + args.steps_b
    every = args.recon_steps or max(1, total // 3)  # with a warm-up: evaluate where it ends, then at the end
    base = [
        f"data.train_limit={args.train}",
        f"data.dev_limit={args.dev}",
        f"phases=[{warmup}{{name: stage_a, steps: {args.steps_a}}}, {{name: stage_b, steps: {args.steps_b}, "
        "text_warmup_steps: 4, text_tail_prob: 0.05, first_token_scale: 2.0}]",
        f"loss.recon_warmup_steps={args.recon_steps}",
        f"train.max_steps={total}",
        f"train.eval_every={every}",
        f"train.checkpoint_every={every}",
        *args.set,
    ]
    cfg0 = load_config(WireRunConfig, REPO / "configs" / "wire" / "squad.yaml", base)
    lms = load_frozen_lms(cfg0.models, cfg0.prompt)
    # Fail early if the sentence encoder is missing.
    build_features(cfg0.encoder, lms, needs_sentence="anchor_budget" in cfg0.eval.baselines)
    from latentlm.wire.features import SentenceStates

    sentence = SentenceStates.load(cfg0.encoder.sentence_encoder, cfg0.encoder.max_tokens)
    results: dict = {
        "settings": vars(args) | {"config": "configs/wire/squad.yaml", "overrides": base},
        "runs": {},
    }
    text_metrics = None
    for length in args.lengths:
        run_dir = f"{args.run_root}/M{length}"
        overrides = [*base, f"latent.length={length}", f"run_dir={run_dir}"]
        cfg = load_config(WireRunConfig, REPO / "configs" / "wire" / "squad.yaml", overrides)
        t0 = time.time()
        train_wire(cfg, lms, sentence)
        train_seconds = time.time() - t0
        baselines = args.baselines if length == args.lengths[0] else args.later_baselines
        t0 = time.time()
        metrics = evaluate_run(
            run_dir, [f"eval.baselines=[{','.join(baselines)}]"], lms=lms, sentence=sentence
        )
        eval_seconds = time.time() - t0
        if text_metrics is None and "text" in baselines:
            text_metrics = {name: per["text"] for name, per in metrics["models"].items()}
        summary = {}
        for name, per in metrics["models"].items():
            latent, budget = per["latent"], per["token_budget"]
            text = (text_metrics or {}).get(name)
            summary[name] = {
                "text": text,
                "token_budget": budget,
                "pca": per.get("pca"),
                "mean_pool": per.get("mean_pool"),
                "latent": latent,
                "latent_over_token_budget_f1": latent["f1"] / budget["f1"] if budget["f1"] > 0 else None,
                "latent_beats_token_budget": latent["f1"] > budget["f1"],
                "prompt_tokens_mean": per["prompt_tokens_mean"],
                "token_compression_ratio": per["token_compression_ratio"],
                "prefill": metrics["prefill"][name],
            }
        results["runs"][f"M{length}"] = {
            "models": summary,
            "joint_rescoring": metrics.get("joint_rescoring"),
            "compression": metrics["compression"],
            "encoder_seconds_per_question": metrics["encoder_seconds_per_question"],
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "num_dev_questions": metrics["num_examples"],
        }
        print(json.dumps(results["runs"][f"M{length}"], indent=1))
        save_results(args.out, results | {"total_seconds": time.time() - started, "complete": False})
    save_results(args.out, results | {"total_seconds": time.time() - started, "complete": True})


if __name__ == "__main__":
    main()
