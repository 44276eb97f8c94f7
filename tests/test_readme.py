"""The README's Python blocks are the ones the system tests run: each is verbatim the snippet of its guide.

`tests/<system>/` trains `configs/<system>/tiny.yaml` and executes the "Use a trained model in Python"
block of `docs/<system>.md`; here we check that the README shows exactly those blocks, one per system.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("hmm", "wire", "diffusion", "lht")


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def guide_snippet(system: str) -> str:
    guide = (REPO / "docs" / f"{system}.md").read_text()
    section = guide.split("## Use a trained model in Python", 1)[1].split("\n## ", 1)[0]
    (block,) = python_blocks(section)
    return block


def test_python_blocks_pattern():
    assert python_blocks("x\n```python\na = 1\n```\n```bash\nls\n```") == ["a = 1\n"]


@pytest.mark.parametrize("system", SYSTEMS)
def test_readme_shows_the_tested_snippet_of_each_guide(system):
    readme = (REPO / "README.md").read_text()
    section = readme.split("### A trained model in Python", 1)[1].split("\n## ", 1)[0]
    snippet = guide_snippet(system)
    assert snippet in python_blocks(section), f"README block for {system} differs from docs/{system}.md"
    assert len(snippet.strip().splitlines()) <= 6  # import, blank line, at most four lines of use
