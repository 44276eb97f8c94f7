"""`latentlm wire ...`: train, eval and the seed-001 stages from the command line.

latentlm wire train [config.yaml] [key=value ...]
latentlm wire eval run_dir=RUN [checkpoint=best|last] [key=value ...]   (keys of the run's config)
latentlm wire stage N [config.yaml] [key=value ...]                     (N = 1..4, seed 001)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from latentlm.core.config import ConfigError, load_config, split_cli_args, split_run_dir


def _pop(overrides: list[str], key: str, default: str | None = None) -> str | None:
    for item in list(overrides):
        if item.startswith(f"{key}="):
            overrides.remove(item)
            return item.split("=", 1)[1]
    return default


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `latentlm wire`; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="latentlm wire", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "Stage A + Stage B training"), ("eval", "evaluate a run directory")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("args", nargs="*", help="[config.yaml] key=value ...")
    p = sub.add_parser("stage", help="seed-001 incremental stage 1-4")
    p.add_argument("number", type=int, choices=[1, 2, 3, 4])
    p.add_argument("args", nargs="*", help="[config.yaml] key=value ...")
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if ns.command == "train":
            from latentlm.wire.config import WireRunConfig
            from latentlm.wire.pipeline import evaluate_run, train_wire

            path, overrides = split_cli_args(ns.args)
            cfg = load_config(WireRunConfig, path, overrides)
            run_path = train_wire(cfg)
            print(f"trained: {run_path}")
            metrics = evaluate_run(run_path)
            print(
                json.dumps(
                    {
                        m: {k: v.get("f1") for k, v in d.items() if isinstance(v, dict)}
                        for m, d in metrics["models"].items()
                    },
                    indent=1,
                )
            )
            return 0
        if ns.command == "eval":
            from latentlm.wire.pipeline import evaluate_run

            run_dir, overrides = split_run_dir(ns.args)
            checkpoint = _pop(overrides, "checkpoint", "best")
            metrics = evaluate_run(run_dir, overrides, checkpoint=checkpoint)
            print(json.dumps(metrics, indent=1))
            return 0
        from latentlm.wire.stages import run_stage

        path, overrides = split_cli_args(ns.args)
        print(json.dumps(run_stage(ns.number, path, overrides), indent=1))
        return 0
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"latentlm wire {ns.command}: {err}", file=sys.stderr)
        return 2
