"""The project's shape: the same role files in every system, no import cycles, runnable benchmark scripts."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "latentlm"
SYSTEMS = ("hmm", "wire", "diffusion", "lht")
ROLE_FILES = ("__init__.py", "config.py", "model.py", "task.py", "evaluate.py", "cli.py", "data.py")


@pytest.mark.parametrize("system", SYSTEMS)
def test_system_folder_has_the_skeleton(system):
    folder = PACKAGE / system
    missing = [name for name in ROLE_FILES if not (folder / name).is_file()]
    assert not missing, f"src/latentlm/{system}/ lacks {', '.join(missing)} (every system holds {ROLE_FILES})"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """`latentlm.core.config` for src/latentlm/core/config.py, `latentlm.core` for its __init__.py."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _module_level_imports(tree: ast.Module, lazy: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: the module body and its if/try/with blocks, not
    functions, classes or `if TYPE_CHECKING:`. With `lazy`, also the imports inside functions and
    classes (they run later, but still make the modules depend on each other)."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif _is_type_checking(node):
            continue
        elif lazy or isinstance(node, ast.If | ast.Try | ast.With | ast.ExceptHandler):
            stack.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt | ast.ExceptHandler))
    return found


def import_graph(root: Path = PACKAGE, lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports at module level (with `lazy`, anywhere).

    `import a.b.c` and `from a.b import c` (c a module) point at `a.b.c`; `from a.b import name` at `a.b`.
    The implicit import of parent packages is not an edge (every submodule would otherwise form a
    cycle with a package `__init__` that imports it).
    """
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _module_level_imports(ast.parse(path.read_text(), str(path)), lazy):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            edges.update(t for t in targets if t in paths and t != name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles found by depth-first search (one per back edge), each rotated to start at its
    smallest module name, without duplicates, sorted."""
    cycles: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :]
                start = cycle.index(min(cycle))
                cycles.add(tuple(cycle[start:] + cycle[:start]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return [list(c) for c in sorted(cycles)]


def test_cycle_finder_on_a_hand_made_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_resolves_relative_and_from_imports(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from pkg.sub import mod\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "mod.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import other\nif TYPE_CHECKING:\n    import pkg\n"
        "def f():\n    import pkg.top\n"
    )
    (root / "sub" / "other.py").write_text("from ..top import VALUE\n")
    (root / "top.py").write_text("import pkg.sub.mod\nVALUE = 1\n")
    assert import_graph(root) == {
        "pkg": {"pkg.sub.mod"},
        "pkg.sub": set(),
        "pkg.sub.mod": {"pkg.sub.other"},
        "pkg.sub.other": {"pkg.top"},
        "pkg.top": {"pkg.sub.mod"},
    }
    assert find_cycles(import_graph(root)) == [["pkg.sub.mod", "pkg.sub.other", "pkg.top"]]
    assert import_graph(root, lazy=True)["pkg.sub.mod"] == {"pkg.sub.other", "pkg.top"}


@pytest.mark.parametrize("lazy", [False, True], ids=["module_level", "with_lazy_imports"])
def test_no_import_cycles_under_src(lazy):
    cycles = find_cycles(import_graph(lazy=lazy))
    assert not cycles, f"import cycles (lazy imports counted: {lazy}):\n" + "\n".join(
        " -> ".join([*c, c[0]]) for c in cycles
    )


BENCHMARKS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if p.name != "__init__.py")


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmark_script_help_runs_from_the_repo_root(script):
    # Only the package on the path (as after `pip install -e .`), not the repository root: the script
    # must not need `benchmarks` to be importable.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--help"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, (
        f"python3 benchmarks/{script} --help: exit {result.returncode}\n{result.stderr}"
    )
    assert "usage" in result.stdout.lower()
