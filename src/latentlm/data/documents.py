"""Long structured documents with gold boundaries (for the LHT, seed 003 "Data Pipeline").

A `Document` is its text plus character spans of its structure: `section` (reStructuredText sections
found by their title underline), `paragraph` (blocks separated by blank lines; a title is a block),
`sentence` (a rule-based splitter applied to prose paragraphs; a title is one sentence; code has none)
and `code` (literal blocks after `::`, directive bodies such as `.. code-block::`, `>>>` sessions).
The splitter and the reST parse live in `latentlm.data.text` (shared by every system).

Readers:
- `read_rst_documents(root)`: every `*.rst.txt`/`*.rst` file under a folder (the Python docs sources);
  the category of a document is its first folder below `root` (e.g. `library`, `c-api`).
- `read_plain_documents(path, paragraphs_per_document)`: a plain-text corpus (tiny-shakespeare) cut
  into documents of consecutive blank-line-separated paragraphs.
- `stream_hf_documents(name, ...)`: a Hugging Face dataset by name, streamed, one document per row.
- `interleave_documents(sources, probabilities, seed, limit)`: mix several document streams with
  configured probabilities (a finished stream drops out and the others are renormalised).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from latentlm.data.corpora import read_text, read_utf8
from latentlm.data.text import SPAN_KINDS, rst_spans, sentence_spans


@dataclass
class Document:
    """A text with gold structure.

    Attributes:
        text: the document text.
        source: file path (or dataset name and row) it came from.
        category: a label for probes (first folder below the root for the Python docs).
        spans: kind -> sorted list of (start, end) character spans, kinds from `SPAN_KINDS`.
    """

    text: str
    source: str
    category: str
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def starts(self, kind: str) -> list[int]:
        """Character offsets where units of `kind` start."""
        if kind not in SPAN_KINDS:
            raise ValueError(f"unknown span kind {kind!r}; choose from {SPAN_KINDS}")
        return [start for start, _ in self.spans.get(kind, [])]


def parse_rst(text: str, source: str = "<rst>", category: str = "") -> Document:
    """Find sections, paragraphs, sentences and code blocks of a reStructuredText text (`rst_spans`).

    Args:
        text: the file contents.
        source: name used in the document (and errors).
        category: probe label.

    Returns:
        The document with all four span kinds.
    """
    return Document(text, source, category, rst_spans(text))


def read_rst_documents(root: str | Path) -> list[Document]:
    """Every reStructuredText file below `root` (`*.rst.txt` or `*.rst`), sorted by path.

    Raises:
        FileNotFoundError: when `root` is missing or holds no such file.
        ValueError: a file that is not UTF-8 text (named, with the byte offset).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory of reStructuredText documents")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith((".rst.txt", ".rst")))
    if not paths:
        raise FileNotFoundError(f"{root}: holds no *.rst.txt or *.rst files")
    documents = []
    for path in paths:
        relative = path.relative_to(root)
        category = relative.parts[0] if len(relative.parts) > 1 else "top"
        text = read_utf8(path)
        if text.strip():
            documents.append(parse_rst(text, str(relative), category))
    return documents


def plain_document(text: str, source: str, category: str) -> Document:
    """A document from plain text: paragraphs by blank lines, sentences by the splitter, no sections."""
    spans: dict[str, list[tuple[int, int]]] = {kind: [] for kind in SPAN_KINDS}
    for match in re.finditer(r"\S(?:.*\S)?(?:\n[ \t]*\S.*)*", text):
        start, end = match.start(), match.start() + len(match.group().rstrip())
        spans["paragraph"].append((start, end))
        spans["sentence"].extend(sentence_spans(text[start:end], start))
    if text.strip():
        spans["section"].append((len(text) - len(text.lstrip()), len(text.rstrip())))
    return Document(text, source, category, spans)


def read_plain_documents(path: str | Path, paragraphs_per_document: int = 50) -> list[Document]:
    """Cut a plain-text corpus into documents of `paragraphs_per_document` paragraphs.

    Raises:
        FileNotFoundError / ValueError: missing, empty or non-UTF-8 file, or a non-positive paragraph count.
    """
    path = Path(path)
    if paragraphs_per_document < 1:
        raise ValueError(f"paragraphs_per_document: must be >= 1, got {paragraphs_per_document}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: plain-text corpus not found")
    text = read_text(path)
    paragraphs = [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    if not paragraphs:
        raise ValueError(f"{path}: the file is empty")
    documents = []
    for index in range(0, len(paragraphs), paragraphs_per_document):
        chunk = "\n\n".join(paragraphs[index : index + paragraphs_per_document])
        documents.append(plain_document(chunk, f"{path.name}#{index // paragraphs_per_document}", path.stem))
    return documents


def stream_hf_documents(
    name: str,
    config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    data_files: str | list[str] | None = None,
    limit: int | None = None,
) -> Iterator[Document]:
    """Stream documents from a Hugging Face dataset (hub name, or a builder like 'text'/'json' + files).

    Args:
        name: dataset name (e.g. 'wikimedia/wikipedia') or builder ('text', 'json').
        config: dataset configuration name.
        split: split to stream.
        text_field: column that holds the document text.
        data_files: local files for builder datasets.
        limit: stop after this many documents.

    Yields:
        Plain documents (paragraph and sentence spans; the category is `name`).
    """
    from datasets import load_dataset

    stream = load_dataset(name, config, split=split, streaming=True, data_files=data_files)
    for row_index, row in enumerate(stream):
        if limit is not None and row_index >= limit:
            return
        if text_field not in row:
            raise KeyError(
                f"dataset {name!r}: row {row_index} has no field {text_field!r} (has {sorted(row)})"
            )
        yield plain_document(str(row[text_field]), f"{name}#{row_index}", name)


def interleave_documents(
    sources: Sequence[Iterable[Document]], probabilities: Sequence[float], seed: int, limit: int | None = None
) -> list[Document]:
    """Draw documents from several streams, choosing the stream by `probabilities` at every draw.

    A stream that runs out leaves the mix and the remaining probabilities are renormalised; drawing
    stops after `limit` documents or when every stream is done.
    """
    if len(sources) != len(probabilities):
        raise ValueError(f"interleave: {len(sources)} sources but {len(probabilities)} probabilities")
    if any(p < 0 for p in probabilities) or sum(probabilities) <= 0:
        raise ValueError(
            f"interleave: probabilities must be >= 0 with a positive sum, got {list(probabilities)}"
        )
    rng = random.Random(seed)
    iterators = [iter(source) for source in sources]
    weights = list(probabilities)
    out: list[Document] = []
    while (limit is None or len(out) < limit) and any(w > 0 for w in weights):
        index = rng.choices(range(len(iterators)), weights=weights)[0]
        try:
            out.append(next(iterators[index]))
        except StopIteration:
            weights[index] = 0.0
    return out
