"""MLM pretraining of the LHT on the shared engine (seed 003, roadmap 1.3 and 3.1-3.2).

`LHTPretrainTask` plugs into `latentlm.core.engine.Trainer`, which supplies AdamW, warm-up schedule,
accumulation, clipping, mixed precision, checkpoint/resume and logging. The task logs the MLM loss, the
router losses, compression statistics of every level and peak memory; the engine adds tokens/s.

Masking is drawn inside `loss` from a generator seeded by (seed, epoch, batch position), so a resumed
run sees exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time

import torch
from torch import nn

from latentlm.core.cli import UserError
from latentlm.core.engine import StepOutput, Task, TrainState
from latentlm.lht.config import LHTConfig, LHTRunConfig
from latentlm.lht.data import (
    ChunkDataset,
    CorpusSplits,
    build_corpus,
    gold_level_flags,
    masked_batch,
    pad_batch,
    random_token_range,
)
from latentlm.lht.evaluate import heldout_metrics
from latentlm.lht.model import LHTForMaskedLM, LHTOutput


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


def model_config_for(cfg: LHTRunConfig, tokenizer) -> LHTConfig:
    """The model config with the tokenizer's name, vocabulary size and pad id filled in and checked."""
    size = len(tokenizer)
    vocab = cfg.model.vocab_size or size
    if vocab < size:
        raise ValueError(f"model.vocab_size: {vocab} is smaller than the tokenizer's vocabulary ({size})")
    return dataclasses.replace(
        cfg.model, vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, tokenizer=cfg.data.tokenizer
    )


class LHTPretrainTask(Task):
    """Masked-LM pretraining of `LHTForMaskedLM` (hierarchical, dense or sliding-window) on a document mix."""

    def __init__(self, cfg: LHTRunConfig, tokenizer, corpus: CorpusSplits | None = None) -> None:
        if tokenizer.mask_token_id is None:
            raise UserError(f"data.tokenizer: {cfg.data.tokenizer!r} has no [MASK] token; MLM needs one")
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.tokenizer = tokenizer
        self.model_config = model_config_for(cfg, tokenizer)
        self.corpus = corpus if corpus is not None else build_corpus(cfg.data, tokenizer)
        if not self.corpus.heldout:
            raise UserError(
                f"data.heldout_fraction: {cfg.data.heldout_fraction} leaves no held-out chunk among "
                f"{len(self.corpus.train)} training chunks; raise it or add documents"
            )
        self.random_range = random_token_range(tokenizer)

    def build_model(self) -> nn.Module:
        return LHTForMaskedLM(self.model_config)

    def train_dataset(self) -> ChunkDataset:
        return ChunkDataset(self.corpus.train)

    def collate(self, items: list) -> dict[str, torch.Tensor]:
        return pad_batch(items, self.tokenizer.pad_token_id)

    def mask(self, batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """BERT-mask a padded batch on its device."""
        masked = masked_batch(
            {k: v.cpu() for k, v in batch.items()},
            self.tokenizer.mask_token_id,
            self.random_range,
            self.cfg.data.masking,
            seed,
        )
        device = batch["input_ids"].device
        return {k: v.to(device) for k, v in masked.items()}

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LHTOutput:
        """The model on a masked batch (gold unit starts go in only for `boundaries: gold`)."""
        boundaries = None
        if self.model_config.attention == "hierarchical" and self.model_config.hierarchy.boundaries == "gold":
            boundaries = gold_level_flags(batch, self.model_config.hierarchy.num_levels)
        return model(batch["input_ids"], batch["attention_mask"], batch["labels"], boundaries=boundaries)

    def loss(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        seed = self.cfg.train.seed * 1_000_003 + state.epoch * 100_019 + state.batch_in_epoch
        batch = self.mask(batch, seed)
        out = self.forward(model, batch)
        metrics = {"mlm_loss": out.mlm_loss.item(), "router_loss": out.router_loss.item()}
        for level, value in enumerate(out.ratio_losses):
            metrics[f"ratio_loss_level{level + 1}"] = value.item()
        unwrapped = getattr(model, "module", model)
        if out.hierarchy is not None:
            metrics.update(unwrapped.hierarchy.batch_statistics(out.hierarchy))
        metrics["memory_gb"] = peak_memory_gb(batch["input_ids"].device)
        return StepOutput(out.loss, num_tokens=int(batch["attention_mask"].sum()), metrics=metrics)

    def evaluate(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        return heldout_metrics(self, model)


def train_without_evaluation(
    cfg: LHTRunConfig, corpus: CorpusSplits | None = None
) -> tuple[LHTPretrainTask, nn.Module, TrainState, float]:
    """Train `cfg` with no periodic evaluation (equal-compute benchmarks score the model afterwards,
    outside the timing), on `corpus` when given (e.g. a dev split from `carve_dev`). Returns the task,
    the trained model in eval mode, the final state and the training seconds."""
    from latentlm.core.engine import Trainer
    from latentlm.core.run import RunDir
    from latentlm.teachers import load_tokenizer

    task = LHTPretrainTask(cfg, load_tokenizer(cfg.data.tokenizer), corpus)
    task.evaluate = lambda model, state: {}
    start = time.perf_counter()
    trainer = Trainer(task, cfg.train, RunDir(cfg.run_dir, tensorboard=False))
    state = trainer.fit()
    return task, trainer.model.eval(), state, time.perf_counter() - start
