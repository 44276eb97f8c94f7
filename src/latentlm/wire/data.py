"""Where LatentWire's questions come from: SQuAD JSON, the Hugging Face dataset or synthetic QA.

`resolve_examples` reads the questions of one split; `QAItem` is one training question as the task
batches it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from latentlm.data.squad import SquadExample, load_squad, select_examples
from latentlm.data.synthetic_qa import synthetic_squad
from latentlm.wire.frozen import format_content


def resolve_examples(
    spec: str, split: str, limit: int, max_context_chars: int, offset: int = 0, seed: int = 0
) -> list[SquadExample]:
    """Questions from 'synthetic', 'squad' (Hugging Face) or a JSON path (relative: under $LATENTLM_DATA).

    Keeps paragraphs of at most `max_context_chars` characters, then `limit` questions from `offset`.
    """
    if spec == "synthetic":
        return synthetic_squad(offset + (limit or 64), seed=seed + (0 if split == "train" else 1))[offset:]
    if spec == "squad":
        examples = load_squad("squad", split=split)
    else:
        path = Path(spec)
        if not path.is_absolute() and not path.exists():
            from latentlm.data.paths import data_root

            path = data_root() / spec
        examples = load_squad(path)
    if max_context_chars > 0:
        examples = [e for e in examples if len(e.context) <= max_context_chars]
    return select_examples(examples, limit, offset)


@dataclass
class QAItem:
    """One training question as the task sees it."""

    index: int
    content: str
    answer: str
    answers: tuple[str, ...]
    context: str = ""
    question: str = ""


def to_items(examples: list[SquadExample]) -> list[QAItem]:
    return [
        QAItem(i, format_content(e.context, e.question), e.answers[0], e.answers, e.context, e.question)
        for i, e in enumerate(examples)
    ]


@dataclass
class ContextExample:
    """A question prepared for the context scope: the context the latent and every baseline see."""

    id: str
    context: str
    question: str
    answers: tuple[str, ...]
    positions: int
    """M: the soft tokens of the latent, and the context tokens every text baseline may keep."""
    context_tokens: int
    """Encoder (sentence-encoder) tokens of the context after any cut."""
    truncated: bool = False


def prepare_context_examples(
    examples: Sequence[SquadExample], tokenizer, ratio: int, max_positions: int, max_tokens: int
) -> list[ContextExample]:
    """Context-scope questions with their position budget M = ceil(n / ratio) (at least 1).

    n counts the encoder tokenizer's tokens of the context (no special tokens). Defined behaviour at
    the edges, checked here before any model runs:

    - an empty question or an empty context: `ValueError` naming the question id (the context
      scope keeps the question as text; there is nothing to ask or nothing to compress);
    - a context shorter than `ratio` tokens: one position (its span is padded);
    - a context longer than the encoder reads (`max_tokens` minus its two special tokens) or than
      `max_positions * ratio`: cut after the last token that fits, for the latent and every
      baseline alike, with one warning naming the ids.
    """
    limit = min(max_tokens - 2, max_positions * ratio)
    prepared, cut = [], []
    for example in examples:
        if not example.question.strip():
            raise ValueError(
                f"question {example.id}: the question is empty (the context scope asks it as text)"
            )
        if not example.context.strip():
            raise ValueError(f"question {example.id}: the context is empty (nothing to compress)")
        offsets = tokenizer(example.context, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        context = example.context
        if len(offsets) > limit:
            context = context[: offsets[limit - 1][1]]
            cut.append(example.id)
        count = min(len(offsets), limit)
        prepared.append(
            ContextExample(
                example.id,
                context,
                example.question,
                tuple(example.answers),
                max(1, math.ceil(count / ratio)),
                count,
                len(offsets) > limit,
            )
        )
    if cut:
        warnings.warn(
            f"{len(cut)} context(s) longer than {limit} encoder tokens were cut (question ids: "
            f"{', '.join(map(str, cut[:10]))}{' ...' if len(cut) > 10 else ''})",
            stacklevel=2,
        )
    return prepared
