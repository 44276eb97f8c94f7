"""Data paths resolve the same way in every system: as given when they exist, else under $LATENTLM_DATA."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentlm.data import paths
from latentlm.data.paths import resolve_data_path


def test_resolve_data_path(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "ptb").mkdir(parents=True)
    (root / "ptb" / "train.txt").write_text("x")
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "local.txt").write_text("y")
    monkeypatch.chdir(here)
    monkeypatch.setenv("LATENTLM_DATA", str(root))
    assert resolve_data_path("local.txt") == Path("local.txt")
    assert resolve_data_path("ptb/train.txt") == root / "ptb" / "train.txt"
    assert resolve_data_path(root / "ptb") == root / "ptb"
    with pytest.raises(FileNotFoundError) as err:
        resolve_data_path("ptb/valid.txt", "corpus.path")
    assert str(err.value) == f"corpus.path: ptb/valid.txt does not exist here nor under LATENTLM_DATA={root}"
    with pytest.raises(FileNotFoundError) as err:
        resolve_data_path(tmp_path / "gone.txt", "data.path")
    assert str(err.value) == f"data.path: {tmp_path / 'gone.txt'} does not exist"
    monkeypatch.delenv("LATENTLM_DATA")
    monkeypatch.setattr(paths, "CHECKOUT_DATA", root)  # unset: `../shared/data` beside the checkout
    assert resolve_data_path("ptb/train.txt") == root / "ptb" / "train.txt"
    monkeypatch.setattr(paths, "CHECKOUT_DATA", tmp_path / "no-checkout-data")
    with pytest.raises(FileNotFoundError) as err:
        resolve_data_path("ptb/train.txt", "corpus.path")
    assert str(err.value) == (
        "corpus.path: ptb/train.txt does not exist here and LATENTLM_DATA is not set to look it up"
    )
