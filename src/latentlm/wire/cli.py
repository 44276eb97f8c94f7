"""LatentWire: one latent conditioning several frozen LLMs.

latentlm wire train [config.yaml] [key=value ...]                 train, save `model/`, then evaluate
latentlm wire eval run_dir=RUN [checkpoint=best|last] [key=value ...]   (keys of the run's config)
latentlm wire stage N [config.yaml] [key=value ...]               seed-001 stage N = 1..4
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from latentlm.core.cli import Command, UserError, system_cli
from latentlm.core.config import load_config, split_cli_args
from latentlm.wire.config import WireRunConfig


def _pop(overrides: list[str], key: str, default: str) -> str:
    for item in list(overrides):
        if item.startswith(f"{key}="):
            overrides.remove(item)
            return item.split("=", 1)[1]
    return default


def _f1_summary(metrics: dict) -> dict:
    return {
        m: {k: v.get("f1") for k, v in d.items() if isinstance(v, dict)} for m, d in metrics["models"].items()
    }


def train(cfg: WireRunConfig) -> dict:
    from latentlm.wire.evaluate import evaluate_run
    from latentlm.wire.task import train_wire

    run_path = train_wire(cfg)
    print(f"trained: {run_path}")
    return _f1_summary(evaluate_run(run_path))


def evaluate(run_dir: str, overrides: Sequence[str]) -> dict:
    from latentlm.wire.evaluate import evaluate_run

    overrides = list(overrides)
    checkpoint = _pop(overrides, "checkpoint", "best")
    return _f1_summary(evaluate_run(run_dir, overrides, checkpoint=checkpoint))


def stage(args: Sequence[str]) -> dict:
    from latentlm.wire.stages import run_stage

    args = list(args)
    if not args or args[0] not in ("1", "2", "3", "4"):
        raise UserError("stage: give the stage number 1, 2, 3 or 4 first")
    path, overrides = split_cli_args(args[1:])
    load_config(WireRunConfig, path, overrides)  # bad input fails here, before any model loads
    return json.loads(json.dumps(run_stage(int(args[0]), path, overrides), default=str))


main = system_cli(
    "wire",
    __doc__,
    [
        Command("train", train, "train the encoder and adapters, then evaluate", config=WireRunConfig),
        Command("eval", evaluate, "evaluate a finished run (checkpoint=best|last)", on_run=WireRunConfig),
        Command("stage", stage, "seed-001 stage N (1..4): `stage N [config.yaml] [key=value ...]`"),
    ],
)
