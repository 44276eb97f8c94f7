"""benchmarks/tables.py renders the results tables from JSON (a hand-made results folder)."""

from __future__ import annotations

import json

from benchmarks import tables


def test_hmm_matrix_table_and_missing_files(tmp_path, capsys):
    matrix = {
        "machine": {"cpu": "CPU X", "date": "2026-01-01"},
        "corpus": "tiny",
        "rows": [
            {
                "cell": "dense/lvd",
                "heldout_ppl": 1234.56,
                "best_heldout_ppl": 99.0,
                "tokens_seen": 500,
                "switch_tokens": None,
                "train_seconds": 2.25,
            }
        ],
    }
    (tmp_path / "hmm_matrix.json").write_text(json.dumps(matrix))
    assert tables.main(["--system", "hmm", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "## hmm (docs/hmm.md)\n\n### hmm_recipes\n\n_(not run)_\n\n"
        "### hmm_recipes_distilled1m_stepwise\n\n_(not run)_\n\n"
        "### hmm_recipes_stepwise\n\n_(not run)_\n\n"
        "### hmm_recipes_ptb_cadence\n\n_(not run)_\n\n"
        "### hmm_recipes_fullbatch\n\n_(not run)_\n"
    )
    assert (
        "### hmm_matrix\n\n"
        "Machine: CPU X, 2026-01-01. Corpus: tiny.\n\n"
        "| cell | held-out ppl (final) | best | tokens | switch at | train s | LVD prep s |\n"
        "|---|---|---|---|---|---|---|\n"
        "| dense/lvd | 1,234.6 | 99.0 | 500 | – | 2.2 | – |\n"
    ) in out


def test_markdown_table():
    assert tables.markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"


def test_hmm_recipes_table_shows_the_dev_chosen_setting_and_epochs():
    data = {
        "machine": {"cpu": "CPU X", "date": "2026-01-01"},
        "setup": "s",
        "rows": [
            {
                "corpus": "ptb",
                "K": 4,
                "recipe": "random_em",
                "selection": {"chosen": "unigram:0.01"},
                "heldout_ppl": 250.04,
                "dev_ppl": 240.0,
                "epochs": 11.0,
                "epochs_run": 13.0,
                "initial_ppl": 5000.0,
                "train_seconds": 3.0,
                "lvd_prepare_seconds": 0.0,
            }
        ],
        "summary": {
            "ptb_K4": {
                "lvd_closed_form_em": 200.0,
                "best_random": 250.0,
                "best_random_recipe": "random_em",
                "gain_percent": 20.0,
                "seconds_to_target_random_em": 1.5,
            }
        },
    }
    out = tables.hmm_recipes(data)
    assert "| ptb | 4 | random_em | unigram:0.01 | 250.0 | 240.0 | 11 / 13 | 5,000.0 | 3.0 | 0.0 |" in out
    assert "| ptb_K4 | 200.0 | 250.0 (random_em) | 20.0 % | random_em: 1.5 |" in out


def test_wire_context_table_has_one_row_per_compression_and_model():
    rows = [
        {
            "compression": 4,
            "model": "m",
            "method": method,
            "f1": f1,
            "em": 1.0,
            "positions": 8.0,
            "questions": 3,
        }
        for method, f1 in (("latent", 20.0), ("anchor_budget", 12.5), ("text", 40.0))
    ]
    table = tables.wire_context({"rows": rows, "reduced_budget": "tiny"})
    assert "| 4x | m | 3 | 8.0 | – | – | 12.5 / 1.0 | – | 20.0 / 1.0 | 40.0 / 1.0 |" in table
    assert table.endswith("- budget: tiny")


def test_diffusion_quality_table_shows_both_recalls():
    quality = {
        "description": "d",
        "l2t_recall_at_1": 0.046875,
        "t2l_recall_at_1": 0.03125,
        "l2t_recall_at_1_likelihood": 0.5,
        "t2l_recall_at_1_likelihood": None,  # an older results file
    }
    out = tables.diffusion_quality(quality)
    assert "| L2T recall@1 (64 candidates) | 0.0469 | >= 0.5 |\n" in out
    assert "| T2L recall@1 (64 candidates) | 0.0312 | >= 0.5 |\n" in out
    assert "| L2T recall@1, likelihood (PMI) | 0.5 |  |\n" in out
    assert "| T2L recall@1, likelihood (PMI) | - |  |\n" in out
