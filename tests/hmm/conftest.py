"""Fixtures shared by the HMM tests."""

import pytest

TINY_CORPUS = """the cat sat on the mat .
the dog sat on the log .
a cat and a dog ran far away .
the mat was red .
a dog ate the cat food .
the log was old and the mat was new .
one more line about a cat .
the end of the tiny corpus .
a red dog sat on a red mat .
the cat ran .
"""
"""Ten short sentences, one a line: enough for EM and recipe tests to have a held-out split."""


@pytest.fixture
def tiny_corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_CORPUS)
    return path
