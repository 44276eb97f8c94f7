"""Fixtures shared by the HMM tests."""

import numpy as np
import pytest
import torch

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


def sentence_batches(split) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One ``(obs, mask)`` batch per training sentence of a corpus split, for reference ``em_step`` runs."""
    batches = []
    for i in range(len(split)):
        obs = torch.from_numpy(split.sequence(i).astype(np.int64))[None]  # (1, T)
        batches.append((obs, torch.ones_like(obs, dtype=torch.bool)))
    return batches
