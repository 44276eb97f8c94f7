"""Training throughput on CPU: the LHT with each attention backend vs a dense encoder of the same size.

For each sequence length, fresh subprocesses (one torch thread each) build the dense full-attention
encoder and the LHT with the `dense` (boolean mask) and `sparse` (gathered key blocks) backends, run one
warm-up and `--repeats` timed MLM training steps (forward + backward, 1 in 7 tokens labelled) and report
tokens/s (best step). The three are measured back to back, in the same run, at every length. The LHT's
units are placed at exactly the target rate (`boundaries: random`, ratios 4 and 4: the work of a router
with `selection: top_k`, or of random / stride units), with head segments sized for that rate
(`capacity_factor: 1.0`, which these modes never overflow). An untrained threshold router at its identity
initialisation cuts far more often and overflows its head segment.

    python3 benchmarks/lht_speed.py [--lengths 512 2048 8192] [--repeats 3] [--block-sizes 16 64]

Results: benchmarks/results/lht_speed.json, rows {length, backend, lht_tokens_per_s, dense_tokens_per_s}
and `block_size` on sparse rows
(plus `details`: seconds per step, peak memory, the sparse backend's block density).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from latentlm.core.bench import REPO, save_results
from latentlm.core.config import load_config
from latentlm.lht.config import LHTConfig, LHTRunConfig

SPEED_CONFIG = REPO / "configs" / "lht" / "speed.yaml"

BACKENDS = ("dense", "sparse")


def model_config(kind: str, backend: str, block_size: int = 0) -> LHTConfig:
    """`configs/lht/speed.yaml`'s model: the LHT (`kind="lht"`) or the dense encoder, on `backend`
    (with `block_size` slots per sparse block; 0 = the YAML's)."""
    attention = "hierarchical" if kind == "lht" else "full"
    overrides = [f"model.attention={attention}", f"model.backend={backend}"]
    if block_size:
        overrides.append(f"model.block_size={block_size}")
    return load_config(LHTRunConfig, SPEED_CONFIG, overrides).model


def measure(kind: str, backend: str, length: int, repeats: int, block_size: int = 0) -> dict:
    """Runs inside the subprocess: the best of `repeats` training steps after one warm-up step."""
    from latentlm.lht.model import LHTForMaskedLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LHTForMaskedLM(model_config(kind, backend, block_size))
    ids = torch.randint(1000, 30000, (1, length))
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]
    times = []
    info: dict = {}
    for step in range(repeats + 1):
        start = time.perf_counter()
        out = model(ids, labels=labels)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if step > 0:
            times.append(time.perf_counter() - start)
    if out.hierarchy is not None:
        layout = out.hierarchy.layout
        info["slots"] = layout.size
        if backend == "sparse":
            prepared = model.backend.prepare(layout)
            info["block_size"] = prepared.block_size
            info["sparse_block_density"] = prepared.density
    seconds = min(times)
    return {
        "kind": kind,
        "backend": backend,
        "length": length,
        "seconds_per_step": seconds,
        "tokens_per_s": length / seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        **info,
    }


def run_child(kind: str, backend: str, length: int, repeats: int, timeout: int, block_size: int = 0) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.lht_speed",
        "--child",
        kind,
        backend,
        str(length),
        str(repeats),
        str(block_size),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "backend": backend, "length": length, "error": f"timed out after {timeout} s"}
    if done.returncode != 0:
        return {"kind": kind, "backend": backend, "length": length, "error": done.stderr.strip()[-400:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=400, help="seconds per measurement")
    parser.add_argument(
        "--dense-mask-up-to", type=int, default=2048, help="longest length timed with the dense-mask backend"
    )
    parser.add_argument(
        "--block-sizes",
        type=int,
        nargs="+",
        default=[16, 64],
        help="sparse-backend block sizes timed (0 = by length, the default)",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, backend, length, repeats, block_size = args.child
        print(json.dumps(measure(kind, backend, int(length), int(repeats), int(block_size))))
        return
    rows, details = [], []
    for length in args.lengths:
        dense = run_child("dense", "dense", length, args.repeats, args.timeout)
        details.append(dense)
        print(dense, flush=True)
        for backend in BACKENDS:
            if backend == "dense" and length > args.dense_mask_up_to:
                continue  # an S x S boolean mask at this length takes minutes per step on this CPU
            for block_size in args.block_sizes if backend == "sparse" else [0]:
                lht = run_child("lht", backend, length, args.repeats, args.timeout, block_size)
                details.append(lht)
                print(lht, flush=True)
                row = {
                    "length": length,
                    "backend": backend,
                    "lht_tokens_per_s": lht.get("tokens_per_s"),
                    "dense_tokens_per_s": dense.get("tokens_per_s"),
                }
                if block_size:
                    row["block_size"] = block_size
                rows.append(row)
    summary = {
        f"{r['backend']}{r.get('block_size', '')}@{r['length']}": r["lht_tokens_per_s"]
        / r["dense_tokens_per_s"]
        for r in rows
        if r["lht_tokens_per_s"] and r["dense_tokens_per_s"]
    }
    save_results(
        "lht_speed",
        {
            "description": (
                "MLM training step (forward + backward), batch 1, CPU, one torch thread, one process "
                "per measurement, best of the timed steps; width 128, 2 layers, 4 heads, vocab 30522. "
                "Dense: full attention (unmasked SDPA). LHT: 2 levels at ratios 4 and 4 (units at exactly "
                "the target rate, boundaries: random), window 16, ±2 neighbour units, [DOC], capacity "
                "1.0; backend 'dense' = boolean S x S mask through SDPA, 'sparse' = gathered key blocks "
                "of block_size slots (by length in the YAML: 16 up to 4,096 slots, 64 above). The machine "
                "is shared with other jobs: compare the ratio within one length."
            ),
            "config": {
                "repeats": args.repeats,
                "lengths": args.lengths,
                "dense_mask_up_to": args.dense_mask_up_to,
                "block_sizes": args.block_sizes,
                "torch_threads": 1,
            },
            "rows": rows,
            "lht_over_dense": summary,
            "details": details,
        },
    )


if __name__ == "__main__":
    main()
