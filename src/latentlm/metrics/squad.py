"""SQuAD v1.1 exact match and F1 with the official answer normalisation.

Implements the scoring of the official `evaluate-v1.1.py` script (Rajpurkar et al. 2016):
lower-case, strip punctuation, drop the articles a/an/the, collapse whitespace; EM and token F1
against each gold answer, keeping the best over the gold answers of a question.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Official SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between the normalised prediction and gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric, prediction: str, golds: Sequence[str]) -> float:
    """Maximum of `metric(prediction, gold)` over the gold answers.

    The official script's `metric_max_over_ground_truths`.
    """
    if not golds:
        raise ValueError("best_over_golds: a question needs at least one gold answer")
    return max(metric(prediction, gold) for gold in golds)


def squad_scores(predictions: Iterable[str], golds: Iterable[Sequence[str]]) -> dict[str, float]:
    """Corpus EM and F1 in percent (the official script's scale).

    Args:
        predictions: one predicted answer string per question.
        golds: for each question, its list of gold answer strings.

    Returns:
        ``{"em": ..., "f1": ..., "count": n}`` with EM and F1 averaged over questions, x100.
    """
    preds, gold_lists = list(predictions), list(golds)
    if len(preds) != len(gold_lists):
        raise ValueError(f"squad_scores: {len(preds)} predictions but {len(gold_lists)} gold lists")
    if not preds:
        return {"em": 0.0, "f1": 0.0, "count": 0}
    em = sum(best_over_golds(exact_match, p, g) for p, g in zip(preds, gold_lists, strict=True))
    f1 = sum(best_over_golds(f1_score, p, g) for p, g in zip(preds, gold_lists, strict=True))
    return {"em": 100.0 * em / len(preds), "f1": 100.0 * f1 / len(preds), "count": len(preds)}
