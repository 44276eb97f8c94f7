"""Print every results table of the README's systems (docs/<system>.md) from benchmarks/results/*.json.

No measuring here: each section reads the JSON files the benchmark scripts wrote and prints the
markdown tables that docs/hmm.md, docs/wire.md, docs/diffusion.md and docs/lht.md show (the README's
headline row for each system quotes these tables). A missing file prints "_(not run)_".

python3 benchmarks/tables.py                      # every system
python3 benchmarks/tables.py --system hmm --system lht
python3 benchmarks/tables.py --results path/to/results
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from latentlm.core.bench import RESULTS

NOT_RUN = "_(not run)_"


class Results:
    """The JSON files of one results folder, by name without `.json`."""

    def __init__(self, folder: Path):
        self.folder = folder

    def load(self, name: str) -> dict | None:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def glob(self, pattern: str) -> list[Path]:
        return sorted(self.folder.glob(pattern))


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


# --- hmm (docs/hmm.md) ------------------------------------------------------------------------------


def hmm_throughput(data: dict) -> str:
    lines = [
        f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, {data['machine']['date']}; "
        f"best fp32 GEMM measured in the run: {data['gemm']['best_gflops']} GFLOP/s.",
        "",
    ]
    paired = any("fraction_of_shape_gemm_paired" in row for row in data["rows"])  # runs with --pairs
    rows = []
    for row in data["rows"]:
        note = (
            row.get("skipped")
            or row.get("error")
            or (f"{row['sequences_timed']} sequences timed" if "sequences_timed" in row else "")
        )
        rows.append(
            [
                row["K"],
                row["batch"],
                row["method"],
                _num(row.get("tokens_per_s"), 0),
                _num(row.get("gflops"), 2),
                _num(row.get("fraction_of_gemm"), 3),
                _num(row.get("shape_gemm_gflops"), 1),
                _num(row.get("fraction_of_shape_gemm"), 2),
                *([_num(row.get("fraction_of_shape_gemm_paired"), 2)] if paired else []),
                _num(row.get("peak_mib"), 0),
                note,
            ]
        )
    header = ["K", "batch", "method", "tokens/s", "GFLOP/s", "/ best GEMM", "same-shape GEMM GFLOP/s"]
    header += ["/ same-shape", *(["/ same-shape, paired (median)"] if paired else [])]
    lines.append(markdown_table([*header, "peak MiB", "note"], rows))
    speedups = [[r["K"], r["peer"], f"{r['ours_over_peer']:.1f}×"] for r in data.get("forward_speedup", [])]
    if speedups:  # runs with --ours-only have no peers
        lines += ["", markdown_table(["K", "peer", "ours / peer (forward tokens/s, batch 64)"], speedups)]
    return "\n".join(lines)


def hmm_matrix(data: dict) -> str:
    rows = [
        [
            row["cell"],
            _num(row["heldout_ppl"]),
            _num(row["best_heldout_ppl"]),
            row["tokens_seen"],
            _num(row.get("switch_tokens")),
            _num(row["train_seconds"]),
            _num(row.get("lvd_prepare_seconds")),
        ]
        for row in data["rows"]
    ]
    header = ["cell", "held-out ppl (final)", "best", "tokens", "switch at", "train s", "LVD prep s"]
    return "\n".join(
        [
            f"Machine: {data['machine']['cpu']}, {data['machine']['date']}. Corpus: {data['corpus']}.",
            "",
            markdown_table(header, rows),
        ]
    )


def hmm_quality(data: dict) -> str:
    rows = []
    for row in data["results"]:
        note = row.get("error", "")
        if row["method"] == "hmmlearn_em" and "iterations" in row:
            note = f"{row['iterations']} iterations" + (" (time cap)" if row.get("capped") else "")
        if "count_estimate_ppl" in row:
            note = f"count estimate of the LVD states alone: {row['count_estimate_ppl']:.1f}"
        rows.append(
            [
                row["corpus"],
                row["K"],
                row["method"],
                _num(row.get("heldout_ppl")),
                _num(row.get("tokens_seen")),
                _num(row.get("train_seconds")),
                note,
            ]
        )
    header = ["corpus", "K", "method", "held-out ppl", "tokens seen", "train s", "note"]
    return "\n".join(
        [
            f"Machine: {data['machine']['cpu']}, {data['machine']['date']}; budget {data['setup']['budget']} "
            "training tokens per run.",
            "",
            markdown_table(header, rows),
        ]
    )


def _recipes_caption(data: dict) -> str:
    return f"Machine: {data['machine']['cpu']}, {data['machine']['date']}; {data['setup']}."


def hmm_recipes(data: dict) -> str:
    rows = [
        [
            row["corpus"],
            row["K"],
            row["recipe"],
            str(row.get("selection", {}).get("chosen", "–")),
            _num(row["heldout_ppl"]),
            _num(row.get("dev_ppl")),
            f"{_num(row['epochs'], 0)} / {_num(row.get('epochs_run'), 0)}",
            _num(row.get("initial_ppl")),
            _num(row["train_seconds"]),
            _num(row.get("lvd_prepare_seconds")),
        ]
        for row in data["rows"]
    ]
    header = ["corpus", "K", "recipe", "setting (dev)", "held-out ppl", "dev ppl", "epoch kept / run"]
    summary = []
    for cell, entry in data["summary"].items():
        times = ", ".join(
            f"{key.removeprefix('seconds_to_target_')}: {_num(value)}"
            for key, value in entry.items()
            if key.startswith("seconds_to_target_")
        )
        summary.append(
            [
                cell,
                _num(entry.get("lvd_closed_form_em")),
                f"{_num(entry.get('best_random'))} ({entry.get('best_random_recipe', '–')})",
                f"{_num(entry.get('gain_percent'))} %",
                times,
            ]
        )
    summary_header = ["cell", "closed-form LVD → EM", "best random init", "gain"]
    return "\n".join(
        [
            _recipes_caption(data),
            "",
            markdown_table([*header, "epoch 0", "train s", "LVD prep s"], rows),
            "",
            markdown_table([*summary_header, "seconds to random AdamW's held-out ppl"], summary),
        ]
    )


def hmm_teacher_probe(data: dict) -> str:
    """Every run of a probe file, the settings it replaced included (``earlier_rows``), by teacher."""
    rows = [
        [
            row["corpus"],
            row["K"],
            row["recipe"],
            row.get("teacher") or "–",
            str(row.get("selection", {}).get("chosen", "–")),
            _num(row.get("dev_ppl")),
            _num(row["heldout_ppl"]),
            _num(row["train_seconds"]),
        ]
        for row in [*data.get("earlier_rows", []), *data["rows"]]
    ]
    header = [
        "corpus",
        "K",
        "recipe",
        "teacher states",
        "setting (dev)",
        "dev ppl",
        "held-out ppl",
        "train s",
    ]
    return "\n".join(
        [
            _recipes_caption(data),
            "",
            markdown_table(header, rows),
        ]
    )


def hmm_section(results: Results) -> str:
    parts = []
    for name, render in (
        ("hmm_recipes", hmm_recipes),
        ("hmm_recipes_distilled1m_stepwise", hmm_recipes),
        ("hmm_recipes_stepwise", hmm_recipes),
        ("hmm_recipes_ptb_cadence", hmm_recipes),
        ("hmm_recipes_fullbatch", hmm_recipes),
        ("hmm_recipes_distilled6k", hmm_recipes),
        ("hmm_recipes_distilled1m_batch1024", hmm_recipes),
        ("hmm_recipes_ptb4096_by_length", hmm_recipes),
        ("hmm_recipes_ptb4096_by_length_b1024", hmm_recipes),
        ("hmm_recipes_distilled4096_by_length_b1024", hmm_recipes),
        ("hmm_recipes_ptb1024_by_length_b1024", hmm_recipes),
        ("hmm_recipes_ptb1024_by_length_b512", hmm_recipes),
        ("hmm_recipes_distilled1m_k4096", hmm_recipes),
        ("hmm_teacher_probe", hmm_teacher_probe),
        ("hmm_recipes_ptb4096_alpha", hmm_recipes),
        ("hmm_recipes_ptb1024_alpha", hmm_recipes),
        ("hmm_recipes_distilled4096_alpha", hmm_recipes),
        ("hmm_recipes_ptb1024_emission", hmm_recipes),
        ("hmm_throughput_current", hmm_throughput),
        ("hmm_throughput", hmm_throughput),
        ("hmm_matrix", hmm_matrix),
        ("hmm_throughput_adjacent", hmm_throughput),
        ("hmm_throughput_before_speedup", hmm_throughput),
        ("hmm_throughput_speed", hmm_throughput),
        ("hmm_throughput_xeon_before", hmm_throughput),
        ("hmm_throughput_xeon_after", hmm_throughput),
        ("hmm_throughput_xeon_before2", hmm_throughput),
        ("hmm_throughput_xeon_after2", hmm_throughput),
        ("hmm_quality_tinyshakespeare", hmm_quality),
        ("hmm_quality_ptb", hmm_quality),
    ):
        data = results.load(name)
        parts.append(f"### {name}\n\n{render(data) if data else NOT_RUN}\n")
    return "\n".join(parts)


# --- wire (docs/wire.md) ----------------------------------------------------------------------------


def _score(entry: dict | None, key: str, scale: float = 1.0) -> str:
    if not entry or entry.get(key) is None:
        return "–"
    return f"{entry[key] * scale:.1f}"


def wire_squad(files: list[Path]) -> str:
    """One row per (M, model); `wire_interlingua_modes_*` files add their modes to the rows of that M."""
    text: dict[str, dict] = {}
    extra: dict[tuple[str, str], dict] = {}
    runs = []
    for path in files:
        data = json.loads(path.read_text())
        for run_name, run in data["runs"].items():
            for model, m in run["models"].items():
                if "latent" not in m:  # a modes file
                    extra.setdefault((run_name, model), {}).update(m)
                    continue
                if m.get("text"):
                    text[model] = m["text"]
                runs.append((path.name, data["machine"], run_name, model, m, run))
    rows = []
    for _, _, run_name, model, m, _ in runs:
        t, budget, latent = text.get(model), m["token_budget"], m["latent"]
        modes = extra.get((run_name, model), {})
        rows.append(
            [
                run_name[1:],
                model,
                f"{_score(t, 'f1')} / {_score(t, 'em')}",
                f"{_score(budget, 'f1')} / {_score(budget, 'em')}",
                _score(modes.get("anchor_budget"), "f1"),
                _score(m.get("pca"), "f1"),
                _score(m.get("mean_pool"), "f1"),
                f"{_score(latent, 'f1')} / {_score(latent, 'em')}",
                _score(modes.get("latent_nearest"), "f1"),
                f"{_score(latent, 'first_top1', 100)} / {_score(latent, 'first_top5', 100)}",
                f"{latent['gold_nll']:.2f}",
                f"{m['prompt_tokens_mean']:.0f} / {m['token_compression_ratio']:.1f}x",
                f"{m['prefill']['speedup']:.2f}x",
            ]
        )
    header = [
        "M",
        "model",
        "text F1 / EM",
        "token-budget F1 / EM",
        "anchor-budget F1",
        "PCA F1",
        "mean-pool F1",
        "latent F1 / EM",
        "nearest-token latent F1",
        "latent first-tok top-1 / top-5 (%)",
        "latent gold NLL",
        "text tokens / M",
        "prefill speed-up",
    ]
    lines = [markdown_table(header, rows), ""]
    seen = set()
    for name, machine, run_name, _model, _m, run in runs:
        if (name, run_name) in seen:
            continue
        seen.add((name, run_name))
        compression = run["compression"]
        lines.append(
            f"- {name} ({run_name}): {run['num_dev_questions']} dev questions; "
            f"train {run['train_seconds']:.0f} s, "
            f"eval {run['eval_seconds']:.0f} s; latent {compression['latent_bytes']['fp16']} B at fp16 vs "
            f"{compression['prompt_utf8_bytes_mean']:.0f} B of UTF-8 prompt; joint rescoring "
            f"{run['joint_rescoring']}; {machine['cpu']}, {machine['cores']} cores, "
            f"{machine['torch_threads']} torch thread(s), {machine['date']}"
        )
    return "\n".join(lines)


WIRE_CONTEXT_METHODS = ("no_context", "token_budget", "anchor_budget", "external", "latent", "text")


def wire_context(data: dict) -> str:
    """One row per (compression, model): F1 / EM of every method at the same positions (text: all)."""
    cells: dict[tuple[int, str], dict[str, dict]] = {}
    for row in data["rows"]:
        cells.setdefault((row["compression"], row["model"]), {})[row["method"]] = row
    header = ["compression", "model", "questions", "positions"] + [
        f"{m} F1 / EM" for m in WIRE_CONTEXT_METHODS
    ]
    rows = []
    for (compression, model), methods in sorted(cells.items()):
        latent = methods.get("latent", {})
        rows.append(
            [f"{compression}x", model, latent.get("questions", "–"), _num(latent.get("positions"))]
            + [
                f"{_num(methods[m]['f1'])} / {_num(methods[m]['em'])}" if m in methods else "–"
                for m in WIRE_CONTEXT_METHODS
            ]
        )
    return f"{markdown_table(header, rows)}\n\n- budget: {data.get('reduced_budget', '–')}"


def wire_section(results: Results) -> str:
    parts = []
    for title, name in (
        ("context compression, anchor-span latent", "wire_context"),
        ("context compression at 4x, anchor-span latent trained 72 steps", "wire_context_4x_72steps"),
        ("context compression, span encoder from scratch", "wire_context_span"),
    ):
        data = results.load(name)
        parts.append(f"### {title} ({name})\n\n{wire_context(data) if data else NOT_RUN}\n")
    files = results.glob("wire_interlingua_*.json")
    parts.append(f"### wire_interlingua (SQuAD)\n\n{wire_squad(files) if files else NOT_RUN}\n")
    return "\n".join(parts)


# --- diffusion (docs/diffusion.md) ------------------------------------------------------------------


def _machine_line(m: dict) -> str:
    load = m.get("load_average_at_start")
    load = f", load {load[0]:.1f}" if load else ""
    threads = f"{m['torch_threads']} torch thread(s)"
    return f"{m['cpu']}, {m['cores']} cores, {threads}, torch {m['torch']}, {m['date']}{load}"


def _sig(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def diffusion_wkv(data: dict) -> str:
    rows = [
        [
            r["T"],
            r["pass"],
            r["chunk_size"],
            f"{r['naive_s']:.4f}",
            f"{r['chunked_s']:.4f}",
            f"{r['speedup']:.2f}x",
        ]
        for r in data["rows"]
    ]
    machine = _machine_line(data["machine"])
    head = f"**Chunked vs naive bidirectional WKV** ({data['description']}; {machine})\n\n"
    return head + markdown_table(["T", "pass", "chunk", "naive s", "chunked s", "speed-up"], rows)


def diffusion_quality(q: dict) -> str:
    parts = [f"**Quality** ({q['description']})\n"]
    rows = [
        ["L2T recall@1 (64 candidates)", _sig(q.get("l2t_recall_at_1")), ">= 0.5"],
        ["T2L recall@1 (64 candidates)", _sig(q.get("t2l_recall_at_1")), ">= 0.5"],
        ["T2L recall@1, posterior-mean estimate", _sig(q.get("t2l_recall_at_1_posterior_mean")), ""],
        ["L2T recall@1, likelihood (PMI)", _sig(q.get("l2t_recall_at_1_likelihood")), ""],
        ["T2L recall@1, likelihood (PMI)", _sig(q.get("t2l_recall_at_1_likelihood")), ""],
        ["gen. ppl, joint samples (matched entropy)", _sig(q.get("gen_ppl_joint"), 4), "<= 2x AR"],
        ["gen. ppl, AR baseline (matched entropy)", _sig(q.get("gen_ppl_ar"), 4), ""],
        *(
            [["gen. ppl, joint samples at temperature 1", _sig(q["gen_ppl_joint_temperature_1"], 4), ""]]
            if "gen_ppl_joint_temperature_1" in q
            else []
        ),
        [
            "gen. ppl, AR baseline's best held-out checkpoint",
            _sig(q.get("gen_ppl_ar_best_checkpoint"), 4),
            "",
        ],
        [
            "gen. ppl, Stage II prior samples (prior latent -> L2T)",
            _sig(q.get("gen_ppl_prior_stage2"), 4),
            "",
        ],
        ["gen. ppl, reference sentences", _sig(q.get("gen_ppl_reference"), 4), ""],
        *(
            [f"gen. ppl, first 12 words only: {name}", _sig(value, 4), ""]
            for name, value in q.get("gen_ppl_first_12_words", {}).items()
        ),
        [
            "Stage II KL at evaluation (nats/sentence; at eval.vae_latent_time)",
            _sig(q.get("kl_final"), 4),
            "",
        ],
        ["Stage II KL, maximum in training", _sig(q.get("kl_max_during_training"), 4), "finite, bounded"],
        ["Stage II VAE bound (nats/token)", _sig(q.get("vae_bound"), 4), "< text bound"],
        ["Stage II text-only bound (nats/token)", _sig(q.get("text_bound"), 4), ""],
    ]
    parts.append(markdown_table(["measure", "value", "target"], rows))
    if "gen_ppl_settings" in q:
        parts.append(f"\nGenerative perplexity settings: {json.dumps(q['gen_ppl_settings'])}\n")
    if "speed_rows" in q:
        parts.append(diffusion_speed(q))
    return "\n".join(parts)


def diffusion_speed(q: dict) -> str:
    """The RWKV vs attention rows of a diffusion_quality speed phase."""
    rows = [
        [
            r["T"],
            r["mode"],
            "yes" if r.get("compiled") else "no",
            r["batch_size"],
            f"{r['rwkv_tokens_per_s']:.0f}",
            f"{r['attention_tokens_per_s']:.0f}",
            f"{r['ratio_rwkv_over_attention']:.2f}",
        ]
        for r in q["speed_rows"]
    ]
    machine = q.get("phases", {}).get("speed", {}).get("machine")
    head = (
        f"\n**RWKV vs attention denoiser** ({json.dumps(q['speed_settings'])}"
        + (f"; {_machine_line(machine)}" if machine else "")
        + ")\n"
    )
    header = ["T", "mode", "torch.compile", "batch", "rwkv tok/s", "attention tok/s", "ratio"]
    return head + "\n" + markdown_table(header, rows)


def diffusion_section(results: Results) -> str:
    parts = []
    for name, render in (
        ("diffusion_wkv", diffusion_wkv),
        ("diffusion_quality", diffusion_quality),
        ("diffusion_quality_45min_b", diffusion_quality),
        ("diffusion_quality_45min_c", diffusion_quality),
        ("diffusion_speed_compiled", diffusion_speed),
        ("diffusion_quality_15min", diffusion_quality),
        ("diffusion_quality_3.5min", diffusion_quality),
        ("diffusion_quality_latent_first_cfg8", diffusion_quality),
    ):
        data = results.load(name)
        parts.append(f"### {name}\n\n{render(data) if data else NOT_RUN}\n")
    return "\n".join(parts)


# --- lht (docs/lht.md) ------------------------------------------------------------------------------


def lht_speed(data: dict) -> str:
    if data["rows"] and "backend" in data["rows"][0]:
        return lht_speed_backends(data)
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
    for r in data["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['length']} | {r['mode']} ({r['model']}) | not measured: {r['error'][:60]} |||||||"
            )
    return "\n".join(lines)


def lht_speed_backends(data: dict) -> str:
    """Training tokens/s of the LHT per attention backend against the dense encoder, same run."""
    details = {
        (d["kind"], d["backend"], d["length"], d.get("block_size")): d for d in data.get("details", [])
    }

    def number(value: float | None) -> str:
        return f"{value:,.0f}" if value else "–"

    rows = []
    for r in data["rows"]:
        lht, dense = r["lht_tokens_per_s"], r["dense_tokens_per_s"]
        detail = details.get(("lht", r["backend"], r["length"], r.get("block_size")), {})
        if not detail and r["backend"] == "sparse":  # older runs: one block size, not recorded per row
            detail = details.get(("lht", r["backend"], r["length"], None), {})
        density = detail.get("sparse_block_density")
        rows.append(
            [
                r["length"],
                f"{r['backend']}, {r['block_size']}-slot blocks" if "block_size" in r else r["backend"],
                number(dense),
                number(lht),
                f"{lht / dense:.2f}" if lht and dense else "–",
                f"{density:.3f}" if density is not None else "–",
                detail.get("error", "")[:60],
            ]
        )
    header = [
        "length",
        "LHT backend",
        "dense tok/s",
        "LHT tok/s",
        "LHT / dense",
        "key blocks gathered",
        "error",
    ]
    return markdown_table(header, rows)


def _mean_std(cell: dict, digits: int) -> str:
    if not cell or cell.get("mean") is None:
        return "–"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def lht_ablation(data: dict) -> str:
    """Mean ± std over seeds per variant, then the targets with their numbers."""
    rows = []
    for name, cell in data["summary"].items():
        rows.append(
            [
                name,
                cell["heldout_ppl"]["n"],
                _mean_std(cell["heldout_ppl"], 1),
                _mean_std(cell["f1_l1_sentences"], 3),
                _mean_std(cell["f1_l1_random"], 3),
                _mean_std(cell["l1_tokens_per_unit"], 1),
                _mean_std(cell["probe_accuracy"], 3),
            ]
        )
    header = [
        "variant",
        "seeds",
        "held-out ppl",
        "F1 L1 vs sentences",
        "F1 random, same rate",
        "tokens / L1 unit",
        "probe accuracy",
    ]
    text = markdown_table(header, rows)
    targets = data.get("targets") or {}
    if targets:
        lines = []
        for name, target in targets.items():
            numbers = ", ".join(f"{key} {value:.3f}" for key, value in target.items() if key != "met")
            lines.append(f"- {name}: {'met' if target['met'] else 'missed'} ({numbers})")
        text += "\n\n" + "\n".join(lines)
    return text


LHT_VARIANTS = [
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


def lht_quality(data: dict) -> str:
    lines = [
        "| variant | held-out ppl | ppl / dense | train tok/s | tokens/unit (levels) | "
        "F1 L1 vs sentences (random same rate) | F1 L2 vs paragraphs (random same rate) |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {name: index for index, name in enumerate(LHT_VARIANTS)}
    rows = sorted(data["rows"], key=lambda r: order.get(r["variant"], 99))

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


def lht_section(results: Results) -> str:
    parts = []
    for title, name, render in (
        ("speed", "lht_speed", lht_speed),
        ("ablation", "lht_ablation", lht_ablation),
        ("ablation, 1,000 steps", "lht_ablation_1000steps", lht_ablation),
        ("ablation, 2,000 steps", "lht_ablation_2000steps", lht_ablation),
        ("ablation, 2,000 steps, no same_unit edges", "lht_ablation_2000steps_no_same_unit", lht_ablation),
        ("ablation, 1,024-token chunks", "lht_ablation_1024tokens", lht_ablation),
        ("router candidates", "lht_routers", lht_ablation),
        ("quality", "lht_quality", lht_quality),
        ("quality, second seed", "lht_quality_seed1", lht_quality),
    ):
        data = results.load(name)
        parts.append(f"### {title} ({name})\n\n{render(data) if data else NOT_RUN}\n")
    return "\n".join(parts)


SECTIONS: dict[str, Callable[[Results], str]] = {
    "hmm": hmm_section,
    "wire": wire_section,
    "diffusion": diffusion_section,
    "lht": lht_section,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 benchmarks/tables.py",
        description="Print the markdown results tables of docs/<system>.md (quoted by the README) "
        "from the benchmark JSON files; nothing is measured.",
    )
    parser.add_argument(
        "--system",
        action="append",
        choices=list(SECTIONS),
        help="only this system (repeatable; default: all)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"--results: {args.results} is not a folder")
    for system in args.system or list(SECTIONS):
        print(f"## {system} (docs/{system}.md)\n")
        print(SECTIONS[system](Results(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
