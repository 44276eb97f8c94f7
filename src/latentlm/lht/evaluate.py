"""Evaluation of a trained LHT (seed 003, roadmap 3.3 and 4.2): one function per measurement and
`evaluate_run`, which writes them all into `<run>/eval/` (metrics.json, report.md, plots).

- MLM perplexity on held-out chunks with fixed masks (`heldout_metrics`).
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

import math
from collections import Counter
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from latentlm.core.report import Report
from latentlm.lht.data import GOLD_KINDS, Chunk, chunk_item, gold_level_flags, pad_batch
from latentlm.metrics.boundaries import BoundaryScores, boundary_scores
from latentlm.metrics.perplexity import perplexity


def heldout_chunks(task) -> list[Chunk]:
    """The held-out chunks used for evaluation (the first `eval.max_chunks`)."""
    chunks = task.corpus.heldout
    limit = task.cfg.eval.max_chunks
    return chunks[:limit] if limit else chunks


def gold_for(model: nn.Module, batch: dict) -> list[torch.Tensor] | None:
    """Gold unit starts per level when the model places its boundaries at gold units (the oracle)."""
    config = getattr(model, "module", model).config
    if config.attention == "hierarchical" and config.hierarchy.boundaries == "gold":
        return gold_level_flags(batch, config.hierarchy.num_levels)
    return None


@torch.no_grad()
def heldout_metrics(task, model: nn.Module) -> dict[str, float]:
    """MLM loss and perplexity on held-out chunks with fixed masks, plus compression of each level.

    `task` is the run's `LHTPretrainTask` (its corpus, collate and masking).
    """
    chunks = heldout_chunks(task)
    if not chunks:
        raise ValueError("data.heldout_fraction: no held-out chunks; raise it or add documents")
    device = next(model.parameters()).device
    size = task.cfg.eval.batch_size
    total_nll, total_tokens = 0.0, 0
    stats_tokens, stats_units = {}, {}
    for start in range(0, len(chunks), size):
        items = [chunk_item(c, i) for i, c in enumerate(chunks[start : start + size])]
        batch = {k: v.to(device) for k, v in task.collate(items).items()}
        batch = task.mask(batch, task.cfg.eval.mask_seed + start)
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], gold_for(model, batch))
        count = int((batch["labels"] != -100).sum())
        if count:
            total_nll += out.mlm_loss.item() * count
            total_tokens += count
        if out.hierarchy is not None:
            for level, units in enumerate(out.hierarchy.token_units):
                stats_tokens[level] = stats_tokens.get(level, 0) + int(batch["attention_mask"].sum())
                stats_units[level] = stats_units.get(level, 0) + int((units.max(dim=1).values + 1).sum())
    metrics = {
        "mlm_loss": total_nll / max(total_tokens, 1),
        "perplexity": perplexity(total_nll, total_tokens),
        "masked_tokens": float(total_tokens),
    }
    for level in stats_tokens:
        metrics[f"level{level + 1}/tokens_per_unit"] = stats_tokens[level] / max(stats_units[level], 1)
    if not math.isfinite(metrics["perplexity"]):
        raise FloatingPointError(f"held-out perplexity is {metrics['perplexity']}")
    return metrics


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


def pad_one(chunk: Chunk) -> dict[str, torch.Tensor]:
    """A batch of one unmasked chunk (ids, mask and gold flags)."""
    return pad_batch([chunk_item(chunk, 0)], 0)


@torch.no_grad()
def learned_boundaries(model: nn.Module, chunk: Chunk, device: torch.device) -> list[list[int]]:
    """Token positions where each learned level starts a unit, for one unmasked chunk."""
    batch = {k: v.to(device) for k, v in pad_one(chunk).items()}
    out = model(batch["input_ids"], batch["attention_mask"], boundaries=gold_for(model, batch))
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
        batch = {k: v.to(device) for k, v in pad_one(chunk).items()}
        out = model(batch["input_ids"], batch["attention_mask"], boundaries=gold_for(model, batch))
        rows.append(out.doc_state[0].float().cpu().numpy())
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
        counts = Counter(c.category for c in kept)  # the sample can thin a category out: drop it
        kept = [c for c in kept if counts[c.category] >= min_documents]
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


def boundary_section(model: nn.Module, chunks: list[Chunk], tolerance: int, report: Report) -> dict | None:
    """Boundary P/R/F1 per level and gold kind, with random boundaries at the same rate; adds a table."""
    boundaries = evaluate_boundaries(model, chunks, tolerance)
    if boundaries is None:
        return None
    metrics = boundaries.as_dict(tolerance)
    report.heading(f"Boundaries vs gold (tolerance ±{tolerance} tokens, position 0 excluded)")
    rows = []
    for level, kinds in boundaries.scores.items():
        rate = 1.0 / boundaries.tokens_per_unit[level]
        random_scores = random_boundary_scores(chunks, tolerance, rate, seed=level)
        metrics["levels"][f"level{level + 1}"]["random_same_rate"] = {
            k: s.as_dict() for k, s in random_scores.items()
        }
        for kind, scores in kinds.items():
            rows.append(
                {
                    "level": level + 1,
                    "gold": kind,
                    "tokens/unit": round(boundaries.tokens_per_unit[level], 2),
                    "P": round(scores.precision, 3),
                    "R": round(scores.recall, 3),
                    "F1": round(scores.f1, 3),
                    "F1 random, same rate": round(random_scores[kind].f1, 3),
                }
            )
    report.table(rows)
    return metrics


def probe_section(model: nn.Module, chunks: list[Chunk], cfg, report: Report) -> dict | None:
    """The document-classification probe on the first chunk of every reST document; adds a table."""
    documents = probe_documents(chunks, cfg.eval.probe_min_documents, cfg.eval.probe_max_documents)
    categories = {d.category for d in documents}
    if len(categories) < 2:
        report.text(
            f"Classification probe skipped: {len(categories)} docs folder(s) with at least "
            f"{cfg.eval.probe_min_documents} documents."
        )
        return None
    probe = classification_probe(
        document_vectors(model, documents), [d.category for d in documents], cfg.eval.probe_folds
    )
    report.heading("Document-classification probe (docs folder, logistic regression, cross-validated)")
    report.table([{k: round(v, 4) for k, v in probe.items()}])
    return probe


def sample_section(model: nn.Module, chunks: list[Chunk], tokenizer, tokens: int, report: Report) -> None:
    """A picture and a text of learned vs gold boundaries on one held-out document."""
    # The picture shows a reST document when there is one: its markup gives all three gold kinds.
    candidates = [c for c in chunks if c.source.endswith((".rst", ".rst.txt"))][:16] or chunks[:16]
    sample = max(candidates, key=lambda c: len(c.gold["paragraph"]))
    learned = learned_boundaries(model, sample, next(model.parameters()).device)
    if not learned:
        return
    tokens = min(tokens, len(sample.ids))
    report.heading(f"Learned boundaries on a held-out document ({sample.source})")
    report.figure(boundary_picture(sample, learned, tokens, sample.source), "boundaries")
    report.text("```\n" + boundary_text(tokenizer, sample, learned, tokens) + "\n```")


def evaluate_model(task, model: nn.Module, title: str) -> tuple[dict, Report]:
    """Every measurement of the module docstring on a trained model; returns metrics and the report.

    `task` is the run's `LHTPretrainTask` (config, corpus, tokenizer).
    """
    cfg = task.cfg
    chunks = heldout_chunks(task)
    metrics: dict = {"heldout": heldout_metrics(task, model)}
    report = Report(title)
    report.text(
        f"Model: `{cfg.model.attention}` attention ({cfg.model.hierarchy.boundaries} boundaries), "
        f"{cfg.model.num_layers} layers, width {cfg.model.hidden_size}; {len(chunks)} held-out chunks of at "
        f"most {cfg.data.max_length} tokens."
    )
    report.heading("MLM perplexity (held-out)")
    report.table([{k: round(v, 4) for k, v in metrics["heldout"].items()}])
    boundaries = boundary_section(model, chunks, cfg.eval.tolerance, report)
    if boundaries is not None:
        metrics["boundaries"] = boundaries
    probe = probe_section(model, task.corpus.train + task.corpus.heldout, cfg, report)
    if probe is not None:
        metrics["probe"] = probe
    if chunks:
        sample_section(model, chunks, task.tokenizer, cfg.eval.sample_tokens, report)
    return metrics, report
