"""Plain-text corpora and word-level vocabularies.

`read_text` / `read_lines` read a file with errors that name it; `word_tokenize` splits text into
words and punctuation; `WordVocab` maps words to ids with a frequency cut-off, `<unk>` for the rest and
`<eos>` to close sentences (PTB-style language modelling counts `<eos>` as a predicted token).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from latentlm.core.checkpoint import atomic_write_text

UNK, EOS, PAD = "<unk>", "<eos>", "<pad>"
_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def read_utf8(path: str | Path) -> str:
    """The whole file as UTF-8 text with universal newlines; a missing file or bytes that are not UTF-8
    text raise naming the path.

    Raises:
        FileNotFoundError: `path` is not a file.
        ValueError: an invalid UTF-8 sequence or a NUL byte (a binary file); the message names the
            file and the byte offset, e.g. ``data.bin: not UTF-8 text (invalid byte 0xff at byte offset 12)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text (invalid byte 0x{data[err.start]:02x} at byte offset {err.start})"
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"{path}: not UTF-8 text (NUL byte at byte offset {nul}; a binary file?)")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as open() reads


def read_text(path: str | Path) -> str:
    """The whole file as UTF-8 text (`read_utf8`); an empty file raises naming the path too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    text = read_utf8(path)
    if not text.strip():
        raise ValueError(f"{path}: the corpus is empty")
    return text


def read_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a one-item-a-line file (sentences, documents)."""
    lines = [line.strip() for line in read_text(path).splitlines()]
    return [line for line in lines if line]


def word_tokenize(text: str) -> list[str]:
    """Words (with inner apostrophes) and single punctuation marks; whitespace is dropped."""
    return _WORD.findall(text)


class WordVocab:
    """A word vocabulary with `<pad>`=0, `<unk>`=1, `<eos>`=2 and words by decreasing frequency."""

    def __init__(self, tokens: Sequence[str]):
        if list(tokens[:3]) != [PAD, UNK, EOS]:
            raise ValueError(f"a vocabulary must start with {PAD}, {UNK}, {EOS}")
        self.itos = list(tokens)
        self.stoi = {token: index for index, token in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("the vocabulary has duplicate tokens")

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None
    ) -> WordVocab:
        """Words seen at least `min_count` times, the `max_size` most frequent (specials included)."""
        counts = Counter(token for tokens in token_lists for token in tokens)
        for special in (PAD, UNK, EOS):
            counts.pop(special, None)
        words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
        if max_size is not None:
            words = words[: max(0, max_size - 3)]
        if not words:
            raise ValueError("cannot build a vocabulary from an empty corpus")
        return cls([PAD, UNK, EOS, *words])

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str], add_eos: bool = False) -> list[int]:
        ids = [self.stoi.get(token, self.unk_id) for token in tokens]
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"tokens": self.itos}))

    @classmethod
    def load(cls, path: str | Path) -> WordVocab:
        path = Path(path)
        try:
            return cls(json.loads(path.read_text())["tokens"])
        except FileNotFoundError as err:
            raise FileNotFoundError(f"vocabulary file not found: {path}") from err
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a latentlm vocabulary file ({err})") from err
