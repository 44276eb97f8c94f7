"""Which hierarchical edges help beyond the sliding window? A dev-split probe (issue 14).

Each variant trains `configs/lht/ablation.yaml` with the routers of the ablation's dev choice (before
blocks 2 and 3) and one or more hierarchical edge types switched off, on the training documents minus
the dev split the router choice uses, and is scored on dev chunks (held-out chunks unseen), beside the
sliding-window baseline trained the same way. It chooses edge settings for the ablation without
looking at the held-out split.

    python3 benchmarks/lht_edges_probe.py [--steps 2000] [--seeds 10]

Results: benchmarks/results/lht_edges_probe.json (rows: variant, seed, dev_ppl, f1_l1_sentences,
f1_l1_random, tokens_per_unit).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp

from latentlm.core.bench import save_results
from lht_ablation import run_variant

DEEP = ["model.hierarchy.router_layers=[2,3]"]
NO_SAME_UNIT = ["model.edges.same_unit=false"]
VARIANTS = {
    "sliding_window": ["model.attention=window"],
    "gold": ["model.hierarchy.boundaries=gold", *DEEP],
    "gold_no_same_unit": ["model.hierarchy.boundaries=gold", *NO_SAME_UNIT, *DEEP],
    "random_no_same_unit": ["model.hierarchy.boundaries=random", *NO_SAME_UNIT, *DEEP],
    "learned_no_same_unit": [*NO_SAME_UNIT, *DEEP],
    "gold_heads_only": [
        "model.hierarchy.boundaries=gold",
        *NO_SAME_UNIT,
        "model.edges.siblings=false",
        "model.edges.neighbour_units=0",
        *DEEP,
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[10])
    parser.add_argument("--dev-fraction", type=float, default=0.1)
    parser.add_argument("--cache-dir", default=".cache/latentlm/lht")
    args = parser.parse_args()
    jobs = [
        (name, overrides, seed, args.steps, args.cache_dir, args.dev_fraction)
        for seed in args.seeds
        for name, overrides in VARIANTS.items()
    ]
    rows = []
    with mp.get_context("spawn").Pool(2) as pool:
        for result in pool.imap_unordered(run_variant, jobs):
            row = dict(result["row"])
            row["dev_ppl"] = row.pop("heldout_ppl")  # scored on dev chunks here
            row["tokens_per_unit"] = result["extra"].get("tokens_per_unit")
            rows.append(row)
            print(row, flush=True)
            save_results(
                "lht_edges_probe",
                {
                    "description": f"{args.steps} steps, one torch thread per run, two runs at a time; "
                    f"trained without the dev split ({args.dev_fraction:.0%} of the training documents), "
                    "scored on its chunks",
                    "overrides": VARIANTS,
                    "rows": rows,
                },
            )


if __name__ == "__main__":
    main()
