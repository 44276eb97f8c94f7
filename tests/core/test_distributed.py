import os
import subprocess
import sys

import pytest
import torch

from latentlm.core.checkpoint import load_tensors
from tests.conftest import REPO


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_processes_agree_on_parameters(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        str(REPO / "tests" / "core" / "dist_worker.py"),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = load_tensors(tmp_path / "rank0.safetensors")
    rank1 = load_tensors(tmp_path / "rank1.safetensors")
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
    # The two ranks saw different shards and trained: the weights moved from the seeded start.
    torch.manual_seed(0)
    from tests.core.toy_task import ToyRegression

    start = ToyRegression().build_model().state_dict()
    assert not torch.equal(start["0.weight"], rank0["0.weight"])
    checkpoint = tmp_path / "run" / "checkpoints" / "step_8"
    assert (checkpoint / "rng_rank0.json").is_file() and (checkpoint / "rng_rank1.json").is_file()
