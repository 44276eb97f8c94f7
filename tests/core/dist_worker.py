"""Run by `torchrun --nproc_per_node 2`: trains the toy task and saves this rank's parameters."""

import sys
from pathlib import Path

from latentlm.core import RunDir, TrainConfig, Trainer
from latentlm.core.checkpoint import save_tensors
from tests.core.toy_task import ToyRegression

if __name__ == "__main__":
    out = Path(sys.argv[1])
    trainer = Trainer(ToyRegression(), TrainConfig(max_steps=6, lr=1e-2, log_every=1), RunDir(out / "run"))
    trainer.fit()
    # Resume on both ranks (the main process picks the intact checkpoint and tells the other).
    trainer = Trainer(ToyRegression(), TrainConfig(max_steps=8, lr=1e-2, log_every=1), RunDir(out / "run"))
    assert trainer.fit().step == 8
    rank = trainer.accelerator.process_index
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.state
    save_tensors(trainer.model.state_dict(), out / f"rank{rank}.safetensors")
