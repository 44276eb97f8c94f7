"""Markdown tables for docs/diffusion.md from the diffusion benchmark JSON files (no measuring here).

python benchmarks/diffusion_tables.py
"""

from __future__ import annotations

import json

from latentlm.core.bench import RESULTS


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine(d: dict) -> str:
    m = d["machine"]
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s), torch {m['torch']}, "
        + m["date"]
    )


def _retrieval(m: dict | None) -> str:
    return (
        "-" if m is None else f"{m['cosine']:.3f} / {m['cosine_random_pairs']:.3f} / {m['recall_at_1']:.3f}"
    )


def main() -> None:
    wkv = _load("diffusion_wkv")
    if wkv:
        print(f"**Chunked vs naive bidirectional WKV** ({wkv['description']}; {_machine(wkv)})\n")
        rows = [
            [
                r["T"],
                r["pass"],
                r["chunk_size"],
                f"{r['naive_s']:.3f}",
                f"{r['chunked_s']:.3f}",
                f"{r['speedup']:.2f}x",
            ]
            for r in wkv["rows"]
        ]
        print(_table(rows, ["T", "pass", "chunk", "naive s", "chunked s", "speed-up"]) + "\n")
    tp = _load("diffusion_throughput")
    if tp:
        print(f"**Throughput, RWKV vs attention denoiser** ({tp['description']}; {_machine(tp)})\n")
        rows = [
            [
                r["seq_len"],
                "real" if r["real_text"] else "synthetic",
                f"{r['rwkv_params'] / 1e6:.2f}M / {r['attention_params'] / 1e6:.2f}M",
                f"{r['rwkv_train_tokens_per_s']:.0f}",
                f"{r['attention_train_tokens_per_s']:.0f}",
                f"{r['train_ratio_rwkv_over_attention']:.2f}",
                f"{r['rwkv_sample_tokens_per_s']:.1f}",
                f"{r['attention_sample_tokens_per_s']:.1f}",
                f"{r['sample_ratio_rwkv_over_attention']:.2f}",
            ]
            for r in tp["rows"]
        ]
        print(
            _table(
                rows,
                [
                    "T",
                    "text",
                    "params rwkv / attn",
                    "train tok/s rwkv",
                    "train tok/s attn",
                    "ratio",
                    "sample tok/s rwkv",
                    "sample tok/s attn",
                    "ratio",
                ],
            )
            + "\n"
        )
    run = _load("diffusion_stage_run")
    if run:
        print(f"**Stage I -> Stage II run** ({run['description']}; {_machine(run)})\n")
        rows = []
        for stage in ("stage1", "stage2"):
            m = run[stage]
            n = m["nelbo"]
            s = m["samples"]
            uncond = s.get("joint", s.get("prior_l2t", {}))
            rows.append(
                [
                    stage,
                    f"{n['ppl_bound']:.1f}",
                    f"{n['ppl_bound_given_latent']:.1f}",
                    f"{n['ppl_bound_vae']:.1f}" if "ppl_bound_vae" in n else "-",
                    _retrieval(m.get("t2l")),
                    _retrieval(m.get("l2t")),
                    f"{uncond.get('generative_perplexity', float('nan')):.0f}",
                    f"{uncond['unigram_entropy_bits']:.2f}",
                    f"{uncond['distinct_1']:.3f} / {uncond['distinct_2']:.3f}",
                    f"{m['checks_passed']}/{m['checks_total']}",
                ]
            )
        print(
            _table(
                rows,
                [
                    "stage",
                    "NELBO ppl bound (text)",
                    "ppl bound given latent",
                    "VAE ppl bound",
                    "T2L cos / random / R@1",
                    "L2T cos / random / R@1",
                    "gen. ppl (SmolLM2)",
                    "unigram H (bits)",
                    "distinct-1 / -2",
                    "checks",
                ],
            )
            + "\n"
        )
        ref = run["stage1"]["samples"]["reference"]
        print(
            f"Reference held-out sentences: generative perplexity {ref.get('generative_perplexity', 0):.1f}, "
            f"unigram entropy {ref['unigram_entropy_bits']:.2f} bits, distinct-1/2 {ref['distinct_1']:.3f} / "
            f"{ref['distinct_2']:.3f}.\n"
        )
        if "reconstruction" in run["stage2"]:
            r = run["stage2"]["reconstruction"]
            print(
                "Stage II reconstruction (L2T from mu(x)): "
                + ", ".join(f"{k} {v:.3f}" for k, v in r.items())
                + "\n"
            )
        print("Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in run["seconds"].items()) + "\n")


if __name__ == "__main__":
    main()
