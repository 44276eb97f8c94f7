"""Chunked vs naive bidirectional WKV: forward and forward+backward time at T in {128, 512}.

Both implementations compute the same function (tested equal in float64); this measures the speed-up
of the chunked-parallel form over the step-by-step recurrence, at the denoiser's head layout
(B=8, H=4, K=V=32, float32), with several chunk sizes.  Times are the median of ``--repeats`` runs.

    python benchmarks/diffusion_wkv.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from latentlm.core.bench import save_results
from latentlm.diffusion.wkv import bidirectional_wkv


def _inputs(B: int, H: int, T: int, K: int, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(B, H, T, K, generator=g) for _ in range(3)]
    log_w = -torch.rand(B, H, T, K, generator=g).mul(2.0).exp()
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    rows = []
    for T in (128, 512):
        for backward in (False, True):
            naive = measure(T, "naive", 0, backward, repeats)
            for chunk in (8, 16, 32, 64):
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
            "description": "bidirectional WKV, B=8 H=4 K=V=32 float32, median s; speedup = naive / chunked",
            "note": "CPU shared with four other engineers' jobs during the run",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
