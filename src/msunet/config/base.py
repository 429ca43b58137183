"""What every msunet config shares: the frozen dataclass base (validation on construction, dict/JSON
round trip, key=value overrides) and the checks whose errors name the field, the value received and
what would be valid."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from msunet.atomic import write_text_atomic

C = TypeVar("C", bound="BaseConfig")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field and the valid values."""


def close_matches(word: str, choices: Iterable[str]) -> str:
    """Returns a ' Did you mean ...?' hint for `word` among `choices`, or ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def check_choice(owner: str, field: str, value: Any, choices: Iterable[str]) -> None:
    """Raises `ConfigError` unless `value` is one of `choices`, suggesting the closest one."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(
            f"{owner}.{field}={value!r} is not a valid choice; valid: "
            f"{', '.join(repr(c) for c in choices)}.{close_matches(value, choices)}"
        )


def check_int(owner: str, field: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    """Raises `ConfigError` unless `value` is an int (not bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{field}={value!r} must be an integer{_range_text(lo, hi)}.")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{owner}.{field}={value!r} is out of range; valid: {_range_text(lo, hi, bare=True)}.")


def check_float(
    owner: str, field: str, value: Any, lo: float | None = None, hi: float | None = None, hi_open: bool = False
) -> None:
    """Raises `ConfigError` unless `value` is a finite number in [lo, hi] (or [lo, hi) if hi_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{field}={value!r} must be a finite number{_range_text(lo, hi, hi_open=hi_open)}.")
    if (lo is not None and value < lo) or (hi is not None and (value >= hi if hi_open else value > hi)):
        raise ConfigError(
            f"{owner}.{field}={value!r} is out of range; valid: {_range_text(lo, hi, bare=True, hi_open=hi_open)}."
        )


def _range_text(lo: Any, hi: Any, bare: bool = False, hi_open: bool = False) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        text = f">= {lo}"
    elif lo is None:
        text = f"< {hi}" if hi_open else f"<= {hi}"
    else:
        text = f"{lo}..{hi}" + (" (exclusive)" if hi_open else "")
    return text if bare else f" ({text})"


def parse_value(text: str) -> Any:
    """Parses the value of a `key=value` override: JSON first, then Python-style words, else str."""
    text = text.strip()
    words = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in words:
        return words[text.lower()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:  # bare comma list: 16,32,64
        return [parse_value(part) for part in text.split(",") if part.strip()]
    return text


def read_json_source(source: str | os.PathLike) -> Any:
    """Parses a JSON file path, or JSON text starting with '{'; errors name the file and the position."""
    text = os.fspath(source)
    where = "JSON text"
    if not text.lstrip().startswith("{"):
        where = text
        try:
            with open(text, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            raise ConfigError(f"Cannot read config file {where!r}: {err.strerror}. Check the path.") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"Config {where!r} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}."
        ) from err


def _coerce(value: Any, hint: Any) -> Any:
    """Brings a JSON-ish value to the field's declared type where that is lossless."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        members = [a for a in args if a is not type(None)]
        if isinstance(value, (list, tuple)):
            members = [a for a in members if typing.get_origin(a) is tuple or a is tuple] or members
        elif len(members) > 1:
            return value  # e.g. str | tuple: a scalar keeps its own type
        return _coerce(value, members[0])
    if origin is tuple or hint is tuple:
        if isinstance(value, (list, tuple)):
            inner = args[0] if args else None
            return tuple(_coerce(v, inner) if inner not in (None, Ellipsis) else v for v in value)
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Behaviour shared by every msunet config: dict/JSON round trip, overrides, validation."""

    # Bumped when a field's meaning changes; stored in JSON so old files can be recognised.
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(value, hints[f.name])
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Raises `ConfigError` on an invalid field. Subclasses extend this."""

    # Round trip ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a dict of JSON-compatible plain values (tuples become lists)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Builds a config from a dict; unknown keys raise with a close-match suggestion."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} expects a mapping of field names to values, got {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"{cls.__name__} has no field {key!r}.{close_matches(key, names)} Valid fields: {', '.join(names)}."
            )
        return cls(**dict(data))

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        """Returns the config as JSON text; also writes it (atomically) to `path` when given."""
        text = json.dumps(self.to_dict(), indent=indent, sort_keys=False) + "\n"
        if path is not None:
            write_text_atomic(path, text)
        return text

    @classmethod
    def from_json(cls: type[C], source: str | os.PathLike) -> C:
        """Reads a config from a JSON file path, or from JSON text starting with '{'."""
        return cls.from_dict(read_json_source(source))

    # Overrides ----------------------------------------------------------------------------------
    def replace(self: C, **changes: Any) -> C:
        """Returns a copy with `changes` applied (validated). Unknown names raise `ConfigError`."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                raise ConfigError(
                    f"{type(self).__name__} has no field {key!r}.{close_matches(key, names)} "
                    f"Valid fields: {', '.join(names)}."
                )
        return dataclasses.replace(self, **changes)

    def override(self: C, assignments: Iterable[str]) -> C:
        """Applies `key=value` strings (values parsed as JSON, else as plain text).

        Example:
        ```python
        cfg = ModelConfig().override(["depth=3", "filters_per_level=[8,16,32,64]"])
        ```
        """
        changes: dict[str, Any] = {}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"Override {item!r} is not of the form key=value (e.g. depth=3).")
            key, _, value = item.partition("=")
            key, parsed = key.strip(), parse_value(value)
            if parsed is None and value.strip().lower() == "none" and isinstance(defaults.get(key), str):
                parsed = "none"  # a word of the field's own vocabulary (norm=none, encoder_weights=none)
            changes[key] = parsed
        return self.replace(**changes)


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseConfig):  # a part's options inside the model section
        return value.to_dict()
    if isinstance(value, tuple):
        return [jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# Model
