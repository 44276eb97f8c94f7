"""LHT pretraining data: mixed document sources -> WordPiece chunks with gold token boundaries.

Sources (the Python docs, tiny-shakespeare, any Hugging Face dataset streamed by name) are drawn with
their configured probabilities (`interleave_documents`), split into training and held-out documents by
a stable hash of the document name, tokenized with the teacher's WordPiece tokenizer and cut into
chunks of at most `max_length` tokens. Each chunk keeps the token positions where gold sections,
paragraphs and sentences start (a chunk's first token is always one). Tokenized corpora are cached on
disk, keyed by a content hash of the source settings.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from latentlm.data.cache import cached_arrays, check_ids, content_hash
from latentlm.data.documents import (
    Document,
    interleave_documents,
    read_plain_documents,
    read_rst_documents,
    stream_hf_documents,
)
from latentlm.data.paths import resolve_data_path
from latentlm.lht.config import DataConfig, MaskingConfig, SourceConfig
from latentlm.lht.masking import mask_tokens

GOLD_KINDS = ("sentence", "paragraph", "section")


@dataclass
class Chunk:
    """A tokenized piece of one document.

    Attributes:
        ids: (n,) int64 WordPiece ids.
        gold: kind -> sorted token positions where a unit of that kind starts.
        category: the document's category (probe label).
        source: the document's name.
    """

    ids: np.ndarray
    gold: dict[str, list[int]]
    category: str
    source: str


def read_source(source: SourceConfig) -> Iterable[Document]:
    """The documents of one source (a list, or a stream for 'hf').

    Local files must be UTF-8 text: the readers of `latentlm.data` refuse anything else naming the file
    and the byte offset.
    """
    limit = source.limit or None
    if source.kind == "rst":
        docs = read_rst_documents(resolve_data_path(source.path, "data.sources.path"))
    elif source.kind == "plain":
        docs = read_plain_documents(
            resolve_data_path(source.path, "data.sources.path"), source.paragraphs_per_document
        )
    else:
        return stream_hf_documents(
            source.name, source.hf_config or None, source.split, source.text_field, limit=limit
        )
    return docs[:limit] if limit else docs


def is_heldout(document_name: str, fraction: float) -> bool:
    """Stable split: the first 8 hex digits of SHA-1(name), as a fraction of 2^32, below `fraction`."""
    value = int(hashlib.sha1(document_name.encode()).hexdigest()[:8], 16) / 2**32
    return value < fraction


def load_documents(config: DataConfig) -> list[Document]:
    """Draw the document mix of `config`."""
    sources = []
    for index, source in enumerate(config.sources):
        documents = read_source(source)
        if isinstance(documents, list):
            # Files are read in path order; shuffle so that `max_documents` draws a fair sample.
            documents = list(documents)
            random.Random(config.mix_seed * 1009 + index).shuffle(documents)
        sources.append(documents)
    limit = config.max_documents or None
    return interleave_documents(sources, [s.probability for s in config.sources], config.mix_seed, limit)


def tokenize_documents(documents: list[Document], tokenizer, max_length: int, min_length: int) -> list[Chunk]:
    """Tokenize, map gold character offsets to tokens and cut into chunks.

    A gold unit starts at the first token whose character span ends after the unit's first character.
    """
    chunks: list[Chunk] = []
    if not documents:
        return chunks
    encoded = tokenizer(
        [d.text for d in documents], add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    for doc, ids, offsets in zip(documents, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        if not ids:
            continue
        ends = np.array([end for _, end in offsets])
        gold_tokens = {}
        for kind in GOLD_KINDS:
            positions = np.searchsorted(ends, np.array(doc.starts(kind), dtype=np.int64), side="right")
            gold_tokens[kind] = np.unique(positions[positions < len(ids)])
        ids_array = np.asarray(ids, dtype=np.int64)
        for start in range(0, len(ids), max_length):
            stop = min(start + max_length, len(ids))
            if stop - start < min_length:
                continue
            gold = {}
            for kind, positions in gold_tokens.items():
                inside = positions[(positions >= start) & (positions < stop)] - start
                gold[kind] = sorted({0, *inside.tolist()})
            chunks.append(Chunk(ids_array[start:stop], gold, doc.category, doc.source))
    return chunks


def _pack(chunks: list[Chunk]) -> dict[str, np.ndarray]:
    arrays = {
        "ids": np.concatenate([c.ids for c in chunks]) if chunks else np.zeros(0, np.int64),
        "lengths": np.array([len(c.ids) for c in chunks], dtype=np.int64),
        "category": np.array([c.category for c in chunks], dtype=str),
        "source": np.array([c.source for c in chunks], dtype=str),
    }
    for kind in GOLD_KINDS:
        arrays[f"gold_{kind}"] = np.array([p for c in chunks for p in c.gold[kind]], dtype=np.int64)
        arrays[f"gold_{kind}_counts"] = np.array([len(c.gold[kind]) for c in chunks], dtype=np.int64)
    return arrays


def _unpack(arrays: dict[str, np.ndarray]) -> list[Chunk]:
    chunks = []
    id_offsets = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    gold_offsets = {k: np.concatenate([[0], np.cumsum(arrays[f"gold_{k}_counts"])]) for k in GOLD_KINDS}
    for i in range(len(arrays["lengths"])):
        gold = {
            k: arrays[f"gold_{k}"][gold_offsets[k][i] : gold_offsets[k][i + 1]].tolist() for k in GOLD_KINDS
        }
        ids = np.array(arrays["ids"][id_offsets[i] : id_offsets[i + 1]])
        chunks.append(Chunk(ids, gold, str(arrays["category"][i]), str(arrays["source"][i])))
    return chunks


@dataclass
class CorpusSplits:
    """Training and held-out chunks of a document mix."""

    train: list[Chunk]
    heldout: list[Chunk]


def _source_files(source) -> list[Path]:
    """The files of a local source (the file, or every file under the folder, in a stable order)."""
    path = resolve_data_path(source.path, "data.sources.path")
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def build_corpus(config: DataConfig, tokenizer) -> CorpusSplits:
    """Read, mix, split and tokenize the configured sources (cached by a hash of the settings and of
    the local sources' bytes, so an edited corpus file is a new entry)."""
    key = content_hash(
        "lht-corpus-v3",  # v3: gold spans from latentlm.data.text (the shared splitter and reST reader)
        [vars(s) for s in config.sources],
        config.tokenizer,
        config.max_length,
        config.min_length,
        config.heldout_fraction,
        config.max_documents,
        config.mix_seed,
        *[file for s in config.sources if s.kind != "hf" for file in _source_files(s)],  # their bytes
    )
    splits = {}

    def compute_all() -> dict[str, np.ndarray]:
        documents = load_documents(config)
        heldout = [d for d in documents if is_heldout(d.source, config.heldout_fraction)]
        train = [d for d in documents if not is_heldout(d.source, config.heldout_fraction)]
        out = {}
        for name, docs in (("train", train), ("heldout", heldout)):
            for array_name, array in _pack(
                tokenize_documents(docs, tokenizer, config.max_length, config.min_length)
            ).items():
                out[f"{name}.{array_name}"] = array
        return out

    arrays = cached_arrays(config.cache_dir, f"lht-{key}", compute_all)
    for name in ("train", "heldout"):
        entry = Path(config.cache_dir) / f"lht-{key}" / f"{name}.ids.npy"
        check_ids(arrays[f"{name}.ids"], len(tokenizer), entry)
        prefix = f"{name}."
        splits[name] = _unpack({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
    return CorpusSplits(splits["train"], splits["heldout"])


def carve_dev(corpus: CorpusSplits, fraction: float) -> CorpusSplits:
    """A dev split carved from the training chunks, for choosing settings without the held-out chunks.

    Documents go to dev by a stable hash of their name (salted, so the choice is independent of the
    held-out split); every chunk of a document stays on one side.

    Returns:
        `CorpusSplits(train=the remaining training chunks, heldout=the dev chunks)`; the held-out chunks
        of `corpus` are not used.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"dev fraction: must be in (0, 1), got {fraction}")
    dev = [c for c in corpus.train if is_heldout("dev:" + c.source, fraction)]
    rest = [c for c in corpus.train if not is_heldout("dev:" + c.source, fraction)]
    if not dev or not rest:
        raise ValueError(f"dev fraction: {fraction} leaves {len(dev)} dev and {len(rest)} training chunks")
    return CorpusSplits(rest, dev)


class ChunkDataset(Dataset):
    """Map-style dataset of chunks; items carry their index (masking is seeded by it)."""

    def __init__(self, chunks: list[Chunk]) -> None:
        if not chunks:
            raise ValueError("the document mix produced no chunks; check data.sources and data.min_length")
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict:
        return chunk_item(self.chunks[index], index)


def chunk_item(chunk: Chunk, index: int) -> dict:
    """What `pad_batch` collates: the chunk's ids, its gold unit starts and its index."""
    return {"index": index, "ids": chunk.ids, "gold": chunk.gold}


def pad_batch(items: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad chunks to the longest one.

    Returns:
        `input_ids` (B, N), `attention_mask` (B, N) bool and, when the items carry gold positions,
        `gold_<kind>` (B, N) bool flags of the tokens that start a gold unit of each kind.
    """
    length = max(len(item["ids"]) for item in items)
    ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
    valid = torch.zeros((len(items), length), dtype=torch.bool)
    for row, item in enumerate(items):
        ids[row, : len(item["ids"])] = torch.as_tensor(item["ids"])
        valid[row, : len(item["ids"])] = True
    batch = {"input_ids": ids, "attention_mask": valid}
    if all("gold" in item for item in items):
        for kind in GOLD_KINDS:
            flags = torch.zeros((len(items), length), dtype=torch.bool)
            for row, item in enumerate(items):
                flags[row, torch.as_tensor(item["gold"][kind], dtype=torch.long)] = True
            batch[f"gold_{kind}"] = flags
    return batch


def gold_level_flags(batch: dict[str, torch.Tensor], num_levels: int) -> list[torch.Tensor]:
    """Gold unit starts per level for the oracle (`hierarchy.boundaries: gold`), nested by construction.

    Level 1 starts at every sentence, paragraph or section start; level 2 at paragraph or section starts;
    level 3 and above at section starts. Returns one (B, N) bool tensor per level.
    """
    if "gold_sentence" not in batch:
        raise ValueError("model.hierarchy.boundaries: 'gold' needs batches with gold unit starts")
    section = batch["gold_section"]
    paragraph = batch["gold_paragraph"] | section
    sentence = batch["gold_sentence"] | paragraph
    return [(sentence, paragraph, section)[min(level, 2)] for level in range(num_levels)]


def masked_batch(
    batch: dict[str, torch.Tensor],
    mask_token_id: int,
    random_range: tuple[int, int],
    masking: MaskingConfig,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Apply BERT masking to a padded batch with a generator seeded by `seed` (adds `labels`)."""
    generator = torch.Generator().manual_seed(seed)
    masked, labels = mask_tokens(
        batch["input_ids"], batch["attention_mask"], mask_token_id, random_range, masking, generator
    )
    return {**batch, "input_ids": masked, "labels": labels}


def random_token_range(tokenizer) -> tuple[int, int]:
    """[low, high) ids of ordinary vocabulary tokens: after the last special or [unusedN] entry."""
    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    special = set(tokenizer.all_special_ids)
    low = 0
    for token, index in by_id:
        if index in special or (token.startswith("[") and token.endswith("]")):
            low = index + 1
        elif index > low + 1000:
            break
    return low, len(tokenizer)
