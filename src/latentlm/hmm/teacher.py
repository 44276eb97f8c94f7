"""Step 1 of LVD: a contextual teacher embedding for every training token.

The teacher is a frozen encoder (MiniLM by default) or causal LM (SmolLM2, any Hugging Face model by
name or path). For each sequence the teacher input is built position by position:

* word tokenizer: every word's surface form (``" word"``) is tokenised on its own; the word's
  embedding is the mean of its subwords' hidden states (alignment by construction, no offsets);
* teacher tokenizer: one teacher token per HMM position.

The ``<eos>`` position takes the hidden state of the teacher's closing special token (``[SEP]`` for
BERT-like encoders) or of an appended end-of-sequence token (causal LMs).

With ``position: previous`` (causal teachers, GeLaTo's choice) a token takes instead the state just
before its first subword, the teacher's prediction of it; every row then starts with the teacher's
start token (BOS, or EOS when it has none) so that the first token has a state before it.

Inputs longer than ``max_length`` are cut into windows at position boundaries. Rows are sorted by
length and batched, with a progress bar; the result is a float16 ``(N_tokens, d)`` array, cached on
disk (memory-mapped) under a content hash of the corpus, the teacher and these settings.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from latentlm.core.run import progress
from latentlm.hmm.config import TeacherConfig


class TokenSequences(Protocol):
    """What the teacher reads of a `latentlm.hmm.data.SequenceSet` (named structurally: data.py imports
    this module, so importing data.py here would be a cycle)."""

    pieces: list[list]
    offsets: np.ndarray

    @property
    def num_tokens(self) -> int: ...


def teacher_kind(cfg: TeacherConfig) -> str:
    """Resolve ``kind: auto`` to ``encoder`` or ``causal_lm`` (raises for an unknown teacher)."""
    from latentlm.teachers import resolve_model

    try:
        source = resolve_model(cfg.name)
    except FileNotFoundError as err:
        raise ValueError(f"lvd.teacher.name: {err}") from err
    if cfg.kind != "auto":
        return cfg.kind
    if source.gguf_file:
        return "causal_lm"
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.path, local_files_only=source.hub_id != source.path)
    except OSError as err:
        raise ValueError(f"lvd.teacher.name: cannot read the config of {cfg.name!r}: {err}") from err
    architectures = getattr(config, "architectures", None) or []
    return "causal_lm" if any(a.endswith("ForCausalLM") for a in architectures) else "encoder"


def load_teacher(cfg: TeacherConfig):
    """``(model, tokenizer, kind)`` for the configured teacher, frozen, on CPU."""
    from latentlm import teachers

    kind = teacher_kind(cfg)
    loader = teachers.load_causal_lm if kind == "causal_lm" else teachers.load_encoder
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    try:
        model, tokenizer = loader(cfg.name, dtype=getattr(torch, cfg.dtype), device=device)
    except OSError as err:
        raise ValueError(f"lvd.teacher.name: cannot load {cfg.name!r} as a {kind}: {err}") from err
    return model, tokenizer, kind


def load_teacher_tokenizer(cfg: TeacherConfig):
    """Only the tokenizer of the configured teacher (for ``corpus.tokenizer: teacher``)."""
    from latentlm.teachers import load_tokenizer

    teacher_kind(cfg)
    return load_tokenizer(cfg.name)


class _RowBuilder:
    """Turns sequences of pieces into teacher rows with a position -> HMM token map."""

    def __init__(self, tokenizer, kind: str, max_length: int, start_token: bool = False) -> None:
        self.tokenizer = tokenizer
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        at = _find(with_special, plain)
        self.prefix, self.suffix = list(with_special[:at]), list(with_special[at + len(plain) :])
        closing = tokenizer.sep_token_id if kind == "encoder" else tokenizer.eos_token_id
        if closing is None:
            closing = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if closing is None and not self.suffix:
            raise ValueError("lvd.teacher.name: the teacher's tokenizer has no end-of-sequence token")
        self.closing = closing
        if start_token and not self.prefix:  # a state before the first token (GPT-2 style: EOS starts)
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else closing
            self.prefix = [start]
        self.budget = max_length - len(self.prefix) - len(self.suffix) - 1
        self.cache: dict = {}

    def piece_ids(self, piece) -> list[int]:
        if isinstance(piece, int | np.integer):
            return [int(piece)]
        if piece not in self.cache:
            self.cache[piece] = list(self.tokenizer(piece, add_special_tokens=False)["input_ids"]) or [
                self.closing
            ]
        return self.cache[piece]

    def rows(self, pieces: list, first_token: int) -> list[tuple[list[int], list[int]]]:
        """``(teacher ids, owner)`` rows; ``owner[j]`` = global HMM position of teacher token j or -1."""
        rows, ids, owner = [], [], []
        for index, piece in enumerate(pieces):
            if piece is None:  # <eos>: closing special token
                if self.suffix and index == len(pieces) - 1:
                    ids.append(None)
                else:
                    ids.append(self.closing)
                owner.append(first_token + index)
                continue
            sub = self.piece_ids(piece)[: self.budget]
            if len(ids) + len(sub) > self.budget:
                rows.append(self._close(ids, owner))
                ids, owner = [], []
            ids.extend(sub)
            owner.extend([first_token + index] * len(sub))
        if ids:
            rows.append(self._close(ids, owner))
        return rows

    def _close(self, ids: list, owner: list) -> tuple[list[int], list[int]]:
        if ids and ids[-1] is None:
            # The EOS position is the first suffix token ([SEP]) instead of an extra token.
            body, eos_owner = ids[:-1], owner[-1]
            row = self.prefix + body + self.suffix
            owners = [-1] * len(self.prefix) + owner[:-1] + [eos_owner] + [-1] * (len(self.suffix) - 1)
            return row, owners
        return self.prefix + ids + self.suffix, [-1] * len(self.prefix) + owner + [-1] * len(self.suffix)


def _find(haystack: list, needle: list) -> int:
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start : start + len(needle)] == needle:
            return start
    raise ValueError(
        "lvd.teacher.name: cannot locate plain tokens inside the tokenizer's special-token template"
    )


@torch.no_grad()
def embed_sequences(model, tokenizer, kind: str, sequences: TokenSequences, cfg: TeacherConfig) -> np.ndarray:
    """Teacher embeddings of every HMM token, pooled per token; ``(N_tokens, d)`` float16.

    Args:
        model, tokenizer, kind: from :func:`load_teacher`.
        sequences: the training sequences (their ``pieces`` are what the teacher sees).
        cfg: batch size, window length, layer and position (``token`` or ``previous``).
    """
    previous = cfg.position == "previous"
    if previous and kind != "causal_lm":
        raise ValueError(
            f"lvd.teacher.position: previous needs a causal LM teacher; {cfg.name!r} is an {kind}"
        )
    builder = _RowBuilder(tokenizer, kind, cfg.max_length, start_token=previous)
    rows: list[tuple[list[int], list[int]]] = []
    for index, pieces in enumerate(sequences.pieces):
        rows.extend(builder.rows(pieces, int(sequences.offsets[index])))
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else builder.closing
    total = sequences.num_tokens
    # The same hidden states without a causal LM's vocabulary projection (a quarter of SmolLM2's flops).
    backbone = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    sums: torch.Tensor | None = None
    counts = torch.zeros(total)
    bar = progress(total=len(rows), desc=f"teacher {cfg.name}")
    for start in range(0, len(order), cfg.batch_size):
        batch = [rows[r] for r in order[start : start + cfg.batch_size]]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        owners = torch.full((len(batch), width), -1, dtype=torch.long)
        for b, (ids, owner) in enumerate(batch):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention[b, : len(ids)] = 1
            owners[b, : len(ids)] = torch.tensor(owner)
        out = backbone(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), output_hidden_states=True
        )
        hidden = out.hidden_states[cfg.layer].float().cpu()  # (rows, width, d)
        if sums is None:
            sums = torch.zeros(total, hidden.shape[-1])
        if previous:  # a token's first subword takes the state one position before it
            first = (owners[:, 1:] >= 0) & (owners[:, 1:] != owners[:, :-1])  # (rows, width - 1)
            targets, states = owners[:, 1:][first], hidden[:, :-1][first]
        else:
            keep = owners >= 0
            targets, states = owners[keep], hidden[keep]
        sums.index_add_(0, targets, states)
        counts.index_add_(0, targets, torch.ones(len(targets)))
        bar.update(len(batch))
    bar.close()
    if sums is None or bool((counts == 0).any()):
        raise ValueError("teacher embeddings: some HMM tokens received no teacher state")
    return (sums / counts.unsqueeze(1)).to(torch.float16).numpy()
