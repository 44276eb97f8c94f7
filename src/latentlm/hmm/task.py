"""LVD steps 4–6 on the shared engine: the HMM training task, its losses, and one training run.

LVD phase (``lvd.phase``):

* ``adamw`` (the seed's): minimise −log P(O, S) with the stored cluster ids S for exactly
  ``pretrain_tokens`` tokens, then −log P(O). The switch is exact to the token: in the micro-batch that
  crosses the budget, the sequences (in batch order, and in rank order across processes) that still
  fit are trained on −log P(O, S), the crossing sequence on the joint of its prefix that completes the
  budget (the rest of that one sequence is skipped), and every later sequence on −log P(O).
* ``closed_form``: set the tables to the exact maximiser of log P(O, S) + pseudocount prior (the count
  estimate, :func:`latentlm.hmm.lvd.closed_form_estimate`) before step 1, then −log P(O) throughout.

Either way the switch is printed, written to ``metrics.jsonl`` as ``lvd/switch`` and kept in
``TrainState.extra``; there is no interpolation of the two objectives.

Optimizer (``train.optimizer``): ``adamw``, or ``em`` (dense only): the task hands the engine an
:class:`~latentlm.hmm.em.EM` optimizer and micro-batches of whole token chunks; the loss has the value
of the per-token −log P(O) and the gradient of the summed −log P(O), i.e. minus the expected counts.
Full-batch EM (``em.batch_tokens: 0``) accumulates every chunk of the training split into one step
(one step = one epoch); stepwise EM takes one step per mini-batch of ``em.batch_tokens`` tokens, its
counts scaled to the size of the training split (so ``em.pseudocount`` weighs the same in both).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from latentlm.core.engine import StepOutput, Task, TrainConfig, TrainState
from latentlm.core.lifecycle import train_task
from latentlm.core.run import RunDir
from latentlm.hmm.config import HMMRunConfig
from latentlm.hmm.data import ChunkDataset, Corpus, SequenceDataset, build_corpus, pad_batch, token_chunks
from latentlm.hmm.em import EM
from latentlm.hmm.estimate import unigram_prior
from latentlm.hmm.evaluate import heldout_metrics, sample_strings, write_run_report
from latentlm.hmm.lvd import LatentStates, closed_form_counts, closed_form_estimate, prepare_latent_states
from latentlm.hmm.model import HMMLanguageModel


def _world_size(cpu: bool = False) -> int:
    """Processes of this run; sets up Accelerate's process group (as the engine will) if not done yet."""
    from accelerate import PartialState

    # As the engine's Accelerator does: without cpu=True, torchrun on CPUs would not start gloo (and
    # the first PartialState fixes the process group for the whole process).
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    return PartialState(cpu=cpu or not gpu).num_processes


def _token_counts(local_tokens: int, device: torch.device) -> tuple[int, int]:
    """``(tokens held by lower ranks, tokens of all ranks)`` in this micro-step."""
    if _world_size() == 1:
        return 0, local_tokens
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([local_tokens], device=device))
    values = [int(c) for c in counts]
    return sum(values[: dist.get_rank()]), sum(values)


def lvd_prefix_lengths(lengths: torch.Tensor, remaining: int) -> torch.Tensor:
    """How many leading tokens of each sequence still belong to the LVD budget.

    Sequences are taken in order; ``remaining`` tokens are handed out until exhausted.

    Args:
        lengths: ``(B,)`` sequence lengths.
        remaining: LVD tokens left before the switch (for this rank's slice).

    Returns:
        ``(B,)`` ints in ``[0, length]``.
    """
    before = torch.cumsum(lengths, 0) - lengths
    return (remaining - before).clamp(min=0).minimum(lengths)


def em_chunks(cfg: HMMRunConfig, corpus: Corpus) -> list[np.ndarray]:
    """EM's chunks of the training split: stepwise mini-batches of ``em.batch_tokens`` tokens (one update
    each), or full-batch micro-batches of ``em.chunk_tokens``; a multiple of the number of processes."""
    chunk = cfg.em.batch_tokens or cfg.em.chunk_tokens
    world = _world_size(cfg.train.cpu)
    lengths = np.diff(corpus.train.offsets)
    return token_chunks(
        lengths, chunk, multiple_of=world, seed=cfg.train.seed, by_length=cfg.em.group_by_length
    )


class HMMTask(Task):
    """The engine task of ``latentlm hmm train``: LVD phase, clean switch, marginal phase; AdamW or EM."""

    def __init__(
        self, cfg: HMMRunConfig, corpus: Corpus, states: LatentStates | None, run: RunDir | None = None
    ) -> None:
        if cfg.lvd.enabled and states is None:
            raise ValueError("lvd.enabled: the LVD phase needs stored latent states")
        self.cfg = cfg
        self.corpus = corpus
        self.states = states if cfg.lvd.enabled else None
        self.run = run
        self.closed_form = cfg.lvd.enabled and cfg.lvd.phase == "closed_form"
        self.pretrain_tokens = cfg.lvd.pretrain_tokens if cfg.lvd.enabled and not self.closed_form else 0
        self.em = cfg.train.optimizer == "em"
        self.lvd_seconds = 0.0
        self.started = time.perf_counter()
        self.stepping = False
        self.eval_seconds = 0.0  # time spent evaluating, left out of train_seconds_so_far
        self.groups: list[np.ndarray] = em_chunks(cfg, corpus) if self.em else []
        self.batch_size = 1 if self.em else cfg.batch_size

    def em_grad_accum(self) -> int:
        """Micro-batches per EM step: every chunk of this process (full batch), else one mini-batch."""
        return len(self.groups) // _world_size() if self.cfg.em.batch_tokens == 0 else 1

    def build_model(self) -> nn.Module:
        model = HMMLanguageModel(self.cfg.model)
        model.vocabulary = self.corpus.vocabulary
        if self.closed_form:
            started = time.perf_counter()
            self.lvd_counts = closed_form_counts(self.corpus, self.states, self.cfg.model.num_states)
            model.load_log_probabilities(
                closed_form_estimate(
                    self.corpus,
                    self.states,
                    self.cfg.model.num_states,
                    self.cfg.lvd.pseudocount,
                    emission_prior=self.cfg.lvd.emission_prior,
                    counts=self.lvd_counts,
                    emission_pseudocount=self.cfg.lvd.emission_pseudocount or None,
                )
            )
            dense = model.parameterization
            self.lvd_tables = (dense.start_logits, dense.transition_logits, dense.emission_logits)
            self.lvd_seconds = time.perf_counter() - started
        if self.em:
            model.parameterization.count_gradients = True
        return model

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        """EM with an emission prior or pseudocount of its own: the emission table in its own group, with
        ``em.emission_pseudocount`` and, for ``em.emission_prior: unigram``, the pseudocount spread as
        ``V × unigram`` of the training split (the same on every process)."""
        em = self.cfg.em
        if not self.em or (em.emission_prior == "uniform" and not em.emission_pseudocount):
            return None
        dense = model.parameterization
        alpha = em.emission_pseudocount or em.pseudocount
        emission = {"params": [dense.emission_logits], "pseudocount": alpha}
        if em.emission_prior == "unigram":
            vocab_size = len(self.corpus.vocab)
            weights = vocab_size * unigram_prior(self.corpus.train.ids, vocab_size)  # (V,)
            emission["pseudocount_weights"] = weights
        return [{"params": [dense.start_logits, dense.transition_logits]}, emission]

    def build_optimizer(self, groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
        if cfg.optimizer != "em":
            return super().build_optimizer(groups, cfg)
        step_decay = self.cfg.em.step_decay if self.cfg.em.batch_tokens else 0.0
        # Counts in corpus units, so the pseudocount means the same at any batch size: full-batch EM undoes
        # the engine's mean over its grad_accum × world micro-batches (one per chunk); stepwise EM scales
        # one step's chunks (one per process, averaged by DDP) up to the whole training split.
        optimizer = EM(groups, self.cfg.em.pseudocount, step_decay, count_scale=len(self.groups))
        if self.cfg.em.warm_start and self.closed_form and self.cfg.em.batch_tokens:
            # Stepwise EM continues from the count estimate's statistics (corpus units, like its own), so
            # the first mini-batch moves the tables by its step size instead of replacing them.
            for table, counts in zip(self.lvd_tables, self.lvd_counts, strict=True):
                optimizer.start_statistics(table, counts)
        return optimizer

    def train_dataset(self) -> Dataset:
        if self.em:
            return ChunkDataset(self.corpus.train, self.groups)
        return SequenceDataset(self.corpus.train, self.states)

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return items[0] if self.em else pad_batch(items)

    def loss(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        if not self.stepping:
            # The optimisation clock starts at the first step (a process's first run pays ~1 s of one-time
            # start-up before it); the closed-form LVD phase is added to it (train_seconds_so_far).
            self.stepping = True
            self.started = time.perf_counter() - self.lvd_seconds
        if self.closed_form and "switch_step" not in state.extra:
            self._record_switch(state, step=0, tokens=0)
        obs, mask = batch["obs"], batch["mask"]
        lengths = mask.sum(dim=1)
        remaining = max(0, self.pretrain_tokens - state.tokens_seen)  # same on every rank
        offset, step_tokens = _token_counts(int(lengths.sum()), obs.device) if remaining else (0, 0)
        prefix = lvd_prefix_lengths(lengths, max(0, remaining - offset))
        latent = None
        if bool((prefix > 0).any()):
            # LVD rows: score log P(O, S) on their prefix only (the crossing row loses its tail).
            mask = mask & (
                torch.arange(mask.shape[1], device=obs.device).unsqueeze(0)
                < torch.where(prefix > 0, prefix, lengths).unsqueeze(1)
            )
            latent = torch.where((prefix > 0).unsqueeze(1), batch["states"], torch.full_like(obs, -1))
        out = model(obs, attention_mask=mask, latent_states=latent)
        total = -out.log_likelihood.sum()
        num_tokens = out.num_tokens
        lvd_tokens = int(prefix.sum())
        if 0 < remaining <= step_tokens and "switch_step" not in state.extra:
            self._record_switch(state, step=state.step + 1, tokens=self.pretrain_tokens)
        if self.em:
            # Value: nats per token (what is logged); gradient: of the sum, i.e. minus the expected counts.
            loss = total.detach() / max(num_tokens, 1) + (total - total.detach())
        else:
            loss = total / max(num_tokens, 1)
        return StepOutput(
            loss=loss,
            num_tokens=num_tokens,
            metrics={"lvd_fraction": lvd_tokens / max(num_tokens, 1), "lvd_tokens": lvd_tokens},
        )

    def _record_switch(self, state: TrainState, step: int, tokens: int) -> None:
        state.extra["switch_step"] = step
        state.extra["switch_tokens"] = tokens
        how = (
            f"the closed-form count estimate of log P(O,S) (pseudocount {self.cfg.lvd.pseudocount}, "
            f"emission rows {self.cfg.lvd.emission_pseudocount or self.cfg.lvd.pseudocount}, "
            f"{self.lvd_seconds:.2f} s)"
            if self.closed_form
            else f"exactly {tokens} tokens on -log P(O,S)"
        )
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"LVD: switch to -log P(O) after {how} (step {step})", flush=True)
            if self.run is not None:
                self.run.log(step, {"lvd/switch": 1, "lvd/switch_tokens": tokens})

    def evaluate(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        began = time.perf_counter()
        metrics = heldout_metrics(
            model, self.corpus.heldout, self.cfg.eval.batch_size, self.cfg.eval.max_sequences
        )
        if self.corpus.dev is not None:  # the development split: dev_ppl, dev_nll, dev_tokens, ...
            dev = heldout_metrics(model, self.corpus.dev, self.cfg.eval.batch_size)
            metrics |= {"dev_" + name.removeprefix("heldout_"): value for name, value in dev.items()}
        metrics["train_seconds_so_far"] = began - self.started - self.eval_seconds
        self.eval_seconds += time.perf_counter() - began
        metrics["tokens_seen"] = state.tokens_seen
        metrics["epoch"] = state.epoch + state.batch_in_epoch / max(1, self._steps_per_epoch())
        return metrics

    def _steps_per_epoch(self) -> int:
        items = len(self.groups) if self.em else len(self.corpus.train)
        return max(1, items // (self.batch_size * _world_size()))


def prepare_corpus(cfg: HMMRunConfig) -> Corpus:
    return build_corpus(cfg.data, cfg.lvd.teacher.name)


def prepare_states(cfg: HMMRunConfig, corpus: Corpus) -> LatentStates | None:
    """Steps 1–3 of LVD (teacher embeddings + k-means, cached) when LVD is on."""
    return prepare_latent_states(corpus, cfg.model.num_states, cfg.lvd) if cfg.lvd.enabled else None


def train_run(
    cfg: HMMRunConfig,
    corpus: Corpus | None = None,
    states: LatentStates | None = None,
    prepare_seconds: float = 0.0,
) -> dict:
    """Train one HMM on the engine; writes a complete run directory (model/, summary.json, report.md).

    Args:
        cfg: the run configuration.
        corpus, states: prepared corpus and LVD states (prepared here when ``None``).
        prepare_seconds: time the caller spent preparing them (reported in the summary).

    Returns:
        The run's summary: held-out perplexity, tokens, epochs, wall-clock, switch.
    """
    cfg = copy.deepcopy(cfg)
    started = time.perf_counter()
    if corpus is None:
        corpus = prepare_corpus(cfg)
    if states is None and cfg.lvd.enabled:
        states = prepare_states(cfg, corpus)
    prepare_seconds += time.perf_counter() - started
    cfg.model.vocab_size = len(corpus.vocab)
    run = RunDir(cfg.run_dir)
    run.write_json("corpus.json", corpus.describe())
    # Logged before training starts (this also opens TensorBoard, a one-time cost kept out of the timings).
    run.log(0, {"data/train_tokens": corpus.train.num_tokens, "data/vocab_size": len(corpus.vocab)})
    task = HMMTask(cfg, corpus, states, run)
    if task.em:
        cfg.train.grad_accum = task.em_grad_accum()
    train_started = time.perf_counter()
    model, state = train_task(task, cfg, run)
    train_seconds = time.perf_counter() - train_started
    model = model.cpu()
    evals = [r for r in run.read_metrics() if "eval/heldout_ppl" in r]
    summary = {
        "recipe": recipe_name(cfg),
        "parameterization": cfg.model.parameterization,
        "num_states": cfg.model.num_states,
        "vocab_size": cfg.model.vocab_size,
        "heldout_ppl": evals[-1]["eval/heldout_ppl"] if evals else None,
        "best_heldout_ppl": min(r["eval/heldout_ppl"] for r in evals) if evals else None,
        "heldout_tokens": evals[-1]["eval/heldout_tokens"] if evals else None,
        "heldout_unk_rate": evals[-1]["eval/heldout_unk_rate"] if evals else None,
        "tokens_seen": state.tokens_seen,
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / max(1, task._steps_per_epoch()), 3),
        "switch_tokens": state.extra.get("switch_tokens"),
        "switch_step": state.extra.get("switch_step"),
        "prepare_seconds": round(prepare_seconds, 2),
        "lvd_closed_form_seconds": round(task.lvd_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "fit_seconds": round(evals[-1]["eval/train_seconds_so_far"], 2) if evals else None,
    } | dev_selection(evals)
    run.write_json("summary.json", summary)
    write_run_report(run, summary, sample_strings(model, corpus.vocab))
    run.close()
    return summary


def dev_selection(evals: list[dict]) -> dict:
    """The evaluation with the lowest dev perplexity (the first of ties) and the held-out perplexity
    there: what early stopping on the development split keeps. Empty without a dev split."""
    scored = [r for r in evals if "eval/dev_ppl" in r]
    if not scored:
        return {}
    best = min(scored, key=lambda r: r["eval/dev_ppl"])
    return {
        "best_dev_ppl": best["eval/dev_ppl"],
        "heldout_ppl_at_best_dev": best["eval/heldout_ppl"],
        "best_dev_step": best["step"],
        "best_dev_epoch": round(best["eval/epoch"], 3),
    }


def recipe_name(cfg: HMMRunConfig) -> str:
    """``random_adamw``, ``random_em``, ``lvd_adamw``, ``lvd_closed_form_em``, ``lvd_closed_form_adamw``."""
    init = (
        "random" if not cfg.lvd.enabled else ("lvd_closed_form" if cfg.lvd.phase == "closed_form" else "lvd")
    )
    return f"{init}_{cfg.train.optimizer}"
