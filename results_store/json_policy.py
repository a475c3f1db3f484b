"""The one JSON policy: what can be encoded losslessly is encoded; anything else is refused, named.

Every JSON the store writes (raw payloads, the WAL, quarantine rows, event details, snapshot
files) goes through :func:`dumps`. orjson encodes the JSON types, numpy scalars and arrays, and
``datetime``/``date``; :func:`default` adds the few types with one exact JSON form. Anything else
raises :class:`UnencodableValue` (a ``TypeError``) naming the key path and the type, so the caller
can quarantine that one snapshot instead of writing a lossy ``str()`` of it.

Records *about* bad data (quarantine rows, event details) must never fail because of the value
they describe: :func:`tagged_default` writes such a value as ``{"__unencodable__": type, "repr":
...}``, visibly not data, instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from pathlib import PurePath
from typing import Any

import numpy as np
import orjson
import pandas as pd

__all__ = ["JSON_OPTIONS", "UnencodableValue", "default", "dumps", "find_unencodable", "tagged_default"]

# Numpy scalars and arrays natively.
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class UnencodableValue(TypeError):
    """A value with no lossless JSON form; ``path`` is its key path in the encoded object."""

    def __init__(self, path: str, type_name: str) -> None:
        super().__init__(f"{path or '(top level)'}: a {type_name} has no lossless JSON form")
        self.path = path
        self.type_name = type_name


def _decimal(value: Decimal) -> float:
    as_float = float(value)
    # Only a Decimal that a float holds exactly (0.5, 12.25) is encoded; 0.1 as a float is not 0.1.
    if math.isfinite(as_float) and Decimal(as_float) == value:
        return as_float
    raise TypeError


def default(value: Any) -> Any:
    """orjson's ``default`` hook: the types with one exact JSON form; TypeError for the rest."""
    if value is pd.NaT:  # a datetime subclass whose isoformat() is "NaT": not a time
        raise TypeError("NaT")
    if isinstance(value, datetime | date):  # pd.Timestamp included; its isoformat keeps nanoseconds
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(type(value).__name__)


def tagged_default(value: Any) -> Any:
    """Like :func:`default`, but a value with no exact form becomes a tagged description, never an error."""
    try:
        return default(value)
    except TypeError:
        return {"__unencodable__": type(value).__name__, "repr": repr(value)[:200]}


def find_unencodable(value: Any, path: str = "") -> tuple[str, str] | None:
    """The key path and type name of the first value :func:`dumps` refuses, or None."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return (f"{path}.{key!r}" if path else repr(key)), f"{type(key).__name__} key"
            found = find_unencodable(item, f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_unencodable(item, f"{path}[{index}]")
            if found:
                return found
        return None
    try:
        orjson.dumps(value, default=default, option=JSON_OPTIONS)
    except TypeError:
        return path, type(value).__name__
    return None


def dumps(value: Any, option: int = 0) -> bytes:
    """``value`` as JSON bytes; :class:`UnencodableValue` names the first value with no exact form."""
    try:
        return orjson.dumps(value, default=default, option=JSON_OPTIONS | option)
    except TypeError as exc:
        found = find_unencodable(value)
        if found is None:  # e.g. a nesting deeper than orjson's limit
            raise UnencodableValue("", str(exc)) from exc
        raise UnencodableValue(*found) from exc
