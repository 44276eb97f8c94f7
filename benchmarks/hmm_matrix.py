"""The 2×2 matrix of ivnle/hmm-optimizer on tiny-shakespeare: {dense, neural} × {no LVD, LVD}.

SmolLM2-135M's tokenizer (compact vocabulary of the tokens seen in training) and its last hidden
states stand in for Llama-2's tokenizer and TinyLlama. All four cells share the corpus, the K, the
optimiser, the data order and the step budget (``configs/hmm/shakespeare_smollm2.yaml``); the LVD
cells spend ``lvd.pretrain_tokens`` of it on −log P(O, S). Held-out perplexity (EOS included,
sentence-level reset) and wall-clock (LVD preparation = teacher embeddings + k-means, and training).

    python benchmarks/hmm_matrix.py [--units 1200] [--steps 400] [--states 512]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from latentlm.core.bench import REPO, RESULTS, data_dir, save_results
from latentlm.core.config import load_config
from latentlm.core.run import RunDir
from latentlm.hmm.config import HMMRunConfig
from latentlm.hmm.evaluate import write_comparison_report
from latentlm.hmm.lvd import prepare_latent_states
from latentlm.hmm.task import prepare_corpus, train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=1200, help="training paragraphs of tiny-shakespeare")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--states", type=int, default=512)
    parser.add_argument("--pretrain-fraction", type=float, default=1 / 3)
    parser.add_argument("--out", default="/tmp/latentlm-hmm-matrix")
    args = parser.parse_args()
    base = load_config(
        HMMRunConfig,
        REPO / "configs" / "hmm" / "shakespeare_smollm2.yaml",
        [
            f"data.path={data_dir() / 'tinyshakespeare' / 'input.txt'}",
            f"data.max_train_units={args.units}",
            f"model.num_states={args.states}",
            f"train.max_steps={args.steps}",
            f"train.eval_every={max(1, args.steps // 8)}",
        ],
    )
    corpus = prepare_corpus(base)
    tokens_per_step = corpus.train.num_tokens / len(corpus.train) * base.batch_size
    base.lvd.pretrain_tokens = int(args.pretrain_fraction * tokens_per_step * args.steps)
    print(corpus.describe(), f"pretrain_tokens={base.lvd.pretrain_tokens}", flush=True)
    started = time.perf_counter()
    states = prepare_latent_states(corpus, args.states, base.lvd)
    lvd_prepare_seconds = round(time.perf_counter() - started, 1)
    rows, runs, summaries = [], {}, {}
    for parameterization in ("dense", "neural"):
        for lvd in (False, True):
            label = f"{parameterization}_{'lvd' if lvd else 'no_lvd'}"
            cfg = copy.deepcopy(base)
            cfg.model.parameterization = parameterization
            cfg.lvd.enabled = lvd
            cfg.run_dir = f"{args.out}/{label}"
            summary = train_run(cfg, corpus, states if lvd else None)
            if lvd:
                summary["lvd_prepare_seconds"] = lvd_prepare_seconds
            print(label, summary, flush=True)
            rows.append({"cell": label, **summary})
            runs[label] = RunDir(cfg.run_dir, tensorboard=False)
            summaries[label] = summary
            save_results(
                "hmm_matrix",
                {"setup": vars(args), "corpus": corpus.describe(), "rows": rows, "partial": True},
            )
    report = write_comparison_report(
        "tiny-shakespeare 2x2: {dense, neural} x {no LVD, LVD}",
        runs,
        summaries,
        Path(args.out),
        intro=f"K={args.states}, SmolLM2 tokenizer and teacher, {args.steps} steps, batch {base.batch_size}.",
    )
    for name in ("train_loss", "heldout_ppl"):
        source = report.parent / "plots" / f"{name}.png"
        if source.is_file():
            (RESULTS / f"hmm_matrix_{name}.png").write_bytes(source.read_bytes())
    save_results(
        "hmm_matrix",
        {
            "setup": vars(args),
            "corpus": corpus.describe(),
            "rows": rows,
            "partial": False,
            "lvd_prepare_seconds": lvd_prepare_seconds,
            "note": "shared 2-core machine; wall-clock times include contention",
        },
    )


if __name__ == "__main__":
    main()
