"""Generation metrics against hand computation: judge perplexity, entropy, distinct-n, memorisation."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from latentlm.metrics.generation import (
    copied_fraction,
    distinct_n,
    generative_perplexity,
    ngram_overlap,
    sequence_nlls,
    unigram_entropy,
)


class _CharTokenizer:
    """One token per character (ids 2..), BOS = 0, EOS = 1."""

    bos_token_id, eos_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 40) for c in text]}


def test_judge_perplexity_matches_token_by_token_scoring():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=42, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    tok = _CharTokenizer()
    texts = ["abc", "hello there", "", "xy"]
    total_nll, total_tokens = 0.0, 0
    for text in texts:
        if not text:
            continue
        ids = torch.tensor([[0, *tok(text)["input_ids"]]])
        with torch.no_grad():
            log_probs = model(ids).logits[0].log_softmax(-1)
        for pos in range(1, ids.shape[1]):  # every text token predicted from its full prefix
            total_nll -= float(log_probs[pos - 1, ids[0, pos]])
            total_tokens += 1
    got = generative_perplexity(texts, model, tok, batch_size=3)  # padding inside batches
    assert math.isclose(got, math.exp(total_nll / total_tokens), rel_tol=1e-5)
    per_text = sequence_nlls(["abc"], model, tok)
    assert per_text[0][1] == 3


def test_unigram_entropy_and_distinct_n_by_hand():
    samples = [["a", "b", "a"], ["a", "c"]]
    # p(a) = 3/5, p(b) = p(c) = 1/5
    expected = -(0.6 * math.log2(0.6) + 2 * 0.2 * math.log2(0.2))
    assert math.isclose(unigram_entropy(samples), expected)
    assert unigram_entropy([]) == 0.0
    assert math.isclose(distinct_n(samples, 1), 3 / 5)
    assert math.isclose(distinct_n(samples, 2), 3 / 3)  # (a,b), (b,a), (a,c)
    assert distinct_n([["a", "a", "a"]], 2) == 0.5
    with pytest.raises(ValueError):
        distinct_n(samples, 0)


def test_memorisation_measures_by_hand():
    training = ["the cat sat", "a  dog ran far"]
    texts = ["the cat sat", "a dog ran far", "the cat ran", ""]
    assert copied_fraction(texts, training) == 2 / 4  # whitespace-normalised equality
    # word bigrams of the texts: (the cat) (cat sat) | (a dog) (dog ran) (ran far) | (the cat) (cat ran)
    assert ngram_overlap(texts, training, 2) == pytest.approx(6 / 7)
    assert ngram_overlap(texts, training, 4) == pytest.approx(1.0)  # only "a dog ran far"
    assert ngram_overlap(["one two"], training, 3) == 0.0 and copied_fraction([], training) == 0.0
    with pytest.raises(ValueError, match="n must be >= 1"):
        ngram_overlap(texts, training, 0)
