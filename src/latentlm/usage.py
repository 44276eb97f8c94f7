"""How every `latentlm` listing and user error is printed, for the top-level CLI and `core.cli` alike.

A module of its own, with no heavy imports, so that `latentlm --help` answers at once and neither CLI
module has to import the other.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def help_text(
    usage: Sequence[str], about: str, heading: str, entries: Sequence[tuple[str, str]], hint: str
) -> str:
    """Usage lines, a description, `heading:` with one aligned `name  text` line per entry, a hint."""
    width = max([10, *(len(name) + 2 for name, _ in entries)])
    lines = [f"usage: {usage[0]}", *(f"       {line}" for line in usage[1:]), "", about.strip(), ""]
    lines += [f"{heading}:", *(f"  {name:{width}s} {text}" for name, text in entries), "", hint]
    return "\n".join(lines)


def usage_error(prog: str, message: str) -> int:
    """Print `<prog>: error: <message>` on stderr; the exit status of a user error (2)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
