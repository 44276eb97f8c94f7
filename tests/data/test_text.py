"""The shared sentence splitter and reST reader (latentlm.data.text) on small hand-written inputs."""

from __future__ import annotations

import pytest

from latentlm.data.text import clean_rst, read_rst_paragraphs, rst_prose, sentence_spans, split_sentences


def test_split_sentences_exact():
    text = 'He said "stop." Then 3 dogs ran, e.g. Rex and Dr. Who. Why? (Nobody knows.) J. Smith left!'
    assert split_sentences(text) == [
        'He said "stop."',
        "Then 3 dogs ran, e.g. Rex and Dr. Who.",
        "Why?",
        "(Nobody knows.)",
        "J. Smith left!",
    ]


def test_split_sentences_needs_a_capital_or_opener_after_the_stop():
    assert split_sentences("  version 3.11 is out. it works.\n") == ["version 3.11 is out. it works."]
    assert split_sentences("Call `f`. `g` follows. :func:`h` too.") == [
        "Call `f`.",
        "`g` follows.",
        ":func:`h` too.",
    ]
    assert split_sentences("") == []
    assert split_sentences("No stop at all") == ["No stop at all"]


def test_sentence_spans_offset_and_surrounding_space():
    text = "  One. Two!  "
    assert sentence_spans(text) == [(2, 6), (7, 11)]
    assert sentence_spans(text, offset=100) == [(102, 106), (107, 111)]


def test_clean_rst_roles_links_and_markup():
    text = (
        "Use :func:`~json.dumps` or :class:`the decoder <json.JSONDecoder>`;\n"
        " see `PEP 8 <https://x.y>`_ and *this* **now** ``code``."
    )
    assert clean_rst(text) == "Use json.dumps or the decoder; see PEP 8 and this now code."


RST = """\
=======
Title
=======

:mod:`json` --- JSON encoder
============================

First sentence here. Second one uses
:func:`dumps` and `a link <https://example.org>`_.

Example::

    x = 1

.. note::

   An indented note body.

* a bullet item
- another item

+-----+-----+
| a   | b   |
+-----+-----+

:param x: a field

>>> print(1)
1

.. code-block:: python

   y = 2

Last *words* here.
"""


def test_rst_prose_keeps_only_running_prose():
    assert rst_prose(RST) == [
        "First sentence here. Second one uses dumps and a link.",
        "Last words here.",
    ]


def test_read_rst_paragraphs_reads_the_file_and_refuses_non_utf8(tmp_path):
    path = tmp_path / "json.rst.txt"
    path.write_text(RST, encoding="utf-8")
    assert read_rst_paragraphs(path) == rst_prose(RST)
    bad = tmp_path / "bad.rst"
    bad.write_bytes(b"Caf\xe9.\n")
    with pytest.raises(ValueError, match=r"bad\.rst: not UTF-8 text \(invalid byte 0xe9 at byte offset 3\)"):
        read_rst_paragraphs(bad)


@pytest.mark.slow
def test_real_python_docs_paragraphs(data_dir):
    paragraphs = read_rst_paragraphs(data_dir / "pydocs" / "library" / "json.rst.txt")
    assert len(paragraphs) >= 15
    assert paragraphs[0].startswith("JSON (JavaScript Object Notation), specified by 7159")
    assert not any(p.endswith("::") or p.startswith((".. ", ">>>")) or "`" in p for p in paragraphs)
    sentences = [s for p in paragraphs for s in split_sentences(p)]
    assert len(sentences) > len(paragraphs)
