"""Markdown tables for docs/diffusion.md from the diffusion benchmark JSON files (no measuring here).

python3 benchmarks/diffusion_tables.py
"""

from __future__ import annotations

import argparse
import json

from latentlm.core.bench import RESULTS


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine(m: dict) -> str:
    load = m.get("load_average_at_start")
    load = f", load {load[0]:.1f}" if load else ""
    threads = f"{m['torch_threads']} torch thread(s)"
    return f"{m['cpu']}, {m['cores']} cores, {threads}, torch {m['torch']}, {m['date']}{load}"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def wkv_table(wkv: dict) -> str:
    rows = [
        [
            r["T"],
            r["pass"],
            r["chunk_size"],
            f"{r['naive_s']:.4f}",
            f"{r['chunked_s']:.4f}",
            f"{r['speedup']:.2f}x",
        ]
        for r in wkv["rows"]
    ]
    head = f"**Chunked vs naive bidirectional WKV** ({wkv['description']}; {_machine(wkv['machine'])})\n\n"
    return head + _table(rows, ["T", "pass", "chunk", "naive s", "chunked s", "speed-up"])


def quality_tables(q: dict) -> str:
    parts = [f"**Quality** ({q['description']})\n"]
    rows = [
        ["L2T recall@1 (64 candidates)", _num(q.get("l2t_recall_at_1")), ">= 0.5"],
        ["T2L recall@1 (64 candidates)", _num(q.get("t2l_recall_at_1")), ">= 0.5"],
        ["gen. ppl, joint samples", _num(q.get("gen_ppl_joint"), 4), "<= 2x AR"],
        ["gen. ppl, AR baseline (matched entropy)", _num(q.get("gen_ppl_ar"), 4), ""],
        ["gen. ppl, reference sentences", _num(q.get("gen_ppl_reference"), 4), ""],
        ["Stage II KL at the end (nats/sentence)", _num(q.get("kl_final"), 4), "finite, bounded"],
        ["Stage II VAE bound (nats/token)", _num(q.get("vae_bound"), 4), "< text bound"],
        ["Stage II text-only bound (nats/token)", _num(q.get("text_bound"), 4), ""],
    ]
    parts.append(_table(rows, ["measure", "value", "target"]))
    if "gen_ppl_settings" in q:
        parts.append(f"\nGenerative perplexity settings: {json.dumps(q['gen_ppl_settings'])}\n")
    if "speed_rows" in q:
        rows = [
            [
                r["T"],
                r["mode"],
                r["batch_size"],
                f"{r['rwkv_tokens_per_s']:.0f}",
                f"{r['attention_tokens_per_s']:.0f}",
                f"{r['ratio_rwkv_over_attention']:.2f}",
            ]
            for r in q["speed_rows"]
        ]
        machine = q.get("phases", {}).get("speed", {}).get("machine")
        parts.append(
            f"\n**RWKV vs attention denoiser** ({json.dumps(q['speed_settings'])}"
            + (f"; {_machine(machine)}" if machine else "")
            + ")\n"
        )
        parts.append(_table(rows, ["T", "mode", "batch", "rwkv tok/s", "attention tok/s", "ratio"]))
    return "\n".join(parts)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    wkv = _load("diffusion_wkv")
    if wkv:
        print(wkv_table(wkv) + "\n")
    quality = _load("diffusion_quality")
    if quality:
        print(quality_tables(quality))


if __name__ == "__main__":
    main()
