"""Flatten a batch of timestep snapshots into one Arrow table per enabled result type.

This is the store's largest CPU cost, so it is written for speed:

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

import itertools
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
    try:
        return _flatten(items, mode, run_id)
    except _Unconvertible as exc:
        if len(items) == 1:
            item = items[0]
            error = _contract_error(item, exc, default_path=exc.where)
            return FlattenResult(_empty_tables(mode), [Rejected(item.timestep, item.timestamp, error, item.results)])
    # Error path only: some snapshot carries a value of the wrong type. Halve until each bad one is alone.
    middle = len(items) // 2
    first = flatten_batch(items[:middle], mode, run_id)
    second = flatten_batch(items[middle:], mode, run_id)
    tables = {t: pa.concat_tables([first.tables[t], second.tables[t]]).combine_chunks() for t in first.tables}
    return FlattenResult(tables, [*first.rejected, *second.rejected])


def _enabled(mode: ModeConfig) -> list[ResultType]:
    return [ResultType(t) for t in mode.results_store.result_types]


def _empty_tables(mode: ModeConfig) -> dict[ResultType, pa.Table]:
    return {t: arrow_schema(t).empty_table() for t in _enabled(mode)}


def _flatten(items: Sequence[SnapshotItem], mode: ModeConfig, run_id: str) -> FlattenResult:
    rs = mode.results_store
    enabled = _enabled(mode)
    schemas = {t: arrow_schema(t) for t in enabled}
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


def _to_table(schema: pa.Schema, cols: _Columns, run_id: str, steps: np.ndarray, stamps: np.ndarray) -> pa.Table:
    counts = np.diff(np.asarray(cols.ends, dtype=np.int64), prepend=0).astype(np.int64, copy=False)
    n = int(counts.sum())
    arrays: list[pa.Array] = [
        pa.repeat(pa.scalar(run_id, pa.string()), n),
        pa.array(np.repeat(stamps, counts), schema.field("timestamp").type),
        pa.array(np.repeat(steps, counts), pa.int64()),
    ]
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
