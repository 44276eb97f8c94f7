"""Corpora for HMM language models: reading, splitting, vocabularies and flat id arrays.

A corpus is read as *units* (blank-line separated paragraphs of a plain-text file, or the non-empty
lines of a one-sentence-a-line file, or the rows of a Hugging Face dataset), split into a training
part and a held-out tail, tokenised, and cut into sequences of at most ``max_length`` tokens. The
final chunk of every unit ends with ``<eos>``, which the HMM predicts like any word.

Two tokenisations, chosen by ``CorpusConfig.tokenizer``:

* ``word``: words and punctuation (:func:`latentlm.data.corpora.word_tokenize`) with a frequency
  cut-off; rarer words become ``<unk>``. Each token remembers its surface form (with the space before
  it) so that the teacher can be run on the original text and its subwords pooled per word.
* ``teacher``: the teacher's own subword tokenizer. The HMM vocabulary is the compact set of teacher
  tokens seen in training (cut-off applied), plus ``<pad>``, ``<unk>``, ``<eos>``.

Sequences are stored flat: ``ids`` (all tokens, int32) and ``offsets`` (``n + 1`` int64), so the
``i``-th sequence is ``ids[offsets[i]:offsets[i + 1]]``; teacher embeddings and cluster ids are stored
in the same flat order and are looked up by sequence index.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentlm.data.corpora import EOS, PAD, UNK, WordVocab, read_lines, read_text, word_tokenize

FORMATS = ("text", "lines")
TOKENIZERS = ("word", "teacher")


@dataclass
class CorpusConfig:
    """Where the text comes from and how it becomes HMM tokens.

    Attributes:
        path: a text file, or ``hf:<dataset>[:<config>]`` for a Hugging Face dataset (rows = units).
        format: ``text`` (units are blank-line separated paragraphs) or ``lines`` (one unit a line).
        tokenizer: ``word`` (word vocabulary) or ``teacher`` (the LVD teacher's subword tokenizer).
        lowercase: lower-case words (word tokenizer only).
        min_count: tokens seen fewer times in training become ``<unk>``.
        max_vocab: keep at most this many tokens, specials included (0: no cap).
        max_length: sequences longer than this many tokens are cut into chunks.
        heldout_fraction: fraction of units at the end of the file kept for held-out perplexity.
        heldout_path: a separate held-out file instead (then ``heldout_fraction`` is ignored).
        max_train_units: use only the first N training units (0: all); for quick runs.
        hf_split: split of a Hugging Face dataset.
        hf_column: text column of a Hugging Face dataset.
    """

    path: str = ""
    format: str = "text"
    tokenizer: str = "word"
    lowercase: bool = False
    min_count: int = 1
    max_vocab: int = 0
    max_length: int = 64
    heldout_fraction: float = 0.1
    heldout_path: str = ""
    max_train_units: int = 0
    hf_split: str = "train"
    hf_column: str = "text"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"corpus.format: must be one of {FORMATS}, got {self.format!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"corpus.tokenizer: must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.min_count < 1:
            raise ValueError(f"corpus.min_count: must be >= 1, got {self.min_count}")
        if self.max_vocab < 0 or (0 < self.max_vocab < 4):
            raise ValueError(f"corpus.max_vocab: must be 0 (no cap) or >= 4, got {self.max_vocab}")
        if self.max_length < 2:
            raise ValueError(f"corpus.max_length: must be >= 2, got {self.max_length}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"corpus.heldout_fraction: must be in [0, 1), got {self.heldout_fraction}")


@dataclass
class SequenceSet:
    """Tokenised sequences, flat.

    Attributes:
        ids: ``(N,)`` int32 HMM token ids of all sequences, concatenated.
        offsets: ``(n + 1,)`` int64 sequence boundaries into ``ids``.
        pieces: per sequence, what the teacher sees at each position: the surface form of a word
            (with its leading space, word tokenizer) or a teacher token id (teacher tokenizer);
            ``None`` marks the ``<eos>`` position.
    """

    ids: np.ndarray
    offsets: np.ndarray
    pieces: list[list] = field(repr=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def sequence(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]


@dataclass
class Corpus:
    """A tokenised corpus: vocabulary (``<pad>``=0, ``<unk>``=1, ``<eos>``=2) and the two splits."""

    vocab: list[str]
    train: SequenceSet
    heldout: SequenceSet
    source: str

    @property
    def eos_id(self) -> int:
        return 2

    def describe(self) -> dict:
        return {
            "source": self.source,
            "vocab_size": len(self.vocab),
            "train_sequences": len(self.train),
            "train_tokens": self.train.num_tokens,
            "heldout_sequences": len(self.heldout),
            "heldout_tokens": self.heldout.num_tokens,
        }


def read_units(path: str, fmt: str, hf_split: str = "train", hf_column: str = "text") -> list[str]:
    """The units (paragraphs or lines) of a file or Hugging Face dataset; errors name the source."""
    if path.startswith("hf:"):
        from datasets import load_dataset

        name, _, config = path[3:].partition(":")
        rows = load_dataset(name, config or None, split=hf_split)[hf_column]
        units = [row.strip() for row in rows if row and row.strip()]
    elif fmt == "lines":
        units = read_lines(path)
    else:
        text = read_text(path)
        blocks = text.replace("\r\n", "\n").split("\n\n")
        units = [" ".join(block.split()) for block in blocks if block.strip()]
    if not units:
        raise ValueError(f"{path}: the corpus is empty")
    return units


_MARKUP = re.compile(r"(<[A-Za-z]+>)")


def _words(text: str) -> list[str]:
    # Angle-bracket markers already in a corpus (PTB's <unk>) stay one token.
    return [
        w
        for part in _MARKUP.split(text)
        for w in ([part] if _MARKUP.fullmatch(part) else word_tokenize(part))
    ]


def surface_words(text: str, lowercase: bool) -> list[str]:
    """Words of ``text`` as surface forms: ``" word"`` when a space precedes it in the text."""
    pieces, position = [], 0
    for word in _words(text):
        found = text.find(word, position)
        spaced = found > 0 and text[found - 1].isspace()
        position = found + len(word)
        surface = word if _MARKUP.fullmatch(word) or not lowercase else word.lower()
        pieces.append((" " if spaced and pieces else "") + surface)
    return pieces


def _chunks(items: list, max_length: int, add_eos: bool) -> list[list]:
    """Cut a unit into chunks of ``max_length`` positions; the last one ends with ``None`` (EOS)."""
    items = list(items) + ([None] if add_eos else [])
    return [items[i : i + max_length] for i in range(0, len(items), max_length)]


def _encode(chunks: list[list], lookup: dict, unk_id: int, eos_id: int) -> SequenceSet:
    lengths = [len(chunk) for chunk in chunks]
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(
        (eos_id if piece is None else lookup.get(_key(piece), unk_id) for chunk in chunks for piece in chunk),
        dtype=np.int32,
        count=int(offsets[-1]),
    )
    return SequenceSet(ids=ids, offsets=offsets, pieces=chunks)


def _key(piece) -> str | int:
    return piece.strip() if isinstance(piece, str) else piece


def build_corpus(cfg: CorpusConfig, teacher_tokenizer=None) -> Corpus:
    """Read, split and tokenise a corpus.

    Args:
        cfg: the corpus settings.
        teacher_tokenizer: the teacher's tokenizer; required when ``cfg.tokenizer == "teacher"``.

    Raises:
        ValueError: empty corpus (or empty split), missing ``corpus.path`` or tokenizer.
    """
    if not cfg.path:
        raise ValueError("corpus.path: no corpus given (a text file or hf:<dataset>)")
    units = read_units(cfg.path, cfg.format, cfg.hf_split, cfg.hf_column)
    if cfg.heldout_path:
        train_units, heldout_units = units, read_units(cfg.heldout_path, cfg.format)
    else:
        cut = len(units) - math.ceil(len(units) * cfg.heldout_fraction)
        train_units, heldout_units = units[:cut], units[cut:]
    if cfg.max_train_units:
        train_units = train_units[: cfg.max_train_units]
    if not train_units:
        raise ValueError(f"{cfg.path}: no training text left after the held-out split")

    if cfg.tokenizer == "word":

        def split(unit: str) -> list:
            return surface_words(unit, cfg.lowercase)
    else:
        if teacher_tokenizer is None:
            raise ValueError("corpus.tokenizer: 'teacher' needs the teacher's tokenizer (lvd.teacher.name)")

        def split(unit: str) -> list:
            return list(teacher_tokenizer(unit, add_special_tokens=False)["input_ids"])

    train_chunks = [c for unit in train_units for c in _chunks(split(unit), cfg.max_length, True)]
    heldout_chunks = [c for unit in heldout_units for c in _chunks(split(unit), cfg.max_length, True)]
    counts = Counter(_key(p) for chunk in train_chunks for p in chunk if p is not None)
    for special in (PAD, UNK, EOS):  # a literal <unk> in the text maps to the vocabulary's <unk>
        counts.pop(special, None)
    if not counts:
        raise ValueError(f"{cfg.path}: the training split holds no tokens")
    kept = [k for k, c in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))) if c >= cfg.min_count]
    if cfg.max_vocab:
        kept = kept[: cfg.max_vocab - 3]
    if cfg.tokenizer == "word":
        vocab = WordVocab([PAD, UNK, EOS, *kept]).itos
    else:
        vocab = [PAD, UNK, EOS, *teacher_tokenizer.convert_ids_to_tokens(kept)]
    lookup = {k: i + 3 for i, k in enumerate(kept)}
    return Corpus(
        vocab=vocab,
        train=_encode(train_chunks, lookup, 1, 2),
        heldout=_encode(heldout_chunks, lookup, 1, 2),
        source=str(cfg.path if cfg.path.startswith("hf:") else Path(cfg.path)),
    )
