"""Tiny on-disk token/latent folders in the `precompute-latents` format (no model needed)."""

import io
import json

import numpy as np
import pytest

VOCAB, MASK, PAD, SEP, SEQ_LEN, LATENT_DIM = 20, 19, 0, 1, 8, 6


def _save(path, array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    path.write_bytes(buffer.getvalue())


@pytest.fixture
def tiny_data(tmp_path):
    """token_dir / latent_dir with 64 train and 16 val rows whose latent is a function of the tokens."""
    rng = np.random.default_rng(0)
    token_dir, latent_dir = tmp_path / "tokens", tmp_path / "latents"
    token_dir.mkdir()
    latent_dir.mkdir()
    projection = rng.normal(size=(VOCAB, LATENT_DIM)).astype(np.float32)
    counts = {}
    for split, n in (("train", 64), ("val", 16)):
        ids = np.full((n, SEQ_LEN), PAD, dtype=np.int32)
        for row in range(n):
            length = rng.integers(3, SEQ_LEN)
            ids[row, :length] = rng.integers(2, MASK, size=length)
            ids[row, length] = SEP
        latents = projection[ids].mean(1)
        _save(token_dir / f"{split}.npy", ids)
        _save(latent_dir / f"{split}.npy", latents.astype(np.float32))
        (token_dir / f"{split}.txt").write_text("\n".join(f"sentence {i}" for i in range(n)) + "\n")
        counts[split] = n
        if split == "train":
            mean, std = latents.mean(0), latents.std(0) + 1e-6
    meta = {
        "format_version": 1,
        "tokenizer": "fake",
        "seq_len": SEQ_LEN,
        "vocab_size": VOCAB,
        "mask_token_id": MASK,
        "pad_token_id": PAD,
        "sep_token_id": SEP,
        "unk_token_id": 2,
        "num_train": counts["train"],
        "num_val": counts["val"],
    }
    (token_dir / "meta.json").write_text(json.dumps(meta))
    (latent_dir / "meta.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "encoder": "fake",
                "latent_dim": LATENT_DIM,
                "mean": mean.tolist(),
                "std": std.tolist(),
            }
        )
    )
    return {"token_dir": str(token_dir), "latent_dir": str(latent_dir), "root": tmp_path}


@pytest.fixture
def tiny_overrides(tiny_data):
    """Dotted overrides for a tiny, fast run on `tiny_data`."""
    return [
        f"data.token_dir={tiny_data['token_dir']}",
        f"data.latent_dir={tiny_data['latent_dir']}",
        "batch_size=8",
        "model.d_model=16",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.num_latent_tokens=2",
        "model.decay_lora_rank=4",
        "model.wkv_chunk_size=4",
        "model.latent_encoder_hidden=16",
        "train.max_steps=3",
        "train.log_every=1",
        "eval.max_examples=8",
    ]
