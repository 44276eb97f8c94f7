"""Shared text utilities: the one sentence splitter and the one reStructuredText reader of latentlm.

- `sentence_spans(text, offset)` / `split_sentences(text)`: rule-based sentences of a prose paragraph.
  A sentence ends at `.`, `!` or `?` (optionally followed by closing quotes or brackets) before
  whitespace and an upper-case letter, a digit, a quote, a bracket or a markup opener. Common
  abbreviations ("e.g.", "i.e.", "Dr.", ...) and single-letter initials ("J. Smith") are not sentence ends.
- `rst_spans(text)`: the structure of a reST text as character spans: `section` (titles found by their
  underline, with an optional overline), `paragraph` (blocks of non-blank lines; a title is a block),
  `sentence` (the splitter on prose paragraphs; a title is one sentence; code has none) and `code`
  (the literal block after `::`, the body of a code directive, `>>>` sessions).
- `rst_prose(text)` / `read_rst_paragraphs(path)`: the prose paragraphs of a reST text, on the same
  parse: no section titles, code, directives (`.. note::` lines), indented blocks (directive bodies,
  quotes), lists, field lists, tables, line blocks, nor paragraphs that introduce a literal block
  (ending in `::`); roles, links and inline markup are cleaned (`clean_rst`) and lines joined by one space.
"""

from __future__ import annotations

import re
from pathlib import Path

from latentlm.data.corpora import read_utf8

__all__ = [
    "SPAN_KINDS",
    "sentence_spans",
    "split_sentences",
    "rst_spans",
    "clean_rst",
    "rst_prose",
    "read_rst_paragraphs",
]

SPAN_KINDS = ("section", "paragraph", "sentence", "code")
Span = tuple[int, int]

_SENTENCE_END = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=[A-Z0-9\"'(`*:\[])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "No.", "approx.", "resp.")
_INITIAL = re.compile(r"(^|\s)[A-Z]\.$")

_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_<>])\1+\s*$")
_DIRECTIVE_WITH_CODE = re.compile(
    r"^\s*\.\. (code-block|code|sourcecode|doctest|testcode|testoutput|productionlist)::"
)
_BARE_DIRECTIVE = re.compile(r"^\s*\.\. [\w:-]+::\s*$")
# First characters of blocks that are not running prose: comments and directives (.), tables (= +),
# line blocks (|), bullet and enumerated lists (- * #), field lists (:), doctest sessions (>).
_NOT_PROSE_START = (".", "=", "-", "+", "|", "*", "#", ":", ">")

_RST_ROLE = re.compile(r":[\w:.-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")
_RST_MARKUP = re.compile(r"\*\*|``|`_?|\*")


def sentence_spans(text: str, offset: int = 0) -> list[Span]:
    """Rule-based sentence spans of a prose paragraph.

    Args:
        text: the paragraph.
        offset: added to every span (the paragraph's position in its document).

    Returns:
        (start, end) character spans covering the non-space text, in order.
    """
    spans = []
    start = len(text) - len(text.lstrip())
    for match in _SENTENCE_END.finditer(text):
        head = text[start : match.start()]
        if head.endswith(_ABBREVIATIONS) or _INITIAL.search(head):
            continue
        spans.append((offset + start, offset + match.end(1)))  # closing quotes belong to the sentence
        start = match.end()
    end = len(text.rstrip())
    if start < end:
        spans.append((offset + start, offset + end))
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of a prose paragraph (`sentence_spans` as strings)."""
    return [text[start:end] for start, end in sentence_spans(text)]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _title_lines(lines: list[str]) -> tuple[set[int], list[int]]:
    """Lines that belong to a section title (overline, title, underline) and each title's first line."""
    title_lines: set[int] = set()
    starts: list[int] = []
    for i in range(1, len(lines)):
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
            starts.append(first)
    return title_lines, starts


def _blocks(lines: list[str], title_lines: set[int]) -> list[tuple[int, int, bool]]:
    """Maximal runs of non-blank lines as (first line, last line + 1, is_title); titles are own blocks."""
    blocks = []
    i, n = 0, len(lines)
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
    return blocks


def _code_lines(lines: list[str], blocks: list[tuple[int, int, bool]]) -> set[int]:
    """The indented body after a paragraph ending in '::' or after a code directive, and '>>>' blocks."""
    code: set[int] = set()
    for first, last, is_title in blocks:
        if is_title:
            continue
        # "text::" opens a literal block; a bare directive (".. note::") opens prose, not code.
        literal = lines[last - 1].rstrip().endswith("::") and not _BARE_DIRECTIVE.match(lines[last - 1])
        opener = literal or _DIRECTIVE_WITH_CODE.match(lines[first])
        if lines[first].lstrip().startswith(">>>"):
            code.update(range(first, last))
        if not opener:
            continue
        base = _indent(lines[first])
        k = last
        while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) > base):
            if lines[k].strip():
                code.add(k)
            k += 1
    return code


def rst_spans(text: str) -> dict[str, list[Span]]:
    """Sections, paragraphs, sentences and code blocks of a reStructuredText text as character spans.

    Returns:
        kind -> sorted list of (start, end) spans, for every kind of `SPAN_KINDS`.
    """
    lines = text.split("\n")
    line_start = [0]
    for line in lines:
        line_start.append(line_start[-1] + len(line) + 1)
    n = len(lines)
    title_lines, section_starts = _title_lines(lines)
    blocks = _blocks(lines, title_lines)
    code_lines = _code_lines(lines, blocks)
    spans: dict[str, list[Span]] = {kind: [] for kind in SPAN_KINDS}

    def char_span(first: int, last: int) -> Span:
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
                    spans["sentence"].extend(sentence_spans(text[start:end], start))
                run_start = k
    merged_code: list[Span] = []
    for start, end in spans["code"]:
        # Consecutive code paragraphs separated only by blank lines are one code block.
        if merged_code and not text[merged_code[-1][1] : start].strip():
            merged_code[-1] = (merged_code[-1][0], end)
        else:
            merged_code.append((start, end))
    spans["code"] = merged_code
    for kind in SPAN_KINDS:
        spans[kind].sort()
    return spans


def clean_rst(text: str) -> str:
    """Roles (`:func:`x``), links (`text <url>`_) and inline markup removed; whitespace collapsed."""
    text = _RST_ROLE.sub(r"\1", text)
    text = _RST_LINK.sub(r"\1", text)
    return re.sub(r"\s+", " ", _RST_MARKUP.sub("", text)).strip()


def rst_prose(text: str) -> list[str]:
    """The cleaned prose paragraphs of a reStructuredText text, in order (see the module docstring)."""
    spans = rst_spans(text)
    code = spans["code"]
    section_starts = {start for start, _ in spans["section"]}
    paragraphs = []
    for start, end in spans["paragraph"]:
        if start in section_starts or any(a <= start < b for a, b in code):
            continue  # a section title or code
        if start > text.rfind("\n", 0, start) + 1 or text[start] in _NOT_PROSE_START:
            continue  # indented, or not running prose
        paragraph = clean_rst(text[start:end])
        if paragraph and not paragraph.endswith("::"):
            paragraphs.append(paragraph)
    return paragraphs


def read_rst_paragraphs(path: str | Path) -> list[str]:
    """The prose paragraphs of a `.rst` / `.rst.txt` file (`rst_prose` of its UTF-8 text).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not UTF-8 text (the message names the file and the byte offset).
    """
    return rst_prose(read_utf8(path))
