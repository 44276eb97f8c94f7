"""``latentlm hmm <command>``: train, eval, compare, distill, quickstart.

latentlm hmm quickstart                              # closed-form LVD -> EM vs random -> EM, < 2 min
latentlm hmm train    configs/hmm/tiny.yaml          # smallest real run (PTB under $LATENTLM_DATA)
latentlm hmm train    configs/hmm/gelato.yaml model.num_states=1024
latentlm hmm compare  configs/hmm/gelato.yaml        # the config's recipe vs compare.baseline, same budget
latentlm hmm distill  configs/hmm/quickstart.yaml    # corpus sampled from a causal-LM teacher, then compare
latentlm hmm eval     run_dir=runs/hmm-tiny data.heldout_path=FILE   # -> eval/metrics.json, eval/report.md
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from omegaconf import OmegaConf

from latentlm.core.cli import Command, system_cli
from latentlm.core.config import ConfigError, config_from_dict, config_to_dict
from latentlm.core.run import RunDir
from latentlm.hmm.config import HMMRunConfig
from latentlm.hmm.distill import sample_corpus
from latentlm.hmm.evaluate import evaluate_run, write_comparison_report
from latentlm.hmm.lvd import default_cache_dir
from latentlm.hmm.task import prepare_corpus, prepare_states, recipe_name, train_run

# The quick start's settings, embedded so that it runs from an installed package without the repo's
# configs/ folder; configs/hmm/quickstart.yaml holds the same values (a test keeps them equal).
QUICKSTART = {
    "run_dir": "runs/hmm-quickstart",
    "model": {"num_states": 32, "parameterization": "dense"},
    "data": {
        "format": "lines",
        "tokenizer": "teacher",
        "min_count": 2,
        "max_length": 64,
        "heldout_fraction": 0.1,
        "dev_fraction": 0.1,
    },
    "lvd": {
        "enabled": True,
        "phase": "closed_form",
        "pseudocount": 0.01,
        "teacher": {"name": "smollm2", "batch_size": 32},
    },
    "train": {
        "optimizer": "em",
        "max_steps": 300,
        "grad_clip": 0.0,
        "log_every": 10,
        "eval_every": 10,
        "best_metric": "dev_ppl",
        "seed": 0,
    },
    "em": {"batch_tokens": 512, "step_decay": 0.7, "pseudocount": 0.01},
    "distill": {
        "num_sequences": 240,
        "max_new_tokens": 40,
        "batch_size": 120,
        "dtype": "bfloat16",
        "seed": 0,
        "compare": True,
    },
    "compare": {
        "label": "lvd_closed_form_em",
        "baseline_label": "random_em",
        "baseline": ["lvd.enabled=false"],
    },
}


def quickstart_config(overrides: list[str] = ()) -> HMMRunConfig:
    """The embedded quick-start configuration with optional dotted overrides."""
    values = OmegaConf.merge(OmegaConf.create(QUICKSTART), OmegaConf.from_dotlist(list(overrides)))
    source = "latentlm.hmm.cli.QUICKSTART" + (" + command line" if overrides else "")
    return config_from_dict(HMMRunConfig, OmegaConf.to_container(values), source=source)


def baseline_config(cfg: HMMRunConfig) -> HMMRunConfig:
    """The second recipe of a comparison: the run's config with ``compare.baseline`` applied."""
    merged = OmegaConf.merge(
        OmegaConf.create(config_to_dict(cfg)), OmegaConf.from_dotlist(list(cfg.compare.baseline))
    )
    return config_from_dict(HMMRunConfig, OmegaConf.to_container(merged), source="compare.baseline")


def _steps_to(run: RunDir, target: float) -> int | None:
    """The first step whose held-out perplexity is at or below ``target``."""
    hits = [r["step"] for r in run.read_metrics() if r.get("eval/heldout_ppl", float("inf")) <= target + 1e-9]
    return min(hits) if hits else None


def _gain_text(cfg: HMMRunConfig, summaries: dict[str, dict], runs: dict[str, RunDir]) -> str:
    (label, ours), (base_label, base) = summaries.items()
    # With a development split, each run's model is the one early stopping on dev keeps.
    key, what = (
        ("heldout_ppl_at_best_dev", "held-out perplexity at the best dev-split evaluation")
        if "heldout_ppl_at_best_dev" in ours and "heldout_ppl_at_best_dev" in base
        else ("best_heldout_ppl", "best held-out perplexity")
    )
    a, b = ours[key], base[key]
    if a is None or b is None:
        return ""
    change = (a - b) / b * 100
    verdict = "lower (better)" if a < b else "higher (worse)"
    text = (
        f"**Result:** {what} {a:.2f} for `{label}` vs {b:.2f} for `{base_label}`: "
        f"{abs(change):.1f} % {verdict}, at the same budget ({cfg.train.max_steps} steps, "
        f"{ours['epochs']} vs {base['epochs']} epochs; optimisation {ours['fit_seconds']} s vs "
        f"{base['fit_seconds']} s, evaluations and start-up left out)."
    )
    ours_steps, base_steps = _steps_to(runs[label], b), _steps_to(runs[base_label], b)
    if ours_steps is not None and base_steps is not None:
        text += (
            f" `{label}` reaches `{base_label}`'s best ({b:.2f}) at step {ours_steps}, "
            f"`{base_label}` itself at step {base_steps}."
        )
    return text


def compare(cfg: HMMRunConfig) -> dict[str, dict]:
    """Train the config's recipe and ``compare.baseline`` on the same corpus and budget; one report."""
    root = Path(cfg.run_dir)
    corpus = prepare_corpus(cfg)
    summaries, runs = {}, {}
    for label, run_cfg in (
        (cfg.compare.label, copy.deepcopy(cfg)),
        (cfg.compare.baseline_label, baseline_config(cfg)),
    ):
        run_cfg.run_dir = str(root / label)
        started = time.perf_counter()
        states = prepare_states(run_cfg, corpus)
        summaries[label] = train_run(run_cfg, corpus, states, prepare_seconds=time.perf_counter() - started)
        runs[label] = RunDir(run_cfg.run_dir, tensorboard=False)
    recipes = ", ".join(f"`{label}` = {summary['recipe']}" for label, summary in summaries.items())
    intro = (
        f"Same model size (K={cfg.model.num_states}, {cfg.model.parameterization}), corpus `{corpus.source}` "
        f"({corpus.train.num_tokens} training tokens, V={len(corpus.vocab)}) and budget "
        f"({cfg.train.max_steps} optimizer steps); recipes: {recipes}; the baseline differs by "
        f"{list(cfg.compare.baseline)}. LVD states are clusters of `{cfg.lvd.teacher.name}` hidden states."
    )
    gain = _gain_text(cfg, summaries, runs)
    write_comparison_report(
        "HMM: recipe comparison", runs, summaries, root, intro + ("\n\n" + gain if gain else "")
    )
    RunDir(root, tensorboard=False).write_json("summary.json", summaries)
    if gain:
        print(gain.replace("**", ""))
    kept = ("recipe", "best_heldout_ppl", "heldout_ppl_at_best_dev", "epochs", "train_seconds")
    return {label: {k: s[k] for k in kept if k in s} for label, s in summaries.items()}


def distill(cfg: HMMRunConfig) -> dict:
    """Sample a corpus from the causal-LM teacher, then train on it (and compare, if configured)."""
    cfg = copy.deepcopy(cfg)
    cache = default_cache_dir(cfg.lvd)
    cache.mkdir(parents=True, exist_ok=True)
    cfg.data.path = str(sample_corpus(cfg.lvd.teacher.name, cfg.distill, cache))
    cfg.data.format = "lines"
    cfg.data.heldout_path = ""
    if cfg.distill.compare:
        return compare(cfg)
    return train_run(cfg)


def train(cfg: HMMRunConfig) -> dict:
    summary = train_run(cfg)
    print(f"done: {Path(cfg.run_dir) / 'report.md'} ({recipe_name(cfg)})")
    return summary


def quickstart(args: list[str]) -> dict:
    """The embedded quick start; ``args`` are dotted overrides of its config (no YAML file)."""
    positional = [a for a in args if "=" not in a]
    if positional:
        raise ConfigError(
            f"command line: quickstart takes key=value overrides of its embedded config, not "
            f"{positional[0]!r} (for a YAML file: latentlm hmm distill FILE)"
        )
    return distill(quickstart_config(args))


main = system_cli(
    "hmm",
    __doc__,
    [
        Command(
            "train",
            train,
            "train one HMM (LVD or not; AdamW or EM) and write a run directory",
            config=HMMRunConfig,
        ),
        Command(
            "eval",
            evaluate_run,
            "held-out perplexity of a finished run (any file: data.heldout_path=...)",
            on_run=HMMRunConfig,
        ),
        Command(
            "compare",
            compare,
            "the config's recipe vs compare.baseline at the same budget, one report",
            config=HMMRunConfig,
        ),
        Command(
            "distill",
            distill,
            "sample a corpus from a causal-LM teacher, then train (and compare)",
            config=HMMRunConfig,
        ),
        Command(
            "quickstart",
            quickstart,
            "closed-form LVD -> stepwise EM vs random -> stepwise EM, SmolLM2-distilled corpus",
        ),
    ],
)
