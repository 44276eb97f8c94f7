"""Does the learned hierarchy matter? Equal-compute ablation of the LHT on the Python docs (issue 14).

Variants, all the size and budget of `configs/lht/ablation.yaml` (same blocks, same batches, same steps):
`dense` (full attention), `sliding_window` (tokens see ±8 tokens only: the LHT's locality without its
hierarchy), `learned` (the routers), `random` and `stride` (as many units as the target ratio asks, at
random / evenly spaced positions), `gold` (sentence / paragraph / section starts: the HDT oracle).
Each is trained with several seeds and scored on held-out chunks: MLM perplexity (fixed masks), level-1
boundary F1 against gold sentences (±2 tokens) next to random boundaries at the same rate, and the
document-classification probe (docs folder from the frozen document vector).

`--pick-routers` first trains the router candidates (`ROUTERS`: learned routers only, never trained on
gold; seeds `--router-seeds`, disjoint from the ablation's) on a dev split carved from the training
documents (`--dev-fraction`; the held-out chunks are never seen), keeps the one with the lowest mean dev
MLM perplexity, and applies its settings to every hierarchical variant (so random / stride / gold
boundaries enter at the same layers); `--routers` runs only the candidates. Gold boundaries only score.

    python3 benchmarks/lht_ablation.py [--seeds 0 1 2] [--steps 150] [--workers 2] [--pick-routers]
    python3 benchmarks/lht_ablation.py --routers --seeds 10
    python3 benchmarks/lht_ablation.py --steps 1000 --router ratio_26_deep --only learned random \
        sliding_window gold --name lht_ablation_1000steps     # a longer budget, an earlier router choice

Results: benchmarks/results/lht_ablation.json (rows: variant, seed, heldout_ppl, f1_l1_sentences,
f1_l1_random), or lht_routers.json; written after every finished run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import tempfile
from pathlib import Path

from latentlm.core.bench import REPO, data_dir, save_results

CONFIG = REPO / "configs" / "lht" / "ablation.yaml"

VARIANTS = {
    "dense": ["model.attention=full"],
    "sliding_window": ["model.attention=window"],
    "learned": [],
    "random": ["model.hierarchy.boundaries=random"],
    "stride": ["model.hierarchy.boundaries=stride"],
    "gold": ["model.hierarchy.boundaries=gold"],
}

# Threshold routers (H-Net) at the gold sentence length (26 tokens per level-1 unit): the previous choice,
# routers on deeper layers (more context), non-maximum suppression of boundary probabilities (±3
# members), and both.
ROUTERS = {
    "ratio_26": [],
    "ratio_26_deep": ["model.hierarchy.router_layers=[2,3]"],
    "ratio_26_smooth": ["model.hierarchy.smoothing=3"],
    "ratio_26_deep_smooth": ["model.hierarchy.router_layers=[2,3]", "model.hierarchy.smoothing=3"],
}


def run_variant(job: tuple[str, list[str], int, int, str, float]) -> dict:
    """Train and score one (variant, seed) in this worker process (on a dev split when dev_fraction > 0)."""
    name, overrides, seed, steps, cache_dir, dev_fraction = job
    import os

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("LATENTLM_DATA", str(data_dir()))
    from latentlm.core.config import load_config
    from latentlm.lht.config import LHTRunConfig
    from latentlm.lht.data import build_corpus, carve_dev
    from latentlm.lht.evaluate import (
        classification_probe,
        document_vectors,
        evaluate_boundaries,
        heldout_chunks,
        heldout_metrics,
        probe_documents,
        random_boundary_scores,
    )
    from latentlm.lht.task import train_without_evaluation
    from latentlm.teachers import load_tokenizer

    run_path = Path(tempfile.mkdtemp(prefix=f"lht-ablation-{name}-"))
    items = [f"run_dir={run_path}", f"data.cache_dir={cache_dir}", f"train.seed={seed}", *overrides]
    if steps:
        items.append(f"train.max_steps={steps}")
    cfg = load_config(LHTRunConfig, CONFIG, items)
    corpus = None
    if dev_fraction > 0:
        corpus = carve_dev(build_corpus(cfg.data, load_tokenizer(cfg.data.tokenizer)), dev_fraction)
    task, model, state, seconds = train_without_evaluation(cfg, corpus)  # scored below, untimed
    chunks = heldout_chunks(task)
    with torch.no_grad():
        heldout = heldout_metrics(task, model)
        boundaries = evaluate_boundaries(model, chunks, cfg.eval.tolerance)
        documents = probe_documents(
            task.corpus.train + task.corpus.heldout,
            cfg.eval.probe_min_documents,
            cfg.eval.probe_max_documents,
        )
        vectors = document_vectors(model, documents)
    probe = classification_probe(vectors, [d.category for d in documents], cfg.eval.probe_folds)
    row = {
        "variant": name,
        "seed": seed,
        "heldout_ppl": heldout["perplexity"],
        "f1_l1_sentences": None,
        "f1_l1_random": None,
    }
    extra = {
        "variant": name,
        "seed": seed,
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "train_seconds": seconds,
        "probe_accuracy": probe["accuracy"],
        "probe_majority": probe["majority_accuracy"],
    }
    if boundaries is not None:
        rate = 1.0 / boundaries.tokens_per_unit[0]
        row["f1_l1_sentences"] = boundaries.scores[0]["sentence"].f1
        row["f1_l1_random"] = random_boundary_scores(chunks, cfg.eval.tolerance, rate, seed=seed)[
            "sentence"
        ].f1
        extra["tokens_per_unit"] = [
            boundaries.tokens_per_unit[level] for level in sorted(boundaries.tokens_per_unit)
        ]
        if 1 in boundaries.scores:
            extra["f1_l2_paragraphs"] = boundaries.scores[1]["paragraph"].f1
    shutil.rmtree(run_path, ignore_errors=True)
    return {"row": row, "extra": extra}


def mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize(rows: list[dict], extras: list[dict]) -> dict:
    """Mean ± std (sample std over seeds) of every score per variant."""
    summary = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        more = [e for e in extras if e["variant"] == name]
        summary[name] = {
            key: mean_std([r[key] for r in mine])
            for key in ("heldout_ppl", "f1_l1_sentences", "f1_l1_random")
        }
        summary[name]["probe_accuracy"] = mean_std([e["probe_accuracy"] for e in more])
        units = [e["tokens_per_unit"][0] for e in more if "tokens_per_unit" in e]
        summary[name]["l1_tokens_per_unit"] = mean_std(units)
    return summary


def paired(rows: list[dict], name: str, other: str) -> dict | None:
    """Per-seed held-out perplexity differences other - name (same seed: same data order, init, masks)."""
    mine = {r["seed"]: r["heldout_ppl"] for r in rows if r["variant"] == name}
    theirs = {r["seed"]: r["heldout_ppl"] for r in rows if r["variant"] == other}
    seeds = sorted(set(mine) & set(theirs))
    if len(seeds) < 2:
        return None
    gaps = [theirs[s] - mine[s] for s in seeds]
    return {"mean": statistics.fmean(gaps), "std": statistics.stdev(gaps), "wins": sum(g > 0 for g in gaps)}


def targets(summary: dict, rows: list[dict] | None = None) -> dict:
    """The issue's targets, each with the numbers it was decided on.

    `gap` is the other variant's mean perplexity minus the learned one's (positive: learned is lower),
    `spread` the larger of the two sample stds over seeds (unpaired). With `rows`, `paired_gap` /
    `paired_std` / `paired_wins` compare seed by seed, where shared seed effects (data order) cancel.
    """
    out = {}

    def ppl(name: str) -> dict | None:
        return summary.get(name, {}).get("heldout_ppl")

    learned = ppl("learned")
    if learned and learned["mean"] is not None:
        for other in ("random", "stride", "sliding_window", "gold"):
            theirs = ppl(other)
            if not theirs or theirs["mean"] is None:
                continue
            spread = max(learned["std"], theirs["std"])
            gap = theirs["mean"] - learned["mean"]
            if other == "gold":
                entry = {"met": abs(gap) <= spread, "gap": gap, "spread": spread}
                key = "learned_within_spread_of_gold"
            elif other == "sliding_window":
                entry = {"met": gap >= 0, "gap": gap}
                key = "learned_ppl_le_sliding_window"
            else:
                entry = {"met": gap > spread, "gap": gap, "spread": spread}
                key = f"learned_beats_{other}_beyond_spread"
            seedwise = paired(rows or [], "learned", other)
            if seedwise is not None:
                entry.update(
                    paired_gap=seedwise["mean"], paired_std=seedwise["std"], paired_wins=seedwise["wins"]
                )
            out[key] = entry
        f1 = summary["learned"]["f1_l1_sentences"]["mean"]
        random_f1 = summary["learned"]["f1_l1_random"]["mean"]
        if f1 is not None and random_f1:
            out["f1_l1_at_least_2x_random"] = {"met": f1 >= 2 * random_f1, "ratio": f1 / random_f1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (0 = the YAML's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    parser.add_argument("--routers", action="store_true", help="run the router candidates instead")
    parser.add_argument("--pick-routers", action="store_true", help="choose the learned routers first")
    parser.add_argument("--router-seeds", type=int, nargs="+", default=[10])
    parser.add_argument(
        "--router", choices=list(ROUTERS), help="use this router candidate (e.g. an earlier dev choice)"
    )
    parser.add_argument("--name", default="lht_ablation", help="results file (the ablation's)")
    parser.add_argument(
        "--hierarchy-override",
        nargs="*",
        default=[],
        help="config overrides added to every variant, like --router's (e.g. model.edges.same_unit=false)",
    )
    parser.add_argument(
        "--dev-fraction", type=float, default=0.1, help="share of training documents to choose routers on"
    )
    parser.add_argument("--cache-dir", default=".cache/latentlm/lht")
    parser.add_argument(
        "--rescore", action="store_true", help="recompute summary and targets of the saved JSON"
    )
    parser.add_argument(
        "--keep-others",
        action="store_true",
        help="with --only: keep the saved rows of the other variants (same steps and seeds)",
    )
    args = parser.parse_args()
    if args.rescore:
        from latentlm.core.bench import RESULTS
        from latentlm.core.checkpoint import read_json

        saved = read_json(RESULTS / f"{args.name}.json")
        saved["summary"] = summarize(saved["rows"], saved["details"])
        saved["targets"] = targets(saved["summary"], saved["rows"])
        machine = saved.pop("machine")
        save_results(args.name, {**saved, "measured_on": machine})
        return
    table = ROUTERS if args.routers else VARIANTS
    names = args.only or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(table)}")
    result_name = "lht_routers" if args.routers else args.name
    # Tokenize once (cached) before the workers start, so they do not race on the cache entry.
    import os

    os.environ.setdefault("LATENTLM_DATA", str(data_dir()))
    from latentlm.core.config import load_config
    from latentlm.lht.config import LHTRunConfig
    from latentlm.lht.data import build_corpus
    from latentlm.teachers import load_tokenizer

    cfg = load_config(LHTRunConfig, CONFIG, [f"data.cache_dir={args.cache_dir}"])
    build_corpus(cfg.data, load_tokenizer(cfg.data.tokenizer))
    steps = args.steps or cfg.train.max_steps
    dev = args.dev_fraction if args.routers else 0.0
    description = (
        f"Equal compute, reduced budget for a shared 2-core CPU: every variant trains width "
        f"{cfg.model.hidden_size}, {cfg.model.num_layers} layers, {cfg.model.num_heads} heads (vocab 30522) "
        "for "
        f"{steps} steps of {cfg.batch_size} chunks of <= {cfg.data.max_length} Python-docs tokens "
        f"({steps * cfg.batch_size * cfg.data.max_length:,} token slots), one torch thread, "
        f"{args.workers} runs at a time; seeds SEEDS. Held-out perplexity: {cfg.eval.max_chunks} "
        "chunks, fixed BERT masks. F1: level-1 boundaries vs gold sentence starts, tolerance "
        f"±{cfg.eval.tolerance} tokens, position 0 excluded; f1_l1_random: random boundaries at the "
        "variant's own level-1 rate on the same chunks. Probe: logistic regression, 5-fold, on the "
        "frozen document vector. Std is the sample std over seeds. Config: configs/lht/ablation.yaml."
    )
    router_description = description + (
        f" Router candidates: trained on the training documents minus a dev split ({args.dev_fraction:.0%} "
        "of them, by a salted name hash); heldout_ppl and the F1 scores of these rows are on dev chunks."
    )
    if args.routers:
        description = router_description
    chosen: dict = {}
    with mp.get_context("spawn").Pool(args.workers) as pool:
        if args.pick_routers and not args.routers:
            router_jobs = [
                (name, ROUTERS[name], seed, steps, args.cache_dir, args.dev_fraction)
                for seed in args.router_seeds
                for name in ROUTERS
            ]
            router_summary = run_jobs(
                pool, router_jobs, list(ROUTERS), "lht_routers", router_description, False
            )
            best = min(router_summary, key=lambda name: router_summary[name]["heldout_ppl"]["mean"])
            chosen = {
                "router": best,
                "overrides": ROUTERS[best],
                "by": (
                    f"lowest mean dev MLM perplexity over router seeds {args.router_seeds}, dev = "
                    f"{args.dev_fraction:.0%} of the training documents (held-out chunks unseen)"
                ),
            }
            print(f"chosen router settings: {chosen}", flush=True)
        if args.router and not chosen:
            chosen = {"router": args.router, "overrides": ROUTERS[args.router], "by": "--router"}
        router = [*(ROUTERS[chosen["router"]] if chosen else []), *args.hierarchy_override]
        kept = None
        if args.keep_others and not args.routers:
            kept = kept_rows(names, steps, router)
            names = [name for name in VARIANTS if name not in kept["from"]["variants"]]
        jobs = [
            (name, [*table[name], *router], seed, steps, args.cache_dir, dev)
            for seed in args.seeds
            for name in names
        ]
        run_jobs(pool, jobs, names, result_name, description, not args.routers, chosen, kept)


# Router settings only learned boundaries use: other variants' rows stay valid when only these change.
LEARNED_ONLY = (
    "model.hierarchy.smoothing=",
    "model.hierarchy.selection=",
    "model.hierarchy.ratio_loss_weight=",
)


def kept_rows(names: list[str], steps: int, router: list[str], saved: dict | None = None) -> dict:
    """The saved ablation's (default: lht_ablation.json) rows, details and overrides of the variants not
    in `names` whose settings do not change under the router settings `router` (non-hierarchical
    variants, or only learned-only settings differ); every other variant is re-run."""
    if saved is None:
        from latentlm.core.bench import RESULTS
        from latentlm.core.checkpoint import read_json

        saved = read_json(RESULTS / "lht_ablation.json")
    if saved["steps"] != steps:
        raise SystemExit(f"--keep-others: the saved ablation ran {saved['steps']} steps, not {steps}")

    def shared(overrides: list[str]) -> list[str]:
        return [o for o in overrides if not o.startswith(LEARNED_ONLY)]

    def unchanged(name: str) -> bool:
        if name in ("dense", "sliding_window"):
            return True  # no hierarchy: router settings do not apply
        return shared(saved["overrides"].get(name, [None])) == shared([*VARIANTS[name], *router])

    others = [name for name in VARIANTS if name not in names and unchanged(name)]
    return {
        "rows": [r for r in saved["rows"] if r["variant"] in others],
        "details": [e for e in saved["details"] if e["variant"] in others],
        "overrides": {name: saved["overrides"][name] for name in others if name in saved["overrides"]},
        "from": {"variants": others, **{k: saved["machine"][k] for k in ("command", "date", "git_commit")}},
    }


def run_jobs(
    pool,
    jobs: list,
    names: list[str],
    result_name: str,
    description: str,
    with_targets: bool,
    chosen=None,
    kept: dict | None = None,
) -> dict:
    """Run the jobs in the pool, saving the JSON after every finished run (with the `kept` rows of
    variants not re-run); returns the summary."""
    rows: list[dict] = list(kept["rows"]) if kept else []
    extras: list[dict] = list(kept["details"]) if kept else []
    summary: dict = {}
    overrides = dict(kept["overrides"]) if kept else {}
    overrides.update({name: next(job[1] for job in jobs if job[0] == name) for name in names})
    order = [name for name in VARIANTS if name in overrides] if kept else names
    for result in pool.imap_unordered(run_variant, jobs):
        print(result, flush=True)
        rows.append(result["row"])
        extras.append(result["extra"])
        rows.sort(key=lambda r: (order.index(r["variant"]), r["seed"]))
        summary = summarize(rows, extras)
        seeds = sorted({job[2] for job in jobs})
        payload = {
            "description": description.replace("SEEDS", str(seeds)),
            "steps": jobs[0][3],
            "overrides": overrides,
            "rows": rows,
            "summary": summary,
            "targets": targets(summary, rows) if with_targets else {},
            "details": extras,
        }
        if chosen:
            payload["router_choice"] = chosen
        if kept:
            payload["kept_rows_from"] = kept["from"]
        save_results(result_name, payload)
    return summary


if __name__ == "__main__":
    main()
