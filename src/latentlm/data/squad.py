"""SQuAD v1.1 reader: the official JSON layout from a path, or the Hugging Face `squad` dataset.

Produces flat `SquadExample`s (id, context, question, gold answers). Malformed files fail with a
message that names the file and the offending article/paragraph/question.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from latentlm.data.corpora import read_utf8


@dataclass(frozen=True)
class SquadExample:
    """One extractive question: the paragraph, the question and every gold answer text."""

    id: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...] = field(default=())
    title: str = ""


class SquadFormatError(ValueError):
    """A SQuAD file does not follow the v1.1 layout."""


def _require(obj: dict, key: str, where: str, kind: type):
    if not isinstance(obj, dict) or key not in obj:
        raise SquadFormatError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        raise SquadFormatError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def parse_squad(obj: dict, source: str = "<squad>") -> list[SquadExample]:
    """Flatten a SQuAD v1.1 JSON object into examples.

    Args:
        obj: the decoded JSON (``{"data": [...], "version": ...}``).
        source: a name for error messages (the file path).

    Raises:
        SquadFormatError: naming the source and the article/paragraph/question index.
    """
    articles = _require(obj, "data", source, list)
    examples: list[SquadExample] = []
    for a, article in enumerate(articles):
        where_a = f"{source}: data[{a}]"
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_require(article, "paragraphs", where_a, list)):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = _require(paragraph, "context", where_p, str)
            for q, qa in enumerate(_require(paragraph, "qas", where_p, list)):
                where_q = f"{where_p}.qas[{q}]"
                question = _require(qa, "question", where_q, str)
                answers = _require(qa, "answers", where_q, list)
                if not answers:
                    raise SquadFormatError(f"{where_q}: no answers (SQuAD v1.1 questions all have one)")
                texts = tuple(_require(ans, "text", f"{where_q}.answers", str) for ans in answers)
                starts = tuple(int(ans.get("answer_start", -1)) for ans in answers)
                for k, (start, answer) in enumerate(zip(starts, texts, strict=True)):
                    if "answer_start" in answers[k] and not 0 <= start <= len(context) - len(answer):
                        raise SquadFormatError(
                            f"{where_q}.answers[{k}].answer_start: {start} does not fit the answer "
                            f"({len(answer)} characters) inside the context ({len(context)} characters)"
                        )
                qid = str(qa.get("id", f"{a}-{p}-{q}"))
                examples.append(SquadExample(qid, context, question, texts, starts, title))
    return examples


def load_squad(path_or_name: str | Path, split: str = "validation") -> list[SquadExample]:
    """Read SQuAD v1.1 from a JSON file, or from the Hugging Face dataset named ``squad``.

    Args:
        path_or_name: a path to an official-format JSON file, or ``"squad"`` (Hugging Face).
        split: Hugging Face split (``train`` / ``validation``); ignored for files.

    Raises:
        FileNotFoundError: the path does not exist (and is not ``squad``).
        SquadFormatError: the JSON is malformed or not in the v1.1 layout.
    """
    text = str(path_or_name)
    if text == "squad":
        return _load_hf_squad(split)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file not found: {path} (pass a v1.1 JSON path or 'squad')")
    try:
        obj = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise SquadFormatError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    examples = parse_squad(obj, str(path))
    if not examples:
        raise SquadFormatError(f"{path}: contains no questions")
    return examples


def _load_hf_squad(split: str) -> list[SquadExample]:
    import datasets

    rows = datasets.load_dataset("squad", split=split)
    return [
        SquadExample(
            str(r["id"]),
            r["context"],
            r["question"],
            tuple(r["answers"]["text"]),
            tuple(int(s) for s in r["answers"]["answer_start"]),
            r.get("title", ""),
        )
        for r in rows
    ]


def select_examples(examples: list[SquadExample], limit: int, offset: int = 0) -> list[SquadExample]:
    """A deterministic slice ``examples[offset:offset+limit]`` (``limit<=0`` keeps all from offset)."""
    if offset < 0:
        raise ValueError("select_examples: offset must be >= 0")
    end = None if limit <= 0 else offset + limit
    return examples[offset:end]
