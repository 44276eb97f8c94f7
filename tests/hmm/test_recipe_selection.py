"""benchmarks/hmm_recipes.py's dev-split selection: the split, the rule, and the scores it records."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from benchmarks.hmm_recipes import dev_split, select_on_dev, select_setting

from latentlm.core.config import config_from_dict
from latentlm.hmm.config import HMMConfig, HMMRunConfig
from latentlm.hmm.data import UNK_ID, build_corpus
from latentlm.hmm.estimate import em_step
from latentlm.hmm.evaluate import heldout_metrics
from latentlm.hmm.lvd import LatentStates
from latentlm.hmm.model import HMMLanguageModel


@pytest.fixture
def base(tiny_corpus_file):
    data = {"path": str(tiny_corpus_file), "format": "lines", "heldout_fraction": 0.2, "max_length": 16}
    return {"run_dir": "", "data": data, "lvd": {"enabled": False}, "eval": {"batch_size": 128}}


@pytest.fixture
def corpus(base):
    return build_corpus(config_from_dict(HMMRunConfig, base).data)


def test_dev_split_takes_the_tail_of_training_and_maps_words_unseen_by_the_rest_to_unk(corpus):
    n = len(corpus.train)
    assert n == 8
    states = LatentStates(np.arange(corpus.train.num_tokens) % 3, corpus.train.offsets, "e", "s")
    dev_corpus, dev_states = dev_split(corpus, states, 0.25)
    rest = [corpus.train.sequence(i).tolist() for i in range(6)]
    seen = {w for sequence in rest for w in sequence}
    assert [dev_corpus.train.sequence(i).tolist() for i in range(len(dev_corpus.train))] == rest
    expected_dev = [[w if w in seen else UNK_ID for w in corpus.train.sequence(i)] for i in (6, 7)]
    assert [dev_corpus.heldout.sequence(i).tolist() for i in range(2)] == expected_dev
    assert dev_corpus.heldout.offsets[0] == 0 and dev_corpus.heldout.num_tokens == sum(map(len, expected_dev))
    # "the end of the tiny corpus ." has words no earlier training line has.
    assert UNK_ID in dev_corpus.heldout.ids and UNK_ID not in corpus.train.sequence(6)
    assert dev_corpus.vocab == corpus.vocab
    assert corpus.heldout.num_tokens > 0 and dev_corpus.heldout is not corpus.heldout
    for i in range(6):
        assert dev_states.sequence(i).tolist() == states.sequence(i).tolist()
    assert len(dev_states.states) == dev_corpus.train.num_tokens
    assert (corpus.train.ids[corpus.train.offsets[6] :] != UNK_ID).all()  # the original is untouched


def test_dev_split_rejects_a_fraction_that_leaves_no_training_sequence(corpus):
    with pytest.raises(ValueError, match="--dev-fraction"):
        dev_split(corpus, None, 0.95)
    with pytest.raises(ValueError, match="--dev-fraction"):
        dev_split(corpus, None, 0.0)


def test_select_setting_picks_the_lowest_dev_perplexity_first_on_ties_and_skips_nan():
    assert select_setting({0.001: 250.0, 0.003: 240.0, 0.01: 240.0}) == 0.003
    assert select_setting({0.001: math.nan, 0.003: 300.0, 0.01: 310.0}) == 0.003
    assert select_setting({0.01: 5.0, 0.02: math.inf, 0.05: 4.0}) == 0.05
    with pytest.raises(ValueError, match="finite"):
        select_setting({0.001: math.nan, 0.01: math.inf})


def test_select_on_dev_scores_each_pseudocount_by_one_em_iteration_on_the_dev_split(tmp_path, base, corpus):
    args = SimpleNamespace(
        pseudocount=0.01,
        adamw_lr=0.02,
        adamw_batch=2,
        pseudocount_candidates=[0.001, 0.3, 3.0],
        adamw_lr_candidates=[0.01],
        select_epochs=1,
        dev_fraction=0.25,
        out=str(tmp_path / "runs"),
    )
    selection = select_on_dev(base, "random_em", 3, args, corpus, None, "toy")
    dev_corpus, _ = dev_split(corpus, None, 0.25)
    expected = {}
    for alpha in args.pseudocount_candidates:
        model = HMMLanguageModel(HMMConfig(num_states=3, vocab_size=len(corpus.vocab)))
        batches = []
        for i in range(len(dev_corpus.train)):
            obs = torch.from_numpy(dev_corpus.train.sequence(i).astype(np.int64))[None]  # (1, T)
            batches.append((obs, torch.ones_like(obs, dtype=torch.bool)))
        em_step(model, batches, pseudocount=alpha)
        expected[alpha] = heldout_metrics(model, dev_corpus.heldout, 128)["heldout_ppl"]
    assert selection["setting"] == "pseudocount" and selection["dev_epochs"] == 1
    for alpha, ppl in expected.items():
        assert selection["dev_ppl"][str(alpha)] == pytest.approx(ppl, rel=1e-3)
    assert selection["chosen"] == min(expected, key=expected.get)
    assert len(set(np.round(list(expected.values()), 2))) == 3  # the candidates are told apart
    assert selection["dev_tokens"] == dev_corpus.heldout.num_tokens
    assert selection["dev_train_tokens"] == dev_corpus.train.num_tokens
