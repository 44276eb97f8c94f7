from dataclasses import dataclass, field

import pytest

from latentlm.core import ConfigError, TrainConfig, load_config, save_config, split_cli_args
from latentlm.core.config import config_to_dict


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
