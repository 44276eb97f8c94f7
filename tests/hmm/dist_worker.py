"""Run by `torchrun --nproc_per_node N` (or directly, N = 1): closed-form LVD then full-batch EM on a toy
corpus; saves this rank's closed-form tables and final tables."""

import sys
from pathlib import Path

import numpy as np

from latentlm.core.checkpoint import save_tensors
from latentlm.core.config import config_from_dict
from latentlm.core.engine import Trainer
from latentlm.core.run import RunDir
from latentlm.hmm.config import HMMRunConfig
from latentlm.hmm.data import build_corpus
from latentlm.hmm.lvd import LatentStates, closed_form_estimate
from latentlm.hmm.task import HMMTask


def run(corpus_file: Path, out: Path) -> None:
    cfg = config_from_dict(
        HMMRunConfig,
        {
            "run_dir": str(out / "run"),
            "model": {"num_states": 3},
            "data": {"path": str(corpus_file), "format": "lines", "heldout_fraction": 0.2, "max_length": 16},
            "lvd": {"phase": "closed_form", "pseudocount": 0.5},
            "train": {"optimizer": "em", "grad_clip": 0.0, "max_steps": 3, "log_every": 1, "cpu": True},
            "em": {"batch_tokens": 0, "chunk_tokens": 12, "pseudocount": 0.05},
        },
    )
    corpus = build_corpus(cfg.data)
    cfg.model.vocab_size = len(corpus.vocab)
    rng = np.random.default_rng(0)
    states = LatentStates(
        rng.integers(0, 3, corpus.train.num_tokens).astype(np.int32), corpus.train.offsets, "e", "s"
    )
    task = HMMTask(cfg, corpus, states, RunDir(cfg.run_dir, tensorboard=False))
    cfg.train.grad_accum = task.em_grad_accum()
    trainer = Trainer(task, cfg.train, RunDir(cfg.run_dir, tensorboard=False))
    rank = trainer.accelerator.process_index
    start = closed_form_estimate(corpus, states, 3, 0.5)
    save_tensors(
        dict(zip(("start", "transition", "emission"), start, strict=True)), out / f"lvd{rank}.safetensors"
    )
    trainer.fit()
    save_tensors(trainer.model.state_dict(), out / f"em{rank}.safetensors")


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]))
