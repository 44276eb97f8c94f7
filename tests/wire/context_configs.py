"""The tiny two-model context-scope config the wire context tests share (tiny.yaml + overrides)."""

from __future__ import annotations

from pathlib import Path

from latentlm.core.config import load_config
from latentlm.wire.config import WireRunConfig

REPO = Path(__file__).resolve().parents[2]


def context_cfg(run_dir: Path, extra: tuple[str, ...] = ()) -> WireRunConfig:
    """tiny.yaml with tiny_llama + tiny_qwen, context scope at 4x, span encoder; `extra` overrides win."""
    return load_config(
        WireRunConfig,
        REPO / "configs" / "wire" / "tiny.yaml",
        [
            f"run_dir={run_dir}",
            "models=[tiny_llama,tiny_qwen]",
            "latent.scope=context",
            "encoder.kind=span",
            "latent.ratio=4",
            "latent.length=16",
            "latent.private_length=0",
            "loss.kd=0",
            "loss.autoencode=1.0",
            "loss.autoencode_tokens=24",
            "loss.autoencode_only_steps=2",
            "grad_diag_every=0",
            "eval.external_scorer=tiny_llama",
            f"data.cache_dir={run_dir}/cache",
            *extra,
        ],
    )
