"""data.dev_fraction: a development split carved from the training units, scored as dev_ppl, and
early stopping / the kept model chosen on it (never on the held-out split)."""

import pytest

from latentlm.core.config import config_from_dict
from latentlm.core.run import RunDir
from latentlm.hmm.config import HMMRunConfig
from latentlm.hmm.data import UNK_ID, build_corpus, split_dev
from latentlm.hmm.evaluate import heldout_metrics
from latentlm.hmm.task import dev_selection, train_run
from tests.hmm.test_em import fit, run_cfg


def test_split_dev_keeps_the_last_ceil_fraction_of_training_units():
    units = [f"u{i}" for i in range(8)]
    for fraction in (0.1, 0.25, 0.3, 0.5):
        count = -(-8 * fraction // 1)  # ceil
        train, dev = split_dev(units, fraction)
        assert train + dev == units and len(dev) == count
    assert split_dev(units, 0.0) == (units, [])
    with pytest.raises(ValueError, match="data.dev_fraction"):
        split_dev(units, 0.99)


def test_build_corpus_carves_dev_from_training_and_unks_its_unseen_words(tiny_corpus_file):
    data = {"path": str(tiny_corpus_file), "format": "lines", "heldout_fraction": 0.2, "max_length": 16}
    plain = build_corpus(config_from_dict(HMMRunConfig, {"data": data}).data)
    carved = build_corpus(config_from_dict(HMMRunConfig, {"data": {**data, "dev_fraction": 0.25}}).data)
    lines = tiny_corpus_file.read_text().splitlines()  # 10 lines: 8 training (2 of them dev), 2 held out
    assert plain.dev is None and len(plain.train) == 8
    assert len(carved.train) == 6 and len(carved.dev) == 2
    # The vocabulary comes from the 6 remaining training lines only.
    seen = {w for line in lines[:6] for w in line.split()}
    assert set(carved.vocab[3:]) == seen
    expected = [[carved.vocab.index(w) if w in seen else UNK_ID for w in line.split()] for line in lines[6:8]]
    assert [carved.dev.sequence(i).tolist()[:-1] for i in range(2)] == expected  # each closed by <eos>
    assert UNK_ID in carved.dev.ids  # "one more line about a cat ." has words never seen before it
    # The held-out split is the same text either way.
    held = [line.split() for line in lines[8:]]
    decoded = [[carved.vocab[i] for i in carved.heldout.sequence(j)[:-1]] for j in range(2)]
    assert decoded == [[w if w in seen else "<unk>" for w in line] for line in held]
    assert carved.describe()["dev_tokens"] == carved.dev.num_tokens


def test_training_scores_dev_and_the_summary_keeps_the_best_dev_evaluation(tmp_path, tiny_corpus_file):
    cfg = run_cfg(tmp_path, tiny_corpus_file, data__dev_fraction=0.25, train__eval_every=1)
    corpus = build_corpus(cfg.data)
    model, _, _ = fit(cfg, corpus)
    metrics = RunDir(cfg.run_dir, tensorboard=False).read_metrics()
    records = [r for r in metrics if "eval/dev_ppl" in r]
    assert len(records) == 4
    last = heldout_metrics(model, corpus.dev, 128)
    assert records[-1]["eval/dev_ppl"] == pytest.approx(last["heldout_ppl"], rel=1e-6)
    assert records[-1]["eval/dev_tokens"] == corpus.dev.num_tokens


def test_dev_selection_takes_the_lowest_dev_perplexity_first_of_ties():
    evals = [
        {"step": 1, "eval/epoch": 1.0, "eval/dev_ppl": 30.0, "eval/heldout_ppl": 40.0},
        {"step": 2, "eval/epoch": 2.0, "eval/dev_ppl": 20.0, "eval/heldout_ppl": 35.0},
        {"step": 3, "eval/epoch": 3.0, "eval/dev_ppl": 20.0, "eval/heldout_ppl": 10.0},
        {"step": 4, "eval/epoch": 4.0, "eval/dev_ppl": 25.0, "eval/heldout_ppl": 5.0},
    ]
    assert dev_selection(evals) == {
        "best_dev_ppl": 20.0,
        "heldout_ppl_at_best_dev": 35.0,  # not the lowest held-out value: held-out never chooses
        "best_dev_step": 2,
        "best_dev_epoch": 2.0,
    }
    assert dev_selection([{"step": 1, "eval/heldout_ppl": 3.0}]) == {}


def test_early_stopping_on_dev_ppl_needs_a_dev_split(tmp_path, tiny_corpus_file):
    with pytest.raises(ValueError, match="data.dev_fraction"):
        run_cfg(tmp_path, tiny_corpus_file, train__best_metric="dev_ppl")
    cfg = run_cfg(
        tmp_path,
        tiny_corpus_file,
        data__dev_fraction=0.25,
        train__best_metric="dev_ppl",
        train__early_stop_patience=1,
        train__max_steps=30,
        train__eval_every=1,
    )
    summary = train_run(cfg)
    assert summary["best_dev_step"] <= summary["steps"] and summary["steps"] <= 30
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_compare_states_the_held_out_perplexity_of_the_dev_chosen_models(tmp_path, tiny_corpus_file):
    from latentlm.hmm.cli import compare

    cfg = run_cfg(
        tmp_path, tiny_corpus_file, "cmp", data__dev_fraction=0.25, train__max_steps=3, train__eval_every=1
    )
    result = compare(cfg)
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "at the best dev-split evaluation" in report
    assert len(result) == 2
    for label in result:
        assert f"{result[label]['heldout_ppl_at_best_dev']:.2f}" in report
