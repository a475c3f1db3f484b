"""Flatten a batch of timestep snapshots into one Arrow table per enabled result type.

This is the store's largest CPU cost, so it is written for speed. There are two readers:

- the *bulk* reader (a batch of ``_BULK_MIN`` snapshots or more, e.g. the backtest's chunks of
  5,000) reads a batch that is clean throughout a column at a time across all its snapshots,
  in C (map/chain/itemgetter, numpy, Arrow); it judges nothing, and hands any batch holding
  anything but plain, storable values (see its section below) to the exact reader;
- the *exact* reader decides what is stored and what is rejected, snapshot by snapshot, as
  follows. Both give the same tables to the bit (tests/test_flatten_equivalence.py).

The exact reader:

- one pass over the batch; each enabled table has a builder, a closure over the bound
  ``list.append`` of its columns, so a row costs a handful of C-level appends and no per-row
  dict, attribute lookup or pandas;
- the per-row constants (run_id, timestamp, timestep) are not appended per row: each table
  records its length after every accepted snapshot and those counts expand the constants with
  numpy / Arrow at the end;
- nothing is validated with pydantic on the way. A snapshot is read inside ``try``: a missing key
  or a wrong shape raises, its partial rows are truncated away and only then is
  :func:`schemas.snapshot.explain_snapshot` asked to name the timestep and key path (RST-101).
  A value of the wrong type (a string where a number belongs) surfaces later, when Arrow
  converts a column; the batch is then bisected to find the snapshots that carry one;
- what places a snapshot in the tables (its timestep and timestamp, and its events' times) is
  appended as it comes and range-checked per batch with numpy (the contract's bounds in
  ``schemas.snapshot``); the few snapshots out of range are then taken out, rows and all.

A rejected snapshot contributes no row to any table; the rest of the batch is unaffected.

Whether a whole snapshot has a lossless JSON form (the raw payload, the live WAL) is checked by
:func:`encode_snapshots`, which the batch writer runs before flattening, and
:func:`json_safe_snapshot`, which the live store runs before the WAL append.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import numbers
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from results_store.json_policy import JSON_OPTIONS, find_unencodable, tagged_default
from results_store.json_policy import default as json_default
from schemas.errors import ComponentError
from schemas.modes import ModeConfig
from schemas.result_types import ResultType
from schemas.snapshot import (
    COMPONENT_KEYS,
    TIMESTAMP_MAX_US,
    TIMESTAMP_MIN_US,
    explain_placement,
    explain_snapshot,
    printable,
    timestep_problem,
    to_micros,
)
from schemas.tables import arrow_schema

__all__ = [
    "UNENCODABLE_KEY",
    "FlattenResult",
    "Rejected",
    "SnapshotItem",
    "encode_snapshots",
    "flatten_batch",
    "json_safe_snapshot",
    "perp_base_asset",
    "record_json",
    "to_micros",
]

# The top-level key by which a snapshot with no lossless JSON form, stored as a tagged copy
# (json_safe_snapshot), stays marked for quarantine: the same name tagged_default gives such values.
UNENCODABLE_KEY = "__unencodable__"
_QUOTES = ("USDT", "USDC", "BUSD", "USD")
_PERP_SUFFIXES = ("-PERP", "_PERP", "-SWAP", "PERP")
# What reading a malformed snapshot can raise (OverflowError: arithmetic on an integer beyond a
# float, e.g. an LTV of 10**400); anything else is a bug and propagates.
_READ_ERRORS = (KeyError, TypeError, AttributeError, ValueError, OverflowError)
# What Arrow raises when a column holds a value of the wrong type.
_CONVERT_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)

_COMPONENTS = frozenset(COMPONENT_KEYS)
_POSITION_KEYS = frozenset(("wallet", "cex_accounts", "perp_positions", "tracked_assets"))
_RISK_MONITOR_KEYS = frozenset(("risk_metrics", "risk_alerts"))
# The required figures of each risk group (schemas.snapshot), in the order rows are written.
_RISK_REQUIRED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ltv_risk", ("current_ltv", "target_ltv", "max_ltv", "liquidation_threshold")),
    ("liquidation_risk", ("at_risk", "health_factor")),
    ("cex_margin_ratio", ("current_ratio", "min_ratio")),
    ("delta_risk", ("delta_risk", "threshold")),
)
_BALANCE_REQUIRED = ("pnl_cumulative", "total_value")
_EVENT_KEYS = frozenset(("order", "event_type", "timestamp", "details"))
_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
# Records about bad data: every key kind orjson can write, sorted, never refused (record_json).
_RECORD_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
# Deeper than orjson encodes (254): record_json writes what is below this depth as a tag.
_RECORD_DEPTH = 200


@dataclass(frozen=True, slots=True)
class SnapshotItem:
    """One timestep as the store hands it to the flattener."""

    timestep: int
    timestamp: datetime  # tz-aware (naive means UTC); pd.Timestamp is a datetime
    results: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A snapshot that broke the contract (RST-101): no row of it is in any table."""

    timestep: int
    timestamp: datetime
    error: ComponentError
    payload: dict[str, Any]


@dataclass(slots=True)
class FlattenResult:
    """One table per enabled result type (exactly ``arrow_schema(rt)``) and the rejected snapshots."""

    tables: dict[ResultType, pa.Table]
    rejected: list[Rejected] = field(default_factory=list)


class _MissingPart(KeyError):
    """A part the mode needs is absent although the snapshot model allows it to be (e.g. funding)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path)
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # ComponentError carries this as original_exception and must survive pickling (Prefect).
        return (self.__class__, (self.path, self.reason))


class _OutOfRange(ValueError):
    """A snapshot's timestep or timestamp, or an event's time, that no table can hold."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.path, self.reason))


class _Unconvertible(Exception):
    """A column of a batch holds a value Arrow cannot store as the column's type."""

    def __init__(self, where: str, cause: BaseException) -> None:
        super().__init__(f"{where}: {cause}")
        self.where = where
        self.cause = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.where, self.cause))


def perp_base_asset(instrument: str) -> str:
    """The base asset of a perpetual's name: 'ETHUSDT-PERP' -> 'ETH', 'BTC-USD-SWAP' -> 'BTC'."""
    name = instrument.upper()
    for suffix in _PERP_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = name.rstrip("-_")
    for quote in _QUOTES:
        if name.endswith(quote) and len(name) > len(quote):
            return name[: -len(quote)].rstrip("-_")
    return name


class _BaseAssets(dict[str, str]):
    """perp_base_asset memoised: a batch names a few instruments thousands of times."""

    def __missing__(self, instrument: str) -> str:
        if not isinstance(instrument, str):
            raise TypeError(f"perp instrument name {instrument!r} is not a string")
        base = self[instrument] = perp_base_asset(instrument)
        return base




def _integer(value: Any, path: str) -> int:
    """An integral value; Arrow would silently truncate 1.5 to 1, the contract does not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"{path} is {value!r}, not an integer")
    return int(value)


def _flag(value: Any, path: str) -> bool:
    """A flag given as 0/1 is still a flag (the contract model reads it so); anything else is not."""
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{path} is {value!r}, not a bool")


class _Columns:
    """One table's column lists (after run_id/timestamp/timestep) and its length after each snapshot."""

    __slots__ = ("ends", "lists", "names", "result_type")

    def __init__(self, result_type: ResultType, names: Sequence[str]) -> None:
        self.result_type = result_type
        self.names = list(names)
        self.lists: list[list[Any]] = [[] for _ in names]
        self.ends: list[int] = []

    def appenders(self) -> list[Callable[[Any], None]]:
        return [column.append for column in self.lists]

    def truncate(self) -> None:
        keep = self.ends[-1] if self.ends else 0
        for column in self.lists:
            del column[keep:]

    def snapshots_of(self, rows: np.ndarray) -> np.ndarray:
        """The positions (among accepted snapshots) of the snapshots that wrote ``rows``."""
        return np.searchsorted(np.asarray(self.ends, dtype=np.int64), rows, side="right")

    def keep(self, kept: np.ndarray) -> None:
        """Keep only the rows of the accepted snapshots where ``kept`` (one bool per snapshot) is True."""
        counts = np.diff(np.asarray(self.ends, dtype=np.int64), prepend=0).astype(np.int64, copy=False)
        rows = np.repeat(kept, counts).tolist()
        self.lists = [list(itertools.compress(column, rows)) for column in self.lists]
        self.ends = np.cumsum(counts[kept]).tolist()


Builder = Callable[[dict[str, Any]], None]


def flatten_batch(items: Sequence[SnapshotItem], mode: ModeConfig, run_id: str) -> FlattenResult:
    """Turn ``items`` into one Arrow table per result type enabled in ``mode``.

    Tables hold the accepted snapshots' rows in the order of ``items``; every enabled type has a
    table, empty if need be, with exactly ``arrow_schema(rt)``. Snapshots that break the contract
    are returned in ``rejected`` (RST-101 naming timestep and key path) and add no rows.
    """
    if len(items) >= _BULK_MIN:
        # Whatever the bulk reader stops at (it raises), the exact reader decides and names.
        with contextlib.suppress(Exception):
            return _bulk(items, mode, run_id)
    return _exact(items, mode, run_id)


def _exact(items: Sequence[SnapshotItem], mode: ModeConfig, run_id: str) -> FlattenResult:
    """The exact reader's tables and rejections."""
    try:
        return _flatten(items, mode, run_id)
    except _Unconvertible as exc:
        if len(items) == 1:
            item = items[0]
            error = _contract_error(item, exc, default_path=exc.where)
            return FlattenResult(_empty_tables(mode), [Rejected(item.timestep, item.timestamp, error, item.results)])
    # Error path only: some snapshot carries a value of the wrong type. Halve until each bad one is alone
    # (with the exact reader: the bulk one would stop again at every half that holds it).
    middle = len(items) // 2
    first = _exact(items[:middle], mode, run_id)
    second = _exact(items[middle:], mode, run_id)
    tables = {t: pa.concat_tables([first.tables[t], second.tables[t]]).combine_chunks() for t in first.tables}
    return FlattenResult(tables, [*first.rejected, *second.rejected])


@functools.cache
def _schema(rtype: ResultType) -> pa.Schema:
    """``arrow_schema``, built once (from the pandera model) rather than per batch and table."""
    return arrow_schema(rtype)


def _enabled(mode: ModeConfig) -> list[ResultType]:
    return [ResultType(t) for t in mode.results_store.result_types]


def _empty_tables(mode: ModeConfig) -> dict[ResultType, pa.Table]:
    return {t: _schema(t).empty_table() for t in _enabled(mode)}


def _flatten(items: Sequence[SnapshotItem], mode: ModeConfig, run_id: str) -> FlattenResult:
    rs = mode.results_store
    enabled = _enabled(mode)
    schemas = {t: _schema(t) for t in enabled}
    columns = {t: _Columns(t, schemas[t].names[3:]) for t in enabled}
    dust = list(rs.dust_tracking_tokens)
    factories: dict[ResultType, Callable[[_Columns], Builder]] = {
        ResultType.BALANCE_SHEET: lambda c: _balance_sheet(c, frozenset(dust)),
        ResultType.PNL_ATTRIBUTION: _pnl_attribution,
        ResultType.RISK_METRICS: _risk_metrics,
        ResultType.EXECUTION_LOG: _execution_log,
        ResultType.DELTA_TRACKING: _delta_tracking,
        ResultType.LEVERAGE_TRACKING: _leverage_tracking,
        ResultType.FUNDING_TRACKING: _funding_tracking,
        ResultType.DUST_TRACKING: lambda c: _dust_tracking(c, dust),
    }
    builders = [factories[t](columns[t]) for t in enabled]
    every = list(columns.values())
    # A table's length is its first column's length; (first column, ends) pairs avoid a method call each.
    marks = [(c.lists[0], c.ends.append) for c in every]
    steps: list[Any] = []
    stamps: list[int] = []
    step_append, stamp_append = steps.append, stamps.append
    rejected: list[Rejected] = []
    rejected_at: list[int] = []  # the position in ``items`` of each rejected snapshot
    components = _COMPONENTS

    for item in items:
        results = item.results
        try:
            if not results.keys() >= components:
                raise KeyError(sorted(components - results.keys()))
            ts_us = to_micros(item.timestamp)
            for build in builders:
                build(results)
        except _READ_ERRORS as exc:
            for c in every:
                c.truncate()
            rejected_at.append(len(steps) + len(rejected))  # every earlier item was accepted or rejected
            rejected.append(Rejected(item.timestep, item.timestamp, _contract_error(item, exc), results))
            continue
        for first, end in marks:
            end(len(first))
        step_append(item.timestep)
        stamp_append(ts_us)

    step_arr, stamp_arr, out_of_range = _placement(steps, stamps, every, schemas)
    if out_of_range:
        # Error path: take the snapshots no table can hold out again, rows and all.
        skipped = set(rejected_at)
        accepted = [i for i in range(len(items)) if i not in skipped]
        kept = np.ones(len(steps), dtype=bool)
        kept[list(out_of_range)] = False
        for c in every:
            c.keep(kept)
        for position, problem in out_of_range.items():
            item = items[accepted[position]]
            rejected_at.append(accepted[position])
            rejected.append(Rejected(item.timestep, item.timestamp, _contract_error(item, problem), item.results))
        rejected = [r for _, r in sorted(zip(rejected_at, rejected, strict=True), key=lambda pair: pair[0])]
        step_arr, stamp_arr = step_arr[kept], stamp_arr[kept]
    tables = {t: _to_table(schemas[t], columns[t], run_id, step_arr, stamp_arr) for t in enabled}
    return FlattenResult(tables, rejected)


def _placement(steps: list[Any], stamps: list[int], every: list[_Columns], schemas: dict[ResultType, pa.Schema]
               ) -> tuple[np.ndarray, np.ndarray, dict[int, _OutOfRange]]:
    """The accepted snapshots' timesteps and timestamps as int64 arrays, and (by position) those
    whose timestep, timestamp or event time no table holds; vectorised, per batch."""
    out: dict[int, _OutOfRange] = {}
    step_arr = None
    # Exactly ints (a bool or a float would pass through numpy as an integer), all within int64 from 0.
    if set(map(type, steps)) <= {int}:
        try:
            step_arr = np.array(steps, dtype=np.int64)
        except OverflowError:
            step_arr = None
    if step_arr is None or (step_arr.size and step_arr.min() < 0):
        for position, step in enumerate(steps):
            if (problem := timestep_problem(step)) is not None:
                out[position] = _OutOfRange("timestep", problem)
        # Other integer types (numpy's) are fine; a 0 stands in for the steps that are taken out.
        step_arr = np.array([0 if p in out else int(s) for p, s in enumerate(steps)], dtype=np.int64)
    # to_micros returns int64s; whether pandas can read them back is the contract's range.
    stamp_arr = np.array(stamps, dtype=np.int64)
    for position in _beyond(stamp_arr):
        out.setdefault(int(position), _OutOfRange("timestamp", "outside the range the tables hold"))
    for c in every:
        schema = schemas[c.result_type]
        for name, values in zip(c.names, c.lists, strict=True):
            if pa.types.is_timestamp(schema.field(name).type):
                for position in c.snapshots_of(_beyond(np.array(values, dtype=np.int64))):
                    out.setdefault(int(position), _OutOfRange(
                        f"{c.result_type.value}.{name}", "outside the range the tables hold"))
    return step_arr, stamp_arr, out


def _beyond(micros: np.ndarray) -> np.ndarray:
    """Indices of the µs values outside the contract's timestamp range (two reductions when none is)."""
    if not micros.size or (micros.min() >= TIMESTAMP_MIN_US and micros.max() <= TIMESTAMP_MAX_US):
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero((micros < TIMESTAMP_MIN_US) | (micros > TIMESTAMP_MAX_US))


def _contract_error(item: SnapshotItem, exc: BaseException, default_path: str = "") -> ComponentError:
    """RST-101 for a snapshot: the contract's explanation, else one built from ``exc``."""
    explained = (explain_placement(item.timestep, item.timestamp)
                 or explain_snapshot(item.results, timestep=item.timestep, timestamp=item.timestamp))
    if explained is not None:
        return explained
    if isinstance(exc, TypeError) and (found := _first_unencodable(item.results)) is not None:
        # Event details are encoded while flattening: name the value as the JSON policy does.
        return _unencodable_error(item, *found)
    head = f"timestep {printable(item.timestep)} ({printable(item.timestamp)})"
    if isinstance(exc, _MissingPart | _OutOfRange):
        path, text = exc.path, f"{exc.path}: {exc.reason}"
    elif isinstance(exc, _Unconvertible):
        path, text = default_path, f"{exc.where}: value cannot be stored: {exc.cause}"
    elif isinstance(exc, KeyError):
        path = str(exc.args[0]) if exc.args else default_path
        text = f"{path}: missing"
    else:
        path, text = default_path, f"{type(exc).__name__}: {exc}"
    return ComponentError("RST-101", f"{head}: {text}", original_exception=exc,
                          details={"timestep": item.timestep, "timestamp": printable(item.timestamp), "paths": [path]})


def _leading(schema: pa.Schema, run_id: str, counts: np.ndarray, steps: np.ndarray, stamps: np.ndarray
             ) -> list[pa.Array]:
    """The run_id, timestamp and timestep columns: each snapshot's over its ``counts`` rows."""
    return [
        pa.repeat(pa.scalar(run_id, pa.string()), int(counts.sum())),
        # µs as int64 viewed as the timestamp type: the same array as converting them to it, at a
        # third of the cost (no pandas-compatible timezone lookup), which counts for small batches.
        pa.array(np.repeat(stamps, counts), pa.int64()).view(schema.field("timestamp").type),
        pa.array(np.repeat(steps, counts), pa.int64()),
    ]


def _to_table(schema: pa.Schema, cols: _Columns, run_id: str, steps: np.ndarray, stamps: np.ndarray) -> pa.Table:
    counts = np.diff(np.asarray(cols.ends, dtype=np.int64), prepend=0).astype(np.int64, copy=False)
    arrays = _leading(schema, run_id, counts, steps, stamps)
    for name, values in zip(cols.names, cols.lists, strict=True):
        ftype = schema.field(name).type
        try:
            if pa.types.is_timestamp(ftype):
                array = pa.array(np.asarray(values, dtype=np.int64), ftype)
            else:
                array = pa.array(values, ftype)
        except _CONVERT_ERRORS as exc:
            raise _Unconvertible(f"{cols.result_type.value}.{name}", exc) from exc
        if array.null_count:
            # A None in the snapshot: the tables' columns are all non-nullable.
            raise _Unconvertible(f"{cols.result_type.value}.{name}", ValueError("null (None) value"))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


# -- the JSON policy applied to whole snapshots ------------------------------------------------

def encode_snapshots(items: Sequence[SnapshotItem]) -> tuple[list[bytes | None], list[Rejected]]:
    """Each snapshot's results as the JSON the raw payload stores, or None and an RST-101 rejection.

    The bytes are ``json_policy.dumps``'s (so each payload's sha256 is the same whoever encodes
    it). A snapshot with a value that has no lossless JSON form anywhere (component data, extra
    keys, event details), or marked as such by :func:`json_safe_snapshot`, is rejected whole,
    naming the key path and the value's type.
    """
    payloads: list[bytes | None] = []
    rejected: list[Rejected] = []
    dumps, append = orjson.dumps, payloads.append
    for item in items:
        results = item.results
        try:
            if UNENCODABLE_KEY in results:  # a tagged copy encodes, but is no data: reject it the same way
                raise TypeError(UNENCODABLE_KEY)
            append(dumps(results, default=json_default, option=JSON_OPTIONS))
        except TypeError:
            append(None)
            rejected.append(Rejected(item.timestep, item.timestamp,
                                     _unencodable_error(item, *_why_unencodable(results)), results))
    return payloads, rejected


def json_safe_snapshot(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` itself if the JSON policy encodes it; else a copy that encodes, marked for quarantine.

    For the live WAL, which must take every acknowledged snapshot: the copy has each value with
    no lossless form tagged as in any record about bad data, and ``UNENCODABLE_KEY`` naming the
    first one's key path and type, so :func:`encode_snapshots` rejects it (RST-101) with the same
    path whether it comes from the queue or back from the WAL after a restart.
    """
    try:
        orjson.dumps(results, default=json_default, option=JSON_OPTIONS)
    except TypeError:
        path, type_name = _why_unencodable(results)
        decoded = orjson.loads(record_json(results))
        tagged: dict[str, Any] = decoded if isinstance(decoded, dict) else {"results": decoded}
        tagged[UNENCODABLE_KEY] = {"path": path, "type": type_name}
        return tagged
    return results


def record_json(value: Any) -> bytes:
    """JSON for a record *about* bad data (a quarantine row): never fails because of what it describes.

    Values with no exact form are tagged by ``json_policy.tagged_default``; those orjson refuses
    without asking it (an integer beyond 64 bits, nesting deeper than it goes) are tagged first.
    """
    try:
        return orjson.dumps(value, default=tagged_default, option=_RECORD_OPTIONS)
    except TypeError:
        return orjson.dumps(_tag_deep(value, 0), default=tagged_default, option=_RECORD_OPTIONS)


def _tag_deep(value: Any, depth: int) -> Any:
    if depth >= _RECORD_DEPTH:
        return tagged_default(value) if isinstance(value, Mapping | list | tuple) else value
    if isinstance(value, Mapping):
        return {k if isinstance(k, str | int | float | bool) or k is None else repr(k): _tag_deep(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tag_deep(v, depth + 1) for v in value]
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return tagged_default(value)
    return value


def _first_unencodable(results: Any) -> tuple[str, str] | None:
    """(key path, type name) of the first value with no lossless JSON form, in the contract's
    dotted form (``event_logger.0.details.x``), or None if every value has one."""
    marker = results.get(UNENCODABLE_KEY) if isinstance(results, Mapping) else None
    if isinstance(marker, Mapping) and isinstance(marker.get("path"), str) and isinstance(marker.get("type"), str):
        return marker["path"], marker["type"]
    if isinstance(results, Mapping) and UNENCODABLE_KEY in results:
        return UNENCODABLE_KEY, "key reserved for the store's mark"
    try:
        found = find_unencodable(results)
    except RecursionError:
        return "", "structure that contains itself"
    if found is None:
        return None
    path, type_name = found
    return re.sub(r"\[(\d+)\]", r".\1", path), type_name


def _why_unencodable(results: Any) -> tuple[str, str]:
    """:func:`_first_unencodable` for a snapshot known not to encode: when no one value is to
    blame, the nesting is (each value encodes; the whole is deeper than orjson goes)."""
    return _first_unencodable(results) or ("", "structure nested deeper than JSON encoders go")


def _unencodable_error(item: SnapshotItem, path: str, type_name: str) -> ComponentError:
    where = path or "(snapshot)"
    return ComponentError(
        "RST-101", f"timestep {item.timestep} ({printable(item.timestamp)}): {where}: a {type_name} has no "
        "lossless JSON form",
        details={"timestep": item.timestep, "timestamp": printable(item.timestamp), "paths": [where], "type": type_name},
    )


# -- one builder per result type: a closure appending one snapshot's rows to its table's columns --
# Builders read raw dicts; a missing key raises KeyError, a wrong shape TypeError/AttributeError,
# and the caller rolls the snapshot back. Numbers are appended as they come (Arrow checks their
# type per column); only where a value is filtered or reinterpreted is its type checked here.

def _balance_sheet(c: _Columns, dust: frozenset[str]) -> Builder:
    venue, acct, asset, instr, amount = c.appenders()
    base_of = _BaseAssets()

    def build(r: dict[str, Any]) -> None:
        pm = r["position_monitor"]
        if not pm.keys() >= _POSITION_KEYS:
            raise KeyError("position_monitor." + min(_POSITION_KEYS - pm.keys()))
        for token, value in pm["wallet"].items():
            if value.__class__ is bool:
                raise _not_a_balance(f"position_monitor.wallet.{token}", value)
            if token in dust:
                continue  # dust tokens are reported in dust_tracking only
            venue("wallet")
            acct("wallet")
            asset(token)
            instr(token)
            amount(value)
        for cex, balances in pm["cex_accounts"].items():
            for token, value in balances.items():
                if value.__class__ is bool:
                    raise _not_a_balance(f"position_monitor.cex_accounts.{cex}.{token}", value)
                venue(cex)
                acct("cex")
                asset(token)
                instr(token)
                amount(value)
        for cex, positions in pm["perp_positions"].items():
            for instrument, position in positions.items():
                venue(cex)
                acct("perp")
                asset(base_of[instrument])
                instr(instrument)
                amount(position["size"])
                if "entry_price" not in position:  # required by the contract though not stored here
                    raise KeyError("entry_price")

    return build


def _not_a_balance(path: str, value: bool) -> TypeError:
    """Rule ``balance_is_a_number``: JSON ``true`` is not a balance of 1.0 (Arrow would store it so)."""
    return TypeError(f"{path} is {orjson.dumps(value).decode()}, a boolean, not a number")


def _pnl_attribution(c: _Columns) -> Builder:
    comp, metric, value = c.appenders()
    required = frozenset(_BALANCE_REQUIRED)

    def build(r: dict[str, Any]) -> None:
        pnl = r["pnl_calculator"]
        for name, v in pnl["attribution"].items():
            comp("attribution")
            metric(name)
            value(v)
        balance = pnl["balance_based"]
        if not balance.keys() >= required:
            raise KeyError("pnl_calculator.balance_based." + min(required - balance.keys()))
        for name, v in balance.items():
            kind = v.__class__
            if kind is float or kind is int:
                pass
            elif kind is bool:
                v = 1.0 if v else 0.0
            elif not isinstance(v, numbers.Real):
                if name in required:
                    raise TypeError(f"pnl_calculator.balance_based.{name} is {v!r}, not a number")
                continue  # descriptive extras stay in raw_snapshots
            comp("balance_based")
            metric(name)
            value(v)
        rec = pnl["reconciliation"]
        difference, tolerance, passed = rec["difference"], rec["tolerance"], rec["passed"]
        comp("reconciliation")
        metric("difference")
        value(difference)
        comp("reconciliation")
        metric("tolerance")
        value(tolerance)
        comp("reconciliation")
        metric("passed")
        value(1.0 if passed is True else 0.0 if passed is False else float(_flag(passed, "reconciliation.passed")))

    return build


def _risk_metrics(c: _Columns) -> Builder:
    group_col, metric_col, value_col = c.appenders()
    groups = [(group, frozenset(required)) for group, required in _RISK_REQUIRED]

    def build(r: dict[str, Any]) -> None:
        monitor = r["risk_monitor"]
        if not monitor.keys() >= _RISK_MONITOR_KEYS:
            raise KeyError("risk_monitor." + min(_RISK_MONITOR_KEYS - monitor.keys()))
        metrics = monitor["risk_metrics"]
        for group, required in groups:
            figures = metrics[group]
            if not figures.keys() >= required:
                raise KeyError(f"risk_monitor.risk_metrics.{group}." + min(required - figures.keys()))
            for name, v in figures.items():
                kind = v.__class__
                if kind is float or kind is int:
                    pass
                elif kind is bool:
                    v = 1.0 if v else 0.0
                elif not isinstance(v, numbers.Real):
                    if name in required:
                        raise TypeError(f"risk_monitor.risk_metrics.{group}.{name} is {v!r}, not a number")
                    continue  # descriptive extras stay in raw_snapshots
                group_col(group)
                metric_col(name)
                value_col(v)

    return build


def _execution_log(c: _Columns) -> Builder:
    order_col, type_col, ts_col, details_col = c.appenders()
    dumps = orjson.dumps

    def build(r: dict[str, Any]) -> None:
        for event in r["event_logger"]:
            order = event["order"]
            order_col(order if order.__class__ is int else _integer(order, "event_logger.order"))
            event_type = event["event_type"]
            if event_type.__class__ is not str:
                raise TypeError(f"event_logger.event_type is {event_type!r}, not a string")
            type_col(event_type)
            ts_col(to_micros(event["timestamp"]))
            body = event.get("details")
            if body is None:
                body = {}
            elif body.__class__ is not dict:
                raise TypeError(f"event_logger.details is {type(body).__name__}, not a mapping")
            if len(event) > 3 and not event.keys() <= _EVENT_KEYS:
                # Keys beyond the contract's are kept with the details, not dropped.
                body = {**body, **{k: v for k, v in event.items() if k not in _EVENT_KEYS}}
            details_col(dumps(body, default=json_default, option=_JSON_OPTIONS).decode())

    return build


def _delta_tracking(c: _Columns) -> Builder:
    asset, delta, exposure, net_col, total_col = c.appenders()

    def build(r: dict[str, Any]) -> None:
        em = r["exposure_monitor"]
        net, total = em["net_delta"], em["total_exposure"]
        for name, e in em["asset_exposures"].items():
            asset(name)
            delta(e["delta"])
            exposure(e["exposure_usd"])
            net_col(net)
            total_col(total)

    return build


def _leverage_tracking(c: _Columns) -> Builder:
    current_c, target_c, max_c, liq_c, health_c, leverage_c, at_risk_c = c.appenders()

    def build(r: dict[str, Any]) -> None:
        metrics = r["risk_monitor"]["risk_metrics"]
        ltv, liq = metrics["ltv_risk"], metrics["liquidation_risk"]
        current = ltv["current_ltv"]
        current_c(current)
        target_c(ltv["target_ltv"])
        max_c(ltv["max_ltv"])
        liq_c(ltv["liquidation_threshold"])
        health_c(liq["health_factor"])
        leverage = ltv.get("leverage")
        if leverage is None:
            # collateral / equity = 1 / (1 - LTV); at LTV >= 1 there is no equity left.
            leverage = 1.0 / (1.0 - current) if current < 1.0 else float("inf")
        leverage_c(leverage)
        at_risk = liq["at_risk"]
        at_risk_c(at_risk if at_risk.__class__ is bool else _flag(at_risk, "liquidation_risk.at_risk"))

    return build


def _funding_tracking(c: _Columns) -> Builder:
    venue, rate, payment, cumulative = c.appenders()

    def build(r: dict[str, Any]) -> None:
        funding = r["pnl_calculator"].get("funding")
        if not funding:
            raise _MissingPart("pnl_calculator.funding", "missing or empty, but funding_tracking is enabled")
        for name, f in funding.items():
            venue(name)
            rate(f["funding_rate"])
            payment(f["payment"])
            cumulative(f["cumulative"])

    return build


def _dust_tracking(c: _Columns, tokens: list[str]) -> Builder:
    token_col, amount_col = c.appenders()

    def build(r: dict[str, Any]) -> None:
        wallet = r["position_monitor"]["wallet"]
        get = wallet.get
        for token in tokens:
            token_col(token)
            amount_col(get(token, 0.0))

    return build


# -- the bulk reader: a clean batch, a column at a time ---------------------------------------------
# Reading snapshot by snapshot costs a Python-level append per row and column (15M appends for
# 100,000 timesteps of usdt_market_neutral). A batch whose snapshots all read cleanly (the usual
# case) is read instead a column at a time across the whole batch: map, chain and itemgetter walk
# the dicts in C and numpy counts each snapshot's rows. Engines write the same keys in the same
# order every time, so a table's rows are then alike in every snapshot: its label columns (venue,
# asset, metric ...) are one snapshot's labels repeated, converted once rather than row by row,
# and its values a grid read row after row. Otherwise one Arrow ``take`` per column puts the rows
# in snapshot order.
#
# The bulk reader decides nothing. On anything the exact reader above would treat other than by
# storing it as it is (a missing key, a JSON true as a balance, a text among figures, a 0/1 flag,
# a value Arrow cannot hold, a time no table holds, a null, a mapping that is not a dict ...) it
# raises, and the exact reader reads the batch again: what is stored and what is rejected, and how
# it is named, is decided in one place. The values it stores are the objects the exact reader
# would store, converted by the same ``pa.array`` calls.

# Below this many snapshots the bulk reader's fixed cost (~1.5 ms of Arrow and numpy calls per
# batch) outweighs what it saves; live batches (100 by default) keep to the exact reader.
_BULK_MIN = 256
_BALANCE_KEYS = frozenset(_BALANCE_REQUIRED)
_RECONCILIATION = ("difference", "tolerance", "passed")
_RECONCILIATION_OF = itemgetter(*_RECONCILIATION)
_STRING, _FLOAT = pa.string(), pa.float64()

Columns = tuple[np.ndarray, list[pa.Array]]  # rows per snapshot, and the columns after run_id/timestamp/timestep


class _NotClean(Exception):
    """The bulk reader met what it leaves to the exact reader."""


def _bulk(items: Sequence[SnapshotItem], mode: ModeConfig, run_id: str) -> FlattenResult:
    """The tables of a batch every snapshot of which reads cleanly (nothing rejected); else raises."""
    results = [item.results for item in items]
    _require(results, _COMPONENTS)  # and each a dict
    steps, stamps = _bulk_placement(items)
    dust = list(mode.results_store.dust_tracking_tokens)
    readers: dict[ResultType, Callable[[list[dict[str, Any]]], Columns]] = {
        ResultType.BALANCE_SHEET: lambda r: _bulk_balance_sheet(_each("position_monitor", r), frozenset(dust)),
        ResultType.PNL_ATTRIBUTION: lambda r: _bulk_pnl_attribution(_each("pnl_calculator", r)),
        ResultType.RISK_METRICS: lambda r: _bulk_risk_metrics(_each("risk_monitor", r)),
        ResultType.EXECUTION_LOG: _bulk_execution_log,
        ResultType.DELTA_TRACKING: lambda r: _bulk_delta_tracking(_each("exposure_monitor", r)),
        ResultType.LEVERAGE_TRACKING: lambda r: _bulk_leverage_tracking(_each("risk_monitor", r)),
        ResultType.FUNDING_TRACKING: lambda r: _bulk_funding_tracking(_each("pnl_calculator", r)),
        ResultType.DUST_TRACKING: lambda r: _bulk_dust_tracking(_each("wallet", _each("position_monitor", r)), dust),
    }
    tables = {}
    for rtype in _enabled(mode):
        counts, columns = readers[rtype](results)
        schema = _schema(rtype)
        tables[rtype] = pa.Table.from_arrays([*_leading(schema, run_id, counts, steps, stamps), *columns],
                                             schema=schema)
    return FlattenResult(tables)


def _bulk_placement(items: Sequence[SnapshotItem]) -> tuple[np.ndarray, np.ndarray]:
    """Timesteps and timestamps (µs) as int64 arrays, when all are plain ints from 0 and times the tables hold."""
    steps = [item.timestep for item in items]
    if not set(map(type, steps)) <= {int}:
        raise _NotClean
    step_arr = np.array(steps, dtype=np.int64)  # OverflowError beyond int64
    stamp_arr = np.fromiter(map(to_micros, [item.timestamp for item in items]), np.int64, len(items))
    if (step_arr.size and step_arr.min() < 0) or _beyond(stamp_arr).size:
        raise _NotClean
    return step_arr, stamp_arr


# Walking the dicts of a batch, in C.

def _each(key: str, dicts: list[Any]) -> list[Any]:
    """``d[key]`` of each ``d``."""
    return list(map(itemgetter(key), dicts))


def _require(dicts: list[Any], keys: frozenset[str]) -> None:
    """Every dict has every one of ``keys`` (else the exact reader names the missing one)."""
    if not all(map(operator.ge, map(dict.keys, dicts), repeat(keys))):
        raise _NotClean


def _no_bools(values: list[Any]) -> None:
    """A JSON true is no balance (rule ``balance_is_a_number``): the exact reader rejects its snapshot."""
    if bool in set(map(type, values)):
        raise _NotClean


def _flags(values: list[Any]) -> list[Any]:
    """Flags as the exact reader reads them: a bool, or a real 0 or 1 as that bool (anything else: not clean)."""
    if set(map(type, values)) <= {bool}:
        return values
    if not all(isinstance(v, numbers.Real) and v in (0, 1) for v in values):
        raise _NotClean
    return [bool(v) for v in values]


def _sums(counts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per snapshot, the sum of ``counts`` over its next ``groups[i]`` entries (rows per CEX account ->
    rows per snapshot)."""
    ends = np.concatenate(([0], np.cumsum(counts)))
    bounds = np.concatenate(([0], np.cumsum(groups)))
    return ends[bounds[1:]] - ends[bounds[:-1]]


# Arrow columns.

def _array(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    """``values`` converted as the exact reader converts a column; a null is not clean."""
    array = pa.array(values, kind)
    if array.null_count:
        raise _NotClean
    return array


def _plain(array: pa.Array) -> pa.Array:
    """``array`` without a validity bitmap (nothing in it is null), as ``pa.array`` makes it."""
    buffers = array.buffers()
    if buffers[0] is None:
        return array
    return pa.Array.from_buffers(array.type, len(array), [None, *buffers[1:]], null_count=0, offset=array.offset)


def _constant(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, _STRING), n)


def _repeated(array: pa.Array, counts: np.ndarray) -> pa.Array:
    """Each value of ``array``, ``counts`` times."""
    return _plain(array.take(np.repeat(np.arange(len(array)), counts)))


def _tiled(array: pa.Array, n: int) -> pa.Array:
    """``array``'s values one after the other, ``n`` times."""
    return _plain(array.take(np.tile(np.arange(len(array)), n)))


class _Dicts:
    """A list of plain dicts (one per snapshot, or per venue) read as rows, one per key.

    Engines write the same keys in the same order every time. Then ``same`` holds those keys (the
    rows are alike in every snapshot, see ``_Part``), and the values are picked by one itemgetter
    call per dict (walking a dict's values costs a view and an iterator)."""

    __slots__ = ("dicts", "keys", "same")

    def __init__(self, dicts: list[Any]) -> None:
        if dicts and set(map(type, dicts)) != {dict}:
            raise _NotClean  # another mapping (or none): the exact reader reads it
        self.dicts = dicts
        self.keys = list(chain.from_iterable(dicts))  # laid end to end
        first = list(dicts[0]) if dicts else []
        # The keys laid end to end are the first dict's over and over only if every dict has those
        # keys in that order: a dict's keys are distinct, so no other split of them fits.
        self.same: list[Any] | None = first if self.keys == first * len(dicts) else None

    def counts(self) -> np.ndarray:
        """Keys (rows) per dict."""
        if self.same is not None:
            return np.full(len(self.dicts), len(self.same), dtype=np.int64)
        return np.fromiter(map(len, self.dicts), np.int64, len(self.dicts))

    def values(self) -> list[Any]:
        """The values of every dict, laid end to end."""
        same = self.same
        if same is None:
            return list(chain.from_iterable(map(dict.values, self.dicts)))
        if len(same) == 1:
            return list(map(itemgetter(same[0]), self.dicts))
        return list(chain.from_iterable(map(itemgetter(*same), self.dicts))) if same else []

    def require(self, keys: frozenset[str]) -> None:
        """Every dict has every one of ``keys`` (else the exact reader names the missing one)."""
        if self.same is not None:
            if not keys <= set(self.same):
                raise _NotClean
        else:
            _require(self.dicts, keys)


# Tables of several kinds of row. A label column of a part is given as one label for all its rows
# (a str), or as a list: one snapshot's labels when the part is ``regular`` (every snapshot has the
# same rows, labelled the same: the rule), else every row's.

Labels = str | list[Any]


@dataclass(frozen=True, slots=True)
class _Part:
    """Rows of one kind in a table (wallet balances, say)."""

    counts: np.ndarray  # rows per snapshot
    labels: list[Labels]  # the string columns first ...
    values: list[pa.Array]  # ... then the others, converted, every row's
    regular: bool


def _keyed_part(dicts: _Dicts, values: list[pa.Array], *labels: str) -> _Part:
    """A row per key of each dict, labelled ``labels`` and the key."""
    keys = dicts.keys if dicts.same is None else dicts.same
    return _Part(dicts.counts(), [*labels, keys], values, regular=dicts.same is not None)


def _assemble(parts: list[_Part], n: int) -> Columns:
    """A table of ``n`` snapshots: each snapshot's rows of the first part, then of the second ..."""
    counts = np.sum([part.counts for part in parts], axis=0)
    if all(part.regular for part in parts):
        return counts, _grid(parts, n)
    return counts, _interleaved(parts, n)


def _grid(parts: list[_Part], n: int) -> list[pa.Array]:
    """The columns when every snapshot's rows are alike: the labels are one snapshot's over and
    over, and the values a grid (a row per snapshot, the parts side by side) read row after row."""
    widths = [int(part.counts[0]) if n else 0 for part in parts]

    def one_snapshot(labels: Labels, width: int) -> list[Any]:
        return [labels] * width if isinstance(labels, str) else labels

    labels = [_tiled(_array(list(chain.from_iterable(map(one_snapshot, column, widths))), _STRING), n)
              for column in zip(*(part.labels for part in parts), strict=True)]
    values = [_side_by_side(list(column), widths, n) for column in zip(*(part.values for part in parts), strict=True)]
    return [*labels, *values]


def _interleaved(parts: list[_Part], n: int) -> list[pa.Array]:
    """The columns in general: each part's rows laid end to end, then taken in snapshot order."""

    def every_row(labels: Labels, part: _Part) -> pa.Array:
        if isinstance(labels, str):
            return _constant(labels, int(part.counts.sum()))
        return _tiled(_array(labels, _STRING), n) if part.regular else _array(labels, _STRING)

    columns = [[*(every_row(labels, part) for labels in part.labels), *part.values] for part in parts]
    filled = [c for c, part in zip(columns, parts, strict=True) if part.counts.any()]
    if len(filled) <= 1:  # one kind of row: already in snapshot order
        return (filled or columns)[0]
    order = _snapshot_order(np.stack([part.counts for part in parts], axis=1))
    return [_plain(pa.concat_arrays(list(column)).take(order)) for column in zip(*columns, strict=True)]


def _side_by_side(arrays: list[pa.Array], widths: list[int], n: int) -> pa.Array:
    """The rows of a grid of ``n`` rows, ``arrays`` side by side (``widths`` values of each per row)."""
    if len(arrays) == 1:
        return arrays[0]
    grid = np.hstack([a.to_numpy(zero_copy_only=False).reshape(n, w) for a, w in zip(arrays, widths, strict=True)])
    return pa.array(grid.ravel(), arrays[0].type)


def _snapshot_order(counts: np.ndarray) -> np.ndarray:
    """Where, among the parts' rows laid end to end, each row of the table is, in snapshot order."""
    sizes = counts.ravel()  # the runs of rows in table order: (snapshot 0, part 0), (0, 1) ... (1, 0) ...
    part_starts = np.concatenate(([0], np.cumsum(counts.sum(axis=0))[:-1]))
    run_starts = (np.cumsum(counts, axis=0) - counts + part_starts).ravel()  # each run, parts end to end
    table_starts = np.cumsum(sizes) - sizes  # each run, in the table
    order: np.ndarray = np.arange(int(sizes.sum())) + np.repeat(run_starts - table_starts, sizes)
    return order


# One bulk reader per result type.

def _bulk_balance_sheet(monitors: list[Any], dust: frozenset[str]) -> Columns:
    _require(monitors, _POSITION_KEYS)
    return _assemble([_wallet_rows(_each("wallet", monitors), dust),
                      _account_rows("cex", _each("cex_accounts", monitors)),
                      _account_rows("perp", _each("perp_positions", monitors))], len(monitors))


def _wallet_rows(wallets: list[Any], dust: frozenset[str]) -> _Part:
    held = _Dicts(wallets)
    balances = held.values()
    _no_bools(balances)  # dust balances too
    # Dust tokens are reported in dust_tracking only: their rows are taken out.
    if held.same is not None:
        tokens = [token for token in held.same if token not in dust]
        kept = [token not in dust for token in held.same] * len(wallets)
        counts = np.full(len(wallets), len(tokens), dtype=np.int64)
    else:
        kept = [token not in dust for token in held.keys]
        tokens = list(itertools.compress(held.keys, kept))
        counts = _sums(np.array(kept, dtype=np.int64), held.counts())
    amounts = _array(list(itertools.compress(balances, kept)), _FLOAT)
    return _Part(counts, ["wallet", "wallet", tokens, tokens], [amounts], regular=held.same is not None)


def _account_rows(kind: str, books: list[Any]) -> _Part:
    """CEX balances by token or perp positions by instrument, by venue (``kind``: the account type)."""
    venues = _Dicts(books)
    accounts = _Dicts(venues.values())  # each venue's balances (positions), snapshot after snapshot
    held = accounts.values()
    if kind == "cex":
        amounts = held
        _no_bools(amounts)
    else:
        if not all(map(operator.contains, held, repeat("entry_price"))):  # required, though not stored here
            raise _NotClean
        amounts = list(map(itemgetter("size"), held))
    names: list[Any]
    keys: list[Any]
    if venues.same is not None and accounts.same is not None:  # a row per venue and key, alike in every snapshot
        names = [venue for venue in venues.same for _ in accounts.same]
        keys = accounts.same * len(venues.same)
        counts = np.full(len(books), len(keys), dtype=np.int64)
    else:
        names = list(chain.from_iterable(map(repeat, venues.keys, accounts.counts())))
        keys, counts = accounts.keys, _sums(accounts.counts(), venues.counts())
    assets = keys if kind == "cex" else list(map(_BaseAssets().__getitem__, keys))
    regular = venues.same is not None and accounts.same is not None
    return _Part(counts, [names, kind, assets, keys], [_array(amounts, _FLOAT)], regular)


def _named_rows(label: str, dicts: list[Any], figures_only: bool, required: frozenset[str] = frozenset()) -> _Part:
    """One row per (name, value) of each dict, labelled ``label``.

    ``figures_only``: a row per real number only (a bool is stored as 1.0/0.0, as Arrow converts
    it); the exact reader skips other values as descriptive (they stay in raw_snapshots) and
    refuses a ``required`` one."""
    named = _Dicts(dicts)
    named.require(required)
    values = named.values()
    real = {kind: issubclass(kind, numbers.Real) for kind in set(map(type, values))}
    if not figures_only or all(real.values()):
        return _keyed_part(named, [_array(values, _FLOAT)], label)
    kept = list(map(real.__getitem__, map(type, values)))
    if any(key in required for key, keep in zip(named.keys, kept, strict=True) if not keep):
        raise _NotClean
    amounts = [_array(list(itertools.compress(values, kept)), _FLOAT)]
    n, width = len(dicts), len(named.same or ())
    if named.same is not None and kept == kept[:width] * n:  # the same ones skipped in every snapshot
        names = list(itertools.compress(named.same, kept))
        return _Part(np.full(n, len(names), dtype=np.int64), [label, names], amounts, regular=True)
    counts = _sums(np.array(kept, dtype=np.int64), named.counts())
    return _Part(counts, [label, list(itertools.compress(named.keys, kept))], amounts, regular=False)


def _bulk_pnl_attribution(pnls: list[Any]) -> Columns:
    attribution, balance, reconciliation = (_each(key, pnls) for key in
                                            ("attribution", "balance_based", "reconciliation"))
    figures = list(chain.from_iterable(map(_RECONCILIATION_OF, reconciliation)))
    figures[2::3] = _flags(figures[2::3])  # passed: 1.0 or 0.0 (Arrow stores a bool so)
    n = len(pnls)
    return _assemble([
        _named_rows("attribution", attribution, figures_only=False),  # stored as they are, whatever they are
        _named_rows("balance_based", balance, figures_only=True, required=_BALANCE_KEYS),
        _Part(np.full(n, 3, dtype=np.int64), ["reconciliation", list(_RECONCILIATION)],
              [_array(figures, _FLOAT)], regular=True),
    ], n)


def _bulk_risk_metrics(monitors: list[Any]) -> Columns:
    _require(monitors, _RISK_MONITOR_KEYS)
    metrics = _each("risk_metrics", monitors)
    return _assemble([_named_rows(group, _each(group, metrics), figures_only=True, required=frozenset(required))
                      for group, required in _RISK_REQUIRED], len(monitors))


def _bulk_execution_log(results: list[dict[str, Any]]) -> Columns:
    """Events are few: the exact reader reads all of them at once."""
    events = _each("event_logger", results)
    counts = np.fromiter(map(len, events), np.int64, len(events))
    schema = _schema(ResultType.EXECUTION_LOG)
    c = _Columns(ResultType.EXECUTION_LOG, schema.names[3:])
    _execution_log(c)({"event_logger": list(chain.from_iterable(events))})
    order, kind, stamps, details = c.lists
    stamp_arr = np.asarray(stamps, dtype=np.int64)
    if _beyond(stamp_arr).size:
        raise _NotClean
    return counts, [_array(order, pa.int64()), _array(kind, _STRING),
                    pa.array(stamp_arr, schema.field("event_timestamp").type), _array(details, _STRING)]


def _bulk_delta_tracking(monitors: list[Any]) -> Columns:
    nets, totals = _each("net_delta", monitors), _each("total_exposure", monitors)
    exposures = _Dicts(_each("asset_exposures", monitors))
    entries, counts = exposures.values(), exposures.counts()
    figures = [_array(_each("delta", entries), _FLOAT), _array(_each("exposure_usd", entries), _FLOAT),
               _repeated(_array(nets, _FLOAT), counts), _repeated(_array(totals, _FLOAT), counts)]
    return _assemble([_keyed_part(exposures, figures)], len(monitors))


def _bulk_leverage_tracking(monitors: list[Any]) -> Columns:
    metrics = _each("risk_metrics", monitors)
    ltv, liquidation = _each("ltv_risk", metrics), _each("liquidation_risk", metrics)
    current = _each("current_ltv", ltv)
    leverage = list(map(dict.get, ltv, repeat("leverage")))
    if None in leverage:  # not given: derived as the exact reader derives it
        leverage = [(1.0 / (1.0 - c) if c < 1.0 else float("inf")) if v is None else v
                    for c, v in zip(current, leverage, strict=True)]
    at_risk = _flags(_each("at_risk", liquidation))
    floats = [current, _each("target_ltv", ltv), _each("max_ltv", ltv), _each("liquidation_threshold", ltv),
              _each("health_factor", liquidation), leverage]
    return np.ones(len(monitors), dtype=np.int64), [*(_array(f, _FLOAT) for f in floats),
                                                    _array(at_risk, pa.bool_())]


def _bulk_funding_tracking(pnls: list[Any]) -> Columns:
    funding = list(map(dict.get, pnls, repeat("funding")))
    if not all(funding):  # missing or empty, though funding_tracking is enabled
        raise _NotClean
    venues = _Dicts(funding)
    entries = venues.values()
    figures = [_array(_each(name, entries), _FLOAT) for name in ("funding_rate", "payment", "cumulative")]
    return _assemble([_keyed_part(venues, figures)], len(pnls))


def _bulk_dust_tracking(wallets: list[Any], tokens: list[str]) -> Columns:
    by_token = [map(dict.get, wallets, repeat(token), repeat(0.0)) for token in tokens]
    amounts = list(chain.from_iterable(zip(*by_token, strict=True))) if tokens else []
    n = len(wallets)
    return np.full(n, len(tokens), dtype=np.int64), [_tiled(_array(tokens, _STRING), n), _array(amounts, _FLOAT)]
