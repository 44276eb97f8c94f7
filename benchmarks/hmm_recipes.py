"""Which recipe wins: held-out perplexity of five HMM training recipes, each stopped early on a dev split.

For each corpus and K, on the same tokenised corpus, splits and model size:

* ``random_adamw``: random init, AdamW on −log P(O) (batch --adamw-batch sequences, constant lr);
* ``random_em``: random init, full-batch EM, one EM iteration per epoch (with --em-batch-tokens N:
  stepwise EM, one update per mini-batch of about N tokens, counts scaled to the training split);
* ``lvd_adamw``: the seed's LVD: AdamW on −log P(O, S) with the stored teacher states for the first
  --lvd-adamw-epochs epochs of tokens, then AdamW on −log P(O) (same lr and batch);
* ``lvd_closed_form_em``: the closed-form count estimate of log P(O, S), then EM (full-batch, or
  stepwise as for ``random_em``) with the same pseudocount in every M-step (configs/hmm/gelato.yaml);
* ``lvd_closed_form_adamw``: the closed-form count estimate (with the emission prior and pseudocount
  chosen for ``lvd_closed_form_em`` in the same cell), then AdamW on −log P(O) (same lr grid and batch);
* ``hmmlearn_em``: hmmlearn ``CategoricalHMM`` (scaling), one ``fit`` iteration per epoch, up to
  --hmmlearn-max-states and a time cap; scored by our forward algorithm under the same protocol.

**Splits and selection (the same rule for every recipe; the held-out split never chooses anything).**
The corpus is cut into training units, a development split (the last --dev-fraction of the training
units, ``data.dev_fraction``: its words unseen in the rest are ``<unk>``, as held-out words are) and the
held-out split (the last 10% of the file). Every recipe trains on the training split for at most
--epochs epochs, is scored on dev and held-out --evals-per-epoch times an epoch (default once), and
stops once dev perplexity has not improved for --patience evaluations; the kept model is the evaluation
with the lowest dev perplexity, and ``heldout_ppl`` is the held-out perplexity of that model. Settings
are chosen the same way: each candidate (the pseudocount of the count estimate and every M-step for the
EM recipes, the lr for the AdamW recipes) trains with early stopping and the lowest dev perplexity wins
(ties: the first listed).
Candidates are tried at the K listed in --select-states (default: every K); at a larger K the setting
chosen at the largest selected K below it for the same corpus and recipe is reused (``selection`` of
the row says which). ``epochs`` is the epoch of the kept model, ``epochs_run`` how many ran,
``train_seconds`` the optimisation time up to the kept model (``train_seconds_total`` all of it); both
exclude the LVD preparation (teacher embeddings + k-means, ``lvd_prepare_seconds``, cached across K),
the evaluations and the start-up. Rows are merged into benchmarks/results/<--name>.json (default:
hmm_recipes.json, the benchmark of record) by (corpus, K, recipe), so corpora can be run in separate
jobs; plots: <--name>_<corpus>_K<k>.png.

    python3 benchmarks/hmm_recipes.py --corpus ptb --states 256 1024 --select-states 256
    python3 benchmarks/hmm_recipes.py --corpus tinyshakespeare --states 256 1024 --select-states 256
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from latentlm.core.bench import RESULTS, data_dir, machine, save_results
from latentlm.core.config import config_from_dict
from latentlm.core.run import RunDir
from latentlm.hmm.config import TEACHER_DTYPES, DistillConfig, HMMConfig, HMMRunConfig, LVDConfig
from latentlm.hmm.distill import sample_corpus
from latentlm.hmm.evaluate import heldout_metrics
from latentlm.hmm.lvd import closed_form_estimate, default_cache_dir
from latentlm.hmm.model import HMMLanguageModel, HMMParameters
from latentlm.hmm.task import em_chunks, prepare_corpus, prepare_states, train_run

RECIPES = (
    "lvd_closed_form_em",
    "random_em",
    "random_adamw",
    "lvd_adamw",
    "lvd_closed_form_adamw",
    "hmmlearn_em",
)
NAME = "hmm_recipes"
SAMPLING: dict = {}
"""The distilled corpus's sampling time, when this invocation sampled it."""


def corpus_settings(name: str, args=None) -> dict:
    root = data_dir()
    if name == "distilled":  # GeLaTo's setting: the HMM learns the teacher's own samples, in its tokens
        return {
            "path": str(distilled_corpus(args)),
            "format": "lines",
            "tokenizer": "teacher",
            "min_count": 2,
        }
    if name == "ptb":  # pre-tokenised: one standard PTB token per whitespace-separated string
        return {"path": str(root / "ptb" / "ptb.valid.txt"), "format": "lines", "tokenizer": "whitespace"}
    if name == "ptb_smoke":  # a few sentences, to check the script end to end
        return {**corpus_settings("ptb"), "max_train_units": 120}
    if name == "tinyshakespeare":  # the whole file: paragraphs (speeches) are the units
        return {
            "path": str(root / "tinyshakespeare" / "input.txt"),
            "format": "text",
            "tokenizer": "word",
            "min_count": 2,
        }
    raise ValueError(f"--corpus: unknown corpus {name!r}")


def distilled_corpus(args) -> str:
    """Sample (or reuse from the LVD cache) --distill-sequences sequences of 48 tokens from the causal-LM
    teacher; the held-out split (the last 10 %) is fresh samples. Records the sampling rate."""
    if args is None or args.teacher == "minilm":
        raise ValueError("--corpus distilled: samples from a causal LM; pass --teacher smollm2")
    cfg = DistillConfig(
        num_sequences=args.distill_sequences,
        max_new_tokens=48,
        batch_size=args.distill_batch,
        dtype=args.distill_dtype,
        seed=0,
    )
    cache = default_cache_dir(LVDConfig())
    cache.mkdir(parents=True, exist_ok=True)
    started, began = time.perf_counter(), time.time()
    path = sample_corpus(args.teacher, cfg, cache)
    seconds = time.perf_counter() - started
    if path.stat().st_mtime >= began:  # sampled now, not read from the cache
        tokens = cfg.num_sequences * cfg.max_new_tokens
        SAMPLING.update(
            {
                "sequences": cfg.num_sequences,
                "max_new_tokens": cfg.max_new_tokens,
                "batch_size": cfg.batch_size,
                "torch_threads": torch.get_num_threads(),
                "seconds": round(seconds, 1),
                "new_tokens_per_s_at_most": round(tokens / seconds, 1),
            }
        )
    return path


def setting_name(recipe: str) -> str:
    return "lr" if recipe.endswith("_adamw") else "emission_prior:pseudocount"


def em_candidates(priors: list[str], pseudocounts: list[float], emission_pseudocounts=()) -> list[str]:
    """EM settings as labels ``<emission prior>:<pseudocount>[:<emission pseudocount>]``, e.g.
    ``unigram:0.01`` (one pseudocount for every table) or ``uniform:0.001:0.01``."""
    emission = [f":{alpha:g}" for alpha in emission_pseudocounts] or [""]
    return [f"{prior}:{alpha:g}{e}" for prior in priors for alpha in pseudocounts for e in emission]


def parse_em_candidate(label: str) -> tuple[str, float, float]:
    """``(emission prior, pseudocount, emission pseudocount)``; the last is 0 (the same) if not given."""
    prior, alpha, *emission = label.split(":")
    return prior, float(alpha), float(emission[0]) if emission else 0.0


def recipe_config(
    base: dict, recipe: str, k: int, args, corpus, value: str, init: str = "uniform:0.01"
) -> HMMRunConfig:
    """One recipe's run config with its setting: ``<emission prior>:<pseudocount>`` (EM recipes; the same
    for the count estimate and every M-step) or the lr (AdamW recipes); ``init``: the count estimate's
    ``<emission prior>:<pseudocount>`` for ``lvd_closed_form_adamw``."""
    values = json.loads(json.dumps(base))
    values["model"] = {"num_states": k, "parameterization": "dense"}
    stop = {"best_metric": "dev_ppl", "early_stop_patience": args.patience, "checkpoint_every": 0}
    evals = args.evals_per_epoch
    if recipe.endswith("_em"):
        values["train"] = {"optimizer": "em", "grad_clip": 0.0, **stop}  # steps: below, once chunked
        prior, alpha, emission_alpha = parse_em_candidate(value)
        values["em"] = {
            "batch_tokens": args.em_batch_tokens,
            "step_decay": args.em_step_decay,
            "warm_start": args.em_warm_start,
            "group_by_length": args.em_group_by_length,
            "pseudocount": alpha,
            "emission_pseudocount": emission_alpha,
            "emission_prior": prior,
        }
    else:
        steps_per_epoch = len(corpus.train) // args.adamw_batch
        values["batch_size"] = args.adamw_batch
        values["train"] = {
            "lr": float(value),
            "max_steps": args.epochs * steps_per_epoch,
            "eval_every": max(1, steps_per_epoch // evals),
            "log_every": max(1, steps_per_epoch // 4),
            **stop,
        }
    values["lvd"] = {**values["lvd"], "enabled": recipe.startswith("lvd")}
    if recipe == "lvd_closed_form_adamw":
        prior, alpha, emission_alpha = parse_em_candidate(init)
    if recipe in ("lvd_closed_form_em", "lvd_closed_form_adamw"):
        values["lvd"].update(
            {
                "phase": "closed_form",
                "pseudocount": alpha,
                "emission_pseudocount": emission_alpha,
                "emission_prior": prior,
            }
        )
    if recipe == "lvd_adamw":
        pretrain = round(args.lvd_adamw_epochs * corpus.train.num_tokens)
        values["lvd"].update({"phase": "adamw", "pretrain_tokens": pretrain})
    cfg = config_from_dict(HMMRunConfig, values, source=f"{NAME}:{recipe}")
    if cfg.train.optimizer == "em":  # an epoch: 1 full-batch update, or one update per mini-batch
        steps_per_epoch = len(em_chunks(cfg, corpus)) if cfg.em.batch_tokens else 1
        cfg.train.max_steps = args.epochs * steps_per_epoch
        cfg.train.eval_every = max(1, steps_per_epoch // evals)
        cfg.train.log_every = max(1, steps_per_epoch // 4)
    return cfg


def select_setting(scores: dict[float, float]) -> float:
    """The candidate with the lowest dev perplexity; ties go to the first listed, NaN never wins."""
    finite = {c: s for c, s in scores.items() if np.isfinite(s)}
    if not finite:
        raise ValueError(f"no candidate has a finite dev perplexity: {scores}")
    return min(finite, key=lambda c: finite[c])


def curve(run_dir: str) -> list[dict]:
    """Per evaluation: epoch, dev and held-out perplexity, optimisation seconds so far."""
    return [
        {
            "epoch": round(r["eval/epoch"], 4),
            "dev_ppl": r.get("eval/dev_ppl"),
            "heldout_ppl": r["eval/heldout_ppl"],
            "train_seconds": round(r["eval/train_seconds_so_far"], 2),
        }
        for r in RunDir(run_dir, tensorboard=False).read_metrics()
        if "eval/heldout_ppl" in r
    ]


def kept_point(points: list[dict]) -> dict:
    """The evaluation early stopping keeps: the lowest dev perplexity, the first of ties."""
    return min(points, key=lambda p: p["dev_ppl"])


def train_candidates(base, recipe, k, args, corpus, states, corpus_name, candidates, init="uniform:0.01"):
    """Train ``recipe`` once per candidate setting (early stopping on dev); keep the lowest dev ppl."""
    name = setting_name(recipe)
    runs = {}
    for value in candidates:
        cfg = recipe_config(base, recipe, k, args, corpus, value, init)
        cfg.run_dir = f"{args.out}/{corpus_name}_K{k}_{recipe}_{value.replace(':', '_')}"
        summary = train_run(cfg, corpus, states if cfg.lvd.enabled else None)
        points = curve(cfg.run_dir)
        kept = kept_point(points)
        runs[value] = {"summary": summary, "curve": points, "kept": kept, "cfg": cfg}
        print(
            f"  {recipe} K={k} {name}={value}: dev {kept['dev_ppl']:.2f}, held-out {kept['heldout_ppl']:.2f} "
            f"at epoch {kept['epoch']:g} of {points[-1]['epoch']:g}",
            flush=True,
        )
    chosen = select_setting({value: run["kept"]["dev_ppl"] for value, run in runs.items()})
    return {"chosen": chosen, "runs": runs}


def em_batch(cfg: HMMRunConfig) -> str:
    if not cfg.em.batch_tokens:
        return "full"
    warm = ", statistics started at the LVD counts" if cfg.em.warm_start and cfg.lvd.enabled else ""
    grouped = ", sequences of similar length" if cfg.em.group_by_length else ""
    return (
        f"stepwise, {cfg.em.batch_tokens} tokens{grouped}, step size (k + 2) ** -{cfg.em.step_decay:g}{warm}"
    )


def initial_ppl(
    corpus,
    k: int,
    states=None,
    emission_prior: str = "uniform",
    pseudocount: float = 0.01,
    emission_pseudocount: float = 0.0,
) -> float:
    """Held-out perplexity at epoch 0: the random init, or the closed-form LVD estimate."""
    model = HMMLanguageModel(HMMConfig(num_states=k, vocab_size=len(corpus.vocab)))
    if states is not None:
        estimate = closed_form_estimate(
            corpus,
            states,
            k,
            pseudocount,
            emission_prior=emission_prior,
            emission_pseudocount=emission_pseudocount or None,
        )
        model.load_log_probabilities(estimate)
    return heldout_metrics(model, corpus.heldout, 128)["heldout_ppl"]


def hmmlearn_em(corpus, k: int, epochs: int, patience: int, cap_seconds: float) -> dict:
    from hmmlearn.hmm import CategoricalHMM

    vocab = len(corpus.vocab)
    model = CategoricalHMM(
        n_components=k,
        n_iter=1,
        init_params="ste",
        params="ste",
        random_state=0,
        implementation="scaling",
        n_features=vocab,
    )
    data = corpus.train.ids.reshape(-1, 1).astype(np.int64)  # (N, 1): hmmlearn's layout
    lengths = np.diff(corpus.train.offsets)
    points, seconds = [], 0.0
    while len(points) < epochs and seconds < cap_seconds:
        started = time.perf_counter()
        model.fit(data, lengths)
        seconds += time.perf_counter() - started
        model.init_params = ""
        ours = HMMLanguageModel(HMMConfig(num_states=k, vocab_size=vocab)).double()
        tables = (model.startprob_, model.transmat_, model.emissionprob_)
        # hmmlearn has no pseudocount: floor its probabilities at 1e-6 and renormalise to score unseen words.
        floored = [np.maximum(t, 1e-6) / np.maximum(t, 1e-6).sum(-1, keepdims=True) for t in tables]
        ours.load_log_probabilities(HMMParameters(*(torch.tensor(np.log(t)) for t in floored)))
        points.append(
            {
                "epoch": len(points) + 1,
                "dev_ppl": heldout_metrics(ours, corpus.dev, 128)["heldout_ppl"],
                "heldout_ppl": heldout_metrics(ours, corpus.heldout, 128)["heldout_ppl"],
                "train_seconds": round(seconds, 2),
            }
        )
        print(
            f"  hmmlearn epoch {len(points)}: dev {points[-1]['dev_ppl']:.1f} ({seconds:.0f} s)", flush=True
        )
        if len(points) - points.index(kept_point(points)) > patience:
            break
    return {"curve": points, "capped": seconds >= cap_seconds}


def load_rows() -> tuple[list[dict], list[dict], list[dict]]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return [], [], []
    previous = json.loads(path.read_text())
    return previous.get("rows", []), previous.get("invocations", []), previous.get("earlier_rows", [])


def save(rows: list[dict], invocations: list[dict], summary: dict, earlier: list[dict]) -> None:
    save_results(
        NAME,
        {
            "setup": "benchmarks/hmm_recipes.py: every recipe stopped early on a dev split carved from "
            "training (settings chosen the same way); reduced budget, shared 2-core CPU",
            "rows": sorted(rows, key=lambda r: (r["corpus"], r["K"], RECIPES.index(r["recipe"]))),
            "summary": summary,
            "invocations": invocations,
            "earlier_rows": earlier,
        },
    )


def plot(rows: list[dict], corpus: str, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cell = [r for r in rows if r["corpus"] == corpus and r["K"] == k and r["curve"]]
    if not cell:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in cell:
        points = row["curve"]
        epochs = [p["epoch"] for p in points]
        seconds = [p["train_seconds"] for p in points]
        ppl = [p["heldout_ppl"] for p in points]
        if row.get("initial_ppl"):
            epochs, seconds, ppl = [0, *epochs], [0.0, *seconds], [row["initial_ppl"], *ppl]
        (line,) = left.plot(epochs, ppl, marker="o", markersize=3, label=row["recipe"])
        right.plot(seconds, ppl, marker="o", markersize=3, label=row["recipe"])
        # The model early stopping on dev keeps.
        left.plot([row["epochs"]], [row["heldout_ppl"]], marker="*", markersize=12, color=line.get_color())
        right.plot(
            [row["train_seconds"]], [row["heldout_ppl"]], marker="*", markersize=12, color=line.get_color()
        )
    for axis, xlabel in ((left, "epochs"), (right, "training wall-clock (s)")):
        axis.set_xlabel(xlabel)
        axis.set_ylabel("held-out perplexity")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    left.legend()
    fig.suptitle(f"{corpus}, K={k}: held-out perplexity (star: the epoch early stopping on dev keeps)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{NAME}_{corpus}_K{k}.png", dpi=110)
    plt.close(fig)


def summarise(rows: list[dict]) -> dict:
    """Per (corpus, K): the gain of lvd_closed_form_em over the best random-init run (held-out ppl of the
    dev-kept models), and the wall-clock each recipe needs to reach random_adamw's kept perplexity."""
    out = {}
    for corpus, k in sorted({(r["corpus"], r["K"]) for r in rows}):
        cell = {r["recipe"]: r for r in rows if r["corpus"] == corpus and r["K"] == k}
        entry = {}
        randoms = {
            n: cell[n]["heldout_ppl"] for n in ("random_adamw", "random_em", "hmmlearn_em") if n in cell
        }
        if "lvd_closed_form_em" in cell and randoms:
            ours = cell["lvd_closed_form_em"]["heldout_ppl"]
            best_name = min(randoms, key=randoms.get)
            entry["lvd_closed_form_em"] = round(ours, 2)
            entry["best_random"] = round(randoms[best_name], 2)
            entry["best_random_recipe"] = best_name
            entry["gain_percent"] = round((randoms[best_name] - ours) / randoms[best_name] * 100, 2)
        lvds = {n: r["heldout_ppl"] for n, r in cell.items() if n.startswith("lvd")}
        if lvds and randoms:
            best_lvd, best_random = min(lvds, key=lvds.get), min(randoms, key=randoms.get)
            entry["best_lvd_recipe"] = best_lvd
            entry["best_lvd_gain_percent"] = round(
                (randoms[best_random] - lvds[best_lvd]) / randoms[best_random] * 100, 2
            )
        if "random_adamw" in cell:
            target = cell["random_adamw"]["heldout_ppl"]
            entry["target_ppl_random_adamw"] = round(target, 2)
            for name, row in cell.items():
                reached = [
                    p["train_seconds"] for p in row["curve"] if p["heldout_ppl"] <= target * (1 + 1e-9)
                ]
                entry[f"seconds_to_target_{name}"] = reached[0] if reached else None
        out[f"{corpus}_K{k}"] = entry
    return out


def reused_setting(rows: list[dict], corpus: str, recipe: str, k: int) -> tuple[float, int] | None:
    """``(setting, K)`` chosen on dev for ``corpus`` and ``recipe`` at the largest K below ``k`` where
    candidates were tried; ``None`` if there is none."""
    tried = [
        r
        for r in rows
        if r["corpus"] == corpus
        and r["recipe"] == recipe
        and r["K"] < k
        and r.get("selection", {}).get("tried")
    ]
    if not tried:
        return None
    source = max(tried, key=lambda r: r["K"])
    return source["selection"]["chosen"], source["K"]


def teacher_description(args) -> str:
    """The LVD states' source as the rows record it, e.g. ``minilm, token, layer 4, spherical k-means``."""
    parts = [args.teacher, args.teacher_position]
    if args.teacher_layer != -1:
        parts.append(f"layer {args.teacher_layer}")
    if args.kmeans_spherical:
        parts.append("spherical k-means")
    return ", ".join(parts)


def run_cell(base, corpus_name, corpus, states, lvd_prepare, k, recipe, args, rows) -> dict:
    row = {
        "corpus": corpus_name,
        "K": k,
        "recipe": recipe,
        "teacher": teacher_description(args) if recipe.startswith("lvd") else None,
        **{f"corpus_{a}": b for a, b in corpus.describe().items()},
    }
    if recipe == "hmmlearn_em":
        out = hmmlearn_em(corpus, k, args.epochs, args.patience, args.hmmlearn_cap)
        kept = kept_point(out["curve"])
        row.update({"curve": out["curve"], "capped": out["capped"], "settings": {"floor": 1e-6}})
        row["train_seconds_total"] = out["curve"][-1]["train_seconds"]
    else:
        name = setting_name(recipe)
        listed = (
            [f"{lr:g}" for lr in args.adamw_lr_candidates]
            if name == "lr"
            else em_candidates(
                args.emission_priors, args.pseudocount_candidates, args.emission_pseudocount_candidates
            )
        )
        reuse = None if k in (args.select_states or [k]) else reused_setting(rows, corpus_name, recipe, k)
        candidates = [reuse[0]] if reuse else listed
        init = "uniform:0.01"
        if recipe == "lvd_closed_form_adamw":
            em_rows = [
                r
                for r in rows
                if (r["corpus"], r["K"], r["recipe"]) == (corpus_name, k, "lvd_closed_form_em")
            ]
            if not em_rows:
                raise ValueError("lvd_closed_form_adamw needs lvd_closed_form_em in the same cell first")
            init = em_rows[0]["selection"]["chosen"]
        out = train_candidates(base, recipe, k, args, corpus, states, corpus_name, candidates, init)
        chosen = out["runs"][out["chosen"]]
        row["selection"] = {
            "setting": name,
            "chosen": out["chosen"],
            "tried": not reuse,
            "reused_from_K": reuse[1] if reuse else None,
            "candidates": {
                str(value): {
                    "dev_ppl": round(run["kept"]["dev_ppl"], 3),
                    "heldout_ppl": round(run["kept"]["heldout_ppl"], 3),
                    "epoch": run["kept"]["epoch"],
                    "epochs_run": run["curve"][-1]["epoch"],
                    "seconds": run["summary"]["train_seconds"],
                }
                for value, run in out["runs"].items()
            },
        }
        cfg, kept = chosen["cfg"], chosen["kept"]
        row.update(
            {
                "curve": chosen["curve"],
                "train_seconds_total": chosen["curve"][-1]["train_seconds"],
                "lvd_prepare_seconds": lvd_prepare if cfg.lvd.enabled else 0.0,
                "settings": {name: out["chosen"], "max_epochs": args.epochs, "patience": args.patience}
                | {"evals_per_epoch": args.evals_per_epoch}
                | ({"count_estimate": init} if recipe == "lvd_closed_form_adamw" else {})
                | {"batch_size": cfg.batch_size if cfg.train.optimizer == "adamw" else em_batch(cfg)},
            }
        )
        if recipe in ("random_em", "random_adamw", "lvd_closed_form_em"):
            setting = parse_em_candidate(out["chosen"]) if recipe.endswith("_em") else ("uniform", 0.01, 0.0)
            lvd = recipe == "lvd_closed_form_em"
            row["initial_ppl"] = initial_ppl(corpus, k, states if lvd else None, *setting)
    row.update(
        {
            "heldout_ppl": kept["heldout_ppl"],
            "dev_ppl": kept["dev_ppl"],
            "epochs": kept["epoch"],
            "epochs_run": row["curve"][-1]["epoch"],
            "train_seconds": kept["train_seconds"],
            "final_heldout_ppl": row["curve"][-1]["heldout_ppl"],
            "min_heldout_ppl_any_epoch": min(p["heldout_ppl"] for p in row["curve"]),  # shown, never used
        }
    )
    print(
        f"{corpus_name} K={k} {recipe}: held-out {row['heldout_ppl']:.2f} (dev {row['dev_ppl']:.2f}, "
        f"epoch {row['epochs']:g} of {row['epochs_run']:g}), {row['train_seconds']} s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus",
        nargs="+",
        default=["ptb"],
        help="ptb, tinyshakespeare and/or distilled (--teacher smollm2)",
    )
    parser.add_argument("--states", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--epochs", type=int, default=20, help="at most this many epochs, every recipe")
    parser.add_argument(
        "--patience", type=int, default=2, help="stop after this many evaluations without a new dev best"
    )
    parser.add_argument(
        "--evals-per-epoch",
        type=int,
        default=1,
        help="dev and held-out evaluations per epoch (early stopping keeps the best of them; full-batch "
        "EM makes one update an epoch, so it is evaluated once)",
    )
    parser.add_argument(
        "--dev-fraction", type=float, default=0.1, help="last fraction of training units used as dev"
    )
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument(
        "--recipes-large",
        nargs="+",
        default=["lvd_closed_form_em", "random_em", "random_adamw"],
        choices=RECIPES,
        help="recipes for K >= 1024 (AdamW LVD there costs as much as random AdamW; reduced budget)",
    )
    parser.add_argument(
        "--max-minutes", type=float, default=0, help="skip the remaining runs after this (0: off)"
    )
    parser.add_argument("--pseudocount-candidates", nargs="+", type=float, default=[0.003, 0.01, 0.03])
    parser.add_argument(
        "--emission-pseudocount-candidates",
        nargs="*",
        type=float,
        default=[],
        help="EM recipes: candidate pseudocounts of the emission rows alone, each tried with every "
        "--pseudocount-candidates value (then the start and transition rows'); none: one pseudocount",
    )
    parser.add_argument("--adamw-lr-candidates", nargs="+", type=float, default=[0.02, 0.05, 0.1])
    parser.add_argument(
        "--select-states",
        nargs="*",
        type=int,
        default=None,
        help="K at which every candidate is tried (default: every K); other K reuse the setting chosen "
        "at the largest of these below them",
    )
    parser.add_argument(
        "--emission-priors",
        nargs="+",
        default=["uniform", "unigram"],
        choices=("uniform", "unigram"),
        help="EM recipes: candidate spreads of the pseudocount over emission rows (em/lvd.emission_prior)",
    )
    parser.add_argument("--teacher", default="minilm", help="lvd.teacher.name (minilm, smollm2, ...)")
    parser.add_argument(
        "--teacher-dtype",
        default="float32",
        choices=TEACHER_DTYPES,
        help="lvd.teacher.dtype for the embeddings",
    )
    parser.add_argument(
        "--teacher-position",
        default="token",
        choices=("token", "previous"),
        help="lvd.teacher.position: the token's own state, or a causal teacher's state before it (GeLaTo)",
    )
    parser.add_argument(
        "--teacher-layer", type=int, default=-1, help="lvd.teacher.layer: the hidden layer (-1: the last)"
    )
    parser.add_argument(
        "--kmeans-spherical",
        action="store_true",
        help="lvd.kmeans.spherical: cluster L2-normalised teacher states (cosine k-means)",
    )
    parser.add_argument(
        "--distill-sequences", type=int, default=2048, help="--corpus distilled: sequences of 48 tokens"
    )
    parser.add_argument(
        "--distill-batch", type=int, default=256, help="--corpus distilled: sequences sampled in parallel"
    )
    parser.add_argument(
        "--distill-dtype",
        default="bfloat16",
        choices=TEACHER_DTYPES,
        help="--corpus distilled: distill.dtype (bfloat16 is faster on the AMD EPYC, float32 on the Xeon)",
    )
    parser.add_argument("--adamw-batch", type=int, default=32)
    parser.add_argument(
        "--em-batch-tokens",
        type=int,
        default=0,
        help="EM recipes: em.batch_tokens (0: full-batch EM, one update an epoch; N: stepwise EM)",
    )
    parser.add_argument("--em-step-decay", type=float, default=0.7, help="stepwise EM: em.step_decay")
    parser.add_argument(
        "--em-warm-start", action="store_true", help="stepwise EM: em.warm_start (from the LVD counts)"
    )
    parser.add_argument(
        "--em-group-by-length",
        action="store_true",
        help="EM recipes: em.group_by_length (mini-batches of sequences of similar length)",
    )
    parser.add_argument(
        "--lvd-adamw-epochs", type=float, default=2.0, help="lvd_adamw: epochs on log P(O, S)"
    )
    parser.add_argument("--hmmlearn-max-states", type=int, default=256)
    parser.add_argument("--hmmlearn-cap", type=float, default=240.0, help="seconds of hmmlearn per cell")
    parser.add_argument("--out", default="/tmp/latentlm-hmm-recipes", help="run directories")
    parser.add_argument("--name", default="hmm_recipes", help="results file benchmarks/results/<name>.json")
    args = parser.parse_args()
    if args.evals_per_epoch < 1:
        parser.error(f"--evals-per-epoch: must be >= 1, got {args.evals_per_epoch}")
    global NAME
    NAME = args.name
    rows, invocations, earlier = load_rows()
    began = time.perf_counter()
    invocations.append({**machine(), "args": vars(args)})
    for corpus_name in args.corpus:
        base = {
            "run_dir": "",
            "data": {
                **corpus_settings(corpus_name, args),
                "max_length": 64,
                "heldout_fraction": 0.1,
                "dev_fraction": args.dev_fraction,
            },
            "lvd": {
                "teacher": {
                    "name": args.teacher,
                    "position": args.teacher_position,
                    "dtype": args.teacher_dtype,
                    "layer": args.teacher_layer,
                    "batch_size": 64,
                },
                "kmeans": {"spherical": args.kmeans_spherical},
            },
            "eval": {"batch_size": 128},
        }
        probe = config_from_dict(HMMRunConfig, base, source=NAME)
        corpus = prepare_corpus(probe)
        print(corpus_name, corpus.describe(), flush=True)
        if SAMPLING:
            invocations[-1]["distill_sampling"] = dict(SAMPLING)
        states_by_k, prepare_by_k = {}, {}
        for k in args.states:
            started = time.perf_counter()
            probe.model.num_states = k
            states_by_k[k] = prepare_states(probe, corpus)
            prepare_by_k[k] = round(time.perf_counter() - started, 2)
            print(f"K={k}: LVD states in {prepare_by_k[k]} s", flush=True)
        # K ascending (a larger K may reuse a smaller K's dev choice); at each K the EM recipes first.
        plan = [
            (k, recipe)
            for k in sorted(args.states)
            for recipe in RECIPES
            if recipe in (args.recipes_large if k >= 1024 else args.recipes)
            and not (recipe == "hmmlearn_em" and k > args.hmmlearn_max_states)
        ]
        for k, recipe in plan:
            if args.max_minutes and time.perf_counter() - began > args.max_minutes * 60:
                print(f"skipped {corpus_name} K={k} {recipe}: --max-minutes reached", flush=True)
                invocations[-1].setdefault("skipped", []).append(f"{corpus_name} K={k} {recipe}")
                continue
            row = run_cell(base, corpus_name, corpus, states_by_k[k], prepare_by_k[k], k, recipe, args, rows)
            key = (corpus_name, k, recipe)
            earlier += [r for r in rows if (r["corpus"], r["K"], r["recipe"]) == key]  # kept, not hidden
            rows = [r for r in rows if (r["corpus"], r["K"], r["recipe"]) != key] + [row]
            save(rows, invocations, summarise(rows), earlier)
            plot(rows, corpus_name, k)
    print(json.dumps(summarise(rows), indent=1))


if __name__ == "__main__":
    main()
