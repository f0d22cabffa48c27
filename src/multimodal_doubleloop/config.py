"""Strict dataclass construction from parameter dicts.

Unknown keys and wrong types fail with the key's full path, before any work starts;
ranges are each dataclass's own `__post_init__` business.
"""

from __future__ import annotations

import dataclasses
import types
import typing


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def build(cls, values: dict, path: str, nested: dict | None = None):
    """`cls(**values)` with unknown keys and wrong types reported as `path.key`.

    `nested` maps field names to already-built values (sub-dataclasses)."""
    if not isinstance(values, dict):
        raise ValueError(f"{path} must be a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {path}; allowed: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    nested = dict(nested or {})
    for key, value in values.items():
        if key in nested:
            continue
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            nested[key] = build(hints[key], value, f"{path}.{key}")
            continue
        if not _matches(value, hints[key]):
            raise ValueError(
                f"{path}.{key}={value!r} has type {type(value).__name__}; expected {hints[key]}"
            )
    try:
        return cls(**{**values, **nested})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
