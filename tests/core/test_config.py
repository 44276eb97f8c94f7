from dataclasses import dataclass, field

import pytest

from latentlm.core import ConfigError, TrainConfig, load_config, save_config, split_cli_args
from latentlm.core.config import check_choice, check_range, config_to_dict


@dataclass
class ModelCfg:
    num_states: int = 8
    kind: str = "dense"

    def __post_init__(self):
        if self.num_states < 1:
            raise ValueError(f"model.num_states: must be >= 1, got {self.num_states}")


@dataclass
class RunCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "run"


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_states: 16\ntrain:\n  lr: 0.5\n")
    cfg = load_config(RunCfg, path, ["model.num_states=32", "train.betas=[0.8,0.9]"])
    assert cfg.model.num_states == 32 and cfg.train.lr == 0.5 and cfg.train.betas == [0.8, 0.9]
    assert cfg.model.kind == "dense" and isinstance(cfg.model, ModelCfg)


def test_unknown_key_names_field_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  num_stats: 16\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*model\.num_stats"):
        load_config(RunCfg, path)
    with pytest.raises(ConfigError, match=r"command line.*train\.lrate"):
        load_config(RunCfg, None, ["train.lrate=1"])


def test_wrong_type_and_bad_value(tmp_path):
    with pytest.raises(ConfigError, match="model.num_states"):
        load_config(RunCfg, None, ["model.num_states=many"])
    with pytest.raises(ConfigError, match="must be >= 1"):
        load_config(RunCfg, None, ["model.num_states=0"])
    with pytest.raises(ConfigError, match="train.schedule"):
        load_config(RunCfg, None, ["train.schedule=exponential"])


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  num_states: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+:\d+: malformed YAML"):
        load_config(RunCfg, path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(RunCfg, tmp_path / "missing.yaml")


def test_yaml_round_trip_is_stable(tmp_path):
    cfg = load_config(RunCfg, None, ["model.num_states=5", "name=x"])
    save_config(cfg, tmp_path / "a.yaml")
    again = load_config(RunCfg, tmp_path / "a.yaml")
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


def test_split_cli_args():
    assert split_cli_args(["c.yaml", "a=1", "b.c=x"]) == ("c.yaml", ["a=1", "b.c=x"])
    with pytest.raises(ConfigError, match="neither"):
        split_cli_args(["oops"])


def test_check_choice_and_check_range_messages():
    check_choice("model.kind", "dense", ("dense", "sparse"))
    with pytest.raises(ValueError) as err:
        check_choice("model.kind", "tiny", ("dense", "sparse"))
    assert str(err.value) == "model.kind: must be one of dense, sparse, got 'tiny'"
    check_range("train.lr", 1e-3, 0, low_open=True)
    cases = [
        (dict(name="train.lr", value=-1, low=0, low_open=True), "train.lr: must be > 0, got -1"),
        (dict(name="model.d_model", value=0, low=1), "model.d_model: must be >= 1, got 0"),
        (dict(name="p", value=1.5, low=0, high=1, high_open=True), "p: must be in [0, 1), got 1.5"),
        (dict(name="p", value=0.0, low=0, high=1, low_open=True), "p: must be in (0, 1], got 0.0"),
        (dict(name="q", value=3, high=2), "q: must be <= 2, got 3"),
        (dict(name="train.lr", value=float("inf"), low=0, low_open=True), "train.lr: must be > 0, got inf"),
        (dict(name="train.lr", value=float("nan"), low=0, low_open=True), "train.lr: must be > 0, got nan"),
        (dict(name="x", value=float("-inf")), "x: must be finite, got -inf"),
        (dict(name="x", value="3", low=0), "x: must be a number >= 0, got '3'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            check_range(**kwargs)
        assert str(err.value) == message
    check_range("x", float("inf"), 0, finite=False)
    check_range("x", 1, 1, 1)


@dataclass
class CheckedCfg:
    d_model: int = 8
    name: str = "x"

    def __post_init__(self):
        check_range("model.d_model", self.d_model, 1)


@dataclass
class CheckedRun:
    model: CheckedCfg = field(default_factory=CheckedCfg)


def test_range_errors_name_the_source_that_set_the_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  d_model: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(CheckedRun, path, ["model.name=y"])
    assert str(err.value) == f"{path}: model.d_model: must be >= 1, got 0"
    path.write_text("model:\n  d_model: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(CheckedRun, path, ["model.d_model=-2"])
    assert str(err.value) == "command line: model.d_model: must be >= 1, got -2"


@dataclass
class EvalBatch:
    batch_size: int = 1


@dataclass
class TwoBatchSizes:
    batch_size: int = 1
    eval: EvalBatch = field(default_factory=EvalBatch)

    def __post_init__(self):
        check_range("batch_size", self.batch_size, 1)


def test_the_source_of_a_field_is_matched_exactly_before_by_suffix(tmp_path):
    # `batch_size` set in the file, overridden on the command line; the file also sets
    # `eval.batch_size` after it: the error must name the command line, not the file.
    path = tmp_path / "run.yaml"
    path.write_text("batch_size: 2\neval:\n  batch_size: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(TwoBatchSizes, path, ["batch_size=0"])
    assert str(err.value) == "command line: batch_size: must be >= 1, got 0"


@dataclass
class Pair:
    low: int = 0
    high: int = 1

    def __post_init__(self):
        if self.high <= self.low:
            raise ValueError(f"high: must exceed low={self.low}, got {self.high}")


def test_a_check_across_fields_names_the_command_line_when_an_override_broke_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("high: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Pair, path, ["low=5"])
    assert str(err.value) == f"{path} + command line: high: must exceed low=5, got 3"
    with pytest.raises(ConfigError) as err:  # both overridden: the command line alone
        load_config(Pair, path, ["low=0", "high=0"])
    assert str(err.value) == "command line: high: must exceed low=0, got 0"
    path.write_text("low: 4\nhigh: 3\n")
    with pytest.raises(ConfigError) as err:  # no override: the file alone
        load_config(Pair, path, [])
    assert str(err.value) == f"{path}: high: must exceed low=4, got 3"


def test_empty_override_is_an_empty_string():
    assert load_config(CheckedRun, None, ["model.name="]).model.name == ""
    assert load_config(CheckedRun, None, ["model.name=a=b"]).model.name == "a=b"


def test_env_interpolation_needs_opt_in_and_is_never_saved_resolved(tmp_path, monkeypatch):
    monkeypatch.delenv("LATENTLM_ALLOW_ENV", raising=False)
    monkeypatch.setenv("LATENTLM_TEST_SECRET", "s3cret")
    path = tmp_path / "env.yaml"
    path.write_text("model:\n  name: ${oc.env:LATENTLM_TEST_SECRET}\n")
    with pytest.raises(ConfigError) as err:
        load_config(CheckedRun, path)
    assert str(err.value) == (
        f"{path}: field 'model.name': ${{oc.env:LATENTLM_TEST_SECRET}} reads an environment variable, "
        "which is off by default; set LATENTLM_ALLOW_ENV=1 to allow it "
        "(config.yaml keeps the interpolation, not the value)"
    )
    with pytest.raises(ConfigError, match=r"^command line: field 'model.name': \$\{oc.env:"):
        load_config(CheckedRun, None, ["model.name=${oc.env:LATENTLM_TEST_SECRET}"])
    monkeypatch.setenv("LATENTLM_ALLOW_ENV", "1")
    cfg = load_config(CheckedRun, path)
    assert cfg.model.name == "s3cret"
    save_config(cfg, tmp_path / "config.yaml")
    saved = (tmp_path / "config.yaml").read_text()
    assert "s3cret" not in saved and "${oc.env:LATENTLM_TEST_SECRET}" in saved
    assert load_config(CheckedRun, tmp_path / "config.yaml") == cfg
