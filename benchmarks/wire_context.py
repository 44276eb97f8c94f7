"""Issue 12: context compression on SQuAD with one latent for two frozen LLMs, against text
baselines at equal positions, on CPU.

`--stage train` trains `configs/wire/context.yaml` (span encoder, autoencoding + answer loss through
SmolLM2-135M and Qwen2.5-Coder-0.5B) once per ratio of `--ratios`, in `<run-dir>/<ratio>x`;
`--stage eval` evaluates each ratio's latent and every text baseline (no_context, token_budget,
anchor_budget, external = Selective Context under SmolLM2, text) at that ratio, all with the same
question text, on the same dev questions, and writes `benchmarks/results/wire_context.json` (one row
per compression, model and method) and
`wire_context.png` (F1 against positions). `--stage all` does both.

    python3 benchmarks/wire_context.py --stage train --steps 50
    python3 benchmarks/wire_context.py --stage eval --dev 50 --ratios 4 2

`--select-step0` (for `configs/wire/context_anchor.yaml`, whose step-0 latent is the anchor_budget
selection) adds the untrained model to the checkpoint choice: the evaluated latent is step 0 or
`best/`, whichever has the lower gold NLL on the in-training dev questions (after the evaluated ones);
the JSON also records whether, on the first evaluated questions, the step-0 soft tokens equal each
model's anchor_budget embeddings exactly.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from latentlm.core.bench import REPO, RESULTS, machine, save_results
from latentlm.core.checkpoint import read_json, write_json
from latentlm.core.config import load_config, load_run_config
from latentlm.wire.baselines import baseline_context_ids
from latentlm.wire.config import WireRunConfig
from latentlm.wire.data import prepare_context_examples, resolve_examples
from latentlm.wire.evaluate import evaluate_context, load_wire
from latentlm.wire.features import build_features
from latentlm.wire.frozen import load_frozen_lms
from latentlm.wire.model import WireModel
from latentlm.wire.task import WireTask, latent_dev_scores, selection_dev_examples, train_wire

BASELINES = ["no_context", "token_budget", "anchor_budget", "external", "text"]
RATIO_FREE = ("no_context", "text")  # the same prompt at every ratio: measured once


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stage",
        choices=["train", "eval", "all", "paired"],
        default="all",
        help="paired: add the paired comparison of the saved per-question records to an existing JSON",
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "wire" / "context.yaml"))
    parser.add_argument("--run-dir", default="runs/bench-context")
    parser.add_argument("--steps", type=int, default=50, help="training steps (batch of --batch questions)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--ae-only-fraction", type=float, default=1 / 3, help="share of the steps with autoencoding alone"
    )
    parser.add_argument("--train", type=int, default=2000, help="train questions available")
    parser.add_argument("--dev", type=int, default=50, help="dev questions evaluated")
    parser.add_argument(
        "--ratios",
        type=int,
        nargs="+",
        default=[4],
        help="context tokens per position; a latent is trained at each",
    )
    parser.add_argument(
        "--deadline-s", type=float, default=1140, help="stop evaluating new questions this long after start"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["latent", *BASELINES],
        choices=["latent", *BASELINES],
        help="methods evaluated (default: all)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--finish-by",
        default="",
        help="UTC HH:MM: fewer training steps and an earlier evaluation deadline so "
        "that the run ends by then (a shared machine's queue may start it late)",
    )
    parser.add_argument("--no-start-after", default="", help="UTC HH:MM: exit without running after this")
    parser.add_argument("--seconds-per-step", type=float, default=20.0, help="for --finish-by")
    parser.add_argument("--set", nargs="*", default=[], help="further config overrides key=value")
    parser.add_argument(
        "--select-step0",
        action="store_true",
        help="the untrained model is a candidate of the dev checkpoint choice (anchor_span)",
    )
    parser.add_argument("--out", default="wire_context")
    return parser.parse_args()


def ratio_run_dir(args: argparse.Namespace, ratio: int) -> Path:
    """The run of the latent trained at `ratio` (one per ratio of --ratios)."""
    return Path(args.run_dir) / f"{ratio}x"


def train(args: argparse.Namespace, lms, sentence) -> dict:
    """One latent per ratio of --ratios, each trained for --steps; the in-training dev questions
    (checkpoint choice) come after the --dev evaluated ones."""
    infos = {}
    for ratio in args.ratios:
        steps = args.steps
        overrides = [
            f"run_dir={ratio_run_dir(args, ratio)}",
            f"train.max_steps={steps}",
            f"phases=[{{name: context, steps: {steps}}}]",
            f"batch_size={args.batch}",
            f"data.train_limit={args.train}",
            f"data.dev_limit={args.dev}",
            f"latent.ratio={ratio}",
            f"loss.autoencode_only_steps={round(steps * args.ae_only_fraction)}",
            *args.set,
        ]
        cfg = load_config(WireRunConfig, args.config, overrides)
        cfg.latent.length = max(cfg.latent.length, -(-cfg.encoder.max_tokens // ratio))  # every span fits
        start = time.time()
        train_wire(cfg, lms, sentence)
        info = {"train_seconds": time.time() - start, "steps": steps, "batch_size": args.batch}
        info |= {"overrides": overrides, "latent_length": cfg.latent.length}
        (ratio_run_dir(args, ratio) / "bench_train.json").write_text(json.dumps(info, indent=1))
        infos[f"{ratio}x"] = info
    return infos


def evaluate(args: argparse.Namespace, lms, sentence, deadline: float) -> dict:
    """Every method at every ratio (the latent trained at that ratio), 8 questions at a time (all
    methods on the same questions) until `deadline` (time.time()); later ratios only when the earlier
    ones finished every question."""
    first = load_run_config(WireRunConfig, ratio_run_dir(args, args.ratios[0]))
    features, _ = build_features(first.encoder, lms, sentence, True)
    dev = resolve_examples(first.data.dev, "validation", args.dev, first.data.max_context_chars)
    scorer = next(lm for lm in lms if lm.name == first.eval.external_scorer)
    rows, per_ratio, selections = [], {}, {}
    for k, ratio in enumerate(args.ratios):
        run_dir = ratio_run_dir(args, ratio)
        cfg = load_run_config(WireRunConfig, run_dir)
        wire, selections[f"{ratio}x"] = choose_checkpoint(args, run_dir, lms, features, dev)
        methods = [m for m in ["latent", *BASELINES] if m in args.methods and (k == 0 or m not in RATIO_FREE)]
        t0, records, extras = time.time(), [], {}
        for begin in range(0, len(dev), 8):
            if time.time() > deadline and (k > 0 or records):
                break
            metrics, chunk = evaluate_context(
                cfg,
                wire,
                lms,
                features,
                dev[begin : begin + 8],
                methods,
                ratio,
                scorer,
            )
            records += chunk
            if not extras:
                extras = {key: metrics[key] for key in ("latent_bytes", "prefill") if key in metrics}
        if not records:
            print(f"skipping {ratio}x: no time left before the deadline", flush=True)
            continue
        with (run_dir / f"bench_records_{ratio}x.jsonl").open("w", encoding="utf-8") as fh:  # paired tests
            fh.writelines(json.dumps(r) + "\n" for r in records)
        questions = len({r["id"] for r in records})
        per_ratio[f"{ratio}x"] = {"questions": questions, "seconds": time.time() - t0, **extras}
        for model in [lm.name for lm in lms]:
            for method in methods:
                mine = [r for r in records if r["model"] == model and r["method"] == method]
                rows.append(
                    {
                        "compression": ratio,
                        "model": model,
                        "method": method,
                        "f1": float(np.mean([r["f1"] for r in mine])),
                        "em": float(np.mean([r["em"] for r in mine])),
                        "positions": float(np.mean([r["positions"] for r in mine])),
                        "questions": len(mine),
                    }
                )
        if questions < len(dev):
            break  # later ratios would be measured on other questions
    # Ratio-free methods were measured once; repeat their rows at every ratio measured.
    first = args.ratios[0]
    for ratio in args.ratios[1:]:
        if f"{ratio}x" in per_ratio:
            rows += [
                dict(r, compression=ratio)
                for r in rows
                if r["compression"] == first and r["method"] in RATIO_FREE
            ]
    return {"rows": rows, "per_ratio": per_ratio, "selection": selections}


def paired_differences(records: list[dict], samples: int = 10_000, seed: int = 0) -> list[dict]:
    """Latent minus each text baseline on the same questions, per (ratio, model, baseline): mean F1
    difference, its 95 % bootstrap interval over questions, and wins / ties / losses.

    Args:
        records: per-question records (`id`, `model`, `method`, `f1`; `compression` added per ratio).
    """
    rng = np.random.default_rng(seed)
    f1 = {(r["compression"], r["model"], r["method"], r["id"]): r["f1"] for r in records}
    out = []
    for ratio, model in sorted({(r["compression"], r["model"]) for r in records}):
        for method in ("anchor_budget", "external", "token_budget"):
            ids = sorted(
                i for (c, m, x, i) in f1 if (c, m, x) == (ratio, model, "latent") and (c, m, method, i) in f1
            )
            if not ids:
                continue
            diff = np.array([f1[(ratio, model, "latent", i)] - f1[(ratio, model, method, i)] for i in ids])
            boot = diff[rng.integers(0, len(diff), (samples, len(diff)))].mean(1)  # (samples,)
            out.append(
                {
                    "compression": ratio,
                    "model": model,
                    "baseline": method,
                    "questions": len(ids),
                    "f1_difference": float(diff.mean()),
                    "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                    "wins": int((diff > 0).sum()),
                    "ties": int((diff == 0).sum()),
                    "losses": int((diff < 0).sum()),
                }
            )
    return out


def saved_records(args: argparse.Namespace) -> list[dict]:
    """The per-question records of every ratio's evaluation, with `compression` set."""
    records = []
    for ratio in args.ratios:
        path = ratio_run_dir(args, ratio) / f"bench_records_{ratio}x.jsonl"
        if path.is_file():
            records += [dict(json.loads(line), compression=ratio) for line in path.open(encoding="utf-8")]
    return records


def choose_checkpoint(args, run_dir: Path, lms, features, dev) -> tuple[WireModel, dict]:
    """`best/` (lowest in-training dev gold NLL) or, with --select-step0, the untrained model when its
    gold NLL on the same dev questions is lower; with the numbers behind the choice."""
    wire = load_wire(run_dir, "best").attach(lms, features=features)
    state = run_dir / "best" / "state.json"
    selection = {
        "checkpoint": "best" if state.is_file() else "last",
        **(read_json(state) if state.is_file() else {}),
    }
    train_cfg = load_run_config(WireRunConfig, run_dir)  # the in-training dev questions, as in training
    if args.dev > train_cfg.data.dev_limit:
        raise ValueError(
            f"--dev {args.dev}: the selection questions start after data.dev_limit = "
            f"{train_cfg.data.dev_limit} of the run; evaluate at most that many"
        )
    if not args.select_step0:
        return wire, selection
    initial = WireModel(wire.config).eval().attach(lms, features=features)
    task = WireTask(train_cfg, lms, features, [], selection_dev_examples(train_cfg), run_dir)
    step0 = latent_dev_scores(initial, lms, features, task.dev_items, train_cfg)["gold_nll_mean"]
    selection["step0_gold_nll_mean"] = step0
    selection["step0_equals_anchor_budget"] = step0_equals_anchor_budget(
        initial, train_cfg, lms, features, dev[:8]
    )
    best = selection.get(train_cfg.train.best_metric)
    if best is None or step0 <= best:
        selection["checkpoint"] = "step0"
        return initial, selection
    return wire, selection


@torch.no_grad()
def step0_equals_anchor_budget(wire: WireModel, cfg: WireRunConfig, lms, features, examples) -> bool:
    """Whether every model's soft tokens equal its anchor_budget embeddings bit for bit on `examples`."""
    sentence = features.sentence
    prepared = prepare_context_examples(
        examples,
        sentence.tokenizer,
        cfg.latent.ratio,
        cfg.latent.length,
        min(cfg.encoder.max_tokens, sentence.max_tokens),
    )
    questions = [e.question for e in prepared]
    out = wire(features([e.context for e in prepared], wire.required_features, questions))
    for index, lm in enumerate(lms):
        for piece, e in zip(out.pieces(index), prepared, strict=True):
            ids = baseline_context_ids("anchor_budget", lm, e.context, e.question, e.positions, sentence)
            if not torch.equal(piece, lm.embed(ids).to(piece.dtype)):
                return False
    return True


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for method in ["latent", *BASELINES]:
            pts = sorted(
                {(r["positions"], r["f1"]) for r in rows if r["model"] == model and r["method"] == method}
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_title(model)
        ax.set_xlabel("context positions (mean per question)")
        ax.set_ylabel("SQuAD F1")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _utc_today(hhmm: str) -> float:
    """Seconds since the epoch of HH:MM UTC today."""
    import datetime as dt

    hour, minute = map(int, hhmm.split(":"))
    now = dt.datetime.now(dt.UTC)
    return now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()


def fit_to_clock(args: argparse.Namespace, started: float) -> bool:
    """Apply --no-start-after / --finish-by; False when the run must not start."""
    if args.no_start_after and started > _utc_today(args.no_start_after):
        print(f"not starting: it is past {args.no_start_after} UTC", flush=True)
        return False
    if args.finish_by:
        left = _utc_today(args.finish_by) - started
        args.deadline_s = min(args.deadline_s, left - 150)  # the last chunk and the JSON after it
        if args.stage in ("train", "all"):
            train_budget = left - 60 - 330  # model loading; at least ~4 evaluation chunks
            per_step = args.seconds_per_step * len(args.ratios)  # one run per ratio
            args.steps = min(args.steps, max(4, int(train_budget / per_step)))
        print(
            f"fit to {args.finish_by} UTC: {args.steps} steps, deadline {args.deadline_s:.0f} s", flush=True
        )
    return True


def main() -> None:
    started = time.time()
    args = parse_args()
    if not fit_to_clock(args, started):
        return
    if args.stage == "paired":
        path = RESULTS / f"{args.out}.json"
        summary = json.loads(path.read_text())
        summary["paired"] = paired_differences(saved_records(args))
        summary["paired_machine"] = machine()
        write_json(path, summary)
        print(json.dumps(summary["paired"], indent=1))
        return
    torch.set_num_threads(args.threads)
    cfg = load_config(WireRunConfig, args.config, [f"run_dir={args.run_dir}", *args.set])
    lms = load_frozen_lms(cfg.models, cfg.prompt)
    features, _ = build_features(cfg.encoder, lms, None, True)
    sentence = features.sentence
    if args.stage in ("train", "all"):
        print(json.dumps(train(args, lms, sentence)), flush=True)
    if args.stage == "train":
        return
    result = evaluate(args, lms, sentence, started + args.deadline_s)
    trained = {
        f"{r}x": json.loads((ratio_run_dir(args, r) / "bench_train.json").read_text()) for r in args.ratios
    }
    rows = result["rows"]
    plot(rows, RESULTS / f"{args.out}.png")
    budget = ", ".join(
        f"{name}: {t['steps']} steps of {t['batch_size']} questions ({t['train_seconds']:.0f} s)"
        for name, t in trained.items()
    )
    summary = {
        "description": "issue 12: SQuAD context compression, one latent for SmolLM2-135M + "
        "Qwen2.5-Coder-0.5B per compression ratio, text baselines at equal positions (same question text)",
        "reduced_budget": (
            f"CPU, 2 cores: one latent trained per ratio ({budget}), up to {args.dev} dev questions "
            "as time allowed (per_ratio.questions)"
        ),
        "train": trained,
        "rows": rows,
        "per_ratio": result["per_ratio"],
        "checkpoint_selection": result["selection"],
        "paired": paired_differences(saved_records(args)),
        "plot": f"benchmarks/results/{args.out}.png",
    }
    print(json.dumps(rows, indent=1))
    save_results(args.out, summary)


if __name__ == "__main__":
    main()
