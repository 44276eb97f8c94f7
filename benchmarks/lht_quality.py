"""Equal-compute MLM quality on the Python docs: LHT vs the dense baseline, and the seed's ablations.

Every variant trains the same width/depth for the same number of steps on the same batches (same
seed, same tokens) from the Python documentation sources, then reports held-out MLM perplexity
(fixed masks), wall time, and for LHT variants the boundary F1 of level 1 vs gold sentences and of
level 2 vs gold paragraphs (tolerance +-2 tokens). Variants (seed 003, "Ablation Suite"):
dense full attention; LHT base (2 levels); 3 and 4 levels; routers early / late; local window 2 / 32;
without [DOC]. Runs go two at a time, one torch thread each, in separate processes.

    python benchmarks/lht_quality.py [--steps 200] [--workers 2] [--only dense lht_base]

Results: benchmarks/results/lht_quality.json (written after every finished run).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
from pathlib import Path

from latentlm.core.bench import REPO, RESULTS, data_dir, save_results

BENCH_CONFIG = REPO / "configs" / "lht" / "bench.yaml"

VARIANTS = {
    "dense": ["model.attention=full"],
    "lht_base": [],
    "lht_3_levels": ["model.hierarchy.target_ratios=[4.0,4.0,4.0]", "model.hierarchy.router_layers=[1,2,3]"],
    "lht_4_levels": [
        "model.hierarchy.target_ratios=[4.0,4.0,4.0,4.0]",
        "model.hierarchy.router_layers=[1,2,3,3]",
    ],
    "lht_routers_early": ["model.hierarchy.router_layers=[0,1]"],
    "lht_routers_late": ["model.hierarchy.router_layers=[2,3]"],
    "lht_window_2": ["model.edges.local_window=2"],
    "lht_window_32": ["model.edges.local_window=32"],
    "lht_no_doc": ["model.edges.doc_token=false"],
}


def run_variant(job: tuple[str, list[str], int, str]) -> dict:
    """Train and evaluate one variant in this (worker) process."""
    name, overrides, steps, cache_dir = job
    import os

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("LATENTLM_DATA", str(data_dir()))
    from latentlm.core.config import load_config
    from latentlm.core.run import RunDir
    from latentlm.lht.config import LHTRunConfig
    from latentlm.lht.evaluate import evaluate_boundaries, heldout_chunks, heldout_metrics
    from latentlm.lht.task import train_without_evaluation

    run_path = Path(tempfile.mkdtemp(prefix=f"lht-{name}-"))
    items = [
        f"run_dir={run_path}",
        f"train.max_steps={steps}",
        f"data.cache_dir={cache_dir}",
        *overrides,
    ]
    cfg = load_config(LHTRunConfig, BENCH_CONFIG, items)
    task, model, state, seconds = train_without_evaluation(cfg)  # scored below, untimed
    with torch.no_grad():
        metrics = heldout_metrics(task, model)
        boundaries = evaluate_boundaries(model, heldout_chunks(task)[:32], cfg.eval.tolerance)
    logged = [r for r in RunDir(run_path, tensorboard=False).read_metrics() if "train/mlm_loss" in r]
    result = {
        "variant": name,
        "overrides": overrides,
        "steps": steps,
        "tokens_seen": state.tokens_seen,
        "train_seconds": seconds,
        "train_tokens_per_s": state.tokens_seen / seconds,
        "final_train_mlm_loss": logged[-1]["train/mlm_loss"],
        "heldout_mlm_loss": metrics["mlm_loss"],
        "heldout_perplexity": metrics["perplexity"],
        "heldout_masked_tokens": metrics["masked_tokens"],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if boundaries is not None:
        result["tokens_per_unit"] = {f"level{k + 1}": v for k, v in boundaries.tokens_per_unit.items()}
        result["level1_vs_sentence"] = boundaries.scores[0]["sentence"].as_dict()
        if 1 in boundaries.scores:
            result["level2_vs_paragraph"] = boundaries.scores[1]["paragraph"].as_dict()
    shutil.rmtree(run_path, ignore_errors=True)
    return result


def add_random_baselines(rows: list[dict], cache_dir: str) -> None:
    """Add, for each LHT row, the F1 of random boundaries placed at the same rate on the same chunks."""
    import os

    os.environ.setdefault("LATENTLM_DATA", str(data_dir()))
    from latentlm.core.config import load_config
    from latentlm.lht.config import LHTRunConfig
    from latentlm.lht.data import build_corpus
    from latentlm.lht.evaluate import random_boundary_scores
    from latentlm.teachers import load_tokenizer

    cfg = load_config(LHTRunConfig, BENCH_CONFIG, [f"data.cache_dir={cache_dir}"])
    chunks = build_corpus(cfg.data, load_tokenizer(cfg.data.tokenizer)).heldout[:32]
    for row in rows:
        for key, level, kind in (
            ("level1_vs_sentence", "level1", "sentence"),
            ("level2_vs_paragraph", "level2", "paragraph"),
        ):
            if key in row:
                rate = 1.0 / row["tokens_per_unit"][level]
                scores = random_boundary_scores(chunks, cfg.eval.tolerance, rate, seed=0)[kind]
                row[key]["random_same_rate_f1"] = scores.f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    parser.add_argument("--cache-dir", default=".cache/latentlm/lht")
    parser.add_argument("--seed", type=int, default=0, help="training seed (data order, init, masks)")
    parser.add_argument(
        "--random-baselines-only", action="store_true", help="only add random-boundary F1 to the saved JSON"
    )
    args = parser.parse_args()
    if args.random_baselines_only:
        from latentlm.core.checkpoint import read_json

        saved = read_json(RESULTS / "lht_quality.json")
        add_random_baselines(saved["rows"], args.cache_dir)
        save_results("lht_quality", saved)  # keeps the machine and date of the measured run
        return
    names = args.only or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    # Tokenize once (cached) before the workers start, so they do not race on the cache entry.
    run_variant(
        ("warm_cache", [*VARIANTS["dense"], "train.max_steps=1", "eval.max_chunks=1"], 1, args.cache_dir)
    )
    seed = [f"train.seed={args.seed}"]
    jobs = [(name, [*VARIANTS[name], *seed], args.steps, args.cache_dir) for name in names]
    result_name = "lht_quality" if args.seed == 0 else f"lht_quality_seed{args.seed}"
    rows: list[dict] = []
    description = (
        "Equal compute: every variant trains the same model size (width 64, 4 layers, 4 heads, vocab "
        "30522) for the same steps on the same batches (2 chunks of <= 512 tokens, Python docs, seed "
        f"{args.seed}), one torch thread per run, two runs at a time on a 2-core machine shared with "
        "other jobs. "
        "Held-out perplexity uses fixed BERT masks on 64 held-out chunks; boundary F1 uses 32 chunks, "
        "tolerance +-2 tokens. One seed per variant: differences of a few percent are within noise."
    )
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for row in pool.imap_unordered(run_variant, jobs):
            print(row, flush=True)
            rows.append(row)
            dense = next((r for r in rows if r["variant"] == "dense"), None)
            for r in rows:
                if dense is not None:
                    r["perplexity_over_dense"] = r["heldout_perplexity"] / dense["heldout_perplexity"]
            save_results(result_name, {"description": description, "steps": args.steps, "rows": rows})
    add_random_baselines(rows, args.cache_dir)
    save_results(result_name, {"description": description, "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
