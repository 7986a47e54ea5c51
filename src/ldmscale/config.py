"""Typed configs that round-trip to JSON and TOML.

Every config in ldmscale is a frozen-free ``@dataclass`` that inherits
:class:`Config`. ``to_dict``/``from_dict`` convert to plain JSON types (tuples
become lists and back), ``save``/``load`` pick JSON or TOML from the suffix,
and unknown keys are refused with a message naming them, so a typo in a config
file is an error rather than a silently ignored setting. A field declared with
:func:`omit_if_default` is left out of ``to_dict`` while it holds its default, so adding
such a field leaves every existing config's dict, file and hash unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Self

import tomli_w

from ldmscale.io import atomic_write_text


class ConfigError(ValueError):
    """A config value or file that cannot be used; the message says how to fix it."""


OMIT_IF_DEFAULT = "ldmscale_omit_if_default"


def omit_if_default(
    default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING
):
    """A dataclass field that ``to_dict`` (and so ``save`` and any hash of it) leaves out while
    it equals its default; ``from_dict`` fills the default back in."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={OMIT_IF_DEFAULT: True}
    )


def _omitted(f: dataclasses.Field, value: Any) -> bool:
    if not f.metadata.get(OMIT_IF_DEFAULT):
        return False
    if f.default is not dataclasses.MISSING:
        return value == f.default
    return f.default_factory is not dataclasses.MISSING and value == f.default_factory()


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _to_plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not _omitted(f, getattr(value, f.name))
        }
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a plain JSON value back to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        last: Exception | None = None
        for a in non_none:
            try:
                return _coerce(a, value, where)
            except (TypeError, ValueError, ConfigError) as e:
                last = e
        raise ConfigError(f"{where}: cannot read {value!r} as {tp}: {last}")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is list:
        return [_coerce(args[0], v, where) for v in value] if args else list(value)
    if origin is dict:
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp.from_dict(value) if issubclass(tp, Config) else tp(**value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is Path:
        return Path(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


@dataclasses.dataclass
class Config:
    """Base class: JSON/TOML round-trip and strict key checking for dataclass configs."""

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a table/object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(names)}"
            )
        kwargs = {k: _coerce(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()}
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> Path:
        """Write atomically as JSON (``.json``) or TOML (``.toml``)."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix == ".toml":
            text = tomli_w.dumps(_drop_none(data))
        else:
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        atomic_write_text(path, text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Self:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(path.read_text())
            else:
                data = json.loads(path.read_text())
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from e
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def _drop_none(data: Any) -> Any:
    """TOML has no null: omit None values (they fall back to the dataclass default)."""
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_none(v) for v in data]
    return data
