"""benchmarks/hmm_recipes.py's protocol: every candidate stopped early on the dev split, the kept model
and the chosen setting decided by dev perplexity only, larger K reusing a smaller K's choice."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from benchmarks.hmm_recipes import (
    em_candidates,
    kept_point,
    parse_em_candidate,
    recipe_config,
    reused_setting,
    select_setting,
    train_candidates,
)

from latentlm.core.config import config_from_dict
from latentlm.hmm.config import HMMConfig, HMMRunConfig
from latentlm.hmm.data import build_corpus
from latentlm.hmm.estimate import em_step, unigram_prior
from latentlm.hmm.evaluate import heldout_metrics
from latentlm.hmm.model import HMMLanguageModel
from latentlm.hmm.task import HMMTask
from tests.hmm.conftest import sentence_batches


@pytest.fixture
def base(tiny_corpus_file):
    data = {
        "path": str(tiny_corpus_file),
        "format": "lines",
        "heldout_fraction": 0.2,
        "dev_fraction": 0.25,
        "max_length": 16,
    }
    return {"run_dir": "", "data": data, "lvd": {"enabled": False}, "eval": {"batch_size": 128}}


@pytest.fixture
def corpus(base):
    return build_corpus(config_from_dict(HMMRunConfig, base).data)


def test_select_setting_picks_the_lowest_dev_perplexity_first_on_ties_and_skips_nan():
    assert select_setting({0.001: 250.0, 0.003: 240.0, 0.01: 240.0}) == 0.003
    assert select_setting({0.001: math.nan, 0.003: 300.0, 0.01: 310.0}) == 0.003
    assert select_setting({0.01: 5.0, 0.02: math.inf, 0.05: 4.0}) == 0.05
    with pytest.raises(ValueError, match="finite"):
        select_setting({0.001: math.nan, 0.01: math.inf})


def test_kept_point_is_the_lowest_dev_perplexity_never_the_lowest_held_out():
    points = [
        {"epoch": 1, "dev_ppl": 9.0, "heldout_ppl": 1.0},
        {"epoch": 2, "dev_ppl": 5.0, "heldout_ppl": 7.0},
        {"epoch": 3, "dev_ppl": 5.0, "heldout_ppl": 6.0},
    ]
    assert kept_point(points)["epoch"] == 2


def test_reused_setting_comes_from_the_largest_selected_k_below():
    rows = [
        {"corpus": "a", "recipe": "random_em", "K": 64, "selection": {"chosen": 0.1, "tried": True}},
        {"corpus": "a", "recipe": "random_em", "K": 256, "selection": {"chosen": 0.01, "tried": True}},
        {"corpus": "a", "recipe": "random_em", "K": 512, "selection": {"chosen": 0.5, "tried": False}},
        {"corpus": "b", "recipe": "random_em", "K": 512, "selection": {"chosen": 0.7, "tried": True}},
        {"corpus": "a", "recipe": "random_adamw", "K": 512, "selection": {"chosen": 0.05, "tried": True}},
    ]
    assert reused_setting(rows, "a", "random_em", 1024) == (0.01, 256)
    assert reused_setting(rows, "a", "random_em", 256) == (0.1, 64)
    assert reused_setting(rows, "a", "random_em", 64) is None


def recipe_args(**changes) -> SimpleNamespace:
    """The benchmark's command-line arguments a recipe config reads (stepwise EM, 3 epochs), changed."""
    defaults = {
        "epochs": 3,
        "patience": 2,
        "em_batch_tokens": 20,
        "em_step_decay": 0.7,
        "em_warm_start": False,
        "em_group_by_length": False,
        "evals_per_epoch": 1,
    }
    return SimpleNamespace(**{**defaults, **changes})


def test_em_candidate_labels_round_trip():
    labels = em_candidates(["uniform", "unigram"], [0.003, 0.01])
    assert labels == ["uniform:0.003", "uniform:0.01", "unigram:0.003", "unigram:0.01"]
    assert [parse_em_candidate(label) for label in labels[1:3]] == [
        ("uniform", 0.01, 0.0),
        ("unigram", 0.003, 0.0),
    ]
    labels = em_candidates(["uniform"], [0.001], [0.03, 0.1])
    assert labels == ["uniform:0.001:0.03", "uniform:0.001:0.1"]
    assert parse_em_candidate(labels[1]) == ("uniform", 0.001, 0.1)


def test_train_candidates_score_each_em_setting_by_its_dev_best_em_iteration(tmp_path, base, corpus):
    args = recipe_args(
        patience=5, adamw_batch=2, lvd_adamw_epochs=1, em_batch_tokens=0, out=str(tmp_path / "runs")
    )
    candidates = ["uniform:0.001", "uniform:0.3", "unigram:3", "uniform:0.001:0.3"]
    out = train_candidates(base, "random_em", 3, args, corpus, None, "toy", candidates)
    batches = sentence_batches(corpus.train)
    expected = {}
    unigram = unigram_prior(corpus.train.ids, len(corpus.vocab))
    settings = ((0.001, None, None), (0.3, None, None), (3.0, unigram, None), (0.001, None, 0.3))
    for label, (alpha, prior, emission_alpha) in zip(candidates, settings, strict=True):
        model = HMMLanguageModel(HMMConfig(num_states=3, vocab_size=len(corpus.vocab)))
        dev, held = [], []
        for _ in range(3):
            em_step(
                model, batches, pseudocount=alpha, emission_prior=prior, emission_pseudocount=emission_alpha
            )
            dev.append(heldout_metrics(model, corpus.dev, 128)["heldout_ppl"])
            held.append(heldout_metrics(model, corpus.heldout, 128)["heldout_ppl"])
        best = int(np.argmin(dev))
        expected[label] = (dev[best], held[best], best + 1)
        kept = out["runs"][label]["kept"]
        assert kept["dev_ppl"] == pytest.approx(dev[best], rel=1e-3)
        assert kept["heldout_ppl"] == pytest.approx(held[best], rel=1e-3)
        assert kept["epoch"] == best + 1
    assert out["chosen"] == min(expected, key=lambda a: expected[a][0])
    assert len({round(v[0], 2) for v in expected.values()}) == 4  # the candidates are told apart


def test_stepwise_em_recipes_evaluate_once_an_epoch_of_the_tasks_mini_batches(base, corpus):
    args = recipe_args()
    cfg = recipe_config(base, "random_em", 3, args, corpus, "uniform:0.01")
    cfg.model.vocab_size = len(corpus.vocab)
    groups = len(HMMTask(cfg, corpus, None).groups)
    assert groups > 2 and cfg.em.batch_tokens == 20
    assert (cfg.train.eval_every, cfg.train.max_steps) == (groups, 3 * groups)


def test_evals_per_epoch_split_each_epoch_of_stepwise_em_and_adamw(base, corpus):
    em = recipe_args(evals_per_epoch=2)
    cfg = recipe_config(base, "random_em", 3, em, corpus, "uniform:0.01")
    cfg.model.vocab_size = len(corpus.vocab)
    groups = len(HMMTask(cfg, corpus, None).groups)
    assert (cfg.train.eval_every, cfg.train.max_steps) == (groups // 2, 3 * groups)
    adamw = SimpleNamespace(epochs=3, patience=2, adamw_batch=2, evals_per_epoch=2)
    cfg = recipe_config(base, "random_adamw", 3, adamw, corpus, "0.1")
    steps_per_epoch = len(corpus.train) // 2
    assert (cfg.train.eval_every, cfg.train.max_steps) == (steps_per_epoch // 2, 3 * steps_per_epoch)
