"""`save_pretrained` / `from_pretrained` for modules built from a config dataclass.

A saved model is a self-describing folder: `config.json` (the model's config dataclass plus a format
version and the class name), `model.safetensors`, any files a model adds in `save_assets` (a vocabulary,
a tokenizer name) and, written last, `manifest.json` (size and SHA-256 of each file). It is what
transformers users expect, without the `PreTrainedModel` machinery. `from_pretrained` checks the folder
against its manifest first, so a damaged file is named instead of loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from latentlm.core.checkpoint import (
    FORMAT_VERSION,
    load_tensors,
    read_json,
    save_tensors,
    verify_manifest,
    write_json,
    write_manifest,
)
from latentlm.core.config import config_from_dict, config_to_dict


class PretrainedMixin:
    """Mixin for `nn.Module`s whose `__init__` takes one config dataclass stored as `self.config`."""

    config_class: ClassVar[type]

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        save_tensors(self.state_dict(), directory / "model.safetensors")
        write_json(
            directory / "config.json",
            {
                "format_version": FORMAT_VERSION,
                "class": type(self).__name__,
                "config": config_to_dict(self.config),
            },
        )
        self.save_assets(directory)
        write_manifest(directory)
        return directory

    def save_assets(self, directory: Path) -> None:
        """Write the files a model needs besides its weights and config (vocabulary, tokenizer name...).
        Called by `save_pretrained` before the manifest, so these files are verified on loading too."""

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> Any:
        directory = Path(directory)
        # Folders saved before manifests existed load unverified; a manifest, when present, must match.
        verify_manifest(directory, required=False)
        meta = read_json(directory / "config.json")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{directory / 'config.json'}: format_version {meta.get('format_version')!r} is not "
                f"supported (expected {FORMAT_VERSION})"
            )
        if meta.get("class") != cls.__name__:
            raise ValueError(f"{directory}: holds a {meta.get('class')}, not a {cls.__name__}")
        config = config_from_dict(cls.config_class, meta["config"], source=str(directory / "config.json"))
        model = cls(config)
        model.load_state_dict(load_tensors(directory / "model.safetensors"))
        return model.to(device)
