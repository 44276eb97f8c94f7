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
        "## hmm (docs/hmm.md)\n\n### hmm_recipes\n\n_(not run)_\n\n### hmm_throughput\n\n_(not run)_\n"
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
