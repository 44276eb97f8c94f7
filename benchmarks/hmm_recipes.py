"""Which recipe wins: held-out perplexity of five HMM training recipes at equal epochs.

For each corpus and K, on the same tokenised corpus, held-out split and model size:

* ``random_adamw``: random init, AdamW on −log P(O) (batch 32 sequences, constant lr, --adamw-lr);
* ``random_em``: random init, full-batch EM (--pseudocount), one EM iteration per epoch;
* ``lvd_adamw``: the seed's LVD: AdamW on −log P(O, S) with the stored teacher states for the first
  third of the token budget, then AdamW on −log P(O) (same lr and batch);
* ``lvd_closed_form_em``: the closed-form count estimate of log P(O, S) (--pseudocount), then
  full-batch EM with the same pseudocount in every M-step (configs/hmm/gelato.yaml);
* ``hmmlearn_em``: hmmlearn ``CategoricalHMM`` (scaling), one ``fit`` iteration per epoch, up to
  --hmmlearn-max-states and a time cap; scored by our forward algorithm under the same protocol.

Every recipe runs ``--epochs`` passes over the training split; held-out perplexity is measured after
every epoch (and at epoch 0 for the initialisations). ``heldout_ppl`` is the best held-out perplexity
over the epochs (what early stopping on held-out perplexity keeps), ``final_heldout_ppl`` the last.
``train_seconds`` is optimisation only: it excludes the LVD preparation (teacher embeddings + k-means,
``lvd_prepare_seconds``, cached across K), the evaluations and the start-up. Rows are merged into
benchmarks/results/hmm_recipes.json by (corpus, K, recipe), so corpora can be run in separate jobs;
plots: hmm_recipes_<corpus>_K<k>.png.

Settings chosen on a development split, never on the held-out split: with --select-pseudocount an EM
recipe (``lvd_closed_form_em``, ``random_em``) first trains on the training split minus its last
--dev-fraction of sequences (the dev split; dev words the rest never saw become ``<unk>``, as held-out
words do) for --select-epochs epochs with each of --pseudocount-candidates (the same value for the count
estimate and the M-step), and keeps the one with the lowest dev perplexity over those epochs (ties: the
first listed); --select-adamw-lr does the same for ``random_adamw``'s learning rate over
--adamw-lr-candidates. The dev scores are recorded in the row's ``selection``. The chosen setting then
trains on the whole training split as usual.

    python3 benchmarks/hmm_recipes.py --corpus ptb --states 256 1024 --epochs 8
    python3 benchmarks/hmm_recipes.py --corpus ptb --states 1024 --epochs 6 --select-pseudocount
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
from latentlm.hmm.config import HMMConfig, HMMRunConfig
from latentlm.hmm.data import UNK_ID, Corpus, SequenceSet
from latentlm.hmm.evaluate import heldout_metrics
from latentlm.hmm.lvd import LatentStates, closed_form_estimate
from latentlm.hmm.model import HMMLanguageModel, HMMParameters
from latentlm.hmm.task import prepare_corpus, prepare_states, train_run

RECIPES = ("lvd_closed_form_em", "random_em", "random_adamw", "lvd_adamw", "hmmlearn_em")
NAME = "hmm_recipes"


def corpus_settings(name: str, units: int) -> dict:
    root = data_dir()
    if name == "ptb":  # pre-tokenised: one standard PTB token per whitespace-separated string
        return {"path": str(root / "ptb" / "ptb.valid.txt"), "format": "lines", "tokenizer": "whitespace"}
    if name == "ptb_smoke":  # a few sentences, to check the script end to end
        return {**corpus_settings("ptb", units), "max_train_units": 120}
    if name == "tinyshakespeare":
        return {
            "path": str(root / "tinyshakespeare" / "input.txt"),
            "format": "text",
            "tokenizer": "word",
            "min_count": 2,
            "max_train_units": units,
        }
    raise ValueError(f"--corpus: unknown corpus {name!r}")


def recipe_config(
    base: dict, recipe: str, k: int, epochs: int, args, corpus, pseudocount: float = 0.0, lr: float = 0.0
) -> HMMRunConfig:
    """One recipe's run config; ``pseudocount`` / ``lr`` override --pseudocount / --adamw-lr when > 0."""
    alpha = pseudocount or args.pseudocount
    values = json.loads(json.dumps(base))
    values["model"] = {"num_states": k, "parameterization": "dense"}
    em = recipe.endswith("_em")
    if em:
        values["train"] = {
            "optimizer": "em",
            "grad_clip": 0.0,
            "max_steps": epochs,
            "eval_every": 1,
            "log_every": 1,
        }
        values["em"] = {"batch_tokens": 0, "pseudocount": alpha}
    else:
        steps_per_epoch = len(corpus.train) // args.adamw_batch
        values["batch_size"] = args.adamw_batch
        values["train"] = {
            "lr": lr or args.adamw_lr,
            "max_steps": epochs * steps_per_epoch,
            "eval_every": steps_per_epoch,
            "log_every": max(1, steps_per_epoch // 4),
        }
    lvd = recipe.startswith("lvd")
    values["lvd"] = {**values["lvd"], "enabled": lvd}
    if recipe == "lvd_closed_form_em":
        values["lvd"].update({"phase": "closed_form", "pseudocount": alpha})
    if recipe == "lvd_adamw":
        values["lvd"].update({"phase": "adamw", "pretrain_tokens": epochs * corpus.train.num_tokens // 3})
    return config_from_dict(HMMRunConfig, values, source=f"{NAME}:{recipe}")


def _subset(sequences: SequenceSet, start: int, stop: int) -> SequenceSet:
    """Sequences ``start:stop`` of a flat set, with offsets rebased to 0."""
    first, last = sequences.offsets[start], sequences.offsets[stop]
    return SequenceSet(
        ids=sequences.ids[first:last].copy(),
        offsets=sequences.offsets[start : stop + 1] - first,
        pieces=sequences.pieces[start:stop],
    )


def dev_split(
    corpus: Corpus, states: LatentStates | None, fraction: float
) -> tuple[Corpus, LatentStates | None]:
    """Carve a development split from the training portion: the last ``fraction`` of the training
    sequences (at least one) become the dev split and the rest the training split; dev tokens whose word
    never occurs in that rest become ``<unk>`` (the held-out protocol). The held-out split is not used.
    The stored LVD states are cut to the remaining training sequences.
    """
    n = len(corpus.train)
    dev_count = max(1, round(n * fraction))
    if not 0.0 < fraction < 1.0 or dev_count >= n:
        raise ValueError(f"--dev-fraction: must leave training and dev sequences, got {fraction} of {n}")
    train = _subset(corpus.train, 0, n - dev_count)
    dev = _subset(corpus.train, n - dev_count, n)
    seen = np.bincount(train.ids, minlength=len(corpus.vocab)) > 0
    dev.ids[~seen[dev.ids]] = UNK_ID
    dev_corpus = Corpus(corpus.vocabulary, train, dev, f"{corpus.source} (dev split)")
    if states is None:
        return dev_corpus, None
    cut = LatentStates(
        states.states[: train.num_tokens], train.offsets, states.embeddings_key, states.states_key
    )
    return dev_corpus, cut


def select_setting(scores: dict[float, float]) -> float:
    """The candidate with the lowest dev perplexity; ties go to the first listed, NaN never wins."""
    finite = {c: s for c, s in scores.items() if np.isfinite(s)}
    if not finite:
        raise ValueError(f"no candidate has a finite dev perplexity: {scores}")
    return min(finite, key=lambda c: finite[c])


def select_on_dev(base, recipe, k, args, corpus, states, corpus_name: str) -> dict:
    """Train ``recipe`` on the dev split's training part with each candidate; pick by dev perplexity."""
    name, candidates = (
        ("lr", args.adamw_lr_candidates)
        if recipe == "random_adamw"
        else ("pseudocount", args.pseudocount_candidates)
    )
    dev_corpus, dev_states = dev_split(corpus, states, args.dev_fraction)
    started = time.perf_counter()
    scores, curves = {}, {}
    for value in candidates:
        cfg = recipe_config(base, recipe, k, args.select_epochs, args, dev_corpus, **{name: value})
        cfg.run_dir = f"{args.out}/select/{corpus_name}_K{k}_{recipe}_{name}{value}"
        train_run(cfg, dev_corpus, dev_states if cfg.lvd.enabled else None)
        curves[str(value)] = curve(cfg.run_dir)
        scores[value] = min(p["heldout_ppl"] for p in curves[str(value)])
        print(f"  select {recipe} K={k} {name}={value}: dev ppl {scores[value]:.2f}", flush=True)
    chosen = select_setting(scores)
    return {
        "setting": name,
        "chosen": chosen,
        "dev_ppl": {str(c): round(s, 3) for c, s in scores.items()},
        "dev_curves": curves,
        "dev_epochs": args.select_epochs,
        "dev_fraction": args.dev_fraction,
        "dev_train_tokens": dev_corpus.train.num_tokens,
        "dev_tokens": dev_corpus.heldout.num_tokens,
        "dev_unk_rate": round(dev_corpus.heldout.unk_rate(), 5),
        "seconds": round(time.perf_counter() - started, 2),
    }


def curve(run_dir: str) -> list[dict]:
    return [
        {
            "epoch": round(r["eval/epoch"], 4),
            "heldout_ppl": r["eval/heldout_ppl"],
            "train_seconds": round(r["eval/train_seconds_so_far"], 2),
        }
        for r in RunDir(run_dir, tensorboard=False).read_metrics()
        if "eval/heldout_ppl" in r
    ]


def initial_ppl(corpus, k: int, states=None, pseudocount: float = 0.01) -> float:
    """Held-out perplexity at epoch 0: the random init, or the closed-form LVD estimate."""
    model = HMMLanguageModel(HMMConfig(num_states=k, vocab_size=len(corpus.vocab)))
    if states is not None:
        model.load_log_probabilities(closed_form_estimate(corpus, states, k, pseudocount))
    return heldout_metrics(model, corpus.heldout, 128)["heldout_ppl"]


def hmmlearn_em(corpus, k: int, epochs: int, cap_seconds: float) -> dict:
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
        ppl = heldout_metrics(ours, corpus.heldout, 128)["heldout_ppl"]
        points.append({"epoch": len(points) + 1, "heldout_ppl": ppl, "train_seconds": round(seconds, 2)})
        print(f"  hmmlearn epoch {len(points)}: {ppl:.1f} ({seconds:.0f} s)", flush=True)
    return {"curve": points, "capped": len(points) < epochs, "train_seconds": round(seconds, 2)}


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
            "setup": "benchmarks/hmm_recipes.py: equal epochs per recipe; reduced budget, shared 2-core CPU",
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
        left.plot(epochs, ppl, marker="o", label=row["recipe"])
        right.plot(seconds, ppl, marker="o", label=row["recipe"])
    for axis, xlabel in ((left, "epochs"), (right, "training wall-clock (s)")):
        axis.set_xlabel(xlabel)
        axis.set_ylabel("held-out perplexity")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    left.legend()
    fig.suptitle(f"{corpus}, K={k}: held-out perplexity")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{NAME}_{corpus}_K{k}.png", dpi=110)
    plt.close(fig)


def summarise(rows: list[dict]) -> dict:
    """Per (corpus, K): the gain of lvd_closed_form_em over the best random-init run, and the wall-clock
    each recipe needs to reach random_adamw's best held-out perplexity."""
    out = {}
    for corpus, k in sorted({(r["corpus"], r["K"]) for r in rows}):
        cell = {r["recipe"]: r for r in rows if r["corpus"] == corpus and r["K"] == k}
        entry = {}
        randoms = [cell[n]["heldout_ppl"] for n in ("random_adamw", "random_em", "hmmlearn_em") if n in cell]
        if "lvd_closed_form_em" in cell and randoms:
            ours, best_random = cell["lvd_closed_form_em"]["heldout_ppl"], min(randoms)
            entry["lvd_closed_form_em"] = round(ours, 2)
            entry["best_random"] = round(best_random, 2)
            entry["gain_percent"] = round((best_random - ours) / best_random * 100, 2)
        if "random_adamw" in cell:
            target = cell["random_adamw"]["heldout_ppl"]
            entry["target_ppl_random_adamw_best"] = round(target, 2)
            for name, row in cell.items():
                reached = [
                    p["train_seconds"] for p in row["curve"] if p["heldout_ppl"] <= target * (1 + 1e-9)
                ]
                entry[f"seconds_to_target_{name}"] = reached[0] if reached else None
        out[f"{corpus}_K{k}"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", nargs="+", default=["ptb"], help="ptb and/or tinyshakespeare")
    parser.add_argument("--states", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--epochs", type=int, default=8, help="passes over the training split, every recipe")
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
    parser.add_argument("--shakespeare-units", type=int, default=1200, help="training paragraphs")
    parser.add_argument("--adamw-lr", type=float, default=0.02)
    parser.add_argument("--pseudocount", type=float, default=0.01, help="closed-form LVD and EM pseudocount")
    parser.add_argument(
        "--select-pseudocount",
        action="store_true",
        help="choose each EM recipe's pseudocount per (corpus, K) on a dev split carved from training",
    )
    parser.add_argument("--pseudocount-candidates", nargs="+", type=float, default=[0.001, 0.003, 0.01])
    parser.add_argument(
        "--select-adamw-lr", action="store_true", help="choose random_adamw's lr the same way"
    )
    parser.add_argument("--adamw-lr-candidates", nargs="+", type=float, default=[0.01, 0.02, 0.05])
    parser.add_argument("--select-epochs", type=int, default=2, help="epochs per candidate on the dev split")
    parser.add_argument(
        "--dev-fraction", type=float, default=0.1, help="last fraction of training sequences used as dev"
    )
    parser.add_argument("--adamw-batch", type=int, default=32)
    parser.add_argument("--hmmlearn-max-states", type=int, default=256)
    parser.add_argument("--hmmlearn-cap", type=float, default=240.0, help="seconds of hmmlearn per cell")
    parser.add_argument("--out", default="/tmp/latentlm-hmm-recipes", help="run directories")
    parser.add_argument("--name", default="hmm_recipes", help="results file benchmarks/results/<name>.json")
    args = parser.parse_args()
    global NAME
    NAME = args.name
    rows, invocations, earlier = load_rows()
    began = time.perf_counter()
    invocations.append({**machine(), "args": vars(args)})
    for corpus_name in args.corpus:
        base = {
            "run_dir": "",
            "data": {
                **corpus_settings(corpus_name, args.shakespeare_units),
                "max_length": 64,
                "heldout_fraction": 0.1,
            },
            "lvd": {"teacher": {"name": "minilm", "batch_size": 64}},
            "eval": {"batch_size": 128},
        }
        probe = config_from_dict(HMMRunConfig, base, source=NAME)
        corpus = prepare_corpus(probe)
        print(corpus_name, corpus.describe(), flush=True)
        states_by_k, prepare_by_k = {}, {}
        for k in args.states:
            started = time.perf_counter()
            probe.model.num_states = k
            states_by_k[k] = prepare_states(probe, corpus)
            prepare_by_k[k] = round(time.perf_counter() - started, 2)
            print(f"K={k}: LVD states in {prepare_by_k[k]} s", flush=True)
        # Cheapest and most telling first (EM recipes at every K), then AdamW, then hmmlearn, so that a
        # time-capped job still fills the cells that decide the comparison.
        plan = [
            (k, recipe)
            for group in (
                ("lvd_closed_form_em", "random_em"),
                ("random_adamw", "lvd_adamw"),
                ("hmmlearn_em",),
            )
            for k in args.states
            for recipe in group
            if recipe in (args.recipes_large if k >= 1024 else args.recipes)
        ]
        for k, recipe in plan:
            states, lvd_prepare = states_by_k[k], prepare_by_k[k]
            if args.max_minutes and time.perf_counter() - began > args.max_minutes * 60:
                print(f"skipped {corpus_name} K={k} {recipe}: --max-minutes reached", flush=True)
                invocations[-1].setdefault("skipped", []).append(f"{corpus_name} K={k} {recipe}")
                continue
            row = {
                "corpus": corpus_name,
                "K": k,
                "recipe": recipe,
                **{f"corpus_{a}": b for a, b in corpus.describe().items()},
            }
            if recipe == "hmmlearn_em":
                if k > args.hmmlearn_max_states:
                    continue
                out = hmmlearn_em(corpus, k, args.epochs, args.hmmlearn_cap)
                row.update(
                    {
                        "curve": out["curve"],
                        "capped": out["capped"],
                        "train_seconds": out["train_seconds"],
                    }
                )
            else:
                chosen = {}
                select = (args.select_pseudocount and recipe.endswith("_em")) or (
                    args.select_adamw_lr and recipe == "random_adamw"
                )
                if select:
                    row["selection"] = select_on_dev(base, recipe, k, args, corpus, states, corpus_name)
                    chosen = {row["selection"]["setting"]: row["selection"]["chosen"]}
                cfg = recipe_config(base, recipe, k, args.epochs, args, corpus, **chosen)
                cfg.run_dir = f"{args.out}/{corpus_name}_K{k}_{recipe}"
                summary = train_run(cfg, corpus, states if cfg.lvd.enabled else None)
                row.update(
                    {
                        "curve": curve(cfg.run_dir),
                        "train_seconds": summary["fit_seconds"],
                        "wall_seconds": summary["train_seconds"],
                        "lvd_prepare_seconds": lvd_prepare if cfg.lvd.enabled else 0.0,
                        "settings": {"pseudocount": cfg.em.pseudocount if recipe.endswith("_em") else None}
                        | {
                            k_: v
                            for k_, v in vars(cfg.train).items()
                            if k_ in ("optimizer", "lr", "max_steps")
                        }
                        | {"batch_size": cfg.batch_size if cfg.train.optimizer == "adamw" else "full"},
                    }
                )
                if recipe in ("random_em", "random_adamw", "lvd_closed_form_em"):
                    row["initial_ppl"] = initial_ppl(
                        corpus, k, states if recipe == "lvd_closed_form_em" else None, cfg.em.pseudocount
                    )
            points = row["curve"]
            row["heldout_ppl"] = min(p["heldout_ppl"] for p in points) if points else None
            row["final_heldout_ppl"] = points[-1]["heldout_ppl"] if points else None
            row["best_epoch"] = min(points, key=lambda p: p["heldout_ppl"])["epoch"] if points else None
            row["epochs"] = points[-1]["epoch"] if points else 0
            print(
                f"{corpus_name} K={k} {recipe}: best {row['heldout_ppl']:.2f} (ep. {row['best_epoch']}), "
                f"final {row['final_heldout_ppl']:.2f}, {row['train_seconds']} s",
                flush=True,
            )
            key = (corpus_name, k, recipe)
            earlier += [r for r in rows if (r["corpus"], r["K"], r["recipe"]) == key]  # kept, not hidden
            rows = [r for r in rows if (r["corpus"], r["K"], r["recipe"]) != key] + [row]
            save(rows, invocations, summarise(rows), earlier)
            plot(rows, corpus_name, k)
    print(json.dumps(summarise(rows), indent=1))


if __name__ == "__main__":
    main()
