"""Metrics of generated text: judge-LM perplexity, unigram entropy, distinct-n and memorisation.

* ``generative_perplexity``: perplexity of samples under a frozen causal LM (the "judge"; SmolLM2 in
  the diffusion system), the standard quality proxy for non-autoregressive LMs (MDLM, SEDD).  Each
  text is scored after a BOS (or EOS) token, so every text token is predicted.
* ``unigram_entropy``: entropy (bits) of the pooled token distribution of the samples; very low values
  flag repetitive, degenerate samples that a judge LM can still rate as likely.
* ``distinct_n``: unique n-grams / all n-grams over the samples (Li et al. 2016).
* ``copied_fraction`` / ``ngram_overlap``: samples that repeat a training text verbatim, and the share of
  their word n-grams found in the training texts; a model that memorises its training sentences
  earns a low judge perplexity without generalising, so the two are read beside it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from latentlm.metrics.perplexity import perplexity

__all__ = ["generative_perplexity", "sequence_nlls", "unigram_entropy", "distinct_n"]


@torch.no_grad()
def sequence_nlls(
    texts: Sequence[str], model, tokenizer, batch_size: int = 8, max_length: int = 128
) -> list[tuple[float, int]]:
    """Summed NLL (nats) and number of predicted tokens of each text under a causal LM.

    Args:
        texts: strings to score (empty strings score (0, 0)).
        model: a Hugging Face causal LM (eval mode).
        tokenizer: its tokenizer.
        batch_size: texts per forward pass.
        max_length: text tokens kept per text.

    Returns:
        one ``(nll, num_tokens)`` per text.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("the judge tokenizer has neither a BOS nor an EOS token to start texts with")
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    for offset in range(0, len(texts), batch_size):
        rows = [
            [start, *tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]]
            for text in texts[offset : offset + batch_size]
        ]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), start, dtype=torch.long)
        attention = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            attention[i, : len(r)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
        log_probs = logits[:, :-1].log_softmax(-1)
        targets = ids[:, 1:].to(device)
        token_nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, width - 1)
        valid = attention[:, 1:].to(device).bool()
        for i in range(len(rows)):
            results.append((float(token_nll[i][valid[i]].sum()), int(valid[i].sum())))
    return results


def generative_perplexity(
    texts: Sequence[str], model, tokenizer, batch_size: int = 8, max_length: int = 128
) -> float:
    """exp(total NLL / total tokens) of ``texts`` under the judge LM (empty texts are skipped)."""
    scored = sequence_nlls([t for t in texts if t.strip()], model, tokenizer, batch_size, max_length)
    return perplexity(sum(n for n, _ in scored), sum(k for _, k in scored))


def unigram_entropy(token_lists: Sequence[Sequence]) -> float:
    """Entropy in bits of the pooled unigram distribution of all tokens (0 for no tokens)."""
    counts = Counter(tok for tokens in token_lists for tok in tokens)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def distinct_n(token_lists: Sequence[Sequence], n: int) -> float:
    """Unique n-grams divided by all n-grams over the samples (0 when there is none)."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [tuple(tokens[i : i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def copied_fraction(texts: Sequence[str], training: Iterable[str]) -> float:
    """Fraction of ``texts`` equal to a training text (whitespace-normalised): verbatim memorisation,
    which lowers generative perplexity without generalising (0 for no texts)."""
    seen = {" ".join(t.split()) for t in training}
    return sum(" ".join(t.split()) in seen for t in texts) / len(texts) if texts else 0.0


def ngram_overlap(texts: Sequence[str], training: Iterable[str], n: int) -> float:
    """Fraction of the word n-grams of ``texts`` that occur in the training texts (0 when there is none)."""
    if n < 1:
        raise ValueError(f"ngram_overlap: n must be >= 1, got {n}")

    def grams(text: str) -> list[tuple[str, ...]]:
        words = text.split()
        return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]

    seen = {g for t in training for g in grams(t)}
    sample = [g for t in texts for g in grams(t)]
    return sum(g in seen for g in sample) / len(sample) if sample else 0.0
