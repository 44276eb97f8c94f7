"""On-disk caches for expensive artefacts (teacher embeddings, cluster ids, teacher logits).

An entry is a folder named by a content hash of everything that determines it (model name, corpus
bytes, settings), holding one `.npy` file per array plus `meta.json`. Arrays are read back memory-mapped,
so a cache larger than RAM is fine. Entries are written to a temp folder and renamed into place, so an
interrupted computation never leaves a half-written entry that would be mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from latentlm.core.checkpoint import write_json

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
    """Return the arrays stored under `key`, computing and storing them first if absent.

    Args:
        cache_dir: root folder of the cache.
        key: entry name, normally `content_hash(...)` of the inputs (a prefix like `"emb-"` is fine).
        compute: called only on a miss; returns named arrays.

    Returns:
        Named arrays, memory-mapped read-only from disk.
    """
    entry = Path(cache_dir) / key
    if not (entry / "meta.json").is_file():
        arrays = compute()
        tmp = entry.with_name(f".{entry.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        write_json(tmp / "meta.json", {"format_version": CACHE_FORMAT_VERSION, "arrays": sorted(arrays)})
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    meta = json.loads((entry / "meta.json").read_text())
    return {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}


def is_cached(cache_dir: str | Path, key: str) -> bool:
    return (Path(cache_dir) / key / "meta.json").is_file()
