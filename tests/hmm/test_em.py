"""EM as an optimizer on the engine and the closed-form LVD phase, against brute force on tiny K, T."""

import itertools

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from latentlm.core.config import config_from_dict
from latentlm.core.engine import Trainer
from latentlm.core.run import RunDir
from latentlm.hmm.config import HMMConfig, HMMRunConfig
from latentlm.hmm.data import build_corpus, token_chunks
from latentlm.hmm.em import EM
from latentlm.hmm.estimate import count_estimate, em_step
from latentlm.hmm.lvd import LatentStates, closed_form_counts, closed_form_estimate
from latentlm.hmm.model import HMMLanguageModel
from latentlm.hmm.task import HMMTask
from tests.hmm.conftest import sentence_batches


def toy_batch(seed=1, k=3, v=4, b=5, t=4):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, v, (b, t), generator=gen)
    lengths = torch.tensor([4, 3, 4, 2, 1])[:b]
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    return obs, mask


def enumerated_counts(params, obs, mask):
    """Expected counts by summing over every state path of every sequence (float64)."""
    log_start, log_transition, log_emission = (p.double() for p in params)
    k = log_start.shape[0]
    start = torch.zeros(k, dtype=torch.float64)
    transition = torch.zeros(k, k, dtype=torch.float64)
    emission = torch.zeros_like(log_emission)
    for row in range(obs.shape[0]):
        length = int(mask[row].sum())
        words = obs[row, :length].tolist()
        paths = list(itertools.product(range(k), repeat=length))
        scores = []
        for path in paths:
            score = log_start[path[0]] + log_emission[path[0], words[0]]
            for i in range(1, length):
                score = score + log_transition[path[i - 1], path[i]] + log_emission[path[i], words[i]]
            scores.append(score)
        weights = torch.stack(scores).softmax(0)
        for weight, path in zip(weights, paths, strict=True):
            start[path[0]] += weight
            for i in range(length):
                emission[path[i], words[i]] += weight
            for i in range(1, length):
                transition[path[i - 1], path[i]] += weight
    return start, transition, emission


def em_model(k=3, v=4, seed=4):
    model = HMMLanguageModel(HMMConfig(num_states=k, vocab_size=v, seed=seed)).double()
    model.parameterization.count_gradients = True
    return model


def accumulate(model, chunks, scale=1.0):
    """Backward of −Σ log P(O) over chunks, each scaled like the engine does (loss / grad_accum)."""
    for obs, mask in chunks:
        (-model.log_likelihood(obs, mask).sum() * scale).backward()


def test_em_step_equals_the_m_step_of_enumerated_posteriors_and_never_decreases_likelihood():
    obs, mask = toy_batch()
    model = em_model()
    alpha = 0.1
    optimizer = EM(model.parameters(), pseudocount=alpha, step_decay=0.0, count_scale=2.0)
    previous = model.log_likelihood(obs, mask).sum().item()
    for _ in range(4):
        counts = enumerated_counts(model.log_parameters(), obs, mask)
        optimizer.zero_grad()
        accumulate(model, [(obs[:2], mask[:2]), (obs[2:], mask[2:])], scale=0.5)  # two micro-batches
        optimizer.step()
        for got, count in zip(model.log_parameters(), counts, strict=True):
            expected = (count + alpha) / (count + alpha).sum(-1, keepdim=True)
            assert_close(got.exp(), expected, rtol=1e-9, atol=1e-12)
        current = model.log_likelihood(obs, mask).sum().item()
        # EM with a Dirichlet prior increases the penalised likelihood; at α = 0.1 on this batch the
        # likelihood itself also rises at every step (checked, not assumed, against the unpenalised value).
        assert current >= previous - 1e-9
        previous = current


def test_unsmoothed_em_never_decreases_likelihood_over_many_steps():
    obs, mask = toy_batch(seed=7)
    model = em_model(seed=9)
    optimizer = EM(model.parameters(), pseudocount=1e-12, step_decay=0.0)
    values = []
    for _ in range(15):
        values.append(model.log_likelihood(obs, mask).sum().item())
        optimizer.zero_grad()
        accumulate(model, [(obs, mask)])
        optimizer.step()
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > values[0]


def test_stepwise_with_step_size_one_on_one_batch_is_full_em():
    obs, mask = toy_batch(seed=3)
    full, stepwise = em_model(seed=5), em_model(seed=5)
    full_opt = EM(full.parameters(), pseudocount=0.3, step_decay=0.0)
    step_opt = EM(stepwise.parameters(), pseudocount=0.3, step_decay=0.0)
    accumulate(full, [(obs[:3], mask[:3]), (obs[3:], mask[3:])])
    full_opt.step()
    accumulate(stepwise, [(obs, mask)])
    step_opt.step()
    for a, b in zip(full.log_parameters(), stepwise.log_parameters(), strict=True):
        assert_close(a, b, rtol=1e-12, atol=1e-12)
    # ... and equals the reference EM step of latentlm.hmm.estimate.
    reference = em_model(seed=5)
    em_step(reference, [(obs, mask)], pseudocount=0.3)
    for a, b in zip(full.log_parameters(), reference.log_parameters(), strict=True):
        assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_stepwise_statistics_follow_liang_and_klein():
    obs, mask = toy_batch(seed=2)
    model = em_model(seed=1)
    alpha, decay = 0.2, 0.7
    optimizer = EM(model.parameters(), pseudocount=alpha, step_decay=decay)
    batches = [(obs[:3], mask[:3]), (obs[3:], mask[3:]), (obs[1:4], mask[1:4])]
    stats = None
    for k, (o, m) in enumerate(batches):
        counts = enumerated_counts(model.log_parameters(), o, m)
        eta = (k + 2) ** -decay
        stats = [
            eta * c if stats is None else (1 - eta) * s + eta * c
            for s, c in zip(stats or counts, counts, strict=True)
        ]
        optimizer.zero_grad()
        accumulate(model, [(o, m)])
        optimizer.step()
        for got, s in zip(model.log_parameters(), stats, strict=True):
            assert_close(got.exp(), (s + alpha) / (s + alpha).sum(-1, keepdim=True), rtol=1e-9, atol=1e-12)


def test_stepwise_statistics_can_start_at_given_counts():
    obs, mask = toy_batch(seed=2)
    model = em_model(seed=1)
    alpha, decay = 0.2, 0.7
    optimizer = EM(model.parameters(), pseudocount=alpha, step_decay=decay)
    start = [
        torch.rand(t.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 5
        for t in model.log_parameters()
    ]
    for table, counts in zip(model.parameters(), start, strict=True):
        optimizer.start_statistics(table, counts)
    counts = enumerated_counts(model.log_parameters(), obs, mask)
    accumulate(model, [(obs, mask)])
    optimizer.step()
    eta = 2**-decay  # the first update: (1 − η) · start + η · counts
    for got, s0, c in zip(model.log_parameters(), start, counts, strict=True):
        stats = (1 - eta) * s0 + eta * c + alpha
        assert_close(got.exp(), stats / stats.sum(-1, keepdim=True), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="updated already"):
        optimizer.start_statistics(next(model.parameters()), start[0])


def test_stepwise_statistics_stay_exact_over_many_sparse_steps_and_rescales():
    """The lazily scaled statistics (decay = one scalar, counts added to touched columns only or, when
    most columns hold counts, densely; scale folded back below RESCALE_BELOW) give the eager update
    ``(1 − η) μ + η · counts`` at every step."""
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.zeros(3, 7, dtype=torch.float64))
    weights = torch.rand(7, dtype=torch.float64, generator=gen) * 7
    alpha, decay, scale = 0.05, 0.2, 4.0
    optimizer = EM([{"params": [table], "pseudocount_weights": weights}], alpha, decay, count_scale=scale)
    stats, rescales = torch.zeros(3, 7, dtype=torch.float64), 0
    for k in range(300):
        columns = torch.randperm(7, generator=gen)[: 1 + k % 7]  # 1-3 words: sparse update; 4-7: dense
        counts = torch.zeros(3, 7, dtype=torch.float64)
        counts[:, columns] = torch.rand(3, len(columns), dtype=torch.float64, generator=gen)
        table.grad = -counts / scale
        eta = (k + 2) ** -decay
        stats = (1 - eta) * stats + eta * counts
        before = optimizer.state[table].get("scale", 1.0)
        optimizer.step()
        rescales += optimizer.state[table]["scale"] > before
        smoothed = stats + alpha * weights
        assert_close(table.detach().exp(), smoothed / smoothed.sum(-1, keepdim=True), rtol=1e-10, atol=0)
    assert rescales >= 1  # Π (1 − η_k) < 1e-20 within 300 steps at decay 0.2


def test_em_optimizer_rejects_bad_settings():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="em.pseudocount"):
        EM(params, pseudocount=0.0)
    with pytest.raises(ValueError, match="em.step_decay"):
        EM(params, pseudocount=0.1, step_decay=1.5)


# ---------------------------------------------------------------------------------------------- on the engine


def run_cfg(tmp_path, tiny_corpus_file, name="run", **sections):
    values = {
        "run_dir": str(tmp_path / name),
        "model": {"num_states": 3},
        "data": {"path": str(tiny_corpus_file), "format": "lines", "heldout_fraction": 0.2, "max_length": 16},
        "lvd": {"enabled": False},
        "train": {"optimizer": "em", "grad_clip": 0.0, "max_steps": 4, "log_every": 1, "eval_every": 2},
        "em": {"batch_tokens": 0, "chunk_tokens": 12, "pseudocount": 0.05},
    }
    for key, value in sections.items():
        section, _, field = key.partition("__")
        values.setdefault(section, {})[field] = value
    return config_from_dict(HMMRunConfig, values)


def fit(cfg, corpus, states=None):
    cfg.model.vocab_size = len(corpus.vocab)
    run = RunDir(cfg.run_dir, tensorboard=False)
    task = HMMTask(cfg, corpus, states, run)
    if task.em:
        cfg.train.grad_accum = task.em_grad_accum()
    trainer = Trainer(task, cfg.train, run)
    state = trainer.fit()
    return trainer.model, state, task


@pytest.mark.parametrize("group_by_length", [False, True])
def test_full_batch_em_on_the_engine_equals_reference_em_iterations(
    tmp_path, tiny_corpus_file, group_by_length
):
    cfg = run_cfg(tmp_path, tiny_corpus_file, em__group_by_length=group_by_length)
    corpus = build_corpus(cfg.data)
    model, state, task = fit(cfg, corpus)
    assert len(task.groups) > 2 and cfg.train.grad_accum == len(task.groups)  # several chunks per step
    assert state.epoch + state.batch_in_epoch / len(task.groups) == 4  # one step = one epoch
    assert state.tokens_seen == 4 * corpus.train.num_tokens
    reference = HMMLanguageModel(cfg.model)
    batches = sentence_batches(corpus.train)
    for _ in range(4):
        em_step(reference, batches, pseudocount=0.05)
    for a, b in zip(model.log_parameters(), reference.log_parameters(), strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_tokens", [0, 20])
def test_resume_mid_em_equals_an_uninterrupted_run(tmp_path, tiny_corpus_file, batch_tokens):
    corpus = build_corpus(run_cfg(tmp_path, tiny_corpus_file).data)
    full_cfg = run_cfg(tmp_path, tiny_corpus_file, "full", train__max_steps=6, em__batch_tokens=batch_tokens)
    full, full_state, _ = fit(full_cfg, corpus)
    part_cfg = run_cfg(tmp_path, tiny_corpus_file, "part", train__max_steps=3, em__batch_tokens=batch_tokens)
    fit(part_cfg, corpus)
    part_cfg = run_cfg(tmp_path, tiny_corpus_file, "part", train__max_steps=6, em__batch_tokens=batch_tokens)
    resumed, resumed_state, _ = fit(part_cfg, corpus)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert_close(a, b, rtol=0, atol=0)
    assert resumed_state.tokens_seen == full_state.tokens_seen


def test_stepwise_em_takes_one_step_per_mini_batch(tmp_path, tiny_corpus_file):
    cfg = run_cfg(tmp_path, tiny_corpus_file, em__batch_tokens=20, train__max_steps=3)
    corpus = build_corpus(cfg.data)
    _, state, task = fit(cfg, corpus)
    assert cfg.train.grad_accum == 1
    lengths = np.diff(corpus.train.offsets)
    sizes = [int(lengths[g].sum()) for g in task.groups]
    assert sorted(np.concatenate(task.groups).tolist()) == list(range(len(corpus.train)))
    assert all(size <= 20 for size in sizes)
    # Three updates, each on one whole mini-batch, in the engine's seeded order of the epoch.
    order = torch.randperm(
        len(task.groups), generator=torch.Generator().manual_seed(cfg.train.seed * 100_003)
    )
    assert state.step == 3 and state.tokens_seen == sum(sizes[int(i)] for i in order[:3])


def test_stepwise_em_counts_are_scaled_to_the_training_split(tmp_path, tiny_corpus_file):
    # One update with step size 1: normalise(G · counts(batch) + α) = EM on that batch with α / G,
    # G = mini-batches in the split, so the pseudocount weighs as in full-batch EM.
    cfg = run_cfg(tmp_path, tiny_corpus_file, em__batch_tokens=20, em__step_decay=0.0, train__max_steps=1)
    corpus = build_corpus(cfg.data)
    model, _, task = fit(cfg, corpus)
    first = int(
        torch.randperm(len(task.groups), generator=torch.Generator().manual_seed(cfg.train.seed * 100_003))[0]
    )
    reference = HMMLanguageModel(cfg.model)
    batches = []
    for i in task.groups[first]:
        obs = torch.from_numpy(corpus.train.sequence(int(i)).astype(np.int64))[None]
        batches.append((obs, torch.ones_like(obs, dtype=torch.bool)))
    em_step(reference, batches, pseudocount=0.05 / len(task.groups))
    assert len(task.groups) > 2
    for a, b in zip(model.log_parameters(), reference.log_parameters(), strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_warm_stepwise_em_starts_from_the_lvd_counts_on_the_engine(tmp_path, tiny_corpus_file):
    cfg = run_cfg(
        tmp_path,
        tiny_corpus_file,
        lvd__enabled=True,
        lvd__phase="closed_form",
        lvd__pseudocount=0.05,
        em__batch_tokens=20,
        em__warm_start=True,
        train__max_steps=1,
    )
    corpus = build_corpus(cfg.data)
    k = cfg.model.num_states
    rng = np.random.default_rng(0)
    states = LatentStates(
        rng.integers(0, k, corpus.train.num_tokens).astype(np.int32), corpus.train.offsets, "e", "s"
    )
    model, _, task = fit(cfg, corpus, states)
    # The expected counts of the first mini-batch under the LVD tables, scaled to the split (G batches).
    reference = em_model(k=k, v=len(corpus.vocab))
    reference.load_log_probabilities(closed_form_estimate(corpus, states, k, 0.05))
    first = int(
        torch.randperm(len(task.groups), generator=torch.Generator().manual_seed(cfg.train.seed * 100_003))[0]
    )
    for i in task.groups[first]:
        obs = torch.from_numpy(corpus.train.sequence(int(i)).astype(np.int64))[None]
        accumulate(reference, [(obs, torch.ones_like(obs, dtype=torch.bool))])
    eta = 2**-cfg.em.step_decay
    lvd = closed_form_counts(corpus, states, k)
    for got, table, start in zip(model.log_parameters(), reference.parameters(), lvd, strict=True):
        stats = (1 - eta) * start + eta * len(task.groups) * -table.grad + 0.05
        assert_close(got.double().exp(), stats / stats.sum(-1, keepdim=True), rtol=1e-4, atol=1e-6)


def test_token_chunks_cover_every_sequence_once_and_split_for_processes():
    lengths = np.array([5, 3, 8, 2, 7, 1, 4])
    groups = token_chunks(lengths, 10, multiple_of=4, seed=0)
    assert len(groups) % 4 == 0
    assert sorted(np.concatenate(groups).tolist()) == list(range(7))
    with pytest.raises(ValueError, match="too few"):
        token_chunks(np.array([3, 3]), 100, multiple_of=3)


def test_token_chunks_by_length_hold_neighbours_in_length_order():
    lengths = np.random.default_rng(3).integers(1, 40, size=200)
    groups = token_chunks(lengths, 100, seed=1, by_length=True)
    assert sorted(np.concatenate(groups).tolist()) == list(range(200))
    for group in groups:
        assert lengths[group].sum() <= 100 or len(group) == 1
    # cut from the longest-first order: each group's shortest is at least the next group's longest
    for longer, shorter in zip(groups, groups[1:], strict=False):
        assert lengths[longer].min() >= lengths[shorter].max()
    assert sum(int(lengths[g].max()) for g in groups) < sum(
        int(lengths[g].max()) for g in token_chunks(lengths, 100, seed=1)
    )  # fewer time steps an epoch than random groups


def test_closed_form_lvd_is_the_maximiser_of_the_penalised_joint(tmp_path, tiny_corpus_file):
    cfg = run_cfg(
        tmp_path, tiny_corpus_file, lvd__enabled=True, lvd__phase="closed_form", lvd__pseudocount=0.5
    )
    corpus = build_corpus(cfg.data)
    k, v, alpha = 3, len(corpus.vocab), 0.5
    rng = np.random.default_rng(0)
    states = LatentStates(
        rng.integers(0, k, corpus.train.num_tokens).astype(np.int32), corpus.train.offsets, "e", "s"
    )
    streamed = closed_form_estimate(corpus, states, k, alpha, chunk_sequences=3)  # several chunks
    obs = [torch.from_numpy(corpus.train.sequence(i).astype(np.int64)) for i in range(len(corpus.train))]
    paths = [torch.from_numpy(states.sequence(i).astype(np.int64)) for i in range(len(corpus.train))]
    width = max(len(o) for o in obs)
    pad = [torch.nn.functional.pad(o, (0, width - len(o))) for o in obs]
    pad_states = [torch.nn.functional.pad(s, (0, width - len(s))) for s in paths]
    mask = torch.stack([torch.arange(width) < len(o) for o in obs])
    exact = count_estimate(torch.stack(pad), torch.stack(pad_states), mask, k, v, pseudocount=alpha)
    for a, b in zip(streamed, exact, strict=True):
        assert_close(a, b.float(), rtol=1e-6, atol=1e-6)

    def penalised(params):
        model = HMMLanguageModel(HMMConfig(num_states=k, vocab_size=v)).double()
        model.load_log_probabilities(type(params)(*(p.double() for p in params)))
        joint = model.joint_log_likelihood(torch.stack(pad), torch.stack(pad_states), mask).sum()
        return (joint + alpha * sum(p.sum() for p in model.log_parameters())).item()

    best = penalised(exact)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):  # any other normalised tables score lower
        other = type(exact)(
            *((p + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype)).log_softmax(-1) for p in exact)
        )
        assert penalised(other) < best

    # On the engine the closed-form phase sets the model before step 1 and logs the switch at step 0.
    model, state, task = fit(cfg, corpus, states)
    assert state.extra["switch_step"] == 0 and state.extra["switch_tokens"] == 0
    switch = [r for r in RunDir(cfg.run_dir, tensorboard=False).read_metrics() if "lvd/switch" in r]
    assert len(switch) == 1 and switch[0]["step"] == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"em__pseudocount": 0.0}, "em.pseudocount"),
        ({"lvd__pseudocount": -1.0}, "lvd.pseudocount"),
        ({"model__parameterization": "neural"}, "train.optimizer"),
        ({"em__batch_tokens": 10, "data__max_length": 16}, "em.batch_tokens"),
        ({"em__warm_start": True, "em__batch_tokens": 20}, "em.warm_start"),
        ({"train__grad_clip": 1.0}, "train.grad_clip"),
        ({"lvd__enabled": True, "lvd__phase": "adamw"}, "lvd.phase"),
        ({"train__optimizer": "sgd"}, "train.optimizer"),
    ],
)
def test_bad_em_settings_fail_at_start_up_naming_the_field(tmp_path, tiny_corpus_file, overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        run_cfg(tmp_path, tiny_corpus_file, **overrides)


def test_closed_form_with_the_neural_parameterisation_is_refused(tmp_path, tiny_corpus_file):
    with pytest.raises(ValueError, match=r"lvd\.phase"):
        run_cfg(
            tmp_path,
            tiny_corpus_file,
            train__optimizer="adamw",
            train__grad_clip=1.0,
            model__parameterization="neural",
            lvd__enabled=True,
            lvd__phase="closed_form",
        )


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_processes_give_the_counts_and_parameters_of_one(tmp_path, tiny_corpus_file):
    import os
    import subprocess
    import sys

    from latentlm.core.checkpoint import load_tensors
    from tests.conftest import REPO
    from tests.hmm.dist_worker import run

    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}", "OMP_NUM_THREADS": "1"}
    worker = str(REPO / "tests" / "hmm" / "dist_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    done = subprocess.run(
        [*cmd, worker, str(tiny_corpus_file), str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run(tiny_corpus_file, tmp_path / "one")
    one_lvd, one_em = (
        load_tensors(tmp_path / "one" / "lvd0.safetensors"),
        load_tensors(tmp_path / "one" / "em0.safetensors"),
    )
    for rank in (0, 1):
        lvd = load_tensors(tmp_path / "two" / f"lvd{rank}.safetensors")
        for name in one_lvd:  # integer counts: identical
            assert_close(lvd[name], one_lvd[name], rtol=0, atol=0)
        em = load_tensors(tmp_path / "two" / f"em{rank}.safetensors")
        for name in one_em:  # the same sums of counts, added in another order
            assert_close(em[name], one_em[name], rtol=1e-5, atol=1e-5)


def test_compare_trains_two_recipes_at_the_same_budget(tmp_path, tiny_corpus_file):
    from latentlm.hmm.cli import compare

    cfg = run_cfg(tmp_path, tiny_corpus_file, "cmp", train__max_steps=3)
    cfg.compare.label, cfg.compare.baseline_label = "em", "adamw"
    cfg.compare.baseline = ["train.optimizer=adamw", "train.grad_clip=1.0", "train.lr=0.05", "batch_size=2"]
    result = compare(cfg)
    assert list(result) == ["em", "adamw"]
    assert result["em"]["recipe"] == "random_em" and result["adamw"]["recipe"] == "random_adamw"
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "Result:" in report and f"{result['em']['best_heldout_ppl']:.2f}" in report
    for label in result:
        assert (tmp_path / "cmp" / label / "model" / "vocab.json").is_file()
