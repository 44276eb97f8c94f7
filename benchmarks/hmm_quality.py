"""LVD vs random initialisation vs EM: held-out perplexity at equal token budgets.

For each corpus (tiny-shakespeare with a held-out tail, the PTB validation split with a held-out
tail) and each K, three dense HMMs see the same number of training tokens:

* ``lvd``: AdamW, −log P(O, S) with stored MiniLM k-means states for the first third of the budget,
  then −log P(O) (the full LVD pipeline of ``latentlm hmm train``);
* ``random``: AdamW on −log P(O) from the random initialisation, same steps, data order and seed;
  (``count_estimate_ppl`` of that row: the closed-form maximiser of log P(O, S) for the same stored
  states, i.e. where the LVD phase converges with an unlimited budget, scored without training);
* ``em``: full-batch EM (closed-form M-step, pseudocount 1e-3) from the same random initialisation;
  one iteration = one pass over the training split, iterations = budget / training tokens;
* ``hmmlearn_em`` (K = 128 only, where it finishes in the time cap): hmmlearn ``CategoricalHMM.fit``
  with as many iterations, scored by our forward algorithm under the same protocol (its
  probabilities floored at 1e-6 and renormalised, since it has no pseudocount).

AdamW runs use lr 0.05, batch 32, constant schedule, seed 0 (one setting for every cell, not tuned).

    python benchmarks/hmm_quality.py [--states 128 256 512 1024] [--budget 300000] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

from latentlm.core.bench import RESULTS, data_dir, save_results
from latentlm.core.config import config_from_dict
from latentlm.core.report import line_plot
from latentlm.core.run import RunDir
from latentlm.hmm.lvd import prepare_latent_states
from latentlm.hmm.report import curves
from latentlm.hmm.task import HMMRunConfig
from latentlm.hmm.train import PreparedData, prepare_corpus, train_em, train_run


def corpora(quick: bool) -> dict[str, dict]:
    root = data_dir()
    return {
        "tinyshakespeare": {
            "path": str(root / "tinyshakespeare" / "input.txt"),
            "format": "text",
            "min_count": 2,
            "max_length": 64,
            "heldout_fraction": 0.1,
            "max_train_units": 600 if quick else 3000,
        },
        "ptb": {
            "path": str(root / "ptb" / "ptb.valid.txt"),
            "format": "lines",
            "min_count": 1,
            "max_length": 64,
            "heldout_fraction": 0.1,
            "max_train_units": 600 if quick else 0,
        },
    }


def base_config(corpus: dict, k: int, run_dir: str, steps: int, pretrain: int, batch: int) -> HMMRunConfig:
    return config_from_dict(
        HMMRunConfig,
        {
            "run_dir": run_dir,
            "batch_size": batch,
            "max_eval_sequences": 0,
            "model": {"num_states": k, "parameterization": "dense"},
            "corpus": corpus,
            "lvd": {"pretrain_tokens": pretrain, "teacher": {"name": "minilm", "batch_size": 64}},
            "train": {
                "max_steps": steps,
                "lr": 0.02,
                "log_every": 10,
                "eval_every": max(1, steps // 6),
                "seed": 0,
            },
        },
    )


def hmmlearn_em(cfg: HMMRunConfig, corpus, iterations: int, cap_seconds: float) -> dict:
    import numpy as np
    import torch
    from hmmlearn.hmm import CategoricalHMM

    from latentlm.hmm.model import HMMConfig, HMMLanguageModel, HMMParameters
    from latentlm.hmm.task import heldout_nll
    from latentlm.metrics.perplexity import perplexity

    vocab = len(corpus.vocab)
    model = CategoricalHMM(
        n_components=cfg.model.num_states,
        n_iter=1,
        init_params="ste",
        params="ste",
        random_state=0,
        implementation="scaling",
        n_features=vocab,
    )
    data = corpus.train.ids.reshape(-1, 1).astype(np.int64)
    lengths = np.diff(corpus.train.offsets)
    started, done = time.perf_counter(), 0
    model.fit(data, lengths)
    done = 1
    model.init_params = ""
    while done < iterations and time.perf_counter() - started < cap_seconds:
        model.fit(data, lengths)
        done += 1
    seconds = time.perf_counter() - started
    ours = HMMLanguageModel(HMMConfig(num_states=cfg.model.num_states, vocab_size=vocab)).double()
    ours.load_log_probabilities(
        HMMParameters(
            *(
                torch.tensor(np.log(np.maximum(p, 1e-300)))
                for p in (model.startprob_, model.transmat_, model.emissionprob_)
            )
        )
    )
    nll, tokens = heldout_nll(ours, corpus.heldout, 128)
    return {
        "heldout_ppl": perplexity(nll, tokens),
        "iterations": done,
        "train_seconds": round(seconds, 2),
        "capped": done < iterations,
    }


def count_estimate_ppl(cfg: HMMRunConfig, corpus, states) -> float:
    """Held-out perplexity of the closed-form maximiser of log P(O, S) for the stored LVD states
    (pseudocount 1e-3): where the LVD phase would converge with an unlimited budget."""
    import torch

    from latentlm.hmm.estimate import count_estimate
    from latentlm.hmm.model import HMMConfig, HMMLanguageModel
    from latentlm.hmm.task import heldout_nll, pad_batch
    from latentlm.metrics.perplexity import perplexity

    items = [
        {"index": i, "obs": corpus.train.sequence(i), "states": states.sequence(i)}
        for i in range(len(corpus.train))
    ]
    batch = pad_batch(items)
    params = count_estimate(
        batch["obs"], batch["states"], batch["mask"], cfg.model.num_states, len(corpus.vocab), 1e-3
    )
    model = HMMLanguageModel(
        HMMConfig(num_states=cfg.model.num_states, vocab_size=len(corpus.vocab))
    ).double()
    model.load_log_probabilities(params)
    with torch.no_grad():
        nll, tokens = heldout_nll(model, corpus.heldout, 128)
    return perplexity(nll, tokens)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--states", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--budget", type=int, default=300_000, help="training tokens per run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--corpora", nargs="+", default=["tinyshakespeare", "ptb"])
    parser.add_argument("--hmmlearn-cap", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="/tmp/latentlm-hmm-quality")
    parser.add_argument("--tag", default="", help="results file suffix (parallel runs per corpus)")
    args = parser.parse_args()
    results, started = [], time.perf_counter()
    for name in args.corpora:
        corpus_cfg = corpora(args.quick)[name]
        probe = base_config(corpus_cfg, args.states[0], args.out, 1, 0, args.batch)
        corpus = prepare_corpus(probe)
        tokens_per_step = corpus.train.num_tokens / len(corpus.train) * args.batch
        steps = math.ceil(args.budget / tokens_per_step)
        pretrain = args.budget // 3
        print(f"{name}: {corpus.describe()}, {steps} steps of ~{tokens_per_step:.0f} tokens", flush=True)
        for k in args.states:
            for method in ("lvd", "random", "em"):
                cfg = base_config(
                    corpus_cfg, k, f"{args.out}/{name}/K{k}/{method}", steps, pretrain, args.batch
                )
                row = {
                    "corpus": name,
                    "K": k,
                    "method": method,
                    "train_tokens_in_corpus": corpus.train.num_tokens,
                    "vocab_size": len(corpus.vocab),
                    "heldout_tokens": corpus.heldout.num_tokens,
                }
                if method == "em":
                    iterations = max(1, round(args.budget / corpus.train.num_tokens))
                    out = train_em(cfg, corpus, iterations * corpus.train.num_tokens, corpus.train.num_tokens)
                    row.update(
                        {
                            "heldout_ppl": out["heldout_ppl"],
                            "curve": out["history"],
                            "tokens_seen": out["tokens_seen"],
                            "train_seconds": out["train_seconds"],
                        }
                    )
                else:
                    cfg.lvd.enabled = method == "lvd"
                    t0 = time.perf_counter()
                    states = prepare_latent_states(corpus, k, cfg.lvd) if cfg.lvd.enabled else None
                    prepare = time.perf_counter() - t0
                    summary = train_run(cfg, PreparedData(corpus, states))
                    curve = curves(RunDir(cfg.run_dir, tensorboard=False))["heldout_ppl"]
                    if states is not None:
                        row["count_estimate_ppl"] = count_estimate_ppl(cfg, corpus, states)
                    row.update(
                        {
                            "heldout_ppl": summary["heldout_ppl"],
                            "best_heldout_ppl": summary["best_heldout_ppl"],
                            "curve": list(zip(*curve, strict=True)),
                            "tokens_seen": summary["tokens_seen"],
                            "switch_tokens": summary["switch_tokens"],
                            "train_seconds": summary["train_seconds"],
                            "lvd_prepare_seconds": round(prepare, 2),
                        }
                    )
                print({k_: v for k_, v in row.items() if k_ != "curve"}, flush=True)
                results.append(row)
            if k == 128 and args.hmmlearn_cap > 0:
                cfg = base_config(
                    corpus_cfg, k, f"{args.out}/{name}/K{k}/hmmlearn", steps, pretrain, args.batch
                )
                iterations = max(1, round(args.budget / corpus.train.num_tokens))
                row = {"corpus": name, "K": k, "method": "hmmlearn_em"}
                try:
                    row.update(hmmlearn_em(cfg, corpus, iterations, args.hmmlearn_cap))
                except Exception as err:
                    row["error"] = f"{type(err).__name__}: {err}"[:300]
                print(row, flush=True)
                results.append(row)
            save_results(f"hmm_quality{args.tag}", {"setup": vars(args), "results": results, "partial": True})
    for name in args.corpora:
        series = {}
        for method in ("lvd", "random", "em"):
            rows = [r for r in results if r["corpus"] == name and r["method"] == method]
            series[method] = ([r["K"] for r in rows], [r["heldout_ppl"] for r in rows])
        fig = line_plot(series, "K (hidden states)", "held-out perplexity", f"{name}: equal token budgets")
        fig.savefig(RESULTS / f"hmm_quality_{name}.png", dpi=110, bbox_inches="tight")
    save_results(
        f"hmm_quality{args.tag}",
        {
            "setup": vars(args),
            "results": results,
            "partial": False,
            "total_seconds": round(time.perf_counter() - started, 1),
            "note": "shared 2-core machine; wall-clock times include contention",
        },
    )


if __name__ == "__main__":
    main()
