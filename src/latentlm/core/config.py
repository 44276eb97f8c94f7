"""Typed configuration: dataclass schemas, YAML files and dotted command-line overrides.

A run's configuration is a tree of `@dataclass`es. `load_config` merges, in order, the schema's
defaults, a YAML file and `key=value` overrides with OmegaConf in struct mode, then converts the result
back to the dataclasses, so `__post_init__` checks run. Any unknown key, wrong type or bad value stops
start-up with a `ConfigError` that names the field and the file it came from (or "command line").

Field checks for `__post_init__`: `check_choice(name, value, choices)` and
`check_range(name, value, low, high, ...)` raise `ValueError("train.lr: must be > 0, got -1")`.

Overrides: `key=value` (YAML-typed value), `key=` sets an empty string. Interpolations between fields
(`${model.d_model}`) work as in OmegaConf; `${oc.env:VAR}` reads the environment only when the user
opts in with `LATENTLM_ALLOW_ENV=1`, and `save_config` then writes the interpolation, never its value.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from latentlm.core.checkpoint import atomic_write_text

T = TypeVar("T")

ALLOW_ENV_VARIABLE = "LATENTLM_ALLOW_ENV"
_ENV_INTERPOLATION = re.compile(r"\$\{\s*oc\.env\s*:")
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)(?:\[\])?:")
# Dotted key -> (resolved value, original text) of fields that came from ${oc.env:...}, so that
# `config_to_yaml` writes the interpolation back instead of the environment's value.
_ENV_FIELDS: dict[str, tuple[Any, str]] = {}


class ConfigError(ValueError):
    """A configuration could not be read or validated; the message names the field and the source."""


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise `ValueError("<name>: must be one of a, b, got 'c'")` unless `value` is in `choices`.

    Args:
        name: the dotted field name as the user writes it (`model.kind`).
        value: the field's value.
        choices: the allowed values.
    """
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> None:
    """Raise `ValueError` naming the field unless `low <= value <= high` (or `<` for open ends).

    Messages read `train.lr: must be > 0, got -1`, `model.dropout: must be in [0, 1), got 1.5` and
    `train.lr: must be finite, got inf`. NaN never passes.

    Args:
        name: the dotted field name as the user writes it (`train.lr`).
        value: the field's value (int or float).
        low, high: the bounds; `None` leaves that side open-ended.
        low_open, high_open: exclude the bound itself (`> low`, `< high`).
        finite: also refuse +-inf (the default; a NaN is always refused).
    """
    if low is not None and high is not None:
        rule = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        rule = f"{'>' if low_open else '>='} {low}"
    elif high is not None:
        rule = f"{'<' if high_open else '<='} {high}"
    else:
        rule = "finite" if finite else "a number"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name}: must be a number {rule}, got {value!r}")
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name}: must be {'finite' if low is None and high is None else rule}, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{name}: must be {rule}, got {value}")


def env_allowed() -> bool:
    """Whether `${oc.env:VAR}` interpolation is allowed (`LATENTLM_ALLOW_ENV=1`)."""
    return os.environ.get(ALLOW_ENV_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def split_cli_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split command-line words into an optional YAML path and `key=value` overrides.

    Raises:
        ConfigError: for a word that is neither a `.yaml`/`.yml` path nor `key=value`, or for two paths.
    """
    path: str | None = None
    overrides: list[str] = []
    for word in argv:
        if "=" in word:
            overrides.append(word)
        elif word.endswith((".yaml", ".yml")):
            if path is not None:
                raise ConfigError(f"two config files given: {path!r} and {word!r}")
            path = word
        else:
            raise ConfigError(f"argument {word!r} is neither a .yaml config file nor a key=value override")
    return path, overrides


def split_run_dir(args: Sequence[str]) -> tuple[Path, list[str]]:
    """Split `run_dir=PATH` (exactly one) from the other words of an `eval`-like command."""
    run_dirs = [a.split("=", 1)[1] for a in args if a.startswith("run_dir=")]
    if len(run_dirs) != 1:
        raise ConfigError("give exactly one run_dir=PATH naming a finished run")
    return Path(run_dirs[0]), [a for a in args if not a.startswith("run_dir=")]


def load_run_config(schema: type[T], run_dir: str | Path, overrides: Sequence[str] = ()) -> T:
    """The config a finished run saved (`<run_dir>/config.yaml`), with further dotted overrides."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    return load_config(schema, path, overrides)


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a `schema` instance from its defaults, an optional YAML file and dotted overrides.

    Args:
        schema: a dataclass type whose fields all have defaults (nested dataclasses allowed).
        path: YAML file whose keys override the defaults.
        overrides: strings like `"model.num_states=64"` or `'train.betas=[0.9,0.95]'`.

    Raises:
        ConfigError: missing or malformed file, unknown key, wrong type, or a failed `__post_init__` check.
    """
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    layers = [("defaults", base)]
    set_by: dict[str, str] = {}  # dotted key -> the source that set it last
    env_fields: dict[str, str] = {}  # dotted key -> text with ${oc.env:...}
    if path is not None:
        data = _read_yaml(Path(path))
        for key, value in _flatten(data):
            set_by[key] = str(path)
            _note_env(key, value, str(path), env_fields)
        layers.append((str(path), OmegaConf.create(data)))
    if overrides:
        dotlist = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, value = item.split("=", 1)
            set_by[key.strip()] = "command line"
            _note_env(key.strip(), value, "command line", env_fields)
            dotlist.append(f"{key}=''" if value == "" else item)  # `key=` means an empty string
        try:
            layers.append(("command line", OmegaConf.from_dotlist(dotlist)))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command line: cannot parse overrides {list(overrides)}: {err}") from err
    merged = base
    for source, layer in layers[1:]:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{source}: {_describe(err)}") from err
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{_origin(key, set_by, path, overrides)}: {_describe(err)}") from err
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{_origin_of_check(str(err), set_by, path, overrides)}: {err}") from err
    for key, original in env_fields.items():
        _ENV_FIELDS[key] = (OmegaConf.select(merged, key), original)
    return cfg


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of a nested mapping; lists are leaves."""
    if not isinstance(data, dict):
        return [(prefix, data)]
    pairs = []
    for key, value in data.items():
        pairs.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return pairs


def _note_env(key: str, value: Any, source: str, env_fields: dict[str, str]) -> None:
    """Record a `${oc.env:...}` value, or refuse it when the user has not opted in."""
    if not (isinstance(value, str) and _ENV_INTERPOLATION.search(value)):
        return
    if not env_allowed():
        raise ConfigError(
            f"{source}: field {key!r}: {value} reads an environment variable, which is off by default; "
            f"set {ALLOW_ENV_VARIABLE}=1 to allow it (config.yaml keeps the interpolation, not the value)"
        )
    env_fields[key] = value


def _origin(
    key: str | None, set_by: dict[str, str], path: str | Path | None, overrides: Sequence[str]
) -> str:
    """The source that set `key` (the file or "command line"), else every source given."""
    if key:
        if key in set_by:  # an exact match first: `batch_size` is not `eval.batch_size`
            return set_by[key]
        for set_key, source in reversed(list(set_by.items())):
            if set_key.endswith("." + key) or set_key.startswith(key + "."):
                return source
    return _sources(path, overrides)


def _origin_of_check(
    message: str, set_by: dict[str, str], path: str | Path | None, overrides: Sequence[str]
) -> str:
    """The source of the field a failed check names first, plus "command line" when the rest of the
    message names a field set there (a check across fields blames the first one, which the file may have
    set while the override broke it)."""
    match = _FIELD_PREFIX.match(message)
    origin = _origin(match and match.group(1), set_by, path, overrides)
    rest = message[match.end() :] if match else ""
    overridden = {key.rsplit(".", 1)[-1] for key, source in set_by.items() if source == "command line"}
    if "command line" not in origin and any(re.search(rf"\b{re.escape(k)}\b", rest) for k in overridden):
        origin += " + command line"
    return origin


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass (tuples become lists)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def config_from_dict(schema: type[T], values: dict, source: str = "dict") -> T:
    """Validate `values` against `schema` (same checks as `load_config`); `source` names it in errors."""
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    try:
        return OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.create(values)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{source}: {_describe(err)}") from err
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{source}: {err}") from err


def config_to_yaml(cfg: Any) -> str:
    """YAML of `cfg`; a field that came from `${oc.env:...}` is written as that interpolation."""
    data = config_to_dict(cfg)
    for key, (value, original) in _ENV_FIELDS.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == value:
            node[leaf] = original
    return yaml.safe_dump(data, sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write `cfg` as YAML atomically (temp file + rename)."""
    atomic_write_text(Path(path), config_to_yaml(cfg))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML: {getattr(err, 'problem', err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config fields, got {type(data).__name__}")
    return data


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return f"unknown config key {key!r}" if key else msg
    return f"field {key!r}: {msg}" if key else msg


def _sources(path: str | Path | None, overrides: Sequence[str]) -> str:
    parts = [str(path)] if path is not None else []
    if overrides:
        parts.append("command line")
    return " + ".join(parts) or "defaults"
