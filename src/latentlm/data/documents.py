"""Long structured documents with gold boundaries (for the LHT, seed 003 "Data Pipeline").

A `Document` is its text plus character spans of its structure: `section` (reStructuredText sections
found by their title underline), `paragraph` (blocks separated by blank lines; a title is a block),
`sentence` (a rule-based splitter applied to prose paragraphs; a title is one sentence; code has none)
and `code` (literal blocks after `::`, directive bodies such as `.. code-block::`, `>>>` sessions).

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

SPAN_KINDS = ("section", "paragraph", "sentence", "code")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_<>])\1+\s*$")
_DIRECTIVE_WITH_CODE = re.compile(
    r"^\s*\.\. (code-block|code|sourcecode|doctest|testcode|testoutput|productionlist)::"
)
_BARE_DIRECTIVE = re.compile(r"^\s*\.\. [\w:-]+::\s*$")
# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before whitespace and an
# upper-case letter, digit, quote or markup opener. Common abbreviations are not sentence ends.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(`*:\[])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "No.", "approx.", "resp.")


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


def split_sentences(text: str, offset: int = 0) -> list[tuple[int, int]]:
    """Rule-based sentence spans of a prose paragraph.

    Args:
        text: the paragraph.
        offset: added to every span (the paragraph's position in its document).

    Returns:
        (start, end) spans covering the non-space text.
    """
    spans = []
    start = len(text) - len(text.lstrip())
    for match in _SENTENCE_END.finditer(text):
        head = text[start : match.start()]
        if any(head.endswith(a) for a in _ABBREVIATIONS):
            continue
        if re.search(r"(^|\s)[A-Z]\.$", head):
            continue  # a single-letter initial ("J. Smith") is not a sentence end
        spans.append((offset + start, offset + match.start()))
        start = match.end()
    end = len(text.rstrip())
    if start < end:
        spans.append((offset + start, offset + end))
    return spans


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def parse_rst(text: str, source: str = "<rst>", category: str = "") -> Document:
    """Find sections, paragraphs, sentences and code blocks of a reStructuredText text.

    Args:
        text: the file contents.
        source: name used in the document (and errors).
        category: probe label.

    Returns:
        The document with all four span kinds.
    """
    lines = text.split("\n")
    line_start = [0]
    for line in lines:
        line_start.append(line_start[-1] + len(line) + 1)
    n = len(lines)
    title_lines: set[int] = set()  # lines that belong to a section title (overline, title, underline)
    section_starts: list[int] = []
    for i in range(1, n):
        title = lines[i - 1]
        if not title.strip() or _UNDERLINE.match(title) or _indent(title) > 0:
            continue
        if _UNDERLINE.match(lines[i]) and len(lines[i].rstrip()) >= len(title.rstrip()):
            first = i - 1
            if i >= 2 and _UNDERLINE.match(lines[i - 2]) and lines[i - 2].strip()[0] == lines[i].strip()[0]:
                first = i - 2
            if first in title_lines or i - 1 in title_lines:
                continue
            title_lines.update(range(first, i + 1))
            section_starts.append(first)
    # Blocks: maximal runs of non-blank lines; title lines form their own block.
    blocks: list[tuple[int, int, bool]] = []  # (first line, last line + 1, is_title)
    i = 0
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        j = i
        is_title = i in title_lines
        while j < n and lines[j].strip() and ((j in title_lines) == is_title):
            j += 1
        blocks.append((i, j, is_title))
        i = j
    # Code: the indented body after a paragraph ending in '::' or after a code directive, and '>>>' blocks.
    code_lines: set[int] = set()
    for first, last, is_title in blocks:
        if is_title:
            continue
        # "text::" opens a literal block; a bare directive (".. note::") opens prose, not code.
        literal = lines[last - 1].rstrip().endswith("::") and not _BARE_DIRECTIVE.match(lines[last - 1])
        opener = literal or _DIRECTIVE_WITH_CODE.match(lines[first])
        if lines[first].lstrip().startswith(">>>"):
            code_lines.update(range(first, last))
        if not opener:
            continue
        base = _indent(lines[first])
        k = last
        while k < n and (not lines[k].strip() or _indent(lines[k]) > base):
            if lines[k].strip():
                code_lines.add(k)
            k += 1
    spans: dict[str, list[tuple[int, int]]] = {kind: [] for kind in SPAN_KINDS}

    def char_span(first: int, last: int) -> tuple[int, int]:
        return line_start[first] + _indent(lines[first]), line_start[last - 1] + len(lines[last - 1].rstrip())

    for index, first in enumerate(section_starts):
        last = section_starts[index + 1] if index + 1 < len(section_starts) else n
        spans["section"].append(
            (line_start[first], char_span(first, last)[1] if last > first else line_start[first])
        )
    for first, last, is_title in blocks:
        # A block may mix prose and code lines (a directive line then its body): split at the change.
        run_start = first
        for k in range(first, last + 1):
            if k == last or ((k in code_lines) != (run_start in code_lines)):
                start, end = char_span(run_start, k)
                spans["paragraph"].append((start, end))
                if run_start in code_lines:
                    spans["code"].append((start, end))
                elif is_title:
                    title_line = max(t for t in range(run_start, k) if not _UNDERLINE.match(lines[t]))
                    spans["sentence"].append(char_span(title_line, title_line + 1))
                else:
                    spans["sentence"].extend(split_sentences(text[start:end], start))
                run_start = k
    merged_code: list[tuple[int, int]] = []
    for start, end in spans["code"]:
        # Consecutive code paragraphs separated only by blank lines are one code block.
        if merged_code and not text[merged_code[-1][1] : start].strip():
            merged_code[-1] = (merged_code[-1][0], end)
        else:
            merged_code.append((start, end))
    spans["code"] = merged_code
    for kind in SPAN_KINDS:
        spans[kind].sort()
    return Document(text, source, category, spans)


def read_rst_documents(root: str | Path) -> list[Document]:
    """Every reStructuredText file below `root` (`*.rst.txt` or `*.rst`), sorted by path.

    Raises:
        FileNotFoundError: when `root` is missing or holds no such file.
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
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            documents.append(parse_rst(text, str(relative), category))
    return documents


def plain_document(text: str, source: str, category: str) -> Document:
    """A document from plain text: paragraphs by blank lines, sentences by the splitter, no sections."""
    spans: dict[str, list[tuple[int, int]]] = {kind: [] for kind in SPAN_KINDS}
    for match in re.finditer(r"\S(?:.*\S)?(?:\n[ \t]*\S.*)*", text):
        start, end = match.start(), match.start() + len(match.group().rstrip())
        spans["paragraph"].append((start, end))
        spans["sentence"].extend(split_sentences(text[start:end], start))
    if text.strip():
        spans["section"].append((len(text) - len(text.lstrip()), len(text.rstrip())))
    return Document(text, source, category, spans)


def read_plain_documents(path: str | Path, paragraphs_per_document: int = 50) -> list[Document]:
    """Cut a plain-text corpus into documents of `paragraphs_per_document` paragraphs.

    Raises:
        FileNotFoundError / ValueError: missing or empty file, or a non-positive paragraph count.
    """
    path = Path(path)
    if paragraphs_per_document < 1:
        raise ValueError(f"paragraphs_per_document: must be >= 1, got {paragraphs_per_document}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: plain-text corpus not found")
    text = path.read_text(encoding="utf-8", errors="replace")
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
