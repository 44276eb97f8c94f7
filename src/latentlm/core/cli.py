"""One command-line builder for every system: `latentlm <system> <command> [config.yaml] [key=value ...]`.

A system lists its commands; `system_cli` turns them into a `main(argv) -> int` that

- loads the command's config (schema defaults ⊕ YAML ⊕ dotted overrides) or, for commands on a finished
  run, splits `run_dir=PATH` from further overrides;
- prints every config field with its type, default and docstring for `<command> --help` (litgpt's way);
- turns every user error (bad config, missing or damaged file, bad data, a numerical blow-up) into one
  line `latentlm <system> <command>: error: ...` and exit status 2; a traceback is shown only for bugs,
  or for everything with `--debug`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentlm.core.config import ConfigError, load_config, split_cli_args, split_run_dir
from latentlm.usage import help_text, usage_error


class UserError(Exception):
    """A problem with the user's input (a file, a field, the data) rather than a bug: one line, exit 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ConfigError,
    ValueError,
    OSError,
    FloatingPointError,
    UnicodeDecodeError,
)
"""Exceptions reported as a one-line message with exit status 2 (anything else is a bug: traceback)."""


@dataclass
class Command:
    """One sub-command of a system's CLI."""

    name: str
    run: Callable[..., Any]
    """Called as `run(cfg)` when `config` is set, `run(run_dir, overrides)` when `on_run` is set,
    else `run(args)`. A returned dict is printed as a summary, a path as `done: PATH`."""
    help: str
    config: type | None = None
    """The config schema loaded from `[config.yaml] [key=value ...]`."""
    on_run: type | None = None
    """For commands on a finished run (`run_dir=PATH [key=value ...]`): the run's config schema, listed
    by `--help` (the overrides apply to the saved config)."""


def system_cli(system: str, doc: str, commands: Sequence[Command]) -> Callable[[list[str] | None], int]:
    """The `main(argv) -> int` of `latentlm <system>`; see the module docstring."""
    by_name = {command.name: command for command in commands}

    def main(argv: list[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in args
        args = [a for a in args if a != "--debug"]
        if not args or args[0] in ("-h", "--help"):
            print(_usage(system, doc, commands))
            return 0
        name, rest = args[0], args[1:]
        command = by_name.get(name)
        if command is None:
            return usage_error(
                f"latentlm {system}", f"unknown command {name!r}; choose one of {', '.join(by_name)}"
            )
        if "-h" in rest or "--help" in rest:
            print(command_help(system, command))
            return 0
        try:
            if command.config is not None:
                path, overrides = split_cli_args(rest)
                result = command.run(load_config(command.config, path, overrides))
            elif command.on_run is not None:
                run_dir, overrides = split_run_dir(rest)
                result = command.run(run_dir, overrides)
            else:
                result = command.run(rest)
        except KeyboardInterrupt:
            print(
                f"latentlm {system} {name}: interrupted (checkpoints written so far are kept)",
                file=sys.stderr,
            )
            return 130
        except USER_ERRORS as err:
            if debug:
                raise
            return usage_error(f"latentlm {system} {name}", _one_line(err))
        _print_result(result)
        return 0

    return main


def command_help(system: str, command: Command) -> str:
    """The `--help` text of one command: usage, its help, and every config field."""
    schema = command.config or command.on_run
    if command.on_run is not None:
        arguments = "run_dir=PATH [key=value ...]"
    elif command.config is not None:
        arguments = "[config.yaml] [key=value ...]"
    else:
        arguments = "[key=value ...]"
    usage = f"usage: latentlm {system} {command.name} {arguments}"
    lines = [usage, "", command.help]
    if schema is not None:
        lines += ["", f"config fields ({schema.__name__}; defaults ⊕ YAML file ⊕ key=value):"]
        for name, type_name, default, doc in describe_fields(schema):
            lines.append(f"  {name}: {type_name} = {default!r}")
            if doc:
                lines += textwrap.wrap(doc, width=100, initial_indent="      ", subsequent_indent="      ")
    lines += ["", "  --debug   show the full traceback of an error"]
    return "\n".join(lines)


def describe_fields(schema: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted name, type, default, docstring) of every leaf field of a config dataclass tree."""
    docs = _attribute_docs(schema)
    hints = typing.get_type_hints(schema)
    rows = []
    for field in dataclasses.fields(schema):
        kind = hints.get(field.name, field.type)
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(kind):
            rows += describe_fields(kind, prefix=f"{name}.")
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        generic = typing.get_origin(kind) is not None  # list[str], int | None: spelled out in full
        type_name = (None if generic else getattr(kind, "__name__", None)) or str(kind).replace("typing.", "")
        rows.append((name, type_name, default, docs.get(field.name, "")))
    return rows


def _attribute_docs(schema: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after a field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _usage(system: str, doc: str, commands: Sequence[Command]) -> str:
    return help_text(
        [f"latentlm {system} <command> [config.yaml] [key=value ...]"],
        doc,
        "commands",
        [(c.name, c.help) for c in commands],
        f"`latentlm {system} <command> --help` lists every config field with its default;\n"
        "add --debug to see the traceback of an error.",
    )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text


def _print_result(result: Any) -> None:
    if isinstance(result, dict):
        for key, value in result.items():
            print(f"  {key}: {value}")
    elif isinstance(result, str | Path):
        print(f"done: {result}")
