"""End-to-end HMM runs: data preparation, LVD, training on the engine, evaluation and reports.

Used by the CLI (:mod:`latentlm.hmm.cli`) and the benchmarks; each function does one stage so that a
comparison can prepare the corpus and the latent states once and train several models on them.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from latentlm.core.checkpoint import write_json
from latentlm.core.engine import Trainer
from latentlm.core.run import RunDir
from latentlm.core.seed import seed_everything
from latentlm.hmm.corpus import Corpus, build_corpus
from latentlm.hmm.estimate import em_step
from latentlm.hmm.lvd import LatentStates, prepare_latent_states
from latentlm.hmm.model import HMMLanguageModel
from latentlm.hmm.report import write_run_report
from latentlm.hmm.task import HMMRunConfig, HMMTask, heldout_nll, pad_batch
from latentlm.hmm.teacher import load_teacher_tokenizer
from latentlm.metrics.perplexity import perplexity


@dataclass
class PreparedData:
    """A tokenised corpus and, for LVD runs, its stored latent states."""

    corpus: Corpus
    states: LatentStates | None


def prepare_corpus(cfg: HMMRunConfig) -> Corpus:
    tokenizer = load_teacher_tokenizer(cfg.lvd.teacher) if cfg.corpus.tokenizer == "teacher" else None
    return build_corpus(cfg.corpus, tokenizer)


def prepare_data(cfg: HMMRunConfig, corpus: Corpus | None = None) -> PreparedData:
    """Read the corpus and, if LVD is on, run teacher embeddings + k-means (cached)."""
    corpus = corpus or prepare_corpus(cfg)
    states = prepare_latent_states(corpus, cfg.model.num_states, cfg.lvd) if cfg.lvd.enabled else None
    return PreparedData(corpus, states)


def save_vocab(path: Path, vocab: list[str]) -> None:
    write_json(path, {"tokens": vocab})


def sample_strings(model: HMMLanguageModel, vocab: list[str], count: int = 5, length: int = 30) -> list[str]:
    """Text sampled from the model (ends at ``<eos>``), for reports."""
    words, _, mask = model.sample(count, length, generator=torch.Generator().manual_seed(0), eos_id=2)
    texts = []
    for row, row_mask in zip(words.tolist(), mask.tolist(), strict=True):
        tokens = [vocab[i] for i, keep in zip(row, row_mask, strict=True) if keep]
        texts.append(" ".join(tokens).replace("Ġ", "").replace("|", "\\|"))
    return texts


def train_run(cfg: HMMRunConfig, data: PreparedData | None = None, prepare_seconds: float = 0.0) -> dict:
    """Train one HMM (LVD or not) on the engine; writes a complete run directory.

    Args:
        cfg: the run configuration.
        data: prepared corpus and states (prepared here when ``None``).
        prepare_seconds: time the caller spent preparing ``data`` (reported in the summary).

    Returns:
        The run's summary (also in ``summary.json``): held-out perplexity, tokens, wall-clock, switch.
    """
    cfg = copy.deepcopy(cfg)
    started = time.perf_counter()
    if data is None:
        data = prepare_data(cfg)
        prepare_seconds = time.perf_counter() - started
    cfg.model.vocab_size = len(data.corpus.vocab)
    run = RunDir(cfg.run_dir)
    run.save_config(cfg)
    save_vocab(run.path / "vocab.json", data.corpus.vocab)
    run.write_json("corpus.json", data.corpus.describe())
    task = HMMTask(cfg, data.corpus, data.states, run)
    trainer = Trainer(task, cfg.train, run)
    train_started = time.perf_counter()
    state = trainer.fit()
    train_seconds = time.perf_counter() - train_started
    model = trainer.model.cpu()
    model.save_pretrained(run.path / "model")
    final = [r for r in run.read_metrics() if "eval/heldout_ppl" in r]
    summary = {
        "lvd": cfg.lvd.enabled,
        "parameterization": cfg.model.parameterization,
        "num_states": cfg.model.num_states,
        "vocab_size": cfg.model.vocab_size,
        "heldout_ppl": final[-1]["eval/heldout_ppl"] if final else None,
        "best_heldout_ppl": min(r["eval/heldout_ppl"] for r in final) if final else None,
        "tokens_seen": state.tokens_seen,
        "steps": state.step,
        "switch_tokens": state.extra.get("switch_tokens"),
        "switch_step": state.extra.get("switch_step"),
        "prepare_seconds": round(prepare_seconds, 2),
        "train_seconds": round(train_seconds, 2),
    }
    run.write_json("summary.json", summary)
    write_run_report(run, summary, sample_strings(model, data.corpus.vocab))
    run.close()
    return summary


def load_run(run_dir: str | Path, overrides: list[str] = ()) -> tuple[HMMRunConfig, HMMLanguageModel]:
    """The config (with optional dotted overrides) and trained model of a finished run directory."""
    from latentlm.core.config import load_run_config

    run_dir = Path(run_dir)
    if not (run_dir / "model" / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished HMM run (no model/config.json)")
    return load_run_config(HMMRunConfig, run_dir, overrides), HMMLanguageModel.from_pretrained(
        run_dir / "model"
    )


def evaluate_run(run_dir: str | Path, overrides: list[str] = ()) -> dict:
    """Held-out perplexity of a finished run (the corpus may be changed by ``corpus.*`` overrides)."""
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir, overrides)
    vocab = json.loads((run_dir / "vocab.json").read_text())["tokens"]
    corpus = prepare_corpus(cfg)
    if corpus.vocab != vocab:
        raise ValueError(
            f"{run_dir}: the corpus settings give a different vocabulary than the trained model's"
        )
    nll, tokens = heldout_nll(model, corpus.heldout, cfg.eval_batch_size)
    metrics = {"heldout_ppl": perplexity(nll, tokens), "heldout_nll": nll / tokens, "heldout_tokens": tokens}
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def train_em(cfg: HMMRunConfig, corpus: Corpus, token_budget: int, eval_every_tokens: int) -> dict:
    """Baseline: a dense HMM trained by full-batch EM from the random init, for ``token_budget`` tokens.

    One EM iteration processes the whole training split (its token count is charged to the budget);
    held-out perplexity is recorded after every iteration whose tokens cross ``eval_every_tokens``.
    """
    seed_everything(cfg.train.seed)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.vocab_size = len(corpus.vocab)
    model = HMMLanguageModel(model_cfg)
    order = sorted(range(len(corpus.train)), key=lambda i: len(corpus.train.sequence(i)))
    batches = []
    for start in range(0, len(order), cfg.eval_batch_size):
        batch = pad_batch(
            [
                {"index": i, "obs": corpus.train.sequence(i)}
                for i in order[start : start + cfg.eval_batch_size]
            ]
        )
        batches.append((batch["obs"], batch["mask"]))
    tokens, history, next_eval = 0, [], eval_every_tokens
    started = time.perf_counter()
    while tokens < token_budget:
        _, seen = em_step(model, batches, pseudocount=1e-3)
        tokens += seen
        if tokens >= next_eval or tokens >= token_budget:
            nll, count = heldout_nll(model, corpus.heldout, cfg.eval_batch_size, cfg.max_eval_sequences)
            history.append((tokens, perplexity(nll, count)))
            next_eval = tokens + eval_every_tokens
    return {
        "heldout_ppl": history[-1][1],
        "history": history,
        "tokens_seen": tokens,
        "train_seconds": round(time.perf_counter() - started, 2),
    }
