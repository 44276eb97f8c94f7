"""``latentlm hmm <command>``: train, eval, compare, distill, quickstart.

latentlm hmm quickstart                                  # no download, a few minutes on 2 CPU cores
latentlm hmm train    configs/hmm/lvd.yaml model.num_states=1024 lvd.pretrain_tokens=5000000
latentlm hmm compare  configs/hmm/lvd.yaml               # with and without LVD, one report
latentlm hmm distill  configs/hmm/quickstart.yaml        # corpus sampled from a causal-LM teacher
latentlm hmm eval     run_dir=runs/hmm                   # held-out perplexity -> metrics.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

from latentlm.core.config import ConfigError, config_from_dict, load_config, split_cli_args, split_run_dir
from latentlm.core.run import RunDir
from latentlm.hmm.distill import sample_corpus
from latentlm.hmm.lvd import default_cache_dir
from latentlm.hmm.report import write_comparison_report
from latentlm.hmm.task import HMMRunConfig
from latentlm.hmm.train import evaluate_run, prepare_corpus, prepare_data, train_run

# The quick start's settings, embedded so that it runs from an installed package without the repo's
# configs/ folder; configs/hmm/quickstart.yaml holds the same values (a test keeps them equal).
QUICKSTART = {
    "run_dir": "runs/hmm-quickstart",
    "batch_size": 16,
    "model": {"num_states": 32, "parameterization": "dense"},
    "corpus": {
        "format": "lines",
        "tokenizer": "teacher",
        "min_count": 2,
        "max_length": 64,
        "heldout_fraction": 0.1,
    },
    "lvd": {"enabled": True, "pretrain_tokens": 8000, "teacher": {"name": "smollm2", "batch_size": 32}},
    "train": {"max_steps": 160, "lr": 0.05, "log_every": 5, "eval_every": 20, "seed": 0},
    "distill": {"num_sequences": 240, "max_new_tokens": 40, "batch_size": 60, "seed": 0, "compare": True},
}


def quickstart_config(overrides: list[str] = ()) -> HMMRunConfig:
    """The embedded quick-start configuration with optional dotted overrides."""
    from omegaconf import OmegaConf

    values = OmegaConf.merge(OmegaConf.create(QUICKSTART), OmegaConf.from_dotlist(list(overrides)))
    source = "latentlm.hmm.cli.QUICKSTART" + (" + command line" if overrides else "")
    return config_from_dict(HMMRunConfig, OmegaConf.to_container(values), source=source)


def _config(args: list[str]) -> HMMRunConfig:
    path, overrides = split_cli_args(args)
    return load_config(HMMRunConfig, path, overrides)


def compare(cfg: HMMRunConfig) -> dict[str, dict]:
    """Train with and without LVD under the same budget; one report in ``cfg.run_dir``."""
    root = Path(cfg.run_dir)
    corpus = prepare_corpus(cfg)
    summaries, runs = {}, {}
    for label, enabled in (("lvd", True), ("no_lvd", False)):
        run_cfg = copy.deepcopy(cfg)
        run_cfg.lvd.enabled = enabled
        run_cfg.run_dir = str(root / label)
        started = time.perf_counter()
        data = prepare_data(run_cfg, corpus)
        summaries[label] = train_run(run_cfg, data, prepare_seconds=time.perf_counter() - started)
        runs[label] = RunDir(run_cfg.run_dir, tensorboard=False)
    intro = (
        f"Same model (K={cfg.model.num_states}, {cfg.model.parameterization}), corpus `{corpus.source}` "
        f"({corpus.train.num_tokens} training tokens, V={len(corpus.vocab)}), optimiser and budget "
        f"({cfg.train.max_steps} steps); the LVD run spends its first {cfg.lvd.pretrain_tokens} tokens on "
        f"−log P(O, S) with clusters of `{cfg.lvd.teacher.name}` embeddings."
    )
    write_comparison_report("HMM: LVD vs no LVD", runs, summaries, root, intro)
    RunDir(root, tensorboard=False).write_json("summary.json", summaries)
    return summaries


def distill(cfg: HMMRunConfig) -> dict:
    """Sample a corpus from the causal-LM teacher, then train on it (and compare, if configured)."""
    cfg = copy.deepcopy(cfg)
    cache = default_cache_dir(cfg.lvd)
    cache.mkdir(parents=True, exist_ok=True)
    cfg.corpus.path = str(sample_corpus(cfg.lvd.teacher.name, cfg.distill, cache))
    cfg.corpus.format = "lines"
    cfg.corpus.heldout_path = ""
    if cfg.distill.compare:
        return compare(cfg)
    return train_run(cfg)


def _print_summary(summary: dict, run_dir: str) -> None:
    print(f"done: {Path(run_dir) / 'report.md'}")
    for key, value in summary.items():
        print(f"  {key}: {value}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``latentlm hmm``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="latentlm hmm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["train", "eval", "compare", "distill", "quickstart"])
    parser.add_argument(
        "args", nargs="*", help="[config.yaml] [key=value ...] (eval: run_dir=PATH [corpus.*=...])"
    )
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if ns.command == "eval":
            run_dir, overrides = split_run_dir(ns.args)
            metrics = evaluate_run(run_dir, overrides)
            _print_summary(metrics, run_dir)
            return 0
        if ns.command == "quickstart":
            cfg = quickstart_config([a for a in ns.args if "=" in a])
            result = distill(cfg)
        else:
            cfg = _config(ns.args)
            result = {"train": train_run, "compare": compare, "distill": distill}[ns.command](cfg)
        _print_summary(result, cfg.run_dir)
        return 0
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"latentlm hmm {ns.command}: error: {err}", file=sys.stderr)
        return 2
