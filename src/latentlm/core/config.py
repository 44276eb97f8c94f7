"""Typed configuration: dataclass schemas, YAML files and dotted command-line overrides.

A run's configuration is a tree of `@dataclass`es. `load_config` merges, in order, the schema's
defaults, a YAML file and `key=value` overrides with OmegaConf in struct mode, then converts the result
back to the dataclasses, so `__post_init__` checks run. Any unknown key, wrong type or bad value stops
start-up with a `ConfigError` that names the field and the file it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from latentlm.core.checkpoint import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration could not be read or validated; the message names the field and the source."""


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
    if path is not None:
        layers.append((str(path), OmegaConf.create(_read_yaml(Path(path)))))
    if overrides:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command line: cannot parse overrides {list(overrides)}: {err}") from err
    merged = base
    for source, layer in layers[1:]:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{source}: {_describe(err)}") from err
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{_sources(path, overrides)}: {_describe(err)}") from err
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{_sources(path, overrides)}: {err}") from err


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
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


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
