"""Sentence corpora, latent pre-computation and the training dataset (seed 002, "Data Pipeline").

``precompute_latents`` reads sentences (one a line, the Python docs' reStructuredText, or
Shakespeare's plays), tokenises them to fixed-length id rows closed by [SEP] and padded with [PAD],
and encodes them with a frozen sentence-transformers model.  It writes::

    <data.token_dir>/{train,val}.npy   int32 (N, seq_len)      + {train,val}.txt + meta.json
    <data.latent_dir>/{train,val}.npy  float32 (N, latent_dim) + meta.json (encoder, mean, std)

``DirectFileDataset`` reads those files (memory-mapped); with ``use_external_latents`` it returns the
latent standardised with the training-set mean/std, otherwise ``None``; ``collate_batch`` stacks a
batch and puts zeros (with ``has_latent=False``) where a latent is missing.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from latentlm.core.checkpoint import atomic_write_bytes, atomic_write_text, read_json, write_json
from latentlm.data.cache import check_ids
from latentlm.data.corpora import read_lines, read_text
from latentlm.data.paths import resolve_data_path
from latentlm.data.text import read_rst_paragraphs, split_sentences

__all__ = [
    "FORMAT_VERSION",
    "TokenMeta",
    "LatentMeta",
    "read_sentences",
    "tokenize_sentences",
    "encode_sentences",
    "load_sentence_encoder",
    "precompute_latents",
    "DirectFileDataset",
    "collate_batch",
    "read_token_meta",
    "read_latent_meta",
    "denormalize_latent",
    "CompactVocab",
]

FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class TokenMeta:
    """Contents of ``tokens/meta.json``."""

    tokenizer: str
    seq_len: int
    vocab_size: int
    mask_token_id: int
    pad_token_id: int
    sep_token_id: int
    num_train: int
    num_val: int
    unk_token_id: int = -1


@dataclass
class LatentMeta:
    """Contents of ``latents/meta.json`` (mean/std are per-dimension training-set statistics)."""

    encoder: str
    latent_dim: int
    mean: list[float]
    std: list[float]


def _shakespeare_paragraphs(text: str) -> list[str]:
    """Speeches of the plays without the speaker line ("NAME:")."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if lines and lines[0].endswith(":"):
            lines = lines[1:]
        if lines:
            paragraphs.append(" ".join(lines))
    return paragraphs


def read_sentences(
    path: str | Path, corpus_format: str, min_words: int = 5, max_words: int = 40
) -> list[str]:
    """Unique sentences of a corpus in file order.

    Args:
        path: a text file (``lines``, ``shakespeare``) or a folder of ``*.rst.txt`` files (``pydocs``).
        corpus_format: ``lines`` | ``pydocs`` | ``shakespeare``.
        min_words, max_words: inclusive word-count range of kept sentences.

    Returns:
        sentences (deduplicated, original order).
    """
    path = Path(path)
    if corpus_format == "lines":
        candidates = read_lines(path)
    elif corpus_format == "pydocs":
        if not path.is_dir():
            raise FileNotFoundError(f"corpus_format=pydocs needs a folder of .rst.txt files: {path}")
        files = sorted(path.rglob("*.rst.txt"))
        if not files:
            raise FileNotFoundError(f"no *.rst.txt files under {path}")
        candidates = [
            sentence
            for file in files
            for paragraph in read_rst_paragraphs(file)
            for sentence in split_sentences(paragraph)
        ]
    elif corpus_format == "shakespeare":
        candidates = [s for p in _shakespeare_paragraphs(read_text(path)) for s in split_sentences(p)]
    else:
        raise ValueError(f"corpus_format: must be lines, pydocs or shakespeare, got {corpus_format!r}")
    seen: set[str] = set()
    sentences = []
    for sentence in candidates:
        sentence = sentence.strip()
        if min_words <= len(sentence.split()) <= max_words and sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    if not sentences:
        raise ValueError(
            f"{path}: no sentences with {min_words}-{max_words} words (corpus_format={corpus_format})"
        )
    return sentences


def tokenize_sentences(tokenizer, sentences: list[str], seq_len: int) -> tuple[np.ndarray, int]:
    """Fixed-length id rows: word pieces, [SEP], then [PAD].

    Args:
        tokenizer: a Hugging Face tokenizer with ``sep_token_id``, ``pad_token_id`` and ``mask_token_id``.
        sentences: N texts.
        seq_len: row length L (including [SEP]).

    Returns:
        (ids int32 (N, L), number of truncated sentences).
    """
    for name in ("sep_token_id", "pad_token_id", "mask_token_id"):
        if getattr(tokenizer, name, None) is None:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no {name}")
    encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    ids = np.full((len(sentences), seq_len), tokenizer.pad_token_id, dtype=np.int32)
    truncated = 0
    for row, pieces in enumerate(encoded):
        if len(pieces) > seq_len - 1:
            truncated += 1
            pieces = pieces[: seq_len - 1]
        ids[row, : len(pieces)] = pieces
        ids[row, len(pieces)] = tokenizer.sep_token_id
    return ids, truncated


def load_sentence_encoder(name: str):
    """A frozen sentence-transformers model from an alias (``minilm``), a local path or a hub id."""
    from sentence_transformers import SentenceTransformer

    from latentlm.teachers import resolve_model

    source = resolve_model(name)
    model = SentenceTransformer(source.path, device="cpu", local_files_only=source.hub_id != source.path)
    model.eval()
    return model


@torch.no_grad()
def encode_sentences(encoder, sentences: list[str], batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings (N, d) float32 with the encoder's own pooling and normalisation."""
    return encoder.encode(
        sentences, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
    ).astype(np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def precompute_latents(
    cfg, token_dir: str | Path, latent_dir: str | Path, tokenizer=None, encoder=None
) -> dict[str, Path]:
    """Build the token and latent folders for ``DirectFileDataset``.

    Args:
        cfg: a ``PrepareConfig`` (``data.prepare``).
        token_dir, latent_dir: output folders (``data.token_dir``, ``data.latent_dir``).
        tokenizer: optional tokenizer (default: ``cfg.tokenizer`` or the encoder's tokenizer).
        encoder: optional sentence-transformers model (default: ``load_sentence_encoder(cfg.encoder)``).

    Returns:
        ``{"token_dir": ..., "latent_dir": ...}``.
    """
    if not cfg.corpus:
        raise ValueError("data.prepare.corpus: give the text source, e.g. data.prepare.corpus=sentences.txt")
    corpus = resolve_data_path(cfg.corpus, "data.prepare.corpus")
    sentences = read_sentences(corpus, cfg.corpus_format, cfg.min_words, cfg.max_words)
    random.Random(cfg.seed).shuffle(sentences)
    if cfg.max_sentences:
        sentences = sentences[: cfg.max_sentences]
    num_val = max(1, int(round(cfg.val_fraction * len(sentences))))
    if num_val >= len(sentences):
        raise ValueError(f"{cfg.corpus}: only {len(sentences)} sentences, too few to hold out {num_val}")
    splits = {"train": sentences[num_val:], "val": sentences[:num_val]}
    encoder = encoder if encoder is not None else load_sentence_encoder(cfg.encoder)
    if tokenizer is None:
        if cfg.tokenizer:
            from latentlm.teachers import load_tokenizer

            tokenizer = load_tokenizer(cfg.tokenizer)
        else:
            tokenizer = encoder.tokenizer
    token_dir, latent_dir = Path(token_dir), Path(latent_dir)
    made_by = prepare_settings(cfg)
    latents = {}
    truncated = 0
    for split, texts in splits.items():
        ids, cut = tokenize_sentences(tokenizer, texts, cfg.seq_len)
        truncated += cut
        _save_npy(token_dir / f"{split}.npy", ids)
        atomic_write_text(token_dir / f"{split}.txt", "\n".join(texts) + "\n")
        latents[split] = encode_sentences(encoder, texts, cfg.batch_size)
        _save_npy(latent_dir / f"{split}.npy", latents[split])
    write_json(
        token_dir / "meta.json",
        {
            "format_version": FORMAT_VERSION,
            "tokenizer": cfg.tokenizer or cfg.encoder,
            "seq_len": cfg.seq_len,
            "vocab_size": len(tokenizer),
            "mask_token_id": tokenizer.mask_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "unk_token_id": tokenizer.unk_token_id if tokenizer.unk_token_id is not None else -1,
            "num_train": len(splits["train"]),
            "num_val": len(splits["val"]),
            "num_truncated": truncated,
            "corpus": str(cfg.corpus),
            "corpus_format": cfg.corpus_format,
            "prepare": made_by,
        },
    )
    write_json(
        latent_dir / "meta.json",
        {
            "format_version": FORMAT_VERSION,
            "encoder": cfg.encoder,
            "latent_dim": int(latents["train"].shape[1]),
            "mean": latents["train"].mean(0).tolist(),
            "std": (latents["train"].std(0) + 1e-6).tolist(),
            "prepare": made_by,
        },
    )
    return {"token_dir": token_dir, "latent_dir": latent_dir}


def prepare_settings(cfg) -> dict:
    """The ``data.prepare`` fields that decide a prepared folder's contents (all but the encoder's
    batch size), as its ``meta.json`` records them."""
    return {k: v for k, v in vars(cfg).items() if k != "batch_size"}


def check_prepared(cfg, token_dir: str | Path, latent_dir: str | Path) -> None:
    """Refuse prepared folders that ``cfg`` (``data.prepare``) would not have made.

    Raises:
        ValueError: naming the ``meta.json`` (tokens or latents) and the first field whose recorded
            value differs. Folders written before the settings were recorded pass unchecked.
    """
    wanted = prepare_settings(cfg)
    for folder in (Path(token_dir), Path(latent_dir)):
        path = folder / "meta.json"
        made_by = read_json(path).get("prepare") if path.is_file() else None
        if made_by is None:
            continue
        for field, value in wanted.items():
            if field in made_by and made_by[field] != value:
                raise ValueError(
                    f"{path}: prepared with data.prepare.{field}={made_by[field]!r}, the config asks for "
                    f"{value!r}; give other data.token_dir/latent_dir folders or delete these to re-prepare"
                )


def _read_meta(folder: Path, kind: str) -> dict:
    path = folder / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: make the {kind} folder with `latentlm diffusion precompute-latents`"
        )
    meta = read_json(path)
    if meta.pop("format_version", None) != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format version (expected {FORMAT_VERSION})")
    return meta


def read_token_meta(token_dir: str | Path) -> TokenMeta:
    """Read ``tokens/meta.json`` (clear error naming the file)."""
    meta = _read_meta(Path(token_dir), "token")
    return TokenMeta(**{k: meta[k] for k in TokenMeta.__dataclass_fields__ if k in meta})


def read_latent_meta(latent_dir: str | Path) -> LatentMeta:
    """Read ``latents/meta.json`` (clear error naming the file)."""
    meta = _read_meta(Path(latent_dir), "latent")
    return LatentMeta(**{k: meta[k] for k in LatentMeta.__dataclass_fields__})


class DirectFileDataset(Dataset):
    """Token rows (and optionally standardised latents) straight from the pre-computed files.

    Items are dicts ``{"input_ids": LongTensor (L,), "latent": FloatTensor (d,) or None}``.
    """

    def __init__(
        self,
        token_dir: str | Path,
        latent_dir: str | Path | None,
        split: str = "train",
        use_external_latents: bool = True,
        max_examples: int = 0,
        id_map: np.ndarray | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.meta = read_token_meta(token_dir)
        token_file = Path(token_dir) / f"{split}.npy"
        if not token_file.is_file():
            raise FileNotFoundError(f"{token_file} not found")
        self.tokens = np.load(token_file, mmap_mode="r")
        if self.tokens.ndim != 2 or self.tokens.shape[1] != self.meta.seq_len:
            raise ValueError(f"{token_file}: expected (N, {self.meta.seq_len}) ids, got {self.tokens.shape}")
        check_ids(self.tokens, self.meta.vocab_size, token_file)
        self.id_map = None if id_map is None else torch.from_numpy(np.asarray(id_map, dtype=np.int64))
        self.use_external_latents = use_external_latents
        self.latents = None
        if use_external_latents:
            if latent_dir is None:
                raise ValueError("data.latent_dir: required when data.use_external_latents=true")
            self.latent_meta = read_latent_meta(latent_dir)
            latent_file = Path(latent_dir) / f"{split}.npy"
            if not latent_file.is_file():
                raise FileNotFoundError(f"{latent_file} not found")
            self.latents = np.load(latent_file, mmap_mode="r")
            if self.latents.shape != (self.tokens.shape[0], self.latent_meta.latent_dim):
                raise ValueError(
                    f"{latent_file}: shape {self.latents.shape} does not match {token_file} "
                    f"({self.tokens.shape[0]} rows) and latent_dim {self.latent_meta.latent_dim}"
                )
            finite = np.isfinite(self.latents).all(axis=1)
            if not finite.all():
                raise ValueError(
                    f"{latent_file}: {int((~finite).sum())} rows contain NaN or inf (first: row "
                    f"{int(np.argmin(finite))})"
                )
            self.mean = torch.tensor(self.latent_meta.mean)
            self.std = torch.tensor(self.latent_meta.std)
        self.length = self.tokens.shape[0] if not max_examples else min(max_examples, self.tokens.shape[0])
        text_file = Path(token_dir) / f"{split}.txt"
        self.texts_path = text_file if text_file.is_file() else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        ids = torch.from_numpy(np.array(self.tokens[index], dtype=np.int64))
        item = {"input_ids": ids if self.id_map is None else self.id_map[ids], "latent": None}
        if self.latents is not None:
            raw = torch.from_numpy(np.array(self.latents[index], dtype=np.float32))
            item["latent"] = (raw - self.mean) / self.std
        return item

    def texts(self) -> list[str]:
        """The original sentences of this split (from ``{split}.txt``)."""
        if self.texts_path is None:
            raise FileNotFoundError("this token folder has no sentence text files")
        return self.texts_path.read_text().splitlines()[: self.length]


@dataclass
class CompactVocab:
    """The tokenizer ids seen in the training sentences (+ the specials), renumbered 0..V'-1.

    ``original_ids[i]`` is the tokenizer id of compact id ``i``; ``id_map`` maps every tokenizer id to
    its compact id, unseen ones to the compact [UNK].
    """

    original_ids: np.ndarray
    id_map: np.ndarray

    @classmethod
    def build(cls, train_ids: np.ndarray, meta: TokenMeta) -> CompactVocab:
        specials = [meta.pad_token_id, meta.sep_token_id, meta.mask_token_id, meta.unk_token_id]
        if meta.unk_token_id < 0:
            raise ValueError(
                "data.compact_vocab: the token folder's meta.json has no unk_token_id (re-run "
                "precompute-latents)"
            )
        original = np.union1d(np.unique(np.asarray(train_ids)), np.array(specials, dtype=np.int64))
        if original[0] < 0 or original[-1] >= meta.vocab_size:  # sorted: the extremes suffice
            raise ValueError(f"data.compact_vocab: training ids out of range [0, {meta.vocab_size})")
        id_map = np.full(meta.vocab_size, -1, dtype=np.int64)
        id_map[original] = np.arange(len(original))
        id_map[id_map < 0] = id_map[meta.unk_token_id]
        return cls(original.astype(np.int64), id_map)

    def __len__(self) -> int:
        return len(self.original_ids)

    def compact_id(self, tokenizer_id: int) -> int:
        return int(self.id_map[tokenizer_id])

    def unknown_count(self, ids: np.ndarray, meta: TokenMeta) -> int:
        """Tokens of ``ids`` (tokenizer ids) mapped to [UNK] by this vocabulary (real [UNK]s excluded)."""
        ids = np.asarray(ids)
        return int(((self.id_map[ids] == self.id_map[meta.unk_token_id]) & (ids != meta.unk_token_id)).sum())


def collate_batch(items: list[dict], latent_dim: int) -> dict[str, torch.Tensor]:
    """Stack items; missing latents become zero rows flagged by ``has_latent`` = False.

    Returns:
        ``{"input_ids": (B, L) long, "latent": (B, d) float, "has_latent": (B,) bool}``.
    """
    ids = torch.stack([item["input_ids"] for item in items])
    latent = torch.zeros(len(items), latent_dim)
    has_latent = torch.zeros(len(items), dtype=torch.bool)
    for row, item in enumerate(items):
        if item["latent"] is not None:
            latent[row] = item["latent"]
            has_latent[row] = True
    return {"input_ids": ids, "latent": latent, "has_latent": has_latent}


def denormalize_latent(latent: torch.Tensor, meta: LatentMeta) -> torch.Tensor:
    """Undo the standardisation: back to the encoder's embedding space."""
    return latent * torch.tensor(meta.std, device=latent.device) + torch.tensor(
        meta.mean, device=latent.device
    )
