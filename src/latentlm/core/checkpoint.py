"""Atomic file writes and safetensors/JSON helpers.

Everything the toolkit writes (configs, metrics snapshots, checkpoints, caches, reports) goes through
a temp file in the same directory followed by `os.replace`, so a crash never leaves a half-written
file behind. Tensors are stored as safetensors and metadata as JSON; nothing is unpickled from disk:
optimizer, scheduler and RNG states go through `save_state`, which splits them into `<name>.json`
(scalars and structure) and `<name>.safetensors` (tensors).

A saved folder (checkpoint, `model/`, cache entry) ends with `manifest.json`, written last: the size and
SHA-256 of every file in it. `verify_manifest` checks a folder against it and raises `DamagedFileError`
naming the first file that is missing, truncated or altered.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE_FORMAT_VERSION = 1


class DamagedFileError(ValueError):
    """A saved file is missing, truncated, altered or unreadable; the message starts with its path."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}") from err


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None):
    """Save tensors as safetensors, atomically. Shared storage is cloned (safetensors refuses aliases)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        flat = {k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}
        save_file(flat, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or garbled file raises `DamagedFileError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error type (and OSError) for a bad file
        raise DamagedFileError(path, f"not a readable safetensors file ({err})") from err


# ---------------------------------------------------------------------------------------------- manifests
def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Write `folder/manifest.json`: size and SHA-256 of every file below `folder` (hidden temp files and
    the manifest itself excepted). Call it after every other file of the folder is written."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != MANIFEST and not any(part.startswith(".") for part in path.parts[-1:]):
            files[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    write_json(folder / MANIFEST, {"format_version": FORMAT_VERSION, "files": files})
    return folder / MANIFEST


def verify_manifest(folder: str | Path, required: bool = True) -> bool:
    """Check every file listed in `folder/manifest.json` (existence, size, SHA-256).

    Returns:
        True when the folder matched its manifest; False when it has none and `required` is False.

    Raises:
        DamagedFileError: naming the manifest (missing, malformed) or the first file that does not match.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if required:
            raise DamagedFileError(
                manifest, "missing (an incomplete folder, or one written by an older latentlm)"
            )
        return False
    try:
        files = read_json(manifest)["files"]
        entries = [(rel, int(entry["size"]), str(entry["sha256"])) for rel, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DamagedFileError(manifest, f"malformed manifest ({err})") from err
    for rel, size, sha256 in entries:
        path = folder / rel
        if not path.is_file():
            raise DamagedFileError(path, f"missing (listed in {MANIFEST})")
        actual = path.stat().st_size
        if actual != size:
            raise DamagedFileError(
                path, f"damaged: {actual} bytes, {MANIFEST} says {size} (truncated or replaced)"
            )
        if file_sha256(path) != sha256:
            raise DamagedFileError(path, f"damaged: its content differs from {MANIFEST} (SHA-256 mismatch)")
    return True


# ---------------------------------------------------------------------------------------------- states
def save_state(obj: Any, folder: str | Path, name: str) -> None:
    """Save a nested state (optimizer/scheduler/RNG `state_dict`) as `name.json` plus, when it holds
    tensors, `name.safetensors`; no pickle. Tuples, int dict keys and numpy arrays survive the trip."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(obj, tensors)
    if tensors:
        save_tensors(tensors, folder / f"{name}.safetensors")
    write_json(folder / f"{name}.json", {"format_version": STATE_FORMAT_VERSION, "state": encoded})


def load_state(folder: str | Path, name: str) -> Any:
    """Inverse of `save_state`; a missing or unreadable part raises naming the file."""
    folder = Path(folder)
    path = folder / f"{name}.json"
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format_version") != STATE_FORMAT_VERSION:
        raise DamagedFileError(path, f"not a saved state of format {STATE_FORMAT_VERSION}")
    tensor_file = folder / f"{name}.safetensors"
    tensors = load_tensors(tensor_file) if tensor_file.is_file() else {}
    try:
        return _decode(meta["state"], tensors)
    except KeyError as err:
        raise DamagedFileError(tensor_file, f"tensor {err} referenced by {path.name} is missing") from err


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot save a {type(obj).__name__} in a state file")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _json_default(obj: Any):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
