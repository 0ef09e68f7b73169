"""Typed configuration: frozen dataclasses filled from TOML, unknown keys rejected.

Every configurable stage (synthetic storms, training, nowcasting) declares a frozen
dataclass. :func:`from_mapping` builds one from a plain mapping (a parsed TOML table),
converting lists to tuples and nested tables to nested dataclasses, and raises
:class:`ConfigError` naming the file, the key and the fix for anything it does not know.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or mapping does not fit its dataclass."""


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(value, non_none[0], where) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return from_mapping(annotation, value, where=where)
    if origin is tuple and isinstance(value, list | tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_mapping(cls: type[T], mapping: Mapping[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``mapping``; unknown keys raise :class:`ConfigError`.

    Parameters
    ----------
    cls
        A dataclass type.
    mapping
        Keys are field names; missing keys take the field defaults.
    where
        Where the mapping came from (a file name and table), for error messages.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _convert(value, hints[name], f"{where}.{name}") for name, value in mapping.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def read_toml(path: str | Path, *, missing: str = "") -> dict[str, Any]:
    """The tables of TOML file ``path``; ConfigError naming it when it is missing (``missing``:
    what to add to that message) or not valid TOML."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: configuration file not found{missing}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def load_toml(cls: type[T], path: str | Path, *, table: str | None = None) -> T:
    """Read ``path`` (TOML) into dataclass ``cls``, optionally from one top-level ``table``."""
    doc = read_toml(path)
    if table is not None:
        doc = doc.get(table, {})
    return from_mapping(cls, doc, where=f"{path}" + (f" [{table}]" if table else ""))


def to_dict(config: Any) -> dict[str, Any]:
    """Return a dataclass config as plain, TOML/JSON-friendly data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
