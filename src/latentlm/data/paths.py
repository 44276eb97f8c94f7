"""Where the real corpora live: `$LATENTLM_DATA`, else `../shared/data` beside a repository checkout
(users otherwise pass their own paths)."""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
"""The default data folder: `../shared/data` beside the repository (for an editable install)."""


def _data_folder() -> str | None:
    """`$LATENTLM_DATA`, else the checkout's `../shared/data` when it exists, else None."""
    value = os.environ.get("LATENTLM_DATA")
    if value:
        return value
    return str(CHECKOUT_DATA) if CHECKOUT_DATA.is_dir() else None


def data_root() -> Path:
    """The data folder (`$LATENTLM_DATA` or the default); raises with a clear message when missing."""
    value = _data_folder()
    if not value:
        raise FileNotFoundError("LATENTLM_DATA is not set: point it at the data folder or pass file paths")
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"LATENTLM_DATA={value} is not a directory")
    return path


def resolve_data_path(path: str | Path, field: str = "path") -> Path:
    """Where a data path given by the user points, the same way in every system.

    An absolute path, or a relative path that exists from the working directory, is used as given;
    any other relative path is looked up under the data folder (`$LATENTLM_DATA` or the default).

    Args:
        path: the path as the user wrote it (`ptb/ptb.train.txt`, `~/corpora/x.txt`).
        field: the config field it came from, named in errors (`data.path`).

    Raises:
        FileNotFoundError: the path exists nowhere it is looked for (the message names the field and
            every place tried).
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        if not candidate.exists():
            raise FileNotFoundError(f"{field}: {candidate} does not exist")
        return candidate
    value = _data_folder()
    if not value:
        raise FileNotFoundError(
            f"{field}: {path} does not exist here and LATENTLM_DATA is not set to look it up"
        )
    under = Path(value) / candidate
    if not under.exists():
        raise FileNotFoundError(f"{field}: {path} does not exist here nor under LATENTLM_DATA={value}")
    return under
