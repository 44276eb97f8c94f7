"""Print the markdown result tables of docs/lht.md from benchmarks/results/lht_*.json.

python benchmarks/lht_tables.py
"""

from __future__ import annotations

from latentlm.core.bench import RESULTS
from latentlm.core.checkpoint import read_json


def speed_table() -> str:
    data = read_json(RESULTS / "lht_speed.json")
    rows = {(r["model"], r["mode"], r["length"]): r for r in data["rows"] if "error" not in r}
    lines = [
        "| length | mode | dense tok/s | LHT tok/s | LHT / dense | dense peak RSS GB | LHT peak RSS GB "
        "| LHT slots | LHT 128-block density |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for length in data["config"]["lengths"]:
        for mode in ("train", "forward"):
            dense, lht = rows.get(("dense", mode, length)), rows.get(("lht", mode, length))
            if not dense or not lht:
                continue
            lines.append(
                f"| {length} | {mode} | {dense['tokens_per_s']:.0f} | {lht['tokens_per_s']:.0f} | "
                f"{lht['tokens_per_s'] / dense['tokens_per_s']:.2f} | {dense['peak_rss_gb']:.2f} | "
                f"{lht['peak_rss_gb']:.2f} | {lht['slots']} | {lht['block_density_128']:.3f} |"
            )
        flex = rows.get(("lht", "forward_flex", length))
        dense_mask = rows.get(("lht", "forward", length))
        if flex and dense_mask:
            lines.append(
                f"| {length} | forward, LHT flex (eager) | – | {flex['tokens_per_s']:.0f} | "
                f"{flex['tokens_per_s'] / dense_mask['tokens_per_s']:.2f} of LHT dense-mask | – | "
                f"{flex['peak_rss_gb']:.2f} | {flex['slots']} | {flex['block_density_128']:.3f} |"
            )
    errors = [r for r in data["rows"] if "error" in r]
    for r in errors:
        lines.append(
            f"| {r['length']} | {r['mode']} ({r['model']}) | not measured: {r['error'][:60]} |||||||"
        )
    return "\n".join(lines)


def quality_table() -> str:
    data = read_json(RESULTS / "lht_quality.json")
    lines = [
        "| variant | held-out ppl | ppl / dense | train tok/s | tokens/unit (levels) | "
        "F1 L1 vs sentences (random same rate) | F1 L2 vs paragraphs (random same rate) |",
        "|---|---|---|---|---|---|---|",
    ]
    order = [
        "dense",
        "lht_base",
        "lht_3_levels",
        "lht_4_levels",
        "lht_routers_early",
        "lht_routers_late",
        "lht_window_2",
        "lht_window_32",
        "lht_no_doc",
    ]
    rows = sorted(data["rows"], key=lambda r: order.index(r["variant"]) if r["variant"] in order else 99)

    def f1(row: dict, key: str) -> str:
        if key not in row:
            return "–"
        random = row[key].get("random_same_rate_f1")
        return f"{row[key]['f1']:.3f}" + (f" ({random:.3f})" if random is not None else "")

    for r in rows:
        units = ", ".join(f"{v:.1f}" for v in r.get("tokens_per_unit", {}).values()) or "–"
        ratio = r.get("perplexity_over_dense")
        ratio_text = f"{ratio:.2f}" if ratio is not None else "–"
        lines.append(
            f"| {r['variant']} | {r['heldout_perplexity']:.1f} | {ratio_text} | "
            f"{r['train_tokens_per_s']:.0f} | {units} | {f1(r, 'level1_vs_sentence')} | "
            f"{f1(r, 'level2_vs_paragraph')} |"
        )
    return "\n".join(lines)


def main() -> None:
    for name, table in (("speed", speed_table), ("quality", quality_table)):
        try:
            print(f"### {name}\n\n{table()}\n")
        except FileNotFoundError as err:
            print(f"### {name}\n\n(no results: {err})\n")


if __name__ == "__main__":
    main()
