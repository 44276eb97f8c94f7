"""Fault injection: bad TrainConfig values, and the log record that follows a resume."""

import pytest

from latentlm.core import ConfigError, RunDir, TrainConfig
from tests.core.toy_task import ToyRegression
from tests.reliability.faults import ToyRunConfig, train

BAD = [
    ("log_every", 0, "train.log_every: must be >= 1, got 0"),
    ("keep_checkpoints", 0, "train.keep_checkpoints: must be >= 1, got 0"),
    ("checkpoint_every", -1, "train.checkpoint_every: must be >= 0, got -1"),
    ("warmup_steps", -5, "train.warmup_steps: must be >= 0, got -5"),
    ("eval_every", -1, "train.eval_every: must be >= 0, got -1"),
    ("grad_accum", 0, "train.grad_accum: must be >= 1, got 0"),
    ("max_steps", 0, "train.max_steps: must be >= 1, got 0"),
    ("early_stop_patience", -1, "train.early_stop_patience: must be >= 0, got -1"),
    ("seed", -1, r"train.seed: must be in \[0, 4294966272\), got -1"),
    ("max_nonfinite_skips", 0, "train.max_nonfinite_skips: must be >= 1, got 0"),
    ("seed", 2**32, r"train.seed: must be in \[0, 4294966272\), got 4294967296"),
    ("lr", float("inf"), "train.lr: must be > 0, got inf"),
    ("lr", -1.0, "train.lr: must be > 0, got -1.0"),
    ("lr", 0.0, "train.lr: must be > 0, got 0.0"),
    ("grad_clip", -1.0, "train.grad_clip: must be >= 0, got -1.0"),
    ("grad_clip", float("nan"), "train.grad_clip: must be >= 0, got nan"),
    ("weight_decay", -0.1, "train.weight_decay: must be >= 0, got -0.1"),
    ("min_lr_ratio", 2.0, r"train.min_lr_ratio: must be in \[0, 1\], got 2.0"),
    ("betas", [0.9, 1.0], r"train.betas\[1\]: must be in \[0, 1\), got 1.0"),
    ("betas", [0.9], r"train.betas: need two values, got \[0.9\]"),
    ("nonfinite", "ignore", "train.nonfinite: must be one of stop, skip, got 'ignore'"),
    ("schedule", "step", "train.schedule: must be one of constant, linear, cosine, got 'step'"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_bad_train_value_names_the_field(name, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        TrainConfig(**{name: value})


@pytest.mark.parametrize("override", ["train.log_every=0", "train.lr=inf", "train.lr=-1"])
def test_bad_value_from_the_command_line_is_a_config_error(override):
    from latentlm.core import load_config

    field = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"command line: {field}: must be"):
        load_config(ToyRunConfig, None, [override])


class _Killed(ToyRegression):
    """Dies in step 6; the last checkpoint is step 3, in the middle of a 4-step log window."""

    def loss(self, model, batch, state):
        if state.step == 5:
            raise KeyboardInterrupt
        return super().loss(model, batch, state)


def test_first_record_after_resume_averages_the_whole_window(tmp_path):
    cadence = {"log_every": 4, "checkpoint_every": 3, "grad_accum": 2}
    train(tmp_path / "full", 12, **cadence)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", 12, task=_Killed(), **cadence)
    train(tmp_path / "cut", 12, **cadence)

    def records(path):
        return [
            {k: v for k, v in r.items() if k != "train/tokens_per_s"}
            for r in RunDir(path).read_metrics()
            if "train/loss" in r
        ]

    full = records(tmp_path / "full")
    assert [r["step"] for r in full] == [4, 8, 12]
    assert records(tmp_path / "cut") == full  # step 4 averages steps 1-4 although the run resumed at 3
