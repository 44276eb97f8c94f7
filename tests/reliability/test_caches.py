"""Fault injection: every damaged cache entry is reported with its path and rebuilt, never read."""

import numpy as np
import pytest

from latentlm.data.cache import cached_arrays, check_ids, content_hash


class Counting:
    """A cache computation that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {"ids": np.arange(1000, dtype=np.int64) % 50, "emb": np.linspace(0, 1, 64).reshape(8, 8)}


def _flip(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x7F  # a token id changed in place: same size, other content
    path.write_bytes(bytes(data))


FAULTS = {
    "truncated_npy": lambda e: (e / "ids.npy").write_bytes((e / "ids.npy").read_bytes()[:300]),
    "npy_replaced_by_text": lambda e: (e / "ids.npy").write_text("this is not an array\n"),
    "flipped_ids": lambda e: _flip(e / "ids.npy"),
    "truncated_meta": lambda e: (e / "meta.json").write_text((e / "meta.json").read_text()[:10]),
    "missing_npy": lambda e: (e / "emb.npy").unlink(),
    "missing_meta": lambda e: (e / "meta.json").unlink(),
    "truncated_manifest": lambda e: (e / "manifest.json").write_text("{"),
}
NAMED = {
    "truncated_npy": "ids.npy",
    "npy_replaced_by_text": "ids.npy",
    "flipped_ids": "ids.npy",
    "truncated_meta": "meta.json",
    "missing_npy": "emb.npy",
    "missing_meta": "meta.json",
    "truncated_manifest": "manifest.json",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_damaged_entry_is_named_and_rebuilt(tmp_path, capsys, fault):
    compute = Counting()
    key = content_hash("ids", 1)
    expected = {k: np.array(v) for k, v in cached_arrays(tmp_path, key, compute).items()}
    FAULTS[fault](tmp_path / key)
    capsys.readouterr()
    again = cached_arrays(tmp_path, key, compute)
    err = capsys.readouterr().err
    assert compute.calls == 2
    assert f"damaged cache entry: {tmp_path / key / NAMED[fault]}" in err and "rebuilding" in err
    for name, value in expected.items():
        np.testing.assert_array_equal(again[name], value)
    # The rebuilt entry is intact: the next read computes nothing.
    cached_arrays(tmp_path, key, compute)
    assert compute.calls == 2


def _legacy_entry(tmp_path, key, compute):
    """An entry as older versions wrote it: .npy files and meta.json, no manifest."""
    cached_arrays(tmp_path, key, compute)
    (tmp_path / key / "manifest.json").unlink()


def test_entry_without_manifest_is_checked_and_adopted(tmp_path, capsys):
    compute, key = Counting(), "legacy"
    _legacy_entry(tmp_path, key, compute)
    arrays = cached_arrays(tmp_path, key, compute)
    assert compute.calls == 1 and "had no manifest" in capsys.readouterr().err
    assert (tmp_path / key / "manifest.json").is_file() and arrays["ids"][7] == 7


@pytest.mark.parametrize("fault", ["truncated_npy", "npy_replaced_by_text", "truncated_meta"])
def test_damaged_entry_without_manifest_is_rebuilt(tmp_path, capsys, fault):
    compute, key = Counting(), "legacy"
    _legacy_entry(tmp_path, key, compute)
    FAULTS[fault](tmp_path / key)
    arrays = cached_arrays(tmp_path, key, compute)
    assert compute.calls == 2 and str(tmp_path / key / NAMED[fault]) in capsys.readouterr().err
    assert arrays["ids"][7] == 7


def test_check_ids_names_the_file(tmp_path):
    check_ids(np.array([0, 3, 4]), 5, "ok.npy")
    with pytest.raises(
        ValueError, match=r"^ids.npy: 2 ids out of range \[0, 5\), the first 1509949818 at position 1"
    ):
        check_ids(np.array([0, 1509949818, 2, -1]), 5, "ids.npy")
    with pytest.raises(ValueError, match="must be integers"):
        check_ids(np.array([0.5]), 5, "ids.npy")
