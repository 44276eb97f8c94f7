"""LVD steps 4–6 on the shared engine: the two-phase HMM training task and held-out evaluation.

Phase 1 (LVD) minimises −log P(O, S) with the stored cluster ids S for exactly ``pretrain_tokens``
tokens; phase 2 minimises −log P(O) by the forward algorithm until ``train.max_steps``. The switch is
exact to the token: in the micro-batch that crosses the budget, the sequences (in batch order, and in
rank order across processes) that still fit are trained on −log P(O, S), the crossing sequence on the
joint of its prefix that completes the budget (the rest of that one sequence is skipped), and every
later sequence on −log P(O). The switch is printed, written to ``metrics.jsonl`` as ``lvd/switch``
and kept in ``TrainState.extra`` (so a resumed run knows it). There is no interpolation of the two.

Held-out perplexity is ``exp(Σ −log P(O) / Σ tokens)`` over the held-out sequences, ``<eos>``
included; every sequence starts from π (sentence-level reset, no carried state).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from latentlm.core.engine import StepOutput, Task, TrainConfig, TrainState
from latentlm.core.run import RunDir
from latentlm.hmm.corpus import Corpus, CorpusConfig, SequenceSet
from latentlm.hmm.distill import DistillConfig
from latentlm.hmm.forward import forward_log_likelihood, joint_log_likelihood
from latentlm.hmm.lvd import LatentStates, LVDConfig
from latentlm.hmm.model import HMMConfig, HMMLanguageModel
from latentlm.metrics.perplexity import perplexity


@dataclass
class HMMRunConfig:
    """Everything one ``latentlm hmm train`` run needs (``configs/hmm/*.yaml``).

    Attributes:
        run_dir: output folder of the run (config, metrics, checkpoints, report).
        batch_size: sequences per micro-batch (per process).
        eval_batch_size: sequences per held-out batch.
        max_eval_sequences: evaluate on the first N held-out sequences (0: all).
        model: the HMM (``model.vocab_size`` is set from the corpus).
        corpus: the training text.
        lvd: Latent Variable Distillation.
        train: the engine's optimisation settings.
        distill: sampling of a teacher corpus (used only by ``latentlm hmm distill``/``quickstart``).
    """

    run_dir: str = "runs/hmm"
    batch_size: int = 32
    eval_batch_size: int = 128
    max_eval_sequences: int = 0
    model: HMMConfig = field(default_factory=HMMConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    lvd: LVDConfig = field(default_factory=LVDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size, eval_batch_size: must be >= 1")


class SequenceDataset(Dataset):
    """Sequence ``i`` of a :class:`SequenceSet` with its stored LVD states (if any)."""

    def __init__(self, sequences: SequenceSet, states: LatentStates | None = None) -> None:
        self.sequences = sequences
        self.states = states

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict:
        item = {"index": index, "obs": self.sequences.sequence(index)}
        if self.states is not None:
            item["states"] = self.states.sequence(index)
        return item


def pad_batch(items: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad sequences: ``obs``/``states`` ``(B, T)`` long, ``mask`` ``(B, T)`` bool, ``index`` (B,)."""
    width = max(len(item["obs"]) for item in items)
    batch = {
        "index": torch.tensor([item["index"] for item in items]),
        "obs": torch.zeros(len(items), width, dtype=torch.long),
        "mask": torch.zeros(len(items), width, dtype=torch.bool),
    }
    if "states" in items[0]:
        batch["states"] = torch.zeros(len(items), width, dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item["obs"])
        batch["obs"][row, :length] = torch.from_numpy(np.asarray(item["obs"], dtype=np.int64))
        batch["mask"][row, :length] = True
        if "states" in batch:
            batch["states"][row, :length] = torch.from_numpy(np.asarray(item["states"], dtype=np.int64))
    return batch


def _token_counts(local_tokens: int, device: torch.device) -> tuple[int, int]:
    """``(tokens held by lower ranks, tokens of all ranks)`` in this micro-step."""
    if not (dist.is_available() and dist.is_initialized()):
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


@torch.no_grad()
def heldout_nll(
    model: HMMLanguageModel, sequences: SequenceSet, batch_size: int, limit: int = 0
) -> tuple[float, int]:
    """``(Σ −log P(O), Σ tokens)`` over held-out sequences, each scored from π (EOS included)."""
    count = len(sequences) if not limit else min(limit, len(sequences))
    if count == 0:
        raise ValueError(
            "the held-out split is empty: set corpus.heldout_fraction > 0 or corpus.heldout_path"
        )
    params = model.log_parameters()
    order = sorted(range(count), key=lambda i: len(sequences.sequence(i)))
    total, tokens = 0.0, 0
    for start in range(0, count, batch_size):
        batch = pad_batch(
            [{"index": i, "obs": sequences.sequence(i)} for i in order[start : start + batch_size]]
        )
        obs, mask = batch["obs"].to(params.log_start.device), batch["mask"].to(params.log_start.device)
        total -= float(forward_log_likelihood(*params, obs, mask).sum())
        tokens += int(batch["mask"].sum())
    return total, tokens


class HMMTask(Task):
    """The engine task of ``latentlm hmm train``: LVD phase, clean switch, marginal phase."""

    def __init__(
        self, cfg: HMMRunConfig, corpus: Corpus, states: LatentStates | None, run: RunDir | None = None
    ) -> None:
        if cfg.lvd.enabled and states is None:
            raise ValueError("lvd.enabled: the LVD phase needs stored latent states")
        self.cfg = cfg
        self.corpus = corpus
        self.states = states if cfg.lvd.enabled else None
        self.run = run
        self.batch_size = cfg.batch_size
        self.pretrain_tokens = cfg.lvd.pretrain_tokens if cfg.lvd.enabled else 0

    def build_model(self) -> nn.Module:
        return HMMLanguageModel(self.cfg.model)

    def train_dataset(self) -> Dataset:
        return SequenceDataset(self.corpus.train, self.states)

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return pad_batch(items)

    def loss(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        obs, mask = batch["obs"], batch["mask"]
        lengths = mask.sum(dim=1)
        remaining = max(0, self.pretrain_tokens - state.tokens_seen)  # same on every rank
        offset, step_tokens = _token_counts(int(lengths.sum()), obs.device) if remaining else (0, 0)
        prefix = lvd_prefix_lengths(lengths, max(0, remaining - offset))
        params = model()  # normalised log π, A, B; one call so that DDP sees one forward
        total = torch.zeros((), dtype=params.log_emission.dtype, device=obs.device)
        joint_rows = prefix > 0
        marginal_rows = prefix == 0
        lvd_tokens = int(prefix.sum())
        marginal_tokens = int(lengths[marginal_rows].sum())
        if joint_rows.any():
            width = int(prefix.max())
            sub_mask = torch.arange(width, device=obs.device).unsqueeze(0) < prefix[joint_rows].unsqueeze(1)
            rows = joint_rows.nonzero().squeeze(1)
            total = (
                total
                - joint_log_likelihood(
                    *params, obs[rows, :width], batch["states"][rows, :width], sub_mask
                ).sum()
            )
        if marginal_rows.any():
            rows = marginal_rows.nonzero().squeeze(1)
            width = int(lengths[rows].max())
            total = total - forward_log_likelihood(*params, obs[rows, :width], mask[rows, :width]).sum()
        num_tokens = lvd_tokens + marginal_tokens
        if 0 < remaining <= step_tokens and "switch_step" not in state.extra:
            self._record_switch(state)
        return StepOutput(
            loss=total / max(num_tokens, 1),
            num_tokens=num_tokens,
            metrics={"lvd_fraction": lvd_tokens / max(num_tokens, 1), "lvd_tokens": lvd_tokens},
        )

    def _record_switch(self, state: TrainState) -> None:
        step = state.step + 1
        state.extra["switch_step"] = step
        state.extra["switch_tokens"] = self.pretrain_tokens
        print(
            f"LVD: switch from -log P(O,S) to -log P(O) after exactly {self.pretrain_tokens} tokens "
            f"(step {step})",
            flush=True,
        )
        if self.run is not None and (not dist.is_initialized() or dist.get_rank() == 0):
            self.run.log(step, {"lvd/switch": 1, "lvd/switch_tokens": self.pretrain_tokens})

    def evaluate(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        nll, tokens = heldout_nll(
            model, self.corpus.heldout, self.cfg.eval_batch_size, self.cfg.max_eval_sequences
        )
        return {
            "heldout_ppl": perplexity(nll, tokens),
            "heldout_nll": nll / tokens,
            "tokens_seen": state.tokens_seen,
        }
