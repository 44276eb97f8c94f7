"""Short CUDA timings of the GPU variants of the benchmarks, each a ratio against a baseline of the same run.

1. HMM: ``forward_log_likelihood`` (no grad) and its gradient at K in {1024, 4096}, batch 64, length
   128, V = 10k, float32, as GFLOP/s (2·K² per token forward, 6·K² forward+backward) over the rate of
   the same-shape ``(B, K) @ (K, K)`` GEMM timed right after it.
2. Diffusion: the bidirectional WKV (B=8, H=4, K=V=32, float32), forward+backward, chunked (chunk 32)
   and flash-linear-attention's kernel (when ``fla`` is importable) against the naive scan, T in
   {512, 2048}.
3. LHT: MLM training steps (forward, backward, AdamW step) under bf16 autocast, batch 1, at 2,048 and
   8,192 tokens, backends dense / sparse / flex (compiled FlexAttention) against a full-attention
   encoder of the same size (and sparse, flex over the dense-mask backend).

Every time is the median of ``--repeats`` calls after a warm-up, with ``torch.cuda.synchronize()`` around
each call. One measurement failing (out of memory, a missing kernel) is recorded as an ``error`` row.
Results: ``benchmarks/results/gpu_bench.json`` (saved after every row, so a cut run keeps what it has).
Without a CUDA device the script prints one line and exits 0. ``benchmarks/gpu_suite.sh`` runs it after
the ``gpu``-marked tests and turns their junit XML into ``gpu_suite.json`` with ``--junit``.

    python3 benchmarks/gpu_bench.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from latentlm.core.bench import save_results

SKIP_MESSAGE = "no CUDA device: GPU suite skipped"
HMM_VOCAB, HMM_BATCH, HMM_LENGTH = 10_000, 64, 128
WKV_SHAPE = {"B": 8, "H": 4, "K": 32}


def summarize_junit(xml_text: str) -> dict:
    """Per-test outcome ('passed', 'failed' or 'skipped'; a collection/setup error counts as failed)
    from pytest's ``--junitxml`` output, plus the counts of each outcome."""
    root = ET.fromstring(xml_text)
    tests: dict[str, dict] = {}
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        row: dict = {"outcome": "passed", "seconds": float(case.get("time", 0.0))}
        for tag, outcome in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                row["outcome"] = outcome
                row["message"] = (found.get("message") or found.text or "").strip()[:300]
                break
        tests[test_id] = row
    counts = {name: 0 for name in ("passed", "failed", "skipped")}
    for row in tests.values():
        counts[row["outcome"]] += 1
    return {"counts": counts, "tests": tests}


def cuda_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` on the current CUDA device over ``repeats`` calls after one warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def guarded(label: dict, measure: Callable[..., dict], *args) -> dict:
    """``label`` plus what ``measure(*args)`` returns, or plus an ``error`` when it raises."""
    try:
        row = {**label, **measure(*args)}
    except Exception as err:  # an out-of-memory or a missing kernel is a result, not a crash
        row = {**label, "error": f"{type(err).__name__}: {err}"[:400]}
    torch.cuda.empty_cache()
    print(row, flush=True)
    return row


def hmm_rate(k: int, backward: bool, repeats: int) -> dict:
    """The HMM forward (or forward+backward) at K states, as GFLOP/s over the same-shape GEMM's rate."""
    from latentlm.hmm.forward import forward_log_likelihood

    gen = torch.Generator().manual_seed(k)
    params = [
        torch.randn(k, generator=gen).log_softmax(0),
        torch.randn(k, k, generator=gen).log_softmax(1),
        torch.randn(k, HMM_VOCAB, generator=gen).log_softmax(1),
    ]
    params = [p.cuda().requires_grad_(backward) for p in params]
    obs = torch.randint(0, HMM_VOCAB, (HMM_BATCH, HMM_LENGTH), generator=gen).cuda()

    def run():
        if not backward:
            with torch.no_grad():
                forward_log_likelihood(*params, obs)
            return
        forward_log_likelihood(*params, obs).sum().backward()
        for p in params:
            p.grad = None

    seconds = cuda_seconds(run, repeats)
    a, b = torch.randn(HMM_BATCH, k, device="cuda"), torch.randn(k, k, device="cuda")
    gemm_gflops = 2 * HMM_BATCH * k * k / cuda_seconds(lambda: torch.mm(a, b), repeats) / 1e9
    tokens = HMM_BATCH * HMM_LENGTH
    gflops = tokens * (6 if backward else 2) * k * k / seconds / 1e9
    return {
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "gflops": gflops,
        "shape_gemm_gflops": gemm_gflops,
        "fraction_of_shape_gemm": gflops / gemm_gflops,
    }


def bench_hmm(states: list[int], repeats: int) -> Iterator[dict]:
    for k in states:
        label = {"K": k, "batch": HMM_BATCH, "length": HMM_LENGTH}
        yield guarded({**label, "pass": "fwd"}, hmm_rate, k, False, repeats)
        yield guarded({**label, "pass": "fwd+bwd"}, hmm_rate, k, True, repeats)


def wkv_seconds(length: int, impl: str, repeats: int) -> dict:
    """Forward+backward of the bidirectional WKV at length T (B, H, K as ``WKV_SHAPE``, float32, CUDA)."""
    from latentlm.diffusion.wkv import LOG_DECAY_MIN, bidirectional_wkv

    B, H, K = WKV_SHAPE["B"], WKV_SHAPE["H"], WKV_SHAPE["K"]
    gen = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(B, H, length, K, generator=gen) for _ in range(3))
    # Per-token log decays as the model makes them: -exp(U(-6, 1)), floored at LOG_DECAY_MIN.
    log_w = -torch.empty(B, H, length, K).uniform_(-6.0, 1.0, generator=gen).exp().clamp(max=-LOG_DECAY_MIN)
    u = torch.randn(1, H, 1, K, generator=gen)
    inputs = [x.cuda().requires_grad_() for x in (r, k, v, log_w, u)]

    def step():
        bidirectional_wkv(*inputs, impl=impl, chunk_size=32).sum().backward()
        for x in inputs:
            x.grad = None

    return {"seconds": cuda_seconds(step, repeats)}


def bench_wkv(lengths: list[int], repeats: int) -> Iterator[dict]:
    from latentlm.diffusion.wkv import fla_available

    impls = ["naive", "chunked"] + (["fla"] if fla_available(torch.device("cuda")) else [])
    for length in lengths:
        naive = None
        for impl in impls:
            row = guarded({"T": length, "impl": impl, "pass": "fwd+bwd"}, wkv_seconds, length, impl, repeats)
            if impl == "naive":
                naive = row.get("seconds")
            elif naive and "seconds" in row:
                row["speedup_over_naive"] = naive / row["seconds"]
            yield row


def lht_config(backend: str, attention: str):
    """`configs/lht/speed.yaml`'s model (the one `benchmarks/lht_speed.py` times on CPU)."""
    from latentlm.core.bench import REPO
    from latentlm.core.config import load_config
    from latentlm.lht.config import LHTRunConfig

    overrides = [f"model.attention={attention}", f"model.backend={backend}"]
    return load_config(LHTRunConfig, REPO / "configs" / "lht" / "speed.yaml", overrides).model


def lht_step_seconds(backend: str, attention: str, length: int, repeats: int) -> dict:
    from latentlm.lht.model import LHTForMaskedLM

    torch.manual_seed(0)
    model = LHTForMaskedLM(lht_config(backend, attention)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 30000, (1, length), device="cuda")
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    seconds = cuda_seconds(step, repeats)
    return {
        "seconds_per_step": seconds,
        "tokens_per_s": length / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def bench_lht(lengths: list[int], repeats: int) -> Iterator[dict]:
    for length in lengths:
        label = {"length": length, "model": "full-attention encoder"}
        baseline = guarded(label, lht_step_seconds, "dense", "full", length, repeats)
        yield baseline
        dense_mask = None
        for backend in ("dense", "sparse", "flex"):
            label = {"length": length, "model": "lht", "backend": backend}
            row = guarded(label, lht_step_seconds, backend, "hierarchical", length, repeats)
            if "tokens_per_s" in row and "tokens_per_s" in baseline:
                row["over_full_attention"] = row["tokens_per_s"] / baseline["tokens_per_s"]
            if backend == "dense":
                dense_mask = row.get("tokens_per_s")
            elif dense_mask and "tokens_per_s" in row:
                row["over_dense_mask"] = row["tokens_per_s"] / dense_mask
            yield row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one size per section, 2 repeats")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument(
        "--junit",
        type=Path,
        help="summarise this pytest junit XML into results/gpu_suite.json instead of timing",
    )
    parser.add_argument("--pytest-status", type=int, default=0, help="with --junit: pytest's exit status")
    args = parser.parse_args(argv)
    if args.junit is not None:
        summary = summarize_junit(args.junit.read_text())
        print(summary["counts"])
        save_results("gpu_suite", {"pytest_exit_status": args.pytest_status, **summary})
        return 0
    if not torch.cuda.is_available():
        print(SKIP_MESSAGE)
        return 0
    repeats = 2 if args.quick else args.repeats
    setup = {
        "quick": args.quick,
        "repeats": repeats,
        "timing": "median of the repeats after one warm-up, torch.cuda.synchronize() around each call",
        "hmm": f"V={HMM_VOCAB}, batch {HMM_BATCH}, length {HMM_LENGTH}, float32",
        "wkv": "B=8 H=4 K=V=32 float32, chunk 32, log decay -exp(U(-6,1)) floored at -5",
        "lht": "width 128, 2 layers, 4 heads, vocab 30522, ratios 4 and 4, window 16, batch 1, bf16 autocast",
    }
    results: dict = {"setup": setup}
    sections = (
        ("hmm", bench_hmm, [1024] if args.quick else [1024, 4096]),
        ("wkv", bench_wkv, [512] if args.quick else [512, 2048]),
        ("lht", bench_lht, [2048] if args.quick else [2048, 8192]),
    )
    for name, bench, sizes in sections:
        results[name] = []
        for row in bench(sizes, repeats):  # saved after every row: a run cut by a timeout keeps its rows
            results[name].append(row)
            save_results("gpu_bench", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
