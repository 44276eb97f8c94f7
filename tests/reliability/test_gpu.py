"""The numerical guard and exact resume on a CUDA device under bf16 autocast (skipped without a GPU)."""

import pytest
import torch

from latentlm.core import RunDir
from tests.reliability.faults import NaNGradient, OverflowingUpdate, train, weights


@pytest.mark.gpu
def test_guard_and_resume_on_cuda_bf16(tmp_path):
    cadence = {"checkpoint_every": 2, "mixed_precision": "bf16"}
    with pytest.raises(FloatingPointError, match="step 6: gradient norm is nan.*checkpoints/step_4"):
        train(tmp_path / "cut", 10, task=NaNGradient(bad_steps={5}), **cadence)
    resumed, _ = train(tmp_path / "cut", 10, **cadence)
    full, _ = train(tmp_path / "full", 10, **cadence)
    assert next(resumed.model.parameters()).device.type == "cuda"
    assert not [r for r in RunDir(tmp_path / "cut").read_metrics() if "eval/failed" in r]
    for name, value in weights(full.model).items():
        torch.testing.assert_close(weights(resumed.model)[name], value, rtol=0, atol=0)


@pytest.mark.gpu
def test_skip_rolls_back_on_cuda(tmp_path):
    trainer, state = train(tmp_path, 8, task=OverflowingUpdate(poison_at=4), nonfinite="skip")
    assert state.step == 8 and state.skipped_steps == 1
    assert all(bool(torch.isfinite(v).all()) for v in weights(trainer.model).values())
    assert RunDir(tmp_path).latest_checkpoint().name == "step_8"
