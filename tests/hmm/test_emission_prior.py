"""The emission rows' smoothing, checked against brute force on tiny cases: em/lvd.emission_prior =
unigram (each emission row gets the pseudo-mass α·V spread like the training split's add-one unigram
distribution) and em/lvd.emission_pseudocount (the emission rows' own α)."""

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from latentlm.hmm.data import build_corpus
from latentlm.hmm.em import EM
from latentlm.hmm.estimate import em_step, normalise_counts, unigram_prior
from latentlm.hmm.lvd import LatentStates, closed_form_estimate
from latentlm.hmm.model import HMMLanguageModel
from tests.hmm.conftest import sentence_batches
from tests.hmm.test_em import fit, run_cfg


def test_unigram_prior_is_add_one_frequencies():
    prior = unigram_prior(np.array([0, 2, 2, 3], dtype=np.int32), 5)
    assert_close(prior, torch.tensor([2, 1, 3, 2, 1], dtype=torch.float64) / 9)
    with pytest.raises(ValueError, match="vocab_size"):
        unigram_prior(np.array([7]), 5)


def test_normalise_counts_spreads_the_row_mass_like_the_prior():
    gen = torch.Generator().manual_seed(0)
    start, transition, emission = (
        torch.rand(s, generator=gen, dtype=torch.float64) * 3 for s in ((2,), (2, 2), (2, 4))
    )
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    alpha = 0.5
    out = normalise_counts(start, transition, emission, alpha, prior)
    expected = emission + alpha * 4 * prior  # same total pseudo-mass α·V per row as the uniform α
    assert_close(out.log_emission.exp(), expected / expected.sum(-1, keepdim=True))
    assert_close(out.log_transition.exp(), (transition + alpha) / (transition + alpha).sum(-1, keepdim=True))
    uniform = normalise_counts(start, transition, emission, alpha)
    assert_close(uniform.log_emission.exp(), (emission + alpha) / (emission + alpha).sum(-1, keepdim=True))
    # A uniform prior is the uniform pseudocount.
    assert_close(
        normalise_counts(
            start, transition, emission, alpha, torch.full((4,), 0.25, dtype=torch.float64)
        ).log_emission,
        uniform.log_emission,
    )


def test_em_optimizer_with_pseudocount_weights_smooths_that_group_only():
    counts = torch.tensor([[1.0, 3.0], [0.0, 2.0]], dtype=torch.float64)
    a = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    weights = torch.tensor([0.5, 1.5], dtype=torch.float64)
    optimizer = EM([{"params": [a]}, {"params": [b], "pseudocount_weights": weights}], pseudocount=0.2)
    a.grad, b.grad = -counts, -counts
    optimizer.step()
    plain, weighted = counts + 0.2, counts + 0.2 * weights
    assert_close(a.detach().exp(), plain / plain.sum(-1, keepdim=True))
    assert_close(b.detach().exp(), weighted / weighted.sum(-1, keepdim=True))


def test_em_with_unigram_prior_on_the_engine_equals_reference_em_steps(tmp_path, tiny_corpus_file):
    cfg = run_cfg(tmp_path, tiny_corpus_file, em__emission_prior="unigram", train__max_steps=3)
    corpus = build_corpus(cfg.data)
    model, _, _ = fit(cfg, corpus)
    reference = HMMLanguageModel(cfg.model)
    batches = sentence_batches(corpus.train)
    prior = unigram_prior(corpus.train.ids, len(corpus.vocab))
    for _ in range(3):
        em_step(reference, batches, pseudocount=0.05, emission_prior=prior)
    for a, b in zip(model.log_parameters(), reference.log_parameters(), strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-5)
    uniform = HMMLanguageModel(cfg.model)
    for _ in range(3):
        em_step(uniform, batches, pseudocount=0.05)
    assert not torch.allclose(
        uniform.log_parameters().log_emission, model.log_parameters().log_emission, atol=1e-3
    )


def test_closed_form_with_unigram_prior_is_the_smoothed_count_estimate(tmp_path, tiny_corpus_file):
    cfg = run_cfg(tmp_path, tiny_corpus_file)
    corpus = build_corpus(cfg.data)
    k, v, alpha = 3, len(corpus.vocab), 0.4
    states = LatentStates(
        np.arange(corpus.train.num_tokens, dtype=np.int32) % k, corpus.train.offsets, "e", "s"
    )
    out = closed_form_estimate(corpus, states, k, alpha, emission_prior="unigram")
    emission = torch.zeros(k, v, dtype=torch.float64)
    for i in range(len(corpus.train)):
        for word, state in zip(corpus.train.sequence(i), states.sequence(i), strict=True):
            emission[state, word] += 1
    prior = unigram_prior(corpus.train.ids, v)
    expected = emission + alpha * v * prior
    assert_close(out.log_emission, (expected / expected.sum(-1, keepdim=True)).log().float())


@pytest.mark.parametrize("field", ["em__emission_prior", "lvd__emission_prior"])
def test_unknown_emission_prior_is_refused_naming_the_field(tmp_path, tiny_corpus_file, field):
    with pytest.raises(ValueError, match=field.replace("__", r"\.")):
        run_cfg(tmp_path, tiny_corpus_file, **{field: "zipf"})


def test_emission_pseudocount_smooths_the_emission_rows_alone(tmp_path, tiny_corpus_file):
    gen = torch.Generator().manual_seed(1)
    start, transition, emission = (
        torch.rand(s, generator=gen, dtype=torch.float64) * 3 for s in ((2,), (2, 2), (2, 4))
    )
    out = normalise_counts(start, transition, emission, 0.5, emission_pseudocount=2.0)
    assert_close(out.log_start.exp(), (start + 0.5) / (start + 0.5).sum())
    assert_close(out.log_transition.exp(), (transition + 0.5) / (transition + 0.5).sum(-1, keepdim=True))
    assert_close(out.log_emission.exp(), (emission + 2.0) / (emission + 2.0).sum(-1, keepdim=True))
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    spread = emission + 2.0 * 4 * prior
    assert_close(
        normalise_counts(start, transition, emission, 0.5, prior, 2.0).log_emission.exp(),
        spread / spread.sum(-1, keepdim=True),
    )
    # The closed-form LVD phase on a corpus: lvd.emission_pseudocount reaches the estimate.
    cfg = run_cfg(tmp_path, tiny_corpus_file)
    corpus = build_corpus(cfg.data)
    k = 3
    states = LatentStates(
        np.arange(corpus.train.num_tokens, dtype=np.int32) % k, corpus.train.offsets, "e", "s"
    )
    both = closed_form_estimate(corpus, states, k, 0.4, emission_pseudocount=0.05)
    alone = closed_form_estimate(corpus, states, k, 0.4)
    assert_close(both.log_transition, alone.log_transition)
    assert_close(both.log_emission, closed_form_estimate(corpus, states, k, 0.05).log_emission)


def test_em_with_emission_pseudocount_on_the_engine_equals_reference_em_steps(tmp_path, tiny_corpus_file):
    cfg = run_cfg(tmp_path, tiny_corpus_file, em__emission_pseudocount=0.5, train__max_steps=3)
    corpus = build_corpus(cfg.data)
    model, _, _ = fit(cfg, corpus)
    reference = HMMLanguageModel(cfg.model)
    batches = sentence_batches(corpus.train)
    for _ in range(3):
        em_step(reference, batches, pseudocount=0.05, emission_pseudocount=0.5)
    for a, b in zip(model.log_parameters(), reference.log_parameters(), strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("field", ["em__emission_pseudocount", "lvd__emission_pseudocount"])
def test_negative_emission_pseudocount_is_refused_naming_the_field(tmp_path, tiny_corpus_file, field):
    with pytest.raises(ValueError, match=field.replace("__", r"\.")):
        run_cfg(tmp_path, tiny_corpus_file, **{field: -0.1})
