"""Where LatentWire's questions come from: SQuAD JSON, the Hugging Face dataset or synthetic QA.

`resolve_examples` reads the questions of one split; `QAItem` is one training question as the task
batches it.
"""

from __future__ import annotations

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
