"""Text baselines at equal positions for the context scope (issue 12).

Every baseline keeps at most M context tokens of the frozen model's own tokenizer, M being the
latent's number of soft tokens for that question, and sends them where the latent would sit:
`[prefix][M context tokens][question][suffix][anchor]`.

- `no_context`: no context at all (the floor).
- `token_budget`: the first M context tokens.
- `anchor_budget`: the context sentences from the most to the least similar to the question
  (MiniLM sentence embeddings), the first M tokens of that text: query-aware extraction.
- `external`: Selective Context (Li et al., 2023) under a frozen scorer LM (SmolLM2): the words
  with the highest self-information -log p(token | preceding text) are kept, in text order, until
  M scorer tokens are used. It stands in for LLMLingua: the PyPI `llmlingua` package (0.2.2) cannot
  run offline, because `PromptCompressor.__init__` calls `tiktoken.encoding_for_model`, which
  downloads the `cl100k_base` table, and its sentence split needs NLTK's `punkt_tab` download.
- `text`: the whole context (the ceiling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentlm.wire.features import SentenceStates, ranked_sentences
from latentlm.wire.frozen import FrozenLM

TEXT_BASELINES = ("no_context", "token_budget", "anchor_budget", "external", "text")


@torch.no_grad()
def self_information(scorer: FrozenLM, text: str) -> tuple[list[int], list[float]]:
    """The scorer's token ids of `text` and each token's self-information -log p(t_k | t_<k) in nats.

    The first token is conditioned on the tokenizer's BOS (or EOS when there is no BOS)."""
    ids = scorer.encode(text)
    if not ids:
        return [], []
    start = scorer.tokenizer.bos_token_id
    if start is None:
        start = scorer.tokenizer.eos_token_id if scorer.tokenizer.eos_token_id is not None else scorer.pad_id
    seq = torch.tensor([[start, *ids]], device=scorer.device)
    logits = scorer.model(input_ids=seq, use_cache=False).logits[0, :-1].float()  # (n, V)
    logp = torch.log_softmax(logits, -1).gather(-1, seq[0, 1:, None]).squeeze(-1)  # (n,)
    return ids, (-logp).tolist()


def words_of(scorer: FrozenLM, ids: Sequence[int]) -> list[list[int]]:
    """Group token positions into words: a new word starts at a token whose text starts with
    whitespace (byte-level BPE marks it so); each position belongs to exactly one word."""
    words: list[list[int]] = []
    for pos, token in enumerate(ids):
        piece = scorer.tokenizer.decode([token])
        if not words or piece[:1].isspace():
            words.append([pos])
        else:
            words[-1].append(pos)
    return words


def selective_context(scorer: FrozenLM, text: str, budget: int, scored=None) -> str:
    """Selective Context at a budget of `budget` scorer tokens (words by descending self-information,
    kept in text order). `scored`: a `self_information(scorer, text)` result to reuse."""
    ids, info = scored if scored is not None else self_information(scorer, text)
    words = words_of(scorer, ids)
    ranked = sorted(range(len(words)), key=lambda w: -sum(info[p] for p in words[w]))
    kept, used = set(), 0
    for w in ranked:
        if used + len(words[w]) <= budget:
            kept.add(w)
            used += len(words[w])
    positions = [p for w in sorted(kept) for p in words[w]]
    return scorer.tokenizer.decode([ids[p] for p in positions]).strip()


def baseline_context_ids(
    method: str,
    lm: FrozenLM,
    context: str,
    question: str,
    budget: int,
    sentence: SentenceStates | None = None,
    external_text: str | None = None,
) -> list[int]:
    """This model's context token ids for a text baseline (at most `budget` of them, except `text`)."""
    if method == "no_context":
        return []
    if method == "text":
        return lm.encode(context)
    if method == "token_budget":
        return lm.encode(context)[:budget]
    if method == "anchor_budget":
        if sentence is None:
            raise ValueError("the anchor_budget baseline needs the sentence encoder (MiniLM)")
        return lm.encode(ranked_sentences(sentence, context, question))[:budget]
    if method == "external":
        if external_text is None:
            raise ValueError("the external baseline needs the compressed text (selective_context)")
        return lm.encode(external_text)[:budget]
    raise ValueError(f"unknown context baseline {method!r}; choose one of {', '.join(TEXT_BASELINES)}")
