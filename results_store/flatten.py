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
  converts a column; the batch is then bisected to find the snapshots that carry one.

A rejected snapshot contributes no row to any table; the rest of the batch is unaffected.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from results_store.json_policy import default as json_default
from schemas.errors import ComponentError
from schemas.modes import ModeConfig
from schemas.result_types import ResultType
from schemas.snapshot import COMPONENT_KEYS, explain_snapshot
from schemas.tables import arrow_schema

__all__ = ["FlattenResult", "Rejected", "SnapshotItem", "flatten_batch", "perp_base_asset", "to_micros"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_QUOTES = ("USDT", "USDC", "BUSD", "USD")
_PERP_SUFFIXES = ("-PERP", "_PERP", "-SWAP", "PERP")
# What reading a malformed snapshot can raise; anything else is a bug and propagates.
_READ_ERRORS = (KeyError, TypeError, AttributeError, ValueError)
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


class _Unconvertible(Exception):
    """A column of a batch holds a value Arrow cannot store as the column's type."""

    def __init__(self, where: str, cause: BaseException) -> None:
        super().__init__(f"{where}: {cause}")
        self.where = where
        self.cause = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.where, self.cause))


def to_micros(value: Any) -> int:
    """Microseconds since the epoch (UTC) of a datetime / pd.Timestamp (naive = UTC), ISO string or int µs."""
    if isinstance(value, pd.Timestamp):
        return int((value if value.tzinfo is not None else value.tz_localize("UTC")).value // 1000)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta: timedelta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return to_micros(pd.Timestamp(value))
    raise TypeError(f"not a timestamp: {value!r}")


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
    steps: list[int] = []
    stamps: list[int] = []
    step_append, stamp_append = steps.append, stamps.append
    rejected: list[Rejected] = []
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
            rejected.append(Rejected(item.timestep, item.timestamp, _contract_error(item, exc), results))
            continue
        for first, end in marks:
            end(len(first))
        step_append(item.timestep)
        stamp_append(ts_us)

    step_arr = np.asarray(steps, dtype=np.int64)
    stamp_arr = np.asarray(stamps, dtype=np.int64)
    tables = {t: _to_table(schemas[t], columns[t], run_id, step_arr, stamp_arr) for t in enabled}
    return FlattenResult(tables, rejected)


def _contract_error(item: SnapshotItem, exc: BaseException, default_path: str = "") -> ComponentError:
    """RST-101 for a snapshot: the contract model's explanation, else one built from ``exc``."""
    explained = explain_snapshot(item.results, timestep=item.timestep, timestamp=item.timestamp)
    if explained is not None:
        return explained
    head = f"timestep {item.timestep} ({item.timestamp})"
    if isinstance(exc, _MissingPart):
        path, text = exc.path, f"{exc.path}: {exc.reason}"
    elif isinstance(exc, _Unconvertible):
        path, text = default_path, f"{exc.where}: value cannot be stored: {exc.cause}"
    elif isinstance(exc, KeyError):
        path = str(exc.args[0]) if exc.args else default_path
        text = f"{path}: missing"
    else:
        path, text = default_path, f"{type(exc).__name__}: {exc}"
    return ComponentError("RST-101", f"{head}: {text}", original_exception=exc,
                          details={"timestep": item.timestep, "timestamp": str(item.timestamp), "paths": [path]})


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
            if token in dust:
                continue  # dust tokens are reported in dust_tracking only
            venue("wallet")
            acct("wallet")
            asset(token)
            instr(token)
            amount(value)
        for cex, balances in pm["cex_accounts"].items():
            for token, value in balances.items():
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
