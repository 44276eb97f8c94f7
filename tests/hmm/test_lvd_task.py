"""The LVD training task: exact switch, stored states reused, resume, corpus handling and errors."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from latentlm.core.config import ConfigError, config_from_dict, load_config
from latentlm.core.engine import Trainer, TrainState
from latentlm.core.run import RunDir
from latentlm.hmm import lvd as lvd_module
from latentlm.hmm.config import DataConfig, HMMRunConfig, KMeansConfig
from latentlm.hmm.data import build_corpus, pad_batch, surface_words
from latentlm.hmm.forward import forward_log_likelihood, joint_log_likelihood
from latentlm.hmm.lvd import LatentStates, kmeans_assignments, prepare_latent_states
from latentlm.hmm.task import HMMTask, lvd_prefix_lengths

TEXT = """the cat sat on the mat .
the dog sat on the log .
a cat and a dog ran far away .
the mat was red .
a dog ate the cat food .
the log was old and the mat was new .
one more line about a cat .
the end of the tiny corpus .
"""


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def make_cfg(tmp_path, corpus_file, **overrides):
    values = {
        "run_dir": str(tmp_path / "run"),
        "batch_size": 3,
        "model": {"num_states": 4},
        "data": {"path": str(corpus_file), "format": "lines", "heldout_fraction": 0.25},
        "lvd": {"pretrain_tokens": 23, "cache_dir": str(tmp_path / "cache")},
        "train": {"max_steps": 8, "lr": 0.05, "log_every": 1, "eval_every": 4, "seed": 1},
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        values.setdefault(section, {})[field] = value
    return config_from_dict(HMMRunConfig, values)


def random_states(corpus, k, seed=0):
    rng = np.random.default_rng(seed)
    states = rng.integers(0, k, size=corpus.train.num_tokens).astype(np.int32)
    return LatentStates(states, corpus.train.offsets, "emb-test", "states-test")


def trained(cfg, corpus, states):
    cfg.model.vocab_size = len(corpus.vocab)
    run = RunDir(cfg.run_dir, tensorboard=False)
    trainer = Trainer(HMMTask(cfg, corpus, states, run), cfg.train, run)
    state = trainer.fit()
    return trainer, state, run


def test_prefix_lengths_hand_out_the_budget_in_order():
    lengths = torch.tensor([4, 3, 5, 2])
    assert lvd_prefix_lengths(lengths, 0).tolist() == [0, 0, 0, 0]
    assert lvd_prefix_lengths(lengths, 6).tolist() == [4, 2, 0, 0]
    assert lvd_prefix_lengths(lengths, 7).tolist() == [4, 3, 0, 0]
    assert lvd_prefix_lengths(lengths, 100).tolist() == [4, 3, 5, 2]


def test_loss_is_joint_then_marginal(tmp_path, corpus_file):
    cfg = make_cfg(tmp_path, corpus_file)
    corpus = build_corpus(cfg.data)
    cfg.model.vocab_size = len(corpus.vocab)
    states = random_states(corpus, 4)
    task = HMMTask(cfg, corpus, states)
    model = task.build_model().double()
    dataset = task.train_dataset()
    batch = pad_batch([dataset[i] for i in range(3)])
    lengths = batch["mask"].sum(1)
    params = model.log_parameters()
    joint = joint_log_likelihood(*params, batch["obs"], batch["states"], batch["mask"])
    marginal = forward_log_likelihood(*params, batch["obs"], batch["mask"])
    n = int(lengths.sum())

    out = task.loss(model, batch, TrainState(tokens_seen=0))  # budget 23 covers the whole batch?
    if n <= 23:
        assert_close(out.loss, -joint.sum() / n)
    # Entirely after the budget: only -log P(O).
    out = task.loss(model, batch, TrainState(tokens_seen=23))
    assert_close(out.loss, -marginal.sum() / n)
    assert out.num_tokens == n and out.metrics["lvd_tokens"] == 0
    # Straddling: first sequence fully LVD, second one's prefix, third marginal.
    remaining = int(lengths[0]) + 2
    out = task.loss(model, batch, TrainState(tokens_seen=23 - remaining))
    prefix_mask = batch["mask"][1:2].clone()
    prefix_mask[0, 2:] = False
    prefix = joint_log_likelihood(*params, batch["obs"][1:2], batch["states"][1:2], prefix_mask)
    expected = -(joint[0] + prefix[0] + marginal[2]) / (remaining + int(lengths[2]))
    assert_close(out.loss, expected)
    assert out.metrics["lvd_tokens"] == remaining


def test_switch_happens_at_exactly_pretrain_tokens(tmp_path, corpus_file):
    cfg = make_cfg(tmp_path, corpus_file)
    corpus = build_corpus(cfg.data)
    _, state, run = trained(cfg, corpus, random_states(corpus, 4))
    records = run.read_metrics()
    lvd_tokens = [r["train/lvd_tokens"] for r in records if "train/lvd_tokens" in r]
    assert sum(lvd_tokens) == 23
    switch = [r for r in records if "lvd/switch" in r]
    assert len(switch) == 1 and switch[0]["lvd/switch_tokens"] == 23
    assert state.extra["switch_tokens"] == 23
    last_lvd_step = max(r["step"] for r in records if r.get("train/lvd_tokens", 0) > 0)
    assert switch[0]["step"] == state.extra["switch_step"] == last_lvd_step
    after = [r for r in records if "train/lvd_fraction" in r and r["step"] > last_lvd_step]
    assert after and all(r["train/lvd_fraction"] == 0 for r in after)


def test_no_lvd_run_never_uses_states(tmp_path, corpus_file):
    cfg = make_cfg(tmp_path, corpus_file, **{"lvd.enabled": False})
    corpus = build_corpus(cfg.data)
    _, state, run = trained(cfg, corpus, None)
    assert all(r.get("train/lvd_tokens", 0) == 0 for r in run.read_metrics())
    assert "switch_step" not in state.extra


def test_resume_equals_uninterrupted_run(tmp_path, corpus_file):
    corpus = build_corpus(make_cfg(tmp_path, corpus_file).data)
    states = random_states(corpus, 4)
    full_cfg = make_cfg(tmp_path, corpus_file, **{"train.max_steps": 10})
    full_cfg.run_dir = str(tmp_path / "full")
    full, full_state, _ = trained(full_cfg, corpus, states)
    part_cfg = make_cfg(tmp_path, corpus_file, **{"train.max_steps": 3})
    part_cfg.run_dir = str(tmp_path / "part")
    trained(part_cfg, corpus, states)
    part_cfg.train.max_steps = 10
    resumed, resumed_state, _ = trained(part_cfg, corpus, states)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert_close(a, b, rtol=0, atol=0)
    assert resumed_state.extra == full_state.extra
    assert resumed_state.tokens_seen == full_state.tokens_seen


def test_stored_assignments_are_computed_once_and_reused(tmp_path, corpus_file, monkeypatch):
    cfg = make_cfg(tmp_path, corpus_file)
    corpus = build_corpus(cfg.data)
    calls = {"embed": 0, "kmeans": 0}

    def fake_teacher(teacher_cfg):
        return None, None, "encoder"

    def fake_embed(model, tokenizer, kind, sequences, teacher_cfg):
        calls["embed"] += 1
        return np.random.default_rng(0).normal(size=(sequences.num_tokens, 8)).astype(np.float16)

    real_kmeans = lvd_module.kmeans_assignments

    def counting_kmeans(*args, **kwargs):
        calls["kmeans"] += 1
        return real_kmeans(*args, **kwargs)

    monkeypatch.setattr(lvd_module, "load_teacher", fake_teacher)
    monkeypatch.setattr(lvd_module, "embed_sequences", fake_embed)
    monkeypatch.setattr(lvd_module, "kmeans_assignments", counting_kmeans)
    first = prepare_latent_states(corpus, 4, cfg.lvd)
    second = prepare_latent_states(corpus, 4, cfg.lvd)
    assert calls == {"embed": 1, "kmeans": 1}
    np.testing.assert_array_equal(first.states, second.states)
    assert isinstance(second.states, np.memmap)
    # A teacher setting that changes the states (precision, layer) or a k-means setting is a new
    # cache entry, never a stale one.
    for group, field, value in (
        ("teacher", "dtype", "bfloat16"),
        ("teacher", "layer", 2),
        ("kmeans", "spherical", True),
    ):
        other = copy.deepcopy(cfg.lvd)
        setattr(getattr(other, group), field, value)
        assert prepare_latent_states(corpus, 4, other).states_key != first.states_key, (group, field)
    assert calls == {"embed": 3, "kmeans": 4}
    # So is a teacher whose weights were replaced under the same name.
    with monkeypatch.context() as patch:
        patch.setattr(lvd_module, "model_fingerprint", lambda name: [name, "other weights"])
        assert prepare_latent_states(corpus, 4, cfg.lvd).states_key != first.states_key
    assert calls == {"embed": 4, "kmeans": 5}
    calls.update(embed=1, kmeans=1)

    # During training the task only reads the stored array: every batch's states are its slices.
    task = HMMTask(cfg, corpus, second)
    seen = []
    original_loss = HMMTask.loss

    def recording_loss(self, model, batch, state):
        for row, index in enumerate(batch["index"].tolist()):
            length = int(batch["mask"][row].sum())
            seen.append(np.array_equal(batch["states"][row, :length].numpy(), second.sequence(index)))
        return original_loss(self, model, batch, state)

    monkeypatch.setattr(HMMTask, "loss", recording_loss)
    cfg.model.vocab_size = len(corpus.vocab)
    Trainer(task, cfg.train, RunDir(cfg.run_dir, tensorboard=False)).fit()
    assert seen and all(seen)
    assert calls == {"embed": 1, "kmeans": 1}


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]])
    truth = rng.integers(0, 3, size=600)
    points = (centres[truth] + rng.normal(scale=0.3, size=(600, 4))).astype(np.float16)
    labels = kmeans_assignments(points, 3, KMeansConfig(iterations=10, seed=0))
    assert labels.dtype == np.int32 and labels.shape == (600,)
    for cluster in range(3):
        assert len(set(labels[truth == cluster].tolist())) == 1
    assert len(set(labels.tolist())) == 3
    projected = kmeans_assignments(points, 3, KMeansConfig(iterations=10, seed=0, pca_dim=2))
    assert len(set(zip(projected.tolist(), truth.tolist(), strict=True))) == 3


def test_spherical_kmeans_clusters_directions_not_lengths():
    # Three directions 37 degrees apart, each point at a random length in [1, 20]: spherical k-means
    # recovers the directions, ignores every point's scale, and each point's state is its most
    # cosine-similar centre (brute force over the normalised cluster means).
    rng = np.random.default_rng(1)
    directions = np.eye(4)[0] + 0.5 * np.eye(4)[1:]  # (3, 4)
    truth = rng.integers(0, 3, size=600)
    lengths = rng.uniform(1.0, 20.0, size=(600, 1))
    points = (lengths * (directions[truth] + rng.normal(scale=0.02, size=(600, 4)))).astype(np.float32)
    cfg = KMeansConfig(iterations=10, seed=0, spherical=True)
    labels = kmeans_assignments(points, 3, cfg)
    assert len(set(zip(labels.tolist(), truth.tolist(), strict=True))) == 3
    scaled = points * rng.uniform(0.1, 10.0, size=(600, 1)).astype(np.float32)
    np.testing.assert_array_equal(kmeans_assignments(scaled, 3, cfg), labels)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    centres = np.stack([unit[labels == c].mean(0) for c in range(3)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    np.testing.assert_array_equal((unit @ centres.T).argmax(1), labels)


def test_too_many_states_for_the_embeddings_raises():
    with pytest.raises(ValueError, match="num_states=10 is larger than the number of teacher embeddings"):
        kmeans_assignments(np.zeros((5, 3), dtype=np.float16), 10, KMeansConfig())


def test_too_many_states_for_the_corpus_raises(tmp_path, corpus_file):
    cfg = make_cfg(tmp_path, corpus_file)
    corpus = build_corpus(cfg.data)
    with pytest.raises(ValueError, match="larger than the number of training tokens"):
        prepare_latent_states(corpus, 10_000, cfg.lvd)


def test_empty_corpus_raises(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(ValueError, match="empty"):
        build_corpus(DataConfig(path=str(empty), format="lines"))
    with pytest.raises(ValueError, match="data.path"):
        build_corpus(DataConfig())


def test_unknown_teacher_raises():
    from latentlm.hmm.teacher import TeacherConfig, teacher_kind

    with pytest.raises(ValueError, match="lvd.teacher.name"):
        teacher_kind(TeacherConfig(name="no_such_teacher_model"))


def test_malformed_and_unknown_config_raise(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {num_states: 4\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(HMMRunConfig, bad)
    with pytest.raises(ConfigError, match="num_sates"):
        load_config(HMMRunConfig, None, ["model.num_sates=4"])
    with pytest.raises(ConfigError, match="parameterization"):
        load_config(HMMRunConfig, None, ["model.parameterization=sparse"])


def test_cli_reports_errors_with_exit_code(tmp_path, capsys):
    from latentlm.hmm.cli import main

    assert main(["train", f"data.path={tmp_path / 'missing.txt'}"]) == 2
    assert "missing.txt" in capsys.readouterr().err


def test_corpus_split_vocab_and_eos(tmp_path, corpus_file):
    cfg = DataConfig(path=str(corpus_file), format="lines", heldout_fraction=0.25, min_count=2, max_length=5)
    corpus = build_corpus(cfg)
    assert corpus.vocab[:3] == ["<pad>", "<unk>", "<eos>"]
    lines = TEXT.strip().splitlines()
    words = [w.strip() for line in lines[:6] for w in surface_words(line, False)]
    assert corpus.train.num_tokens == len(words) + 6  # one <eos> per training line
    assert int((corpus.train.ids == 2).sum()) == 6
    assert max(np.diff(corpus.train.offsets)) <= 5
    assert "far" not in corpus.vocab  # seen once < min_count
    assert len(corpus.heldout) > 0
    assert surface_words("Hello, world!", True) == ["hello", ",", " world", "!"]
    assert surface_words("a <unk> b", True) == ["a", " <unk>", " b"]


def test_every_shipped_config_loads():
    from latentlm.hmm.cli import QUICKSTART, quickstart_config

    configs = sorted((Path(__file__).resolve().parents[2] / "configs" / "hmm").glob("*.yaml"))
    assert configs, "configs/hmm/*.yaml missing"
    for path in configs:
        load_config(HMMRunConfig, path)
    shipped = load_config(HMMRunConfig, configs[0].parent / "quickstart.yaml")
    assert shipped == quickstart_config()
    assert QUICKSTART["lvd"]["teacher"]["name"] == "smollm2"
