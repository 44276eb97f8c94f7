import math

import pytest
import torch

from latentlm.core import RunDir, TrainConfig, Trainer, seed_everything
from latentlm.core.checkpoint import load_tensors
from tests.core.toy_task import ToyRegression


def _train(path, max_steps, task=None, **overrides):
    cfg = TrainConfig(
        max_steps=max_steps, lr=1e-2, log_every=1, schedule="cosine", warmup_steps=3, **overrides
    )
    trainer = Trainer(task or ToyRegression(), cfg, RunDir(path, tensorboard=False))
    state = trainer.fit()
    return trainer, state


class _Interrupted(ToyRegression):
    """Dies like a killed job in the middle of step 26 (last checkpoint: step 20)."""

    def loss(self, model, batch, state):
        if state.step == 25:
            raise KeyboardInterrupt
        return super().loss(model, batch, state)


def test_training_reduces_loss(tmp_path):
    trainer, state = _train(tmp_path, 60)
    records = RunDir(tmp_path).read_metrics()
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert state.step == 60 and len(losses) == 60
    seed_everything(0)  # the Trainer seeds the same way before building the model
    task = ToyRegression()
    initial_mse = task.evaluate(task.build_model(), state)["mse"]
    assert trainer.task.evaluate(trainer.model.eval(), state)["mse"] < 0.5 * initial_mse
    assert state.tokens_seen == 60 * 4
    assert any("eval/mse" in r for r in records)


def test_resume_equals_uninterrupted(tmp_path):
    full, _ = _train(tmp_path / "full", 30, checkpoint_every=10, grad_accum=2)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", 30, task=_Interrupted(), checkpoint_every=10, grad_accum=2)
    resumed, state = _train(tmp_path / "cut", 30, checkpoint_every=10, grad_accum=2)
    assert state.step == 30
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for name in full_state:
        a, b = full_state[name], resumed_state[name]
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    full_log = [r["train/loss"] for r in RunDir(tmp_path / "full").read_metrics() if "train/loss" in r]
    cut_log = [r["train/loss"] for r in RunDir(tmp_path / "cut").read_metrics() if "train/loss" in r]
    assert full_log == cut_log


def test_checkpoints_are_complete_and_pruned(tmp_path):
    trainer, _ = _train(tmp_path, 25, checkpoint_every=5, keep_checkpoints=2)
    run = RunDir(tmp_path)
    assert [p.name for p in run.checkpoints()] == ["step_20", "step_25"]
    weights = load_tensors(run.latest_checkpoint() / "model.safetensors")
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(weights[name], value)
    assert not list(run.checkpoints_dir.glob(".*tmp"))


def test_lr_schedule_warmup_then_cosine(tmp_path):
    _train(tmp_path, 13)
    lrs = [r["train/lr"] for r in RunDir(tmp_path).read_metrics() if "train/lr" in r]

    # The lr logged after step k is the one set for step k+1: warm-up (s+1)/3 for s < 3, then a cosine
    # from 1 at s=3 to 0 at s=13.
    def expected(s):
        return (s + 1) / 3 if s < 3 else 0.5 * (1 + math.cos(math.pi * (s - 3) / 10))

    assert lrs == pytest.approx([1e-2 * expected(k + 1) for k in range(13)], abs=1e-12)


def test_best_checkpoint_tracked(tmp_path):
    _train(tmp_path, 20, eval_every=5, best_metric="mse")
    evals = [r["eval/mse"] for r in RunDir(tmp_path).read_metrics() if "eval/mse" in r]
    best = load_tensors(tmp_path / "best" / "model.safetensors")
    assert best and len(evals) == 4


class _NaNTask(ToyRegression):
    def loss(self, model, batch, state):
        out = super().loss(model, batch, state)
        if state.step == 3:
            out.loss = out.loss * float("nan")
        return out


def test_nan_loss_stops_with_step(tmp_path):
    trainer = Trainer(
        _NaNTask(), TrainConfig(max_steps=10, checkpoint_every=2), RunDir(tmp_path, tensorboard=False)
    )
    with pytest.raises(FloatingPointError, match="step 4"):
        trainer.fit()
    assert RunDir(tmp_path).latest_checkpoint().name == "step_2"


def test_dataset_smaller_than_a_batch(tmp_path):
    task = ToyRegression(n=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(task, TrainConfig(max_steps=2), RunDir(tmp_path, tensorboard=False)).fit()


class _Plateau(ToyRegression):
    """Held-out metric that improves for three evaluations, then stays flat."""

    def evaluate(self, model, state):
        return {"score": max(10 - state.step, 7)}


def test_early_stop_on_plateau(tmp_path):
    trainer, state = _train(
        tmp_path, 100, task=_Plateau(), eval_every=1, best_metric="score", early_stop_patience=4
    )
    # Best (7) first reached at step 3; evaluations 4..7 do not improve on it -> stop after step 7.
    assert state.step == 7
    records = RunDir(tmp_path).read_metrics()
    assert any(r.get("train/early_stop") == 1 and r["step"] == 7 for r in records)
    # Training the stopped run again resumes its checkpoint and trains no further.
    _, again = _train(
        tmp_path, 100, task=_Plateau(), eval_every=1, best_metric="score", early_stop_patience=4
    )
    assert again.step == 7
    assert max(r["step"] for r in RunDir(tmp_path).read_metrics()) == 7
    assert RunDir(tmp_path).latest_checkpoint().name == "step_7"


class _Worsening(ToyRegression):
    """Scores best before any training: the untrained model is the one `best/` must keep."""

    def evaluate(self, model, state):
        return {"score": 1.0 + state.step}


def test_eval_at_start_lets_best_keep_the_untrained_model(tmp_path):
    seed_everything(0)  # the Trainer seeds the same way before building the model
    initial = ToyRegression().build_model().state_dict()
    _train(tmp_path, 6, task=_Worsening(), eval_every=2, best_metric="score", eval_at_start=True)
    records = RunDir(tmp_path).read_metrics()
    assert [r["step"] for r in records if "eval/score" in r] == [0, 2, 4, 6]
    best = load_tensors(tmp_path / "best" / "model.safetensors")
    for name, value in initial.items():
        torch.testing.assert_close(best[name], value, rtol=0, atol=0, msg=name)


def test_early_stop_needs_a_metric():
    with pytest.raises(ValueError, match="early_stop_patience"):
        TrainConfig(early_stop_patience=3)


class _SlowSteps(ToyRegression):
    """Each training batch takes 12 s of a fake clock that stands in for the engine's `time` module."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def loss(self, model, batch, state):
        self.now += 12.0
        return super().loss(model, batch, state)


def test_max_minutes_stops_summed_over_resumes(tmp_path, monkeypatch):
    from latentlm.core import engine

    task = _SlowSteps()
    monkeypatch.setattr(engine, "time", task)
    trainer, state = _train(tmp_path, 100, task=task, max_minutes=1.0)
    assert state.step == 5 and state.train_seconds == pytest.approx(60.0)
    records = RunDir(tmp_path).read_metrics()
    assert any(r.get("train/time_limit") == 1 and r["step"] == 5 for r in records)
    assert RunDir(tmp_path).latest_checkpoint().name == "step_5"
    # The time used is in the checkpoint: training again stops at once; a longer limit goes on from 60 s.
    _, again = _train(tmp_path, 100, task=task, max_minutes=1.0)
    assert again.step == 5
    _, longer = _train(tmp_path, 100, task=task, max_minutes=2.0)
    assert longer.step == 10 and longer.train_seconds == pytest.approx(120.0)


def test_max_minutes_is_range_checked():
    with pytest.raises(ValueError, match=r"train.max_minutes: must be >= 0, got -1"):
        TrainConfig(max_minutes=-1)
