"""Markdown tables of the HMM benchmark results (for docs/hmm.md), read from benchmarks/results/hmm_*.json.

python3 benchmarks/hmm_tables.py
"""

from __future__ import annotations

import argparse
import json

from latentlm.core.bench import RESULTS


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def throughput_table(data: dict) -> str:
    lines = [
        f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, {data['machine']['date']}; "
        f"best fp32 GEMM measured in the run: {data['gemm']['best_gflops']} GFLOP/s.",
        "",
        "| K | batch | method | tokens/s | GFLOP/s | / best GEMM | same-shape GEMM GFLOP/s | / same-shape | "
        "peak MiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        note = (
            row.get("skipped")
            or row.get("error")
            or (f"{row['sequences_timed']} sequences timed" if "sequences_timed" in row else "")
        )
        lines.append(
            f"| {row['K']} | {row['batch']} | {row['method']} | {_fmt(row.get('tokens_per_s'), 0)} | "
            f"{_fmt(row.get('gflops'), 2)} | {_fmt(row.get('fraction_of_gemm'), 3)} | "
            f"{_fmt(row.get('shape_gemm_gflops'), 1)} | {_fmt(row.get('fraction_of_shape_gemm'), 2)} | "
            f"{_fmt(row.get('peak_mib'), 0)} | {note} |"
        )
    lines += ["", "| K | peer | ours / peer (forward tokens/s, batch 64) |", "|---|---|---|"]
    for ratio in data.get("forward_speedup", []):
        lines.append(f"| {ratio['K']} | {ratio['peer']} | {ratio['ours_over_peer']:.1f}× |")
    return "\n".join(lines)


def matrix_table(data: dict) -> str:
    lines = [
        f"Machine: {data['machine']['cpu']}, {data['machine']['date']}. Corpus: {data['corpus']}.",
        "",
        "| cell | held-out ppl (final) | best | tokens | switch at | train s | LVD prep s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        lines.append(
            f"| {row['cell']} | {_fmt(row['heldout_ppl'])} | {_fmt(row['best_heldout_ppl'])} | "
            f"{row['tokens_seen']} | "
            f"{_fmt(row.get('switch_tokens'))} | {_fmt(row['train_seconds'])} | "
            f"{_fmt(row.get('lvd_prepare_seconds'))} |"
        )
    return "\n".join(lines)


def quality_table(data: dict) -> str:
    lines = [
        f"Machine: {data['machine']['cpu']}, {data['machine']['date']}; budget {data['setup']['budget']} "
        "training tokens per run.",
        "",
        "| corpus | K | method | held-out ppl | tokens seen | train s | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["results"]:
        note = row.get("error", "")
        if row["method"] == "hmmlearn_em" and "iterations" in row:
            note = f"{row['iterations']} iterations" + (" (time cap)" if row.get("capped") else "")
        if "count_estimate_ppl" in row:
            note = f"count estimate of the LVD states alone: {row['count_estimate_ppl']:.1f}"
        lines.append(
            f"| {row['corpus']} | {row['K']} | {row['method']} | {_fmt(row.get('heldout_ppl'))} | "
            f"{_fmt(row.get('tokens_seen'))} | {_fmt(row.get('train_seconds'))} | {note} |"
        )
    return "\n".join(lines)


def recipes_table(data: dict) -> str:
    lines = [
        f"Machine: {data['machine']['cpu']}, {data['machine']['date']}; {data['setup']}.",
        "",
        "| corpus | K | recipe | held-out ppl (best) | at epoch | final | epoch 0 | epochs | train s "
        "| LVD prep s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        lines.append(
            f"| {row['corpus']} | {row['K']} | {row['recipe']} | {_fmt(row['heldout_ppl'])} | "
            f"{_fmt(row['best_epoch'], 0)} | {_fmt(row['final_heldout_ppl'])} | "
            f"{_fmt(row.get('initial_ppl'))} | {_fmt(row['epochs'], 0)} | {_fmt(row['train_seconds'])} | "
            f"{_fmt(row.get('lvd_prepare_seconds'))} |"
        )
    lines += [
        "",
        "| cell | closed-form LVD → EM | best random init | gain | seconds to random AdamW's best |",
        "|---|---|---|---|---|",
    ]
    for cell, entry in data["summary"].items():
        times = ", ".join(
            f"{key.removeprefix('seconds_to_target_')}: {_fmt(value)}"
            for key, value in entry.items()
            if key.startswith("seconds_to_target_")
        )
        lines.append(
            f"| {cell} | {_fmt(entry.get('lvd_closed_form_em'))} | {_fmt(entry.get('best_random'))} | "
            f"{_fmt(entry.get('gain_percent'))} % | {times} |"
        )
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    for name, render in (
        ("hmm_recipes", recipes_table),
        ("hmm_throughput", throughput_table),
        ("hmm_matrix", matrix_table),
        ("hmm_throughput_adjacent", throughput_table),
        ("hmm_quality_tinyshakespeare", quality_table),
        ("hmm_quality_ptb", quality_table),
    ):
        data = _load(name)
        print(f"### {name}\n")
        print(render(data) if data else "_(not run)_")
        print()


if __name__ == "__main__":
    main()
