"""Evaluation of a trained LHT (seed 003, roadmap 3.3 and 4.2).

- MLM perplexity on held-out chunks (`latentlm.lht.train.heldout_metrics`).
- Boundary quality: each learned level against gold sentences, paragraphs and sections, with
  precision/recall/F1 at a stated token tolerance (`latentlm.metrics.boundaries`); position 0 of a
  chunk is a boundary for everyone and is left out.
- Compression: tokens per unit and units per chunk of every level.
- A document-classification probe: logistic regression on the frozen document vector (`[DOC]` state,
  mean of token states for the dense baseline) predicting which docs folder a document comes from,
  cross-validated, against the majority-class rate.
- A picture of learned vs gold boundaries on a sample held-out document, for the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from latentlm.lht.data import GOLD_KINDS, Chunk
from latentlm.metrics.boundaries import BoundaryScores, boundary_scores


@dataclass
class BoundaryReport:
    """Micro-averaged scores, `scores[level][kind]`, and compression per level."""

    scores: dict[int, dict[str, BoundaryScores]]
    tokens_per_unit: dict[int, float]
    units_per_chunk: dict[int, float]

    def as_dict(self, tolerance: int) -> dict:
        return {
            "tolerance_tokens": tolerance,
            "levels": {
                f"level{level + 1}": {
                    "tokens_per_unit": self.tokens_per_unit[level],
                    "units_per_chunk": self.units_per_chunk[level],
                    **{kind: s.as_dict() for kind, s in kinds.items()},
                }
                for level, kinds in self.scores.items()
            },
        }


@torch.no_grad()
def learned_boundaries(model: nn.Module, chunk: Chunk, device: torch.device) -> list[list[int]]:
    """Token positions where each learned level starts a unit, for one unmasked chunk."""
    ids = torch.as_tensor(chunk.ids, device=device)[None]
    out = model(ids, torch.ones_like(ids, dtype=torch.bool))
    if out.hierarchy is None:
        return []
    return [flags[0].nonzero().flatten().tolist() for flags in out.hierarchy.token_boundaries()]


def evaluate_boundaries(model: nn.Module, chunks: list[Chunk], tolerance: int) -> BoundaryReport | None:
    """Boundary P/R/F1 of every level against every gold kind (None for the dense baseline)."""
    device = next(model.parameters()).device
    scores: dict[int, dict[str, BoundaryScores]] = {}
    tokens, units = Counter(), Counter()
    for chunk in chunks:
        levels = learned_boundaries(model, chunk, device)
        if not levels:
            return None
        for level, predicted in enumerate(levels):
            tokens[level] += len(chunk.ids)
            units[level] += len(predicted)
            per_kind = scores.setdefault(level, {k: BoundaryScores(0, 0, 0) for k in GOLD_KINDS})
            for kind in GOLD_KINDS:
                gold = [p for p in chunk.gold[kind] if p > 0]
                per_kind[kind] = per_kind[kind] + boundary_scores(
                    [p for p in predicted if p > 0], gold, tolerance
                )
    return BoundaryReport(
        scores,
        {level: tokens[level] / max(units[level], 1) for level in tokens},
        {level: units[level] / len(chunks) for level in units},
    )


def random_boundary_scores(
    chunks: list[Chunk], tolerance: int, rate: float, seed: int = 0
) -> dict[str, BoundaryScores]:
    """A reference point: boundaries placed uniformly at random with the given rate, scored the same way."""
    rng = np.random.default_rng(seed)
    totals = {k: BoundaryScores(0, 0, 0) for k in GOLD_KINDS}
    for chunk in chunks:
        predicted = (np.nonzero(rng.random(len(chunk.ids)) < rate)[0]).tolist()
        for kind in GOLD_KINDS:
            gold = [p for p in chunk.gold[kind] if p > 0]
            totals[kind] = totals[kind] + boundary_scores([p for p in predicted if p > 0], gold, tolerance)
    return totals


@torch.no_grad()
def document_vectors(model: nn.Module, chunks: list[Chunk]) -> np.ndarray:
    """(num_chunks, D) frozen document vectors (`doc_state`)."""
    device = next(model.parameters()).device
    rows = []
    for chunk in chunks:
        ids = torch.as_tensor(chunk.ids, device=device)[None]
        rows.append(model(ids, torch.ones_like(ids, dtype=torch.bool)).doc_state[0].float().cpu().numpy())
    return np.stack(rows)


def classification_probe(
    features: np.ndarray, labels: list[str], folds: int, seed: int = 0
) -> dict[str, float]:
    """Cross-validated accuracy of a logistic-regression probe and the majority-class accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = Counter(labels)
    folds = min(folds, min(counts.values()))
    if len(counts) < 2 or folds < 2:
        raise ValueError(f"probe: need two classes with at least two documents each, got {dict(counts)}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    accuracy = cross_val_score(probe, features, np.array(labels), cv=splitter).mean()
    return {
        "accuracy": float(accuracy),
        "majority_accuracy": counts.most_common(1)[0][1] / len(labels),
        "documents": float(len(labels)),
        "classes": float(len(counts)),
        "folds": float(folds),
    }


def probe_documents(chunks: list[Chunk], min_documents: int, max_documents: int) -> list[Chunk]:
    """First chunk of every reST document whose category has at least `min_documents` documents."""
    first: dict[str, Chunk] = {}
    for chunk in chunks:
        if chunk.source.endswith((".rst", ".rst.txt")) and chunk.source not in first:
            first[chunk.source] = chunk
    counts = Counter(c.category for c in first.values())
    kept = [c for c in first.values() if counts[c.category] >= min_documents]
    if max_documents and len(kept) > max_documents:
        rng = np.random.default_rng(0)
        kept = [kept[i] for i in sorted(rng.choice(len(kept), max_documents, replace=False))]
    return kept


def boundary_picture(chunk: Chunk, learned: list[list[int]], tokens: int, title: str) -> plt.Figure:
    """Event plot of gold (sections, paragraphs, sentences) and learned boundaries over the first tokens."""
    rows = [(f"gold {kind}", [p for p in chunk.gold[kind] if p < tokens]) for kind in reversed(GOLD_KINDS)]
    rows += [(f"learned level {i + 1}", [p for p in b if p < tokens]) for i, b in enumerate(learned)]
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(rows) + 1.2))
    colors = ["#444444"] * len(GOLD_KINDS) + ["C0", "C1", "C2", "C3", "C4"][: len(learned)]
    ax.eventplot([r[1] for r in rows], colors=colors, lineoffsets=range(len(rows)), linelengths=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlim(-1, tokens)
    ax.set_xlabel("token position")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def boundary_text(tokenizer, chunk: Chunk, learned: list[list[int]], tokens: int) -> str:
    """The sample as text with learned boundaries marked: '|' level 1, '‖' level 2, '#' level >= 3."""
    marks = {}
    for level, positions in enumerate(learned):
        for p in positions:
            marks[p] = "|" if level == 0 else ("‖" if level == 1 else "#")
    pieces = []
    for position, token in enumerate(tokenizer.convert_ids_to_tokens(chunk.ids[:tokens].tolist())):
        prefix = f" {marks[position]}" if position in marks and position > 0 else ""
        pieces.append(prefix + (token[2:] if token.startswith("##") else " " + token))
    return "".join(pieces).strip()
