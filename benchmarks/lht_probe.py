"""LHT vs dense through the CLI: train both on the Python docs, then `latentlm lht eval` each.

Gives the document-classification probe (docs folder from the frozen document vector) and held-out
perplexity of both models, plus the boundary scores of the LHT, at the quality benchmark's size and
budget (width 64, 4 layers, 200 steps of 2 x 512-token chunks). The two runs go in parallel, one torch
thread each.

    python benchmarks/lht_probe.py [--steps 200]

Results: benchmarks/results/lht_probe.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
from pathlib import Path

from latentlm.core.bench import REPO, data_dir, save_results

BENCH_CONFIG = REPO / "configs" / "lht" / "bench.yaml"


def train_and_eval(job: tuple[str, list[str], int]) -> dict:
    name, overrides, steps = job
    os.environ.setdefault("LATENTLM_DATA", str(data_dir()))
    from latentlm.core.checkpoint import read_json
    from latentlm.lht import cli

    run_dir = Path(tempfile.mkdtemp(prefix=f"lht-probe-{name}-"))
    probe = ["eval.probe_max_documents=300", "eval.max_chunks=32"]
    args = [f"run_dir={run_dir}", f"train.max_steps={steps}", *overrides, *probe]
    cli.main(["train", str(BENCH_CONFIG), *args])
    cli.main(["eval", f"run_dir={run_dir}", "num_threads=1", *probe])
    return {
        "model": name,
        "overrides": overrides,
        "steps": steps,
        **read_json(run_dir / "eval" / "metrics.json"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    jobs = [("dense", ["model.attention=full"], args.steps), ("lht_base", [], args.steps)]
    with mp.get_context("spawn").Pool(2) as pool:
        rows = pool.map(train_and_eval, jobs)
    save_results(
        "lht_probe",
        {
            "description": "CLI train + eval of dense and LHT base on the Python docs (quality-benchmark "
            "size, seed 0); probe: logistic regression on the frozen document vector, 5-fold, docs "
            "folders with >= 5 documents, up to 300 documents. Shared 2-core CPU, one thread per run.",
            "rows": rows,
        },
    )
    for row in rows:
        print(row["model"], row["heldout"]["perplexity"], row.get("probe"))


if __name__ == "__main__":
    main()
