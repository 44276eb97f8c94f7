"""Which unsupervised signals put unit starts at gold sentence starts? (issue 14: routers that find units)

The learned LHT routers place level-1 boundaries only slightly better than random ones (F1 1.1–1.4×
random, `lht_ablation*.json`). This script asks whether the signals a router of the H-Net family could
learn from carry sentence starts at all, on the ablation's held-out chunks (`configs/lht/ablation.yaml`,
the first `eval.max_chunks`), each turned into boundaries the same way: a score per token, non-maximum
suppression within ±3 tokens, the round(n / 26) best positions per chunk (the level-1 ratio, matched to
gold sentences), scored against gold sentence starts with the ablation's tolerance (±2 tokens):

* `bigram_next_entropy`: entropy of the next token after the previous one, H(X_t | x_{t-1}), from the
  training chunks' bigram counts (BLT's entropy patching, with a bigram model as the small LM);
* `bigram_surprisal`: -log P(x_t | x_{t-1}) (add-0.1 smoothing);
* `minilm_layer_L`: H-Net's router score with identity projections, (1 - cos(h_t, h_{t-1})) / 2, on the
  states of layer L of the pretrained MiniLM encoder (what a router on well-trained states could see);
* `random`: uniform boundaries at the same rate (the ablation's reference);
* `after_period` (a reference, not a router): a start right after every "." token, at the rate it gets.

    python3 benchmarks/lht_boundary_signals.py

Results: benchmarks/results/lht_boundary_signals.json (rows: signal, f1, precision, recall,
ratio_to_random, boundaries_per_token).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict

import numpy as np
import torch

from latentlm.core.bench import REPO, data_dir, save_results

CONFIG = REPO / "configs" / "lht" / "ablation.yaml"
RADIUS = 3


def bigram_scores(train_chunks) -> tuple[dict, dict, Counter]:
    """Next-token entropy after each token, bigram counts and left-context totals of the training chunks."""
    pairs, left = Counter(), Counter()
    for chunk in train_chunks:
        ids = chunk.ids.tolist()
        pairs.update(zip(ids[:-1], ids[1:], strict=True))
        left.update(ids[:-1])
    following = defaultdict(list)
    for (a, _), n in pairs.items():
        following[a].append(n)
    entropy = {
        a: -sum(n / left[a] * math.log(n / left[a]) for n in counts) for a, counts in following.items()
    }
    return entropy, pairs, left


def top_positions(scores: np.ndarray, ratio: float) -> list[int]:
    """Unit starts from per-token scores: NMS within ±RADIUS, then the round(n / ratio) best (0 first)."""
    from latentlm.lht.routers import suppress_non_maxima, top_k_boundaries

    probs = torch.from_numpy(scores).double()[None]  # (1, n)
    valid = torch.ones_like(probs, dtype=torch.bool)
    candidates = suppress_non_maxima(probs, valid, RADIUS)
    return top_k_boundaries(probs, candidates, valid, ratio)[0].nonzero().flatten().tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="minilm", help="pretrained encoder whose states are scored")
    parser.add_argument("--name", default="lht_boundary_signals", help="results file name")
    args = parser.parse_args()
    import os

    os.environ.setdefault("LATENTLM_DATA", str(data_dir()))
    from latentlm.core.config import load_config
    from latentlm.lht.config import LHTRunConfig
    from latentlm.lht.data import build_corpus
    from latentlm.lht.evaluate import random_boundary_scores
    from latentlm.metrics.boundaries import BoundaryScores, boundary_scores
    from latentlm.teachers import load_encoder, load_tokenizer

    cfg = load_config(LHTRunConfig, CONFIG, [])
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    corpus = build_corpus(cfg.data, tokenizer)
    chunks = corpus.heldout[: cfg.eval.max_chunks]
    ratio, tolerance = cfg.model.hierarchy.target_ratios[0], cfg.eval.tolerance
    entropy, pairs, left = bigram_scores(corpus.train)
    vocab = tokenizer.vocab_size
    encoder, _ = load_encoder(args.encoder)
    period = tokenizer.convert_tokens_to_ids(".")

    totals: dict[str, BoundaryScores] = defaultdict(lambda: BoundaryScores(0, 0, 0))
    predicted_count: Counter = Counter()
    tokens = 0
    with torch.no_grad():
        for chunk in chunks:
            ids = chunk.ids.tolist()
            gold = [p for p in chunk.gold["sentence"] if p > 0]
            tokens += len(ids)
            signals = {
                "bigram_next_entropy": [0.0] + [entropy.get(a, 0.0) for a in ids[:-1]],
                "bigram_surprisal": [0.0]
                + [
                    -math.log((pairs[a, b] + 0.1) / (left[a] + 0.1 * vocab))
                    for a, b in zip(ids[:-1], ids[1:], strict=True)
                ],
            }
            x = torch.tensor(ids)[None]
            states = encoder(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True)
            for layer, h in enumerate(states.hidden_states):
                h = torch.nn.functional.normalize(h[0], dim=-1)  # (n, D)
                signals[f"{args.encoder}_layer_{layer}"] = [0.0] + (
                    0.5 * (1 - (h[1:] * h[:-1]).sum(-1))
                ).tolist()
            predictions = {name: top_positions(np.asarray(s), ratio) for name, s in signals.items()}
            predictions["after_period"] = [t for t in range(1, len(ids)) if ids[t - 1] == period]
            for name, positions in predictions.items():
                positions = [p for p in positions if p > 0]
                predicted_count[name] += len(positions)
                totals[name] = totals[name] + boundary_scores(positions, gold, tolerance)
    rates = {name: predicted_count[name] / tokens for name in totals}
    rows = []
    for name, scores in totals.items():
        random = random_boundary_scores(chunks, tolerance, rates[name], seed=0)["sentence"]
        rows.append(
            {
                "signal": name,
                "f1": scores.f1,
                "precision": scores.precision,
                "recall": scores.recall,
                "f1_random_same_rate": random.f1,
                "ratio_to_random": scores.f1 / random.f1 if random.f1 else None,
                "boundaries_per_token": rates[name],
            }
        )
        print(f"{name:>24}: F1 {scores.f1:.3f} (random at the same rate {random.f1:.3f})")
    save_results(
        args.name,
        {
            "description": f"Unsupervised boundary signals on {len(chunks)} held-out Python-docs chunks "
            f"({tokens} tokens): NMS ±{RADIUS}, top round(n / {ratio:g}) per chunk, F1 vs gold sentence "
            f"starts at ±{tolerance} tokens (position 0 excluded); bigram statistics from the "
            f"{len(corpus.train)} training chunks; encoder {args.encoder}.",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
