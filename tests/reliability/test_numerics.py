"""Fault injection: non-finite losses, gradients, updates and evaluations."""

import math

import pytest
import torch

from latentlm.core import RunDir
from latentlm.core.checkpoint import load_tensors
from tests.core.toy_task import ToyRegression
from tests.reliability.faults import (
    FailingEvaluation,
    NaNGradient,
    OverflowingUpdate,
    train,
    weights,
)


def _finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values())


def test_nan_gradient_is_not_applied_nor_checkpointed_and_rerun_resumes(tmp_path):
    with pytest.raises(FloatingPointError) as err:
        train(tmp_path / "cut", 10, task=NaNGradient(bad_steps={5}), checkpoint_every=2)
    message = str(err.value)
    good = tmp_path / "cut" / "checkpoints" / "step_4"
    assert "step 6" in message and "gradient norm is nan" in message and "not applied" in message
    assert f"last good checkpoint is {good}" in message
    run = RunDir(tmp_path / "cut")
    assert [p.name for p in run.checkpoints()] == ["step_2", "step_4"]
    assert _finite(load_tensors(good / "model.safetensors"))
    record = run.read_metrics()[-1]
    assert record["train/nonfinite_step"] == 6 and "gradient norm is nan" in record["train/nonfinite"]

    # The rerun (here without the fault) resumes from step 4 and matches an uninterrupted run exactly.
    resumed, state = train(tmp_path / "cut", 10, checkpoint_every=2)
    full, _ = train(tmp_path / "full", 10, checkpoint_every=2)
    assert state.step == 10
    for name, value in weights(full.model).items():
        torch.testing.assert_close(weights(resumed.model)[name], value, rtol=0, atol=0)


def test_nan_loss_message_names_the_checkpoint(tmp_path):
    class NaNLoss(ToyRegression):
        def loss(self, model, batch, state):
            out = super().loss(model, batch, state)
            out.loss = out.loss * (float("nan") if state.step == 2 else 1.0)
            return out

    with pytest.raises(FloatingPointError, match=r"step 3: loss is nan .*no checkpoint was written yet"):
        train(tmp_path, 10, task=NaNLoss(), checkpoint_every=5)
    assert RunDir(tmp_path).checkpoints() == []
    # The rerun starts from step 0 and its log holds each step once (the failed attempt's records go).
    train(tmp_path, 4)
    assert [r["step"] for r in RunDir(tmp_path).read_metrics() if "train/loss" in r] == [1, 2, 3, 4]


def test_overflowing_update_is_rolled_back_under_skip(tmp_path):
    trainer, state = train(tmp_path, 10, task=OverflowingUpdate(poison_at=6), nonfinite="skip")
    assert state.step == 10 and state.skipped_steps == 1
    assert _finite(weights(trainer.model))
    final = RunDir(tmp_path).latest_checkpoint()
    assert final.name == "step_10" and _finite(load_tensors(final / "model.safetensors"))
    skipped = [r for r in RunDir(tmp_path).read_metrics() if "train/nonfinite" in r]
    assert len(skipped) == 1 and skipped[0]["train/nonfinite_step"] == 6
    assert "0.weight" in skipped[0]["train/nonfinite"]


def test_overflowing_update_stops_under_stop(tmp_path):
    with pytest.raises(FloatingPointError, match=r"step 6: the update made parameters non-finite: 0.weight"):
        train(tmp_path, 10, task=OverflowingUpdate(poison_at=6), checkpoint_every=5)
    assert [p.name for p in RunDir(tmp_path).checkpoints()] == ["step_5"]


def test_skip_stops_after_the_consecutive_limit(tmp_path):
    task = NaNGradient(bad_steps=set(range(3, 100)))
    limit = r"4 consecutive non-finite steps, train.max_nonfinite_skips=3"
    with pytest.raises(FloatingPointError, match=limit):
        train(tmp_path, 10, task=task, nonfinite="skip", max_nonfinite_skips=3, checkpoint_every=1)
    run = RunDir(tmp_path)
    assert run.latest_checkpoint().name == "step_3"
    assert len([r for r in run.read_metrics() if "train/nonfinite" in r]) == 4


def test_skipped_step_leaves_the_weights_unchanged(tmp_path):
    seen = {}

    class Watch(NaNGradient):
        def on_step_start(self, model, state):
            seen.setdefault(state.step, []).append(weights(model))

    train(tmp_path, 8, task=Watch(bad_steps={4}, once=True), nonfinite="skip")
    # Step 5 was tried twice (the NaN batch, then the next batch) from identical weights.
    assert len(seen[4]) == 2
    for name, value in seen[4][0].items():
        torch.testing.assert_close(seen[4][1][name], value, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["raise", "inf"])
def test_failing_evaluation_is_recorded_and_the_final_checkpoint_written(tmp_path, how):
    trainer, state = train(tmp_path, 6, task=FailingEvaluation(how), eval_every=3)
    assert state.step == 6
    run = RunDir(tmp_path)
    assert run.latest_checkpoint().name == "step_6"
    failures = [r for r in run.read_metrics() if r.get("eval/failed") == 1]
    assert [r["step"] for r in failures] == [3, 6]
    expected = "OverflowError: int too large" if how == "raise" else "non-finite values for mse"
    assert all(expected in r["eval/error"] for r in failures)
    if how == "inf":
        assert all(r["eval/ok"] == 1.0 and "eval/mse" not in r for r in failures)
    assert all(math.isfinite(v) for v in weights(trainer.model)["0.weight"].flatten().tolist())
