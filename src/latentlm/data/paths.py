"""Where the real corpora live: `$LATENTLM_DATA` (users otherwise pass their own paths)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """The folder named by `$LATENTLM_DATA`; raises with a clear message when unset or missing."""
    value = os.environ.get("LATENTLM_DATA")
    if not value:
        raise FileNotFoundError("LATENTLM_DATA is not set: point it at the data folder or pass file paths")
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"LATENTLM_DATA={value} is not a directory")
    return path
