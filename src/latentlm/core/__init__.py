"""The shared core: typed configs, the training engine, run directories, reports, checkpoints."""

from latentlm.core.config import ConfigError, load_config, save_config, split_cli_args
from latentlm.core.engine import StepOutput, Task, TrainConfig, Trainer, TrainState, load_model_weights
from latentlm.core.pretrained import PretrainedMixin
from latentlm.core.report import Report, line_plot
from latentlm.core.run import RunDir, progress
from latentlm.core.seed import seed_everything

__all__ = [
    "ConfigError",
    "PretrainedMixin",
    "Report",
    "RunDir",
    "StepOutput",
    "Task",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "line_plot",
    "load_config",
    "load_model_weights",
    "progress",
    "save_config",
    "seed_everything",
    "split_cli_args",
]
