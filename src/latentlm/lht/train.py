"""MLM pretraining of the LHT on the shared engine (seed 003, roadmap 1.3 and 3.1-3.2).

`LHTRunConfig` is the whole run (model, data, engine settings, evaluation); `LHTPretrainTask` plugs
into `latentlm.core.engine.Trainer`, which supplies AdamW, warm-up schedule, accumulation, clipping,
mixed precision, checkpoint/resume and logging. The task logs the MLM loss, the router losses,
compression statistics of every level and peak memory; the engine adds tokens/s.

Masking is drawn inside `loss` from a generator seeded by (seed, epoch, batch position), so a resumed
run sees exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from latentlm.core.engine import StepOutput, Task, TrainConfig, TrainState
from latentlm.lht.data import (
    ChunkDataset,
    CorpusSplits,
    DataConfig,
    build_corpus,
    masked_batch,
    pad_batch,
    random_token_range,
)
from latentlm.lht.model import LHTConfig, LHTForMaskedLM
from latentlm.metrics.perplexity import perplexity


@dataclass
class EvalConfig:
    """Held-out evaluation settings."""

    max_chunks: int = 64  # held-out chunks used for perplexity and boundary scores (0 = all)
    batch_size: int = 4  # chunks per evaluation batch
    mask_seed: int = 1234  # seed of the (fixed) evaluation masks
    tolerance: int = 2  # a learned boundary within this many tokens of a gold one is a hit
    probe_min_documents: int = 5  # categories with fewer reST documents are left out of the probe
    probe_folds: int = 5  # cross-validation folds of the classification probe
    probe_max_documents: int = 200  # documents embedded for the probe (0 = all)
    sample_tokens: int = 320  # tokens of the sample document drawn in the report


@dataclass
class LHTRunConfig:
    """A full LHT pretraining run (`latentlm lht train <this>.yaml`)."""

    run_dir: str = "runs/lht"  # run directory (config, metrics, checkpoints, report)
    batch_size: int = 2  # chunks per micro-batch
    num_threads: int = 0  # torch CPU threads (0 = torch's default; 1 is far faster on an oversubscribed CPU)
    model: LHTConfig = field(default_factory=lambda: LHTConfig(vocab_size=0))  # vocab 0 = tokenizer's
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads: must be >= 0, got {self.num_threads}")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


def model_config_for(cfg: LHTRunConfig, tokenizer) -> LHTConfig:
    """The model config with the tokenizer's vocabulary size and pad id filled in and checked."""
    size = len(tokenizer)
    vocab = cfg.model.vocab_size or size
    if vocab < size:
        raise ValueError(f"model.vocab_size: {vocab} is smaller than the tokenizer's vocabulary ({size})")
    return dataclasses.replace(cfg.model, vocab_size=vocab, pad_token_id=tokenizer.pad_token_id)


class LHTPretrainTask(Task):
    """Masked-LM pretraining of `LHTForMaskedLM` (hierarchical or dense) on a document mix."""

    def __init__(self, cfg: LHTRunConfig, tokenizer, corpus: CorpusSplits | None = None) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError(f"data.tokenizer: {cfg.data.tokenizer!r} has no [MASK] token; MLM needs one")
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.tokenizer = tokenizer
        self.model_config = model_config_for(cfg, tokenizer)
        self.corpus = corpus if corpus is not None else build_corpus(cfg.data, tokenizer)
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

    def loss(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        seed = self.cfg.train.seed * 1_000_003 + state.epoch * 100_019 + state.batch_in_epoch
        batch = self.mask(batch, seed)
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
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


def heldout_chunks(task: LHTPretrainTask) -> list:
    """The held-out chunks used for evaluation (the first `eval.max_chunks`)."""
    chunks = task.corpus.heldout
    limit = task.cfg.eval.max_chunks
    return chunks[:limit] if limit else chunks


@torch.no_grad()
def heldout_metrics(task: LHTPretrainTask, model: nn.Module) -> dict[str, float]:
    """MLM loss and perplexity on held-out chunks with fixed masks, plus compression of each level."""
    chunks = heldout_chunks(task)
    if not chunks:
        raise ValueError("no held-out chunks: raise data.heldout_fraction or add documents")
    device = next(model.parameters()).device
    size = task.cfg.eval.batch_size
    total_nll, total_tokens = 0.0, 0
    stats_tokens, stats_units = {}, {}
    for start in range(0, len(chunks), size):
        items = [{"index": i, "ids": c.ids} for i, c in enumerate(chunks[start : start + size])]
        batch = {k: v.to(device) for k, v in task.collate(items).items()}
        batch = task.mask(batch, task.cfg.eval.mask_seed + start)
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        count = int((batch["labels"] != -100).sum())
        if count:
            total_nll += out.mlm_loss.item() * count
            total_tokens += count
        if out.hierarchy is not None:
            for level, units in enumerate(out.hierarchy.token_units):
                stats_tokens[level] = stats_tokens.get(level, 0) + int(batch["attention_mask"].sum())
                stats_units[level] = stats_units.get(level, 0) + int((units.max(dim=1).values + 1).sum())
    metrics = {
        "mlm_loss": total_nll / max(total_tokens, 1),
        "perplexity": perplexity(total_nll, total_tokens),
        "masked_tokens": float(total_tokens),
    }
    for level in stats_tokens:
        metrics[f"level{level + 1}/tokens_per_unit"] = stats_tokens[level] / max(stats_units[level], 1)
    if not math.isfinite(metrics["perplexity"]):
        raise FloatingPointError(f"held-out perplexity is {metrics['perplexity']}")
    return metrics
