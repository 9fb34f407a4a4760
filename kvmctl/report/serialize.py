"""The report tree to JSON and back, generic over the dataclasses of the schema.

``dump`` turns dataclasses, enums and numpy scalars into plain JSON values;
``load`` rebuilds a typed tree and names the first field that does not fit
(``report field aging.calls should be an integer, got "many"``). Field
metadata ``{"key": ...}`` gives a JSON key that differs from the Python
name.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from typing import Any

import numpy as np

from kvmctl.errors import UsageError


def _json_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def dump(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_json_key(f): dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {str(k): dump(v) for k, v in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _bad(where: str, expected: str, value: Any) -> UsageError:
    shown = json.dumps(value)[:40] if not isinstance(value, str) else repr(value[:40])
    return UsageError(
        f"report field {where or '<top>'} should be {expected}, got {shown}",
        "the file is not a valid kvmctl report; re-run the experiment or restore the file",
    )


def load(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise _bad(where, "a value", value)
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return load(option, value, where)
            except UsageError as err:
                errors.append(err)
        raise errors[0]
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        (item,) = typing.get_args(tp)
        return [load(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        _, item = typing.get_args(tp)
        return {str(k): load(item, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _bad(where, "one of " + ", ".join(repr(m.value) for m in tp), value) from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            key = _json_key(f)
            sub = f"{where}.{key}" if where else key
            if key in value:
                kwargs[f.name] = load(hints[f.name], value[key], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UsageError(
                    f"report field {sub} is missing",
                    "the file is not a valid kvmctl report; re-run the experiment or restore the file",
                )
        return tp(**kwargs)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(where, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(where, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(where, "a string", value)
        return value
    raise TypeError(f"report model has an unsupported field type {tp!r} at {where}")
