"""The ablation's mean ± std, its target decisions and the tables rendering, on hand-made rows."""

from __future__ import annotations

import pytest
from benchmarks import tables
from benchmarks.lht_ablation import VARIANTS, kept_rows, summarize, targets


def rows_and_extras():
    ppl = {
        "learned": [100.0, 104.0],
        "random": [110.0, 112.0],
        "stride": [103.0, 105.0],
        "gold": [101.0, 103.0],
    }
    ppl["sliding_window"] = [120.0, 122.0]
    rows, extras = [], []
    for name, values in ppl.items():
        for seed, value in enumerate(values):
            f1 = None if name == "sliding_window" else 0.3 + 0.1 * seed
            rows.append(
                {
                    "variant": name,
                    "seed": seed,
                    "heldout_ppl": value,
                    "f1_l1_sentences": f1,
                    "f1_l1_random": 0.1,
                }
            )
            extra = {"variant": name, "seed": seed, "probe_accuracy": 0.5}
            if f1 is not None:
                extra["tokens_per_unit"] = [25.0, 100.0]
            extras.append(extra)
    return rows, extras


def test_summary_is_mean_and_sample_std():
    summary = summarize(*rows_and_extras())
    assert summary["learned"]["heldout_ppl"]["mean"] == pytest.approx(102.0)
    assert summary["learned"]["heldout_ppl"]["std"] == pytest.approx(2.0**0.5 * 2.0)  # stdev of (100, 104)
    assert summary["sliding_window"]["f1_l1_sentences"]["n"] == 0
    assert summary["gold"]["l1_tokens_per_unit"]["mean"] == 25.0


def test_targets_use_the_seed_spread():
    rows, extras = rows_and_extras()
    result = targets(summarize(rows, extras), rows)
    spread = 2.0**0.5 * 2.0
    random = result["learned_beats_random_beyond_spread"]
    assert {k: random[k] for k in ("met", "gap", "spread")} == {"met": True, "gap": 9.0, "spread": spread}
    # Seed by seed: random - learned = 10 and 8.
    assert random["paired_gap"] == 9.0 and random["paired_std"] == pytest.approx(2.0**0.5)
    assert random["paired_wins"] == 2
    assert result["learned_beats_stride_beyond_spread"]["met"] is False  # gap 2 < spread 2.83
    assert result["learned_within_spread_of_gold"]["met"] is True
    assert result["learned_ppl_le_sliding_window"]["met"] is True
    assert result["f1_l1_at_least_2x_random"]["ratio"] == pytest.approx(3.5)


def test_ablation_table_renders_every_variant():
    rows, extras = rows_and_extras()
    summary = summarize(rows, extras)
    text = tables.lht_ablation({"summary": summary, "targets": targets(summary)})
    assert "| learned | 2 | 102.0 ± 2.8 |" in text
    assert "- learned_beats_random_beyond_spread: met" in text


def test_kept_rows_rerun_every_variant_the_router_choice_changes():
    smooth = ["model.hierarchy.smoothing=3"]
    saved = {
        "steps": 500,
        "overrides": {name: [*VARIANTS[name], *smooth] for name in VARIANTS},
        "rows": [{"variant": name, "seed": 0} for name in VARIANTS],
        "details": [{"variant": name, "seed": 0} for name in VARIANTS],
        "machine": {"command": "c", "date": "d", "git_commit": "g"},
    }
    # A learned-only setting changes: only `learned` itself is re-run.
    kept = kept_rows(["learned"], 500, ["model.hierarchy.selection=top_k"], saved)
    assert kept["from"]["variants"] == ["dense", "sliding_window", "random", "stride", "gold"]
    assert [r["variant"] for r in kept["rows"]] == kept["from"]["variants"]
    # Router layers move every hierarchical variant: only dense and the sliding window are kept.
    kept = kept_rows(["learned"], 500, ["model.hierarchy.router_layers=[2,3]"], saved)
    assert kept["from"]["variants"] == ["dense", "sliding_window"]
    with pytest.raises(SystemExit, match="500"):
        kept_rows(["learned"], 150, smooth, saved)
