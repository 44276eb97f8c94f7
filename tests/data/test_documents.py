"""Document reader: sections, paragraphs, sentences and code of a hand-written reST text."""

from __future__ import annotations

import itertools

import pytest

from latentlm.data.documents import (
    interleave_documents,
    parse_rst,
    read_plain_documents,
    read_rst_documents,
    stream_hf_documents,
)
from latentlm.data.text import sentence_spans

RST = """Title
=====

First sentence here. Second one follows, e.g. this.
Still the second paragraph line.

Example::

    x = 1
    print(x)

.. note::

   A note body. It is prose.

Sub part
--------

Last words.
"""


def texts(doc, kind):
    return [doc.text[a:b] for a, b in doc.spans[kind]]


def test_parse_rst_finds_every_kind():
    doc = parse_rst(RST, "t.rst", "demo")
    assert [doc.text[a : a + 8] for a, _ in doc.spans["section"]] == ["Title\n==", "Sub part"]
    assert texts(doc, "code") == ["x = 1\n    print(x)"]
    assert texts(doc, "paragraph") == [
        "Title\n=====",
        "First sentence here. Second one follows, e.g. this.\nStill the second paragraph line.",
        "Example::",
        "x = 1\n    print(x)",
        ".. note::",
        "A note body. It is prose.",
        "Sub part\n--------",
        "Last words.",
    ]
    assert texts(doc, "sentence") == [
        "Title",
        "First sentence here.",
        "Second one follows, e.g. this.",
        "Still the second paragraph line.",
        "Example::",
        ".. note::",
        "A note body.",
        "It is prose.",
        "Sub part",
        "Last words.",
    ]


def test_sentence_splitter_keeps_initials_and_abbreviations():
    spans = sentence_spans("J. Smith wrote it, i.e. the book. Then he left! Why? Done.", 10)
    assert [(a - 10, b - 10) for a, b in spans] == [(0, 33), (34, 47), (48, 52), (53, 58)]


@pytest.mark.slow
def test_real_python_docs(data_dir):
    docs = read_rst_documents(data_dir / "pydocs")
    assert len(docs) == 460
    json_doc = next(d for d in docs if d.source == "library/json.rst.txt")
    assert json_doc.category == "library"
    assert json_doc.text[slice(*json_doc.spans["section"][0])].startswith(":mod:`json` --- JSON encoder")
    assert len(json_doc.spans["sentence"]) > len(json_doc.spans["section"])


def test_plain_documents_and_interleaving(tmp_path):
    path = tmp_path / "plays.txt"
    path.write_text("\n\n".join(f"Speaker {i}:\nLine {i}. More." for i in range(7)))
    docs = read_plain_documents(path, paragraphs_per_document=3)
    assert [len(d.spans["paragraph"]) for d in docs] == [3, 3, 1]
    assert len(docs[0].spans["sentence"]) == 6
    a = [d for d in docs]
    b = list(itertools.islice(({"x": i} for i in range(100)), 100))
    mixed = interleave_documents([a, b], [0.5, 0.5], seed=0)
    assert len(mixed) == 3 + 100  # both streams run out; the other keeps going
    mixed_limited = interleave_documents([b, b[::-1]], [0.9, 0.1], seed=1, limit=1000)
    assert len(mixed_limited) == 200


def test_interleave_probabilities_are_respected():
    ones = itertools.repeat(1)
    twos = itertools.repeat(2)
    mixed = interleave_documents([ones, twos], [0.8, 0.2], seed=0, limit=5000)
    share = mixed.count(1) / len(mixed)
    assert abs(share - 0.8) < 0.03


def test_stream_local_files_through_datasets(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"body": "One. Two."}\n{"body": "Three."}\n')
    docs = list(stream_hf_documents("json", data_files=str(path), text_field="body"))
    assert [d.text for d in docs] == ["One. Two.", "Three."]
    assert len(docs[0].spans["sentence"]) == 2
    with pytest.raises(KeyError, match="no field 'text'"):
        list(stream_hf_documents("json", data_files=str(path)))


def test_missing_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        read_rst_documents(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no"):
        read_rst_documents(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        read_plain_documents(empty)
