"""The GPU check skips cleanly without a CUDA device, and its junit summary is right on a hand-written XML."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu_bench import SKIP_MESSAGE, summarize_junit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _no_cuda_env() -> dict:
    """The environment with every CUDA device hidden, so the skip path runs on any machine."""
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _result_stamps() -> dict:
    files = [RESULTS / "gpu_suite.json", RESULTS / "gpu_bench.json"]
    return {f.name: f.stat().st_mtime_ns if f.exists() else None for f in files}


def test_suite_without_cuda_prints_the_skip_line_and_writes_nothing(tmp_path):
    before = _result_stamps()
    # Run from another directory: the script finds the repository root itself.
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh")],
        cwd=tmp_path,
        env=_no_cuda_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == SKIP_MESSAGE == "no CUDA device: GPU suite skipped"
    assert _result_stamps() == before


def test_bench_help_and_skip_without_cuda():
    script = str(REPO / "benchmarks" / "gpu_bench.py")
    shown = subprocess.run(
        [sys.executable, script, "--help"], env=_no_cuda_env(), capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "--quick" in shown.stdout
    before = _result_stamps()
    done = subprocess.run(
        [sys.executable, script, "--quick"], env=_no_cuda_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == SKIP_MESSAGE
    assert _result_stamps() == before


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="3.5">
  <testcase classname="tests.hmm.test_gpu" name="test_forward[dense]" time="1.25" />
  <testcase classname="tests.lht.test_gpu" name="test_bf16" time="0.5">
    <failure message="AssertionError: loss is nan">long traceback</failure>
  </testcase>
  <testcase classname="tests.diffusion.test_wkv" name="test_fla" time="0.0">
    <skipped type="pytest.skip" message="fla is not installed">skip details</skipped>
  </testcase>
  <testcase classname="tests.reliability.test_gpu" name="test_resume" time="0.1">
    <error message="failed on setup with &quot;OSError&quot;">setup traceback</error>
  </testcase>
</testsuite></testsuites>
"""


def test_junit_summary_outcomes_and_counts():
    summary = summarize_junit(JUNIT)
    assert summary["counts"] == {"passed": 1, "failed": 2, "skipped": 1}
    assert summary["tests"] == {
        "tests.hmm.test_gpu::test_forward[dense]": {"outcome": "passed", "seconds": 1.25},
        "tests.lht.test_gpu::test_bf16": {
            "outcome": "failed",
            "seconds": 0.5,
            "message": "AssertionError: loss is nan",
        },
        "tests.diffusion.test_wkv::test_fla": {
            "outcome": "skipped",
            "seconds": 0.0,
            "message": "fla is not installed",
        },
        "tests.reliability.test_gpu::test_resume": {
            "outcome": "failed",
            "seconds": 0.1,
            "message": 'failed on setup with "OSError"',
        },
    }


def test_junit_summary_of_an_empty_run():
    assert summarize_junit('<testsuites><testsuite name="pytest" tests="0" /></testsuites>') == {
        "counts": {"passed": 0, "failed": 0, "skipped": 0},
        "tests": {},
    }
