"""Dataclasses read from TOML and written back: the strict typed loading behind trainer.config.

`build(cls, data)` checks a dict read from TOML against a dataclass schema: an unknown key,
a missing required key, a value of the wrong type or outside the set or range its field's
metadata allows (`choices`, `in_range`, `at_least`, `items_in`) is a `ConfigError` naming
the key. `apply_override` applies one `a.b=value` assignment to such a dict; `to_toml`
writes a dataclass back as TOML that reads back equal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any

import tomllib


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


def choices(*values: object) -> dict:
    return {"choices": values}


def in_range(low: float | None = None, high: float | None = None, above: bool = False) -> dict:
    """The value (every item of a list value) must be at least `low` (above it with
    `above`) and at most `high`."""
    return {"range": (low, high, above)}


def at_least(minimum: float) -> dict:
    return in_range(minimum)


def items_in(*values: object) -> dict:
    """Every item of a list value must be one of `values`."""
    return {"item_choices": values}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against the annotation `tp` (bool is never an int; an int is a float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_type_name(item)}, got {value!r}")
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and type(value) is float and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    if tp in (bool, int, float, str) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from `data`, every value checked (`prefix` names the table)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise ConfigError(f"unknown key {prefix}{'.' if prefix else ''}{name}; valid in "
                              f"[{prefix or 'top level'}]: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required key {key}")
            continue
        value = _convert(data[name], hints[name], key)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        items = f.metadata.get("item_choices")
        bad = [v for v in value if v not in items] if items is not None else []
        if bad:
            raise ConfigError(f"{key}: {bad[0]!r} is not one of {', '.join(map(str, items))}")
        _check_range(key, value, f.metadata.get("range"))
        values[name] = value
    return cls(**values)


def _check_range(key: str, value: Any, bounds: tuple | None) -> None:
    if bounds is None:
        return
    low, high, above = bounds
    for i, v in enumerate(value if isinstance(value, list) else [value]):
        where = f"{key}[{i}]" if isinstance(value, list) else key
        if low is not None and (v < low or (above and v == low)):
            raise ConfigError(f"{where}: {v!r} must be {'above' if above else 'at least'} {low}")
        if high is not None and v > high:
            raise ConfigError(f"{where}: {v!r} must be at most {high}")


def _field_type(root: type, path: list[str]) -> Any:
    """The annotation at a dotted path of the dataclass `root`, or None where the path is not in the schema."""
    tp: Any = root
    for name in path:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if name not in hints:
            return None
        tp = hints[name]
    return tp


def apply_override(root: type, data: dict, assignment: str) -> None:
    """Applies one `a.b.c=value` to the raw TOML dict `data` of the dataclass `root`; the value
    is read as TOML unless the field is a string (text that is not TOML is a string too)."""
    key, sep, text = assignment.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE with a dotted KEY such as optim.lr=0.01")
    if _field_type(root, path) is str:
        value: Any = text
    else:
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
    table = data
    for name in path[:-1]:
        table = table.setdefault(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"override {assignment!r}: {name} is not a table")
    table[path[-1]] = value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(data: dict, name: str, lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if name and scalars:
        lines.append(f"[{name}]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    if scalars:
        lines.append("")
    for key, table in data.items():
        if isinstance(table, dict):
            _toml_table(table, f"{name}.{key}" if name else key, lines)



def to_toml(config: Any) -> str:
    """The dataclass instance `config` as TOML."""
    lines: list[str] = []
    _toml_table(dataclasses.asdict(config), "", lines)
    return "\n".join(lines)
