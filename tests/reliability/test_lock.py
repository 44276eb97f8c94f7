"""Fault injection: two trainings into one run directory."""

import json
import os
import socket
import subprocess
import sys

import pytest

from latentlm.core import RunDir
from latentlm.core.run import RunLockedError
from tests.conftest import REPO
from tests.reliability.faults import toy_config, train, train_run

HOLD = """
import sys, time
from latentlm.core.run import RunDir
with RunDir(sys.argv[1], tensorboard=False).lock():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_training_in_another_process_fails_at_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            RunLockedError, match=f"run directory {tmp_path} is in use by pid {holder.pid} on"
        ):
            train_run(toy_config(tmp_path))
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # no config.yaml, no checkpoints
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is stale, and the next training takes it over.
    train_run(toy_config(tmp_path))
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_second_trainer_in_this_process_fails_and_the_first_keeps_going(tmp_path):
    with RunDir(tmp_path).lock():
        with pytest.raises(RunLockedError, match=f"in use by pid {os.getpid()} on {socket.gethostname()}"):
            train(tmp_path, 3)
        assert not (tmp_path / "metrics.jsonl").exists()
    _, state = train(tmp_path, 3)  # released on exit of the block
    assert state.step == 3
    assert (tmp_path / ".lock").read_text() == ""  # released cleanly: nothing stale left behind


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    _, state = train(tmp_path, 2)
    assert state.step == 2
    err = capsys.readouterr().err
    assert f"taking over a stale lock (pid {dead.pid} on {socket.gethostname()} is no longer running)" in err
