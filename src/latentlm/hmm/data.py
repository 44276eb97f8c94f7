"""Corpora for HMM language models: reading, splitting, vocabularies, flat id arrays and batches.

A corpus is read as *units* (blank-line separated paragraphs of a plain-text file, or the non-empty
lines of a one-sentence-a-line file, or the rows of a Hugging Face dataset), split into a training
part and a held-out tail, tokenised, and cut into sequences of at most ``max_length`` tokens. The
final chunk of every unit ends with ``<eos>``, which the HMM predicts like any word.

Three tokenisations, chosen by ``data.tokenizer``:

* ``word``: words and punctuation (:func:`latentlm.data.corpora.word_tokenize`) with a frequency
  cut-off; rarer words become ``<unk>``. Each token remembers its surface form (with the space before
  it) so that the teacher can be run on the original text and its subwords pooled per word.
* ``whitespace``: the text is already tokenised (PTB): tokens are the whitespace-separated strings, so
  perplexity is per standard token (PTB's ``'s``, ``mr.`` and hyphenated words stay one token).
* ``teacher``: the teacher's own subword tokenizer. The HMM vocabulary is the compact set of teacher
  tokens seen in training (cut-off applied), plus ``<pad>``, ``<unk>``, ``<eos>``.

The vocabulary with its tokenisation settings is a :class:`Vocabulary`, saved inside the model folder,
so a trained model encodes new text (and a finished run is evaluated on any file) without the
training corpus. Sequences are stored flat: ``ids`` (int32) and ``offsets`` (``n + 1`` int64), so the
``i``-th sequence is ``ids[offsets[i]:offsets[i + 1]]``; teacher embeddings and cluster ids are stored
in the same flat order and are looked up by sequence index.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from latentlm.core.checkpoint import read_json, write_json
from latentlm.data.corpora import EOS, PAD, UNK, read_lines, read_text, word_tokenize
from latentlm.hmm.config import DataConfig

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
VOCAB_FILE = "vocab.json"


def resolve_path(path: str, field_name: str = "data.path") -> str:
    """An existing path (or ``hf:`` name) as given, else the same relative path under ``$LATENTLM_DATA``."""
    if not path or path.startswith("hf:"):
        return path
    candidate = Path(path).expanduser()
    if candidate.exists() or candidate.is_absolute():
        return str(candidate)
    root = os.environ.get("LATENTLM_DATA")
    if root and (Path(root) / path).exists():
        return str(Path(root) / path)
    raise FileNotFoundError(
        f"{field_name}: {path!r} is neither a file here nor under $LATENTLM_DATA ({root or 'not set'})"
    )


@dataclass
class SequenceSet:
    """Tokenised sequences, flat.

    Attributes:
        ids: ``(N,)`` int32 HMM token ids of all sequences, concatenated.
        offsets: ``(n + 1,)`` int64 sequence boundaries into ``ids``.
        pieces: per sequence, what the teacher sees at each position: the surface form of a word
            (with its leading space, word/whitespace tokenizer) or a teacher token id (teacher
            tokenizer); ``None`` marks the ``<eos>`` position.
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

    def unk_rate(self) -> float:
        return float((self.ids == UNK_ID).mean()) if self.num_tokens else 0.0


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


def whitespace_words(text: str, lowercase: bool) -> list[str]:
    """Whitespace-separated tokens as surface forms (every token but the first has a leading space)."""
    words = text.split()
    if lowercase:
        words = [w if _MARKUP.fullmatch(w) else w.lower() for w in words]
    return [("" if i == 0 else " ") + w for i, w in enumerate(words)]


def _key(piece) -> str | int:
    return piece.strip() if isinstance(piece, str) else piece


@dataclass
class Vocabulary:
    """The HMM's words and how text becomes them; saved as ``vocab.json`` inside the model folder.

    Attributes:
        tokens: ``<pad>``, ``<unk>``, ``<eos>``, then the kept tokens (teacher token strings for the
            teacher tokenizer).
        tokenizer: ``word``, ``whitespace`` or ``teacher``.
        lowercase: lower-case words (word and whitespace tokenizers).
        max_length: sequences longer than this are cut into chunks.
        teacher: the teacher model whose tokenizer is used (teacher tokenizer only).
    """

    tokens: list[str]
    tokenizer: str = "word"
    lowercase: bool = False
    max_length: int = 64
    teacher: str = ""

    def __post_init__(self) -> None:
        if self.tokens[:3] != [PAD, UNK, EOS]:
            raise ValueError(f"a vocabulary must start with {PAD}, {UNK}, {EOS}")
        self._lookup: dict | None = None
        self._teacher_tokenizer = None

    def __len__(self) -> int:
        return len(self.tokens)

    def save(self, folder: str | Path) -> None:
        write_json(
            Path(folder) / VOCAB_FILE, {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        )

    @classmethod
    def load(cls, folder: str | Path) -> Vocabulary:
        return cls(**read_json(Path(folder) / VOCAB_FILE))

    def teacher_tokenizer(self):
        if self._teacher_tokenizer is None:
            from latentlm.hmm.teacher import TeacherConfig, load_teacher_tokenizer

            self._teacher_tokenizer = load_teacher_tokenizer(TeacherConfig(name=self.teacher))
        return self._teacher_tokenizer

    def split(self, unit: str) -> list:
        """The pieces of one unit (surface forms, or teacher token ids)."""
        if self.tokenizer == "word":
            return surface_words(unit, self.lowercase)
        if self.tokenizer == "whitespace":
            return whitespace_words(unit, self.lowercase)
        return list(self.teacher_tokenizer()(unit, add_special_tokens=False)["input_ids"])

    def lookup(self) -> dict:
        """Piece key -> HMM id (teacher token ids for the teacher tokenizer)."""
        if self._lookup is None:
            kept = self.tokens[3:]
            if self.tokenizer == "teacher":
                kept = self.teacher_tokenizer().convert_tokens_to_ids(kept)
            self._lookup = {key: index + 3 for index, key in enumerate(kept)}
        return self._lookup

    def encode_units(self, units: list[str]) -> SequenceSet:
        """Tokenise units into sequences of at most ``max_length`` tokens, each unit closed by ``<eos>``."""
        chunks = [c for unit in units for c in _chunks(self.split(unit), self.max_length)]
        return _encode(chunks, self.lookup())


@dataclass
class Corpus:
    """A tokenised corpus: vocabulary (``<pad>``=0, ``<unk>``=1, ``<eos>``=2), the training and held-out
    splits, and the development split carved from the training units when ``data.dev_fraction`` > 0."""

    vocabulary: Vocabulary
    train: SequenceSet
    heldout: SequenceSet
    source: str
    dev: SequenceSet | None = None

    @property
    def vocab(self) -> list[str]:
        return self.vocabulary.tokens

    def describe(self) -> dict:
        return {
            "source": self.source,
            "tokenizer": self.vocabulary.tokenizer,
            "vocab_size": len(self.vocab),
            "train_sequences": len(self.train),
            "train_tokens": self.train.num_tokens,
            "heldout_sequences": len(self.heldout),
            "heldout_tokens": self.heldout.num_tokens,
            "heldout_unk_rate": round(self.heldout.unk_rate(), 5),
        } | (
            {
                "dev_sequences": len(self.dev),
                "dev_tokens": self.dev.num_tokens,
                "dev_unk_rate": round(self.dev.unk_rate(), 5),
            }
            if self.dev is not None
            else {}
        )


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


def split_units(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """``(training units, held-out units)`` of the configured corpus."""
    if not cfg.path:
        raise ValueError("data.path: no corpus given (a text file or hf:<dataset>)")
    path = resolve_path(cfg.path)
    units = read_units(path, cfg.format, cfg.hf_split, cfg.hf_column)
    if cfg.heldout_path:
        train_units, heldout_units = (
            units,
            read_units(resolve_path(cfg.heldout_path, "data.heldout_path"), cfg.format),
        )
    else:
        cut = len(units) - math.ceil(len(units) * cfg.heldout_fraction)
        train_units, heldout_units = units[:cut], units[cut:]
    if cfg.max_train_units:
        train_units = train_units[: cfg.max_train_units]
    return train_units, heldout_units


def split_dev(train_units: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """``(training units, dev units)``: the last ``ceil(fraction × n)`` training units become the dev
    split (none when ``fraction`` is 0); at least one training unit must remain."""
    count = math.ceil(len(train_units) * fraction)
    if count and count >= len(train_units):
        raise ValueError(
            f"data.dev_fraction: {fraction} of {len(train_units)} training units leaves none to train on"
        )
    return train_units[: len(train_units) - count], train_units[len(train_units) - count :]


def heldout_units(cfg: DataConfig) -> list[str]:
    """Only the held-out units: ``data.heldout_path`` if given, else the tail of ``data.path``."""
    if cfg.heldout_path:
        return read_units(resolve_path(cfg.heldout_path, "data.heldout_path"), cfg.format)
    return split_units(cfg)[1]


def _chunks(items: list, max_length: int) -> list[list]:
    """Cut a unit into chunks of ``max_length`` positions; the last one ends with ``None`` (EOS)."""
    items = list(items) + [None]
    return [items[i : i + max_length] for i in range(0, len(items), max_length)]


def _encode(chunks: list[list], lookup: dict) -> SequenceSet:
    lengths = [len(chunk) for chunk in chunks]
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(
        (EOS_ID if piece is None else lookup.get(_key(piece), UNK_ID) for chunk in chunks for piece in chunk),
        dtype=np.int32,
        count=int(offsets[-1]),
    )
    return SequenceSet(ids=ids, offsets=offsets, pieces=chunks)


def build_corpus(cfg: DataConfig, teacher_name: str = "", teacher_tokenizer=None) -> Corpus:
    """Read, split and tokenise a corpus; the vocabulary is built from the training split.

    Args:
        cfg: the data settings.
        teacher_name: the LVD teacher (its tokenizer is used when ``cfg.tokenizer == "teacher"``).
        teacher_tokenizer: that tokenizer, already loaded (else loaded by name when needed).

    Raises:
        ValueError: empty corpus (or empty split), missing ``data.path``.
    """
    all_train_units, held_units = split_units(cfg)
    train_units, dev_units = split_dev(all_train_units, cfg.dev_fraction)
    if not train_units:
        raise ValueError(f"{cfg.path}: no training text left after the held-out split")
    builder = Vocabulary([PAD, UNK, EOS], cfg.tokenizer, cfg.lowercase, cfg.max_length, teacher_name)
    builder._teacher_tokenizer = teacher_tokenizer
    train_chunks = [c for unit in train_units for c in _chunks(builder.split(unit), cfg.max_length)]
    counts = Counter(_key(p) for chunk in train_chunks for p in chunk if p is not None)
    for special in (PAD, UNK, EOS):  # a literal <unk> in the text maps to the vocabulary's <unk>
        counts.pop(special, None)
    if not counts:
        raise ValueError(f"{cfg.path}: the training split holds no tokens")
    kept = [k for k, c in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))) if c >= cfg.min_count]
    if cfg.max_vocab:
        kept = kept[: cfg.max_vocab - 3]
    words = builder.teacher_tokenizer().convert_ids_to_tokens(kept) if cfg.tokenizer == "teacher" else kept
    vocabulary = Vocabulary(
        [PAD, UNK, EOS, *words], cfg.tokenizer, cfg.lowercase, cfg.max_length, teacher_name
    )
    vocabulary._teacher_tokenizer = builder._teacher_tokenizer
    vocabulary._lookup = {k: i + 3 for i, k in enumerate(kept)}
    return Corpus(
        vocabulary=vocabulary,
        train=_encode(train_chunks, vocabulary.lookup()),
        heldout=vocabulary.encode_units(held_units),
        source=cfg.path,
        dev=vocabulary.encode_units(dev_units) if dev_units else None,
    )


class SequenceDataset(Dataset):
    """Sequence ``i`` of a :class:`SequenceSet` with its stored LVD states (if any)."""

    def __init__(self, sequences: SequenceSet, states=None) -> None:
        self.sequences = sequences
        self.states = states

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict:
        item = {"index": index, "obs": self.sequences.sequence(index)}
        if self.states is not None:
            item["states"] = self.states.sequence(index)
        return item


def token_chunks(
    lengths: np.ndarray, chunk_tokens: int, multiple_of: int = 1, seed: int = 0, by_length: bool = False
) -> list[np.ndarray]:
    """Split sequence indices into groups of about ``chunk_tokens`` tokens each, every sequence once.

    The sequences are shuffled once (``seed``) so that every group is a random sample of the corpus,
    then cut greedily by tokens; the number of groups is rounded up to a multiple of ``multiple_of``
    (one share per process) by splitting the largest groups. Within a group, sequences are sorted by
    length so that padding stays small. ``by_length``: the shuffled sequences are sorted by length
    (longest first, ties in shuffled order) before the cut, so each group holds sequences of similar
    length and runs for fewer time steps.
    """
    order = np.random.default_rng(seed).permutation(len(lengths))
    if by_length:
        order = order[np.argsort(-lengths[order], kind="stable")]
    groups, current, tokens = [], [], 0
    for index in order:
        if current and tokens + lengths[index] > chunk_tokens:
            groups.append(current)
            current, tokens = [], 0
        current.append(int(index))
        tokens += int(lengths[index])
    if current:
        groups.append(current)
    while len(groups) % multiple_of:
        largest = max(range(len(groups)), key=lambda g: len(groups[g]))
        if len(groups[largest]) < 2:
            raise ValueError(
                f"the training split has {len(lengths)} sequences, too few for {multiple_of} processes"
            )
        group = groups.pop(largest)
        groups += [group[: len(group) // 2], group[len(group) // 2 :]]
    return [np.array(sorted(g, key=lambda i: -lengths[i]), dtype=np.int64) for g in groups]


class ChunkDataset(Dataset):
    """Item ``i`` is a whole group of sequences (an EM mini-batch or a chunk of the full batch)."""

    def __init__(self, sequences: SequenceSet, groups: list[np.ndarray]) -> None:
        self.sequences = sequences
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict:
        return pad_batch(
            [{"index": int(i), "obs": self.sequences.sequence(int(i))} for i in self.groups[index]]
        )


def pad_batch(items: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad sequences: ``obs``/``states`` ``(B, T)`` long, ``mask`` ``(B, T)`` bool, ``index`` (B,)."""
    width = max(len(item["obs"]) for item in items)
    batch = {
        "index": torch.tensor([item["index"] for item in items]),
        "obs": torch.zeros(len(items), width, dtype=torch.long),
        "mask": torch.zeros(len(items), width, dtype=torch.bool),
    }
    if "states" in items[0]:
        batch["states"] = torch.zeros(len(items), width, dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item["obs"])
        batch["obs"][row, :length] = torch.from_numpy(np.asarray(item["obs"], dtype=np.int64))
        batch["mask"][row, :length] = True
        if "states" in batch:
            batch["states"][row, :length] = torch.from_numpy(np.asarray(item["states"], dtype=np.int64))
    return batch
