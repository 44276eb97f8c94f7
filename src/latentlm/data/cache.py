"""On-disk caches for expensive artefacts (teacher embeddings, cluster ids, teacher logits).

An entry is a folder named by a content hash of everything that determines it (model name, corpus
bytes, settings), holding one `.npy` file per array, `meta.json` and, written last, `manifest.json` (size
and SHA-256 of each file). Entries are written to a temp folder and renamed into place, so an interrupted
computation never leaves a half-written entry. Every read first checks the entry against its manifest: a
damaged entry (truncated or replaced file, flipped bytes, missing file) is reported on stderr with its
path and rebuilt, never read. Arrays are then read back memory-mapped, so a cache larger than RAM is fine.

Token or state ids read from anywhere (a cache, a tokenized file) go through `check_ids` before use, so an
out-of-range id is an error naming the file instead of an index error in the middle of training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from latentlm.core.checkpoint import (
    MANIFEST,
    DamagedFileError,
    read_json,
    verify_manifest,
    write_json,
    write_manifest,
)

CACHE_FORMAT_VERSION = 1


def content_hash(*parts: Any) -> str:
    """SHA-256 (first 16 hex digits) of JSON-able parts; a `Path` part contributes its file's bytes."""
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}".encode())
    for part in parts:
        if isinstance(part, Path):
            digest.update(b"file:")
            with part.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cached_arrays(
    cache_dir: str | Path, key: str, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Return the arrays stored under `key`, computing and storing them first if absent or damaged.

    Args:
        cache_dir: root folder of the cache.
        key: entry name, normally `content_hash(...)` of the inputs (a prefix like `"emb-"` is fine).
        compute: called on a miss or a damaged entry; returns named arrays.

    Returns:
        Named arrays, memory-mapped read-only from disk.
    """
    entry = Path(cache_dir) / key
    if entry.exists():
        try:
            return _read_entry(entry)
        except DamagedFileError as err:
            print(f"warning: damaged cache entry: {err}; rebuilding {entry}", file=sys.stderr)
    arrays = compute()
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
    write_json(tmp / "meta.json", {"format_version": CACHE_FORMAT_VERSION, "arrays": sorted(arrays)})
    write_manifest(tmp)
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)
    return _read_entry(entry)


def is_cached(cache_dir: str | Path, key: str) -> bool:
    """Whether an entry exists (it is still verified when read)."""
    entry = Path(cache_dir) / key
    return (entry / MANIFEST).is_file() or (entry / "meta.json").is_file()


def check_ids(ids: np.ndarray, vocab_size: int, path: str | Path) -> None:
    """Raise ValueError naming `path` unless every id is an integer in [0, vocab_size).

    Call it on token/state ids read from a file or cache before they index an embedding table.
    """
    array = np.asarray(ids)
    if array.size == 0:
        return
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: ids must be integers, got dtype {array.dtype}")
    flat = array.reshape(-1)  # (N,)
    if flat.min() >= 0 and flat.max() < vocab_size:
        return
    bad = np.flatnonzero((flat < 0) | (flat >= vocab_size))
    raise ValueError(
        f"{path}: {bad.size} ids out of range [0, {vocab_size}), the first {int(flat[bad[0]])} at position "
        f"{int(bad[0])} (a damaged file, or one made with another vocabulary)"
    )


def _read_entry(entry: Path) -> dict[str, np.ndarray]:
    """The arrays of a cache entry after checking it; raises `DamagedFileError` naming the bad file."""
    adopted = not (entry / MANIFEST).is_file()
    if not adopted:
        verify_manifest(entry)
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        raise DamagedFileError(meta_path, "missing (an incomplete cache entry)")
    try:
        names = [str(name) for name in read_json(meta_path)["arrays"]]
    except (ValueError, KeyError, TypeError) as err:
        raise DamagedFileError(meta_path, f"malformed cache metadata ({err})") from err
    arrays = {}
    for name in names:
        path = entry / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DamagedFileError(path, f"not a readable .npy array ({err})") from err
    if adopted:
        # An entry written before manifests existed: its structure was checked above (a truncated or
        # replaced file does not load); from now on its bytes are checked too.
        write_manifest(entry)
        print(
            f"note: cache entry {entry} had no manifest (older latentlm); checked and added one",
            file=sys.stderr,
        )
    return arrays
