"""Helpers shared by the scripts in `benchmarks/`: where the data is, what machine this is, saving results.

They live in the package (not in `benchmarks/`) so that `python3 benchmarks/<x>.py` and
`python -m benchmarks.<x>` both work from the repository root. Every results JSON records the command
line, the commit (and any uncommitted code changes), the machine and the load average when the script
started.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from latentlm.core.checkpoint import write_json

REPO = Path(__file__).resolve().parents[3]
"""The repository root (benchmarks run from a checkout, with the package installed editable)."""
RESULTS = REPO / "benchmarks" / "results"
_LOAD_AT_START = os.getloadavg()


def data_dir() -> Path:
    """`$LATENTLM_DATA`, else `../shared/data` beside the repository."""
    path = Path(os.environ.get("LATENTLM_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        raise FileNotFoundError(f"data folder not found at {path}; set LATENTLM_DATA")
    return path


def machine() -> dict:
    """A description of the machine the numbers were taken on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "command": " ".join(["python3", *sys.argv]),
        "load_average_at_start": list(_LOAD_AT_START),
        "load_average_at_save": list(os.getloadavg()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True, capture_output=True
        ).stdout.strip()
        # Code changed since that commit (results files aside): the numbers are not that commit's.
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks", "configs"],
            cwd=REPO,
            text=True,
            capture_output=True,
        ).stdout.splitlines()
        info["git_uncommitted"] = [line[3:] for line in changed if "benchmarks/results/" not in line]
    return info


def save_results(name: str, results: dict) -> Path:
    """Write `benchmarks/results/<name>.json` with the machine description attached."""
    path = RESULTS / f"{name}.json"
    write_json(path, {"machine": machine(), **results})
    print(f"saved {path}")
    return path
