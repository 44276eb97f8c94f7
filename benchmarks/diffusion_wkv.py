"""Chunked (matmul chunk form) vs naive bidirectional WKV: forward and forward+backward time.

Both implementations compute the same function (tested equal in float64); this measures the speed-up
of the chunk form over the step-by-step recurrence, at the denoiser's head layout (B=8, H=4, K=V=32,
float32), for T in ``--lengths`` and several chunk sizes.  Times are the median of ``--repeats`` runs;
naive and chunked are measured back to back in the same process.

    python3 benchmarks/diffusion_wkv.py [--quick] [--lengths 128,256,512,2048]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from latentlm.core.bench import save_results
from latentlm.diffusion.wkv import LOG_DECAY_MIN, bidirectional_wkv


def _inputs(B: int, H: int, T: int, K: int, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(B, H, T, K, generator=g) for _ in range(3)]
    # Per-token log decays as the model makes them: -exp(U(-6, 1)) (RWKV-6 init spans exp(-6..-1)),
    # floored at the model's LOG_DECAY_MIN.
    log_w = -torch.empty(B, H, T, K).uniform_(-6.0, 1.0, generator=g).exp().clamp(max=-LOG_DECAY_MIN)
    u = torch.randn(1, H, 1, K, generator=g)
    out = [*tensors, log_w, u]
    return [t.requires_grad_(requires_grad) for t in out]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(T: int, impl: str, chunk: int, backward: bool, repeats: int, B=8, H=4, K=32) -> float:
    r, k, v, log_w, u = _inputs(B, H, T, K, backward)

    def run():
        y = bidirectional_wkv(r, k, v, log_w, u, impl=impl, chunk_size=chunk)
        if backward:
            y.sum().backward()

    return _time(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="128,256,512,2048")
    parser.add_argument("--chunks", default="16,32,64")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    rows = []
    for T in (int(x) for x in args.lengths.split(",")):
        for backward in (False, True):
            naive = measure(T, "naive", 0, backward, repeats)
            for chunk in (int(x) for x in args.chunks.split(",")):
                chunked = measure(T, "chunked", chunk, backward, repeats)
                row = {
                    "T": T,
                    "pass": "fwd+bwd" if backward else "fwd",
                    "chunk_size": chunk,
                    "naive_s": naive,
                    "chunked_s": chunked,
                    "speedup": naive / chunked,
                }
                rows.append(row)
                print(row, flush=True)
    save_results(
        "diffusion_wkv",
        {
            "description": (
                "bidirectional WKV, B=8 H=4 K=V=32 float32, log decay -exp(U(-6,1)) floored at -5, median s; "
                "speedup = naive / chunked"
            ),
            "note": "2-core CPU shared with other jobs (see load_average); naive and chunked back to back",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
