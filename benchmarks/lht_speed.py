"""Throughput and peak memory: LHT vs a dense full-attention encoder of the same size.

For each sequence length (default 512, 2048, 8192) and model ('lht' with the dense-mask backend,
'dense' full attention), a fresh subprocess builds the model, runs warm-up and timed MLM training
steps (forward + backward on 15% labelled tokens) and reports tokens/s and its peak resident memory.
The LHT forward with the FlexAttention backend (the backend that trains on GPU; on CPU it only runs
forward) is timed too, against the dense-mask forward. The block density of the LHT mask (share of
128x128 tiles with any edge) says how much of the attention a block-sparse kernel would compute.

    python benchmarks/lht_speed.py [--lengths 512 2048 8192] [--repeats 2]

Results: benchmarks/results/lht_speed.json. CPU numbers on a shared machine are noisy; the ratio
LHT/dense is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import torch

from latentlm.core.bench import save_results
from latentlm.lht.attention import EdgeConfig, block_density
from latentlm.lht.model import LHTConfig, LHTForMaskedLM
from latentlm.lht.routers import HierarchyConfig


def model_config(kind: str, backend: str = "dense") -> LHTConfig:
    return LHTConfig(
        vocab_size=30522,
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        intermediate_size=512,
        dropout=0.0,
        attention="hierarchical" if kind == "lht" else "full",
        backend=backend,
        edges=EdgeConfig(local_window=16, neighbour_units=2),
        hierarchy=HierarchyConfig(target_ratios=[4.0, 4.0], router_layers=[0, 1], capacity_factor=1.25),
    )


def measure(kind: str, length: int, repeats: int, mode: str, threads: int) -> dict:
    """Runs inside the subprocess: time `repeats` steps after one warm-up step."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backend = "flex" if mode == "forward_flex" else "dense"
    model = LHTForMaskedLM(model_config(kind, backend))
    ids = torch.randint(1000, 30000, (1, length))
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = []
    info: dict = {}
    for step in range(repeats + 1):
        start = time.perf_counter()
        if mode == "train":
            out = model(ids, labels=labels)
            out.loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = model(ids)
        if step > 0:
            times.append(time.perf_counter() - start)
        if out.hierarchy is not None and not info:
            layout = out.hierarchy.layout
            info["slots"] = layout.size
            info["block_density_128"] = block_density(model.backend.pattern.materialize(layout), 128)
            info["tokens_per_unit"] = [length / float(u.max() + 1) for u in out.hierarchy.token_units]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    seconds = min(times)
    return {
        "model": kind,
        "mode": mode,
        "length": length,
        "seconds_per_step": seconds,
        "tokens_per_s": length / seconds,
        "peak_rss_gb": peak,
        "baseline_rss_gb": baseline,
        **info,
    }


def run_child(kind: str, length: int, repeats: int, mode: str, timeout: int, threads: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.lht_speed", "--threads", str(threads)]
    command += ["--child", kind, str(length), str(repeats), mode]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"model": kind, "mode": mode, "length": length, "error": f"timed out after {timeout} s"}
    if done.returncode != 0:
        return {"model": kind, "mode": mode, "length": length, "error": done.stderr.strip()[-400:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: an oversubscribed shared CPU runs 2 far slower)",
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, length, repeats, mode = args.child
        print(json.dumps(measure(kind, int(length), int(repeats), mode, args.threads)))
        return
    rows = []
    for length in args.lengths:
        for mode, kinds in (
            ("train", ("dense", "lht")),
            ("forward", ("dense", "lht")),
            ("forward_flex", ("lht",)),
        ):
            for kind in kinds:
                row = run_child(kind, length, args.repeats, mode, args.timeout, args.threads)
                print(row, flush=True)
                rows.append(row)
    ratios = []
    for length in args.lengths:
        by = {(r["model"], r["mode"]): r for r in rows if r["length"] == length and "error" not in r}
        entry = {"length": length}
        for mode in ("train", "forward"):
            if ("lht", mode) in by and ("dense", mode) in by:
                entry[f"{mode}_tokens_per_s_lht_over_dense"] = (
                    by[("lht", mode)]["tokens_per_s"] / by[("dense", mode)]["tokens_per_s"]
                )
                entry[f"{mode}_peak_rss_lht_over_dense"] = (
                    by[("lht", mode)]["peak_rss_gb"] / by[("dense", mode)]["peak_rss_gb"]
                )
        if ("lht", "forward_flex") in by and ("lht", "forward") in by:
            entry["forward_flex_over_dense_mask"] = (
                by[("lht", "forward_flex")]["tokens_per_s"] / by[("lht", "forward")]["tokens_per_s"]
            )
        ratios.append(entry)
    save_results(
        "lht_speed",
        {
            "description": (
                "MLM step (train) / forward tokens/s and peak RSS, batch 1, CPU, one torch thread, "
                "one process per measurement; model width 128, 2 layers, 4 heads, vocab 30522; "
                "LHT: 2 levels (ratios 4, 4; routers before blocks 0 and 1), window 16, +-2 neighbour "
                "units, [DOC], capacity factor 1.25. Machine shared with other jobs."
            ),
            "config": {"repeats": args.repeats, "lengths": args.lengths, "torch_threads": args.threads},
            "rows": rows,
            "ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
