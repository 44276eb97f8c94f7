"""HMM forward / forward+backward / log P(O,S) throughput and peak memory, against hmmlearn and pomegranate.

For K in {64, 256, 1024, 4096}, V = 10k, length 64, batch 64 and 256, on the same random data:

* ours: ``forward_log_likelihood`` (scaled GEMM forward), its gradient (forward–backward expected
  counts), and the LVD-phase ``joint_log_likelihood`` (forward + backward through the gather);
* hmmlearn ``CategoricalHMM``, ``implementation="log"`` and ``"scaling"``: ``score`` (forward) and
  ``score_samples`` (forward–backward posteriors), one sequence at a time as hmmlearn works;
* pomegranate ``DenseHMM``: ``log_probability`` (forward) and ``forward_backward``.

Every measurement runs in a fresh child process; its peak memory is the child's peak RSS minus its RSS
just before the measured call. Peers are timed on as many sequences as fit in ``--peer-seconds``
(extrapolated from a first sequence) and skipped when even one sequence would take longer; pomegranate
is skipped where its dense ``(B, T, K, K)``-sized intermediates would not fit in ``--peer-memory-gib``.
Achieved GFLOP/s use 2·K² FLOPs per token for the forward and 6·K² for forward+backward, and are
reported as a fraction of this machine's best measured fp32 GEMM rate (measured in the same run) and of
the GEMM rate of the step's own shape ``(B, K) @ (K, K)``, timed in the same process right after the
measurement, by wall clock and by process CPU time (the CPU-time ratio is less disturbed when other jobs
share the cores). ``fraction_of_shape_gemm_paired`` (``--pairs``) alternates one of our calls with as many
same-shape GEMMs as it counts FLOPs and takes the median of the per-pair ratios: on a VM whose speed
drifts between moments, the least disturbed of these fractions.

``ours_em_epoch`` is one full-batch EM epoch (``train.optimizer: em``): ``--em-chunks`` chunks of B
sequences, each normalising the tables with a detached normaliser (as the trainer's count mode did
before it began using the EM-normalised tables as they are) and running forward–backward (the E-step
counts land in ``.grad``), then one :class:`latentlm.hmm.em.EM` M-step; its GFLOP/s count 6·K² per token
like forward+backward.
``ours_stepwise_em`` is ``--em-chunks`` stepwise-EM updates as the trainer runs them with
``em.batch_tokens: 512``: 8 sequences (512 tokens) through forward–backward on the model's count-mode
tables, then one stepwise M-step each (so the M-step's share of a small mini-batch shows).

    python benchmarks/hmm_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np
import torch

from latentlm.core.bench import save_results

VOCAB, LENGTH = 10_000, 64


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gemm_rate(sizes=((256, 1024), (256, 4096), (2048, 2048), (1024, 4096))) -> dict:
    """Best fp32 GEMM rate (GFLOP/s) over a few shapes ``(m, n) @ (n, n)``."""
    best, rates = 0.0, {}
    for m, n in sizes:
        a, b = torch.randn(m, n), torch.randn(n, n)
        torch.mm(a, b)
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(a, b)
            seconds.append(time.perf_counter() - start)
        rate = 2 * m * n * n / min(seconds) / 1e9
        rates[f"{m}x{n}x{n}"] = round(rate, 1)
        best = max(best, rate)
    return {"best_gflops": round(best, 1), "by_shape": rates}


def make_problem(k: int, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    log_start = torch.randn(k, generator=gen).log_softmax(0)
    log_trans = torch.randn(k, k, generator=gen).log_softmax(1)
    log_emit = torch.randn(k, VOCAB, generator=gen).log_softmax(1)
    obs = torch.randint(0, VOCAB, (batch, LENGTH), generator=gen)
    states = torch.randint(0, k, (batch, LENGTH), generator=gen)
    return log_start, log_trans, log_emit, obs, states


def _child(
    method: str, k: int, batch: int, peer_seconds: float, threads: int, em_chunks: int, pairs: int, queue
) -> None:
    torch.set_num_threads(threads)
    log_start, log_trans, log_emit, obs, states = make_problem(k, batch)
    result = {"method": method, "K": k, "batch": batch}
    try:
        result.update(
            _measure(method, log_start, log_trans, log_emit, obs, states, peer_seconds, em_chunks, pairs)
        )
    except Exception as err:  # a peer failing (e.g. out of memory) is a result, not a crash
        result["error"] = f"{type(err).__name__}: {err}"[:300]
    queue.put(result)


def _timed(fn) -> tuple[float, float]:
    """``(wall, cpu)`` seconds: best of up to three timed calls after a warm-up (the machine is shared,
    so the minimum is the least disturbed measurement); one call only when a call takes more than 5 s.
    ``cpu`` is this process's CPU time for the same calls (one thread: time actually computing)."""
    start = time.perf_counter()
    fn()  # warm-up
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(3 if first < 5 else 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return min(walls), min(cpus)


def flops_per_token(method: str, k: int) -> int:
    """FLOPs the GFLOP/s figures count per token: 2·K² for a forward, 6·K² with the backward (EM too)."""
    return (2 if method.endswith("forward") else 6) * k * k


def _paired_fraction(run, gemm, gemms_per_call: int, pairs: int) -> dict:
    """The fraction of the same-shape GEMM rate from ``pairs`` alternations of one timed ``run()`` and
    ``gemms_per_call`` timed ``gemm()`` calls (the same FLOPs, as counted): the median of the per-pair
    ratios (GEMM time / call time), so that both sides of each ratio see the same moment's load."""
    ratios = []
    for _ in range(pairs):
        start = time.perf_counter()
        run()
        call = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(gemms_per_call):
            gemm()
        ratios.append((time.perf_counter() - start) / call)
    ratios.sort()
    return {
        "fraction_of_shape_gemm_paired": float(np.median(ratios)),
        "paired_ratios_min_max": [ratios[0], ratios[-1]],
        "pairs": pairs,
    }


def _em_epoch(log_start, log_trans, log_emit, obs, chunks: int):
    """One full-batch EM epoch over ``chunks`` copies of the batch (rolled so the chunks differ)."""
    from latentlm.hmm.em import EM
    from latentlm.hmm.forward import forward_log_likelihood

    tables = [p.clone().requires_grad_(True) for p in (log_start, log_trans, log_emit)]
    optimizer = EM(tables, pseudocount=0.1)
    batches = [obs.roll(i, dims=1) for i in range(chunks)]

    def run():
        for batch in batches:
            normalised = [t - t.logsumexp(-1, keepdim=True).detach() for t in tables]
            (-forward_log_likelihood(*normalised, batch).sum()).backward()
        optimizer.step()
        for t in tables:
            t.grad = None

    return run, chunks * obs.numel()


def _stepwise_em(log_start, log_trans, log_emit, obs, chunks: int):
    """``chunks`` stepwise-EM updates as the trainer runs them (``em.batch_tokens: 512``): 8 sequences of
    the batch (512 tokens) through forward–backward on the model's count-mode tables, then one M-step."""
    from latentlm.hmm.config import HMMConfig
    from latentlm.hmm.em import EM
    from latentlm.hmm.model import HMMLanguageModel, HMMParameters

    model = HMMLanguageModel(HMMConfig(num_states=log_trans.shape[0], vocab_size=log_emit.shape[1]))
    model.load_log_probabilities(HMMParameters(log_start, log_trans, log_emit))
    model.parameterization.count_gradients = True
    optimizer = EM(model.parameters(), pseudocount=0.001, step_decay=0.7, count_scale=chunks)
    batches = [obs[:8].roll(i, dims=1) for i in range(chunks)]

    def run():
        for batch in batches:
            (-model.log_likelihood(batch).sum()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run, chunks * batches[0].numel()


def _measure(method, log_start, log_trans, log_emit, obs, states, peer_seconds, em_chunks, pairs) -> dict:
    from latentlm.hmm.forward import forward_log_likelihood, joint_log_likelihood

    batch = obs.shape[0]
    tokens = obs.numel()
    if method.startswith("ours"):
        params = [
            p.clone().requires_grad_(method != "ours_forward") for p in (log_start, log_trans, log_emit)
        ]

        def run():
            if method == "ours_forward":
                with torch.no_grad():
                    forward_log_likelihood(*params, obs)
            elif method == "ours_forward_backward":
                forward_log_likelihood(*params, obs).sum().backward()
            else:
                joint_log_likelihood(*params, obs, states).sum().backward()
            for p in params:
                p.grad = None

        if method == "ours_em_epoch":
            run, tokens = _em_epoch(log_start, log_trans, log_emit, obs, em_chunks)
        elif method == "ours_stepwise_em":
            run, tokens = _stepwise_em(log_start, log_trans, log_emit, obs, em_chunks)
        base = rss_mib()
        seconds, cpu_seconds = _timed(run)
        # The machine is shared: the GEMM rate of this step's shape, measured right after, is the
        # reference that saw the same load.
        k = log_start.shape[0]
        rows = 8 if method == "ours_stepwise_em" else batch  # the step's own GEMM shape (rows, K) @ (K, K)
        a, b = torch.randn(rows, k), torch.randn(k, k)
        gemm_wall, gemm_cpu = _timed(lambda: torch.mm(a, b))
        paired = {}
        if pairs and method != "ours_joint":
            gemms = round(flops_per_token(method, k) * tokens / (2 * rows * k * k))  # the call's FLOPs
            paired = _paired_fraction(run, lambda: torch.mm(a, b), gemms, pairs)
        return {
            **paired,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "peak_mib": max(0.0, peak_mib() - base),
            "shape_gemm_gflops": 2 * rows * k * k / gemm_wall / 1e9,
            "shape_gemm_gflops_cpu": 2 * rows * k * k / gemm_cpu / 1e9,
            "tokens_per_cpu_s": tokens / cpu_seconds,
        }
    if method.startswith("hmmlearn"):
        from hmmlearn.hmm import CategoricalHMM

        implementation = "log" if "log" in method else "scaling"
        model = CategoricalHMM(n_components=log_start.shape[0], implementation=implementation)
        model.n_features = VOCAB
        model.startprob_ = log_start.double().exp().numpy()
        model.transmat_ = log_trans.double().exp().numpy()
        model.emissionprob_ = log_emit.double().exp().numpy()
        call = model.score if method.endswith("forward") else model.score_samples
        data = obs.numpy().reshape(batch, LENGTH, 1)
        base = rss_mib()
        start = time.perf_counter()
        call(data[0])
        first = time.perf_counter() - start
        count = int(min(batch, max(1, peer_seconds // max(first, 1e-9))))
        start = time.perf_counter()
        values = [call(data[i]) for i in range(count)]
        seconds = time.perf_counter() - start
        out = {
            "seconds": seconds,
            "tokens": count * LENGTH,
            "tokens_per_s": count * LENGTH / seconds,
            "sequences_timed": count,
            "peak_mib": max(0.0, peak_mib() - base),
        }
        if method.endswith("forward"):
            ours = forward_log_likelihood(
                log_start.double(), log_trans.double(), log_emit.double(), obs[:count]
            )
            out["max_abs_diff_vs_ours"] = float(np.max(np.abs(np.array(values) - ours.numpy())))
        return out
    from pomegranate.distributions import Categorical
    from pomegranate.hmm import DenseHMM

    k = log_start.shape[0]
    dists = [Categorical(log_emit[i : i + 1].exp()) for i in range(k)]
    model = DenseHMM(dists, edges=log_trans.exp(), starts=log_start.exp())
    data = obs.unsqueeze(-1)
    base = rss_mib()
    with torch.no_grad():
        start = time.perf_counter()
        (model.log_probability if method.endswith("forward") else model.forward_backward)(data)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "peak_mib": max(0.0, peak_mib() - base),
    }


def measure(
    method: str, k: int, batch: int, peer_seconds: float, timeout: float, em_chunks: int, pairs: int
) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_child,
        args=(method, k, batch, peer_seconds, torch.get_num_threads(), em_chunks, pairs, queue),
    )
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return {"method": method, "K": k, "batch": batch, "skipped": f"exceeded {timeout:.0f} s"}
    if queue.empty():
        return {"method": method, "K": k, "batch": batch, "error": f"child exited with {proc.exitcode}"}
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="K in {64, 256}, batch 64 only")
    parser.add_argument("--peer-seconds", type=float, default=20.0)
    parser.add_argument("--peer-memory-gib", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--states", type=int, nargs="+", default=None, help="override the K values")
    parser.add_argument("--ours-only", action="store_true", help="skip hmmlearn and pomegranate")
    parser.add_argument("--tag", default="", help="results file suffix")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=None, help="override the batch sizes (default 64 256)"
    )
    parser.add_argument("--note", default="", help="free text stored in the results' setup")
    parser.add_argument(
        "--em-chunks", type=int, default=2, help="chunks of one batch per timed EM epoch (first batch only)"
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=9,
        help="alternations of one of our calls and the same FLOPs of same-shape GEMMs (0: off)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    states = args.states or ([64, 256] if args.quick else [64, 256, 1024, 4096])
    batches = args.batches or ([64] if args.quick else [64, 256])
    rate = gemm_rate()
    print(f"fp32 GEMM: {rate}")
    rows = []
    for k in states:
        for batch in batches:
            methods = ["ours_forward", "ours_forward_backward", "ours_joint"]
            if batch == batches[0]:
                methods += ["ours_em_epoch", "ours_stepwise_em"]
            if not args.ours_only:
                methods += [
                    "hmmlearn_scaling_forward",
                    "hmmlearn_log_forward",
                    "hmmlearn_scaling_forward_backward",
                ]
            # pomegranate's forward-backward holds (B, T, K, K)-sized float32 tensors.
            pomegranate_gib = batch * LENGTH * k * k * 4 * 3 / 2**30
            if args.ours_only:
                pass
            elif pomegranate_gib <= args.peer_memory_gib:
                methods += ["pomegranate_forward", "pomegranate_forward_backward"]
            else:
                rows.append(
                    {
                        "method": "pomegranate_*",
                        "K": k,
                        "batch": batch,
                        "skipped": f"needs ~{pomegranate_gib:.0f} GiB (> {args.peer_memory_gib} GiB cap)",
                    }
                )
            for method in methods:
                if method.startswith("hmmlearn") and batch != batches[0]:
                    continue  # hmmlearn scores one sequence at a time: batch size does not matter
                row = measure(method, k, batch, args.peer_seconds, args.timeout, args.em_chunks, args.pairs)
                if "tokens_per_s" in row:
                    flops = flops_per_token(method, k)
                    if method != "ours_joint":
                        row["gflops"] = row["tokens_per_s"] * flops / 1e9
                        row["fraction_of_gemm"] = row["gflops"] / rate["best_gflops"]
                        if "shape_gemm_gflops" in row:
                            row["fraction_of_shape_gemm"] = row["gflops"] / row["shape_gemm_gflops"]
                            row["fraction_of_shape_gemm_cpu"] = (
                                row["tokens_per_cpu_s"] * flops / 1e9 / row["shape_gemm_gflops_cpu"]
                            )
                print(
                    {key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}, flush=True
                )
                rows.append(row)
    ratios = []
    for k in states:
        ours = {
            r["method"]: r
            for r in rows
            if r["K"] == k and r.get("batch") == batches[0] and "tokens_per_s" in r
        }
        for peer in ("hmmlearn_scaling_forward", "hmmlearn_log_forward", "pomegranate_forward"):
            if peer in ours and "ours_forward" in ours:
                ratios.append(
                    {
                        "K": k,
                        "peer": peer,
                        "ours_over_peer": ours["ours_forward"]["tokens_per_s"] / ours[peer]["tokens_per_s"],
                    }
                )
    save_results(
        f"hmm_throughput{args.tag}",
        {
            "setup": {
                "vocab": VOCAB,
                "length": LENGTH,
                "states": states,
                "batches": batches,
                "peer_seconds_cap": args.peer_seconds,
                "em_epoch_chunks": args.em_chunks,
                "run_note": args.note,
                "note": "shared 2-core machine (other jobs running)",
            },
            "gemm": rate,
            "rows": rows,
            "forward_speedup": ratios,
        },
    )


if __name__ == "__main__":
    main()
