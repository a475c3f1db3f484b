"""flatten_batch's output, pinned: any change to a table or to a rejection fails here.

The flattener is tuned for speed; these golden fingerprints were computed from the exact reader's
output (the flattener as it was before the tuning), so a faster version must give the same tables
(schema, row order, values to the bit, dtypes, chunking) and the same rejections (timestep,
timestamp, code, message, key paths, the kind of exception behind them) for:

- a chunk of reference-engine snapshots of each of the seven modes;
- batches with snapshots broken or odd on purpose, applied in each mode: the cases of
  test_snapshot_contract, test_bad_values, test_silent_values, test_snapshot_properties and
  test_flatten, and values at the edges of what the builders accept (NaN, inf, -0.0, numpy
  scalars, 0/1 flags, integers beyond 64 bits, descriptive extras ...).

Each is read both ways: by the bulk reader first (which hands what it does not read cleanly to the
exact one) and by the exact reader alone; the bulk reader must read the reference chunks itself,
and batches whose snapshots' keys vary (order, number) as the exact reader does.

The reference engine's snapshots are the same bits on every machine (its market computes exp, log
and powers with the C library, not numpy's CPU-dependent SIMD paths: the first goldens, taken on a
machine without AVX-512, failed on one with it); checked by printing the fingerprints below under
``NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR"`` and without: the same.

A case whose key path a mode's snapshots lack (no perp positions in pure_lending) is pinned as
"n/a" for that mode. To see what changed, run this module: it prints the fingerprints of the
code as it is (``.venv/bin/python -m tests.test_flatten_equivalence``); only paste them in
here when an output change is intended.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from results_store import flatten
from results_store.flatten import FlattenResult, SnapshotItem, flatten_batch
from schemas.modes import MODE_NAMES, ModeConfig, load_mode
from tests.store.conftest import snapshots
from tests.test_bad_values import BEFORE_PANDAS, BEYOND_PANDAS, UNENCODABLE, _put
from tests.test_snapshot_properties import BREAKAGES, Offer, State

CHUNK = 2_000  # reference-engine snapshots per mode
BATCH = 6  # snapshots per bad-snapshot case; the broken ones sit at VICTIMS
VICTIMS = (2, 4)

# -- fingerprints -----------------------------------------------------------------------------------


def _table_digest(table: pa.Table) -> str:
    """sha256 of a table: schema (with metadata), chunking, nulls and every value (numbers to the bit)."""
    digest = hashlib.sha256(table.schema.to_string(show_schema_metadata=True).encode())
    digest.update(f"{table.num_rows}".encode())
    for column in table.columns:
        digest.update(f"|{column.num_chunks}:{column.null_count}|".encode())
        for chunk in column.chunks:
            kind = chunk.type
            if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_timestamp(kind) \
                    or pa.types.is_boolean(kind):
                # The bits: tells -0.0 from 0.0 and one NaN from another.
                digest.update(np.asarray(chunk.to_numpy(zero_copy_only=False)).tobytes())
            else:
                digest.update(repr(chunk.to_pylist()).encode())
    return digest.hexdigest()


def _fingerprint(result: FlattenResult) -> str:
    digest = hashlib.sha256()
    for rtype, table in result.tables.items():
        digest.update(f"{rtype.value}:{_table_digest(table)}".encode())
    for r in result.rejected:
        cause = type(r.error.original_exception).__name__
        digest.update(repr((r.timestep, r.timestamp, r.error.error_code, str(r.error), r.error.details, cause)).encode())
    return digest.hexdigest()[:12]


# -- reference chunks ---------------------------------------------------------------------------------

_MODES: dict[str, ModeConfig] = {name: load_mode(name) for name in MODE_NAMES}
_POOLS: dict[str, list[tuple[Any, dict[str, Any]]]] = {name: snapshots(mode, CHUNK) for name, mode in _MODES.items()}


def _chunk(name: str) -> list[SnapshotItem]:
    return [SnapshotItem(results.get("timestep", i), ts, results) for i, (ts, results) in enumerate(_POOLS[name])]


def chunk_fingerprints(name: str) -> dict[str, str]:
    result = flatten_batch(_chunk(name), _MODES[name], "golden-run")
    assert result.rejected == []
    return {rtype.value: f"{table.num_rows}:{_table_digest(table)[:12]}" for rtype, table in result.tables.items()}


# -- bad and odd snapshots ----------------------------------------------------------------------------

Case = Callable[[list[SnapshotItem]], None]


def _each(change: Callable[[dict[str, Any]], Any], at: tuple[int, ...] = VICTIMS) -> Case:
    """Apply ``change`` to the results of the snapshots at ``at``."""
    def case(items: list[SnapshotItem]) -> None:
        for position in at:
            change(items[position].results)
    return case


def _item(position: int, **replace: Any) -> Case:
    """Replace a snapshot's timestep and/or timestamp as given to the flattener."""
    def case(items: list[SnapshotItem]) -> None:
        old = items[position]
        items[position] = SnapshotItem(replace.get("timestep", old.timestep), replace.get("timestamp", old.timestamp),
                                       old.results)
    return case


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def drop(results: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node: Any = results
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[leaf]
    return drop


def _put_first(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``key`` of the first entry of a mapping of mappings (the first CEX, venue or perp), whatever it is named."""
    def put(results: dict[str, Any]) -> None:
        node: Any = results
        for part in section.split("."):
            node = node[part]
        first = next(iter(node.values()))  # StopIteration: the mode has none (n/a)
        first[key] = value
    return put


def _perp(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def apply(results: dict[str, Any]) -> None:
        positions = next(iter(results["position_monitor"]["perp_positions"].values()))
        change(next(iter(positions.values())))
    return apply


def _ltv(**figures: Any) -> Callable[[dict[str, Any]], None]:
    return lambda r: r["risk_monitor"]["risk_metrics"]["ltv_risk"].update(figures)


def _wallet(**balances: Any) -> Callable[[dict[str, Any]], None]:
    return lambda r: r["position_monitor"]["wallet"].update(balances)


def _first_event(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda r: r["event_logger"][0].update(fields)


def _breakage(kind: str) -> Case:
    """One of test_snapshot_properties' BREAKAGES, applied to the snapshot at VICTIMS[0]."""
    def case(items: list[SnapshotItem]) -> None:
        position = VICTIMS[0]
        previous = items[position - 1]
        offer = Offer(items[position].timestamp, items[position].results, None)
        offer.results["timestep"] = position
        BREAKAGES[kind](offer, State(last_step=position - 1, last_ts=pd.Timestamp(previous.timestamp)))
        items[position] = SnapshotItem(offer.results.get("timestep", position), offer.timestamp, offer.results)
    return case


def _deep(results: dict[str, Any]) -> None:
    deep: Any = {}
    for _ in range(300):
        deep = {"d": deep}
    results["operator"] = deep


def _mixed(items: list[SnapshotItem]) -> None:
    """Several kinds in one batch: the bisection and the truncation and the range check together."""
    _wallet(aWeETH="lots")(items[1].results)
    items[3].results["risk_monitor"]["risk_metrics"]["ltv_risk"].pop("current_ltv")
    items[4] = SnapshotItem(4, BEYOND_PANDAS, items[4].results)
    items[5].results["exposure_monitor"]["net_delta"] = None


def _not_a_dict(items: list[SnapshotItem]) -> None:
    items[2] = SnapshotItem(2, items[2].timestamp, [1, 2])  # type: ignore[arg-type]


def _pandas_edges(items: list[SnapshotItem]) -> None:
    first, last = pd.Timestamp.min.ceil("us"), pd.Timestamp.max.floor("us")
    edges = [first, last, first.as_unit("us") - pd.Timedelta(1, "us"), last.as_unit("us") + pd.Timedelta(1, "us")]
    for position, stamp in enumerate(edges):
        items[position] = SnapshotItem(position, stamp, items[position].results)


_CONTRACT_PATHS = [  # test_snapshot_contract
    "risk_monitor.risk_metrics.ltv_risk.current_ltv",
    "risk_monitor.risk_metrics.liquidation_risk.at_risk",
    "position_monitor.perp_positions.binance.ETHUSDT-PERP.entry_price",
    "exposure_monitor.asset_exposures.ETH.exposure_usd",
    "pnl_calculator.reconciliation.passed",
    "event_logger.0.order",
    "position_monitor.wallet",
    "event_logger",
]

CASES: dict[str, Case] = {
    "valid": lambda items: None,
    # test_snapshot_contract
    **{f"drop {path}": _each(_drop(path)) for path in _CONTRACT_PATHS},
    "wallet USDT text": _each(_wallet(USDT="a lot")),
    "extra keys everywhere": _each(lambda r: (
        r.update(strategy_manager={"decision": "hold"}), r["position_monitor"].update(wallet_note="cold wallet"),
        _ltv(leverage=9.1)(r), _first_event(gas_price_gwei=31)(r))),
    "no funding": _each(_drop("pnl_calculator.funding")),
    # test_bad_values: timesteps and timestamps no table holds, values JSON cannot hold, nesting
    **{f"timestep {step!r}": _item(2, timestep=step)
       for step in (2**63, -1, -(2**63) - 1, True, 1.5, 7.0, "3", Decimal(7), np.int64(2))},
    **{f"timestamp {name}": _item(3, timestamp=stamp)
       for name, stamp in (("2262-06", BEYOND_PANDAS), ("1600", BEFORE_PANDAS), ("garbage", "not a time"),
                           ("None", None), ("NaT", pd.NaT), ("int-beyond-int64", 10**20), ("int64-min", -(2**63)),
                           ("naive", datetime(2024, 1, 1, 0, 3)), ("ISO text", "2024-01-01T00:03:00+01:00"),
                           ("int µs", 1_704_067_380_000_000))},
    "pandas edges": _pandas_edges,
    "event time past pandas": _each(_first_event(timestamp=BEYOND_PANDAS)),
    **{f"unencodable {path}": _each(_put(path, value)) for path, value, _ in UNENCODABLE},
    "nested deeper than JSON goes": _each(_deep),
    "containing itself": _each(lambda r: r.update(operator=r)),
    # test_silent_values
    "true as a wallet balance": _each(lambda r: r["position_monitor"]["wallet"].update(
        {next(iter(r["position_monitor"]["wallet"])): True})),
    "true as a cex balance": _each(_put_first("position_monitor.cex_accounts", "USDT", True)),
    "event from 1970": _each(lambda r: r.update(event_logger=[
        {"order": 0, "event_type": "trade", "timestamp": "1970-01-01T00:00:00+00:00"}])),
    "gap of 1000": _item(5, timestep=1_005),
    # test_snapshot_properties
    **{f"breakage {kind}": _breakage(kind) for kind in sorted(BREAKAGES)},
    # test_flatten
    "empty funding": _each(lambda r: r["pnl_calculator"].update(funding={})),
    "no exposure_monitor": _each(lambda r: r.pop("exposure_monitor")),
    "no entry_price": _each(_perp(lambda p: p.pop("entry_price"))),
    "wallet None": _each(_wallet(USDT=None)),
    "event order 1.5": _each(_first_event(order=1.5)),
    "risk threshold text": _each(lambda r: r["risk_monitor"]["risk_metrics"]["delta_risk"].update(threshold="high")),
    "attribution list": _each(lambda r: r["pnl_calculator"]["attribution"].update(funding_pnl=[1.0])),
    "all broken": _each(lambda r: r.pop("event_logger"), at=tuple(range(BATCH))),
    "mixed": _mixed,
    # values at the edges of what the builders take as they are, convert, skip or refuse
    "nan inf -0.0 balances": _each(_wallet(A=float("nan"), B=float("inf"), C=float("-inf"), D=-0.0)),
    "int balances": _each(_wallet(A=3, B=-(2**63), C=2**63 - 1)),
    "int beyond 64 bits balance": _each(_wallet(A=2**64)),
    "int beyond float balance": _each(_wallet(A=10**400)),
    "numpy balances": _each(_wallet(A=np.float64(1.5), B=np.float32(0.1), C=np.int64(7), D=np.float64("nan"))),
    "numpy bool balance": _each(_wallet(A=np.bool_(True))),
    "Decimal balance": _each(_wallet(A=Decimal("0.5"))),
    "cex balance text": _each(_put_first("position_monitor.cex_accounts", "USDT", "x")),
    "cex account a list": _each(lambda r: r["position_monitor"]["cex_accounts"].update(binance=[1.0])),
    "wallet a list": _each(lambda r: r["position_monitor"].update(wallet=[1.0])),
    "no tracked_assets": _each(_drop("position_monitor.tracked_assets")),
    "perp size text": _each(_perp(lambda p: p.update(size="big"))),
    "perp size None": _each(_perp(lambda p: p.update(size=None))),
    "perp size int": _each(_perp(lambda p: p.update(size=-3))),
    "perp named by a number": _each(lambda r: next(iter(r["position_monitor"]["perp_positions"].values())).update(
        {5: {"size": 1.0, "entry_price": 2.0}})),
    "perp named oddly": _each(lambda r: next(iter(r["position_monitor"]["perp_positions"].values())).update(
        {"btc-usd-swap": {"size": 1.0, "entry_price": 2.0}, "SOL": {"size": 2.0, "entry_price": 3.0}})),
    "risk figures odd": _each(_ltv(current_ltv=np.float64(0.5), target_ltv=1, max_ltv=True, note="text",
                                   extra_none=None, extra_big=2**70, extra_dec=Decimal("0.5"))),
    "risk figure None": _each(_ltv(current_ltv=None)),
    "risk figure text": _each(_ltv(max_ltv="high")),
    "risk extra beyond float": _each(_ltv(extra=10**400)),
    "risk group a list": _each(lambda r: r["risk_monitor"]["risk_metrics"].update(delta_risk=[1])),
    "no risk_alerts": _each(_drop("risk_monitor.risk_alerts")),
    "at_risk 1": _each(lambda r: r["risk_monitor"]["risk_metrics"]["liquidation_risk"].update(at_risk=1)),
    "at_risk 1.0 and numpy": _each(lambda r: r["risk_monitor"]["risk_metrics"]["liquidation_risk"].update(
        at_risk=np.bool_(True), health_factor=np.float32(1.5))),
    "at_risk 2": _each(lambda r: r["risk_monitor"]["risk_metrics"]["liquidation_risk"].update(at_risk=2)),
    "at_risk text": _each(lambda r: r["risk_monitor"]["risk_metrics"]["liquidation_risk"].update(at_risk="no")),
    "leverage absent, ltv 1": _each(lambda r: (r["risk_monitor"]["risk_metrics"]["ltv_risk"].pop("leverage", None),
                                               _ltv(current_ltv=1.0)(r))),
    "leverage absent, ltv int": _each(lambda r: (r["risk_monitor"]["risk_metrics"]["ltv_risk"].pop("leverage", None),
                                                 _ltv(current_ltv=0)(r))),
    "leverage absent, ltv text": _each(lambda r: (r["risk_monitor"]["risk_metrics"]["ltv_risk"].pop("leverage", None),
                                                  _ltv(current_ltv="x")(r))),
    "leverage None": _each(_ltv(leverage=None)),
    "leverage text": _each(_ltv(leverage="x")),
    "balance_based odd": _each(lambda r: r["pnl_calculator"]["balance_based"].update(
        fees=True, note="text", n=np.int64(3), total_value=np.float64(2.5), pnl_cumulative=0)),
    "balance_based required text": _each(lambda r: r["pnl_calculator"]["balance_based"].update(total_value="x")),
    "balance_based missing": _each(_drop("pnl_calculator.balance_based.total_value")),
    "attribution odd": _each(lambda r: r["pnl_calculator"]["attribution"].update(
        a=True, b=None, c=np.float32(0.25), d=-0.0, e=float("nan"))),
    "attribution text": _each(lambda r: r["pnl_calculator"]["attribution"].update(a="x")),
    "passed 0 and 1": _each(lambda r: r["pnl_calculator"]["reconciliation"].update(passed=0), at=(2,)),
    "passed 1.0": _each(lambda r: r["pnl_calculator"]["reconciliation"].update(passed=1.0), at=(2,)),
    "passed numpy": _each(lambda r: r["pnl_calculator"]["reconciliation"].update(passed=np.bool_(False))),
    "passed None": _each(lambda r: r["pnl_calculator"]["reconciliation"].update(passed=None)),
    "difference text": _each(lambda r: r["pnl_calculator"]["reconciliation"].update(difference="x")),
    "tolerance int": _each(lambda r: r["pnl_calculator"]["reconciliation"].update(tolerance=1)),
    "funding odd": _each(_put_first("pnl_calculator.funding", "payment", np.float32(0.5))),
    "funding text": _each(_put_first("pnl_calculator.funding", "funding_rate", "x")),
    "funding missing a figure": _each(lambda r: next(iter(r["pnl_calculator"]["funding"].values())).pop("payment")),
    "exposure odd": _each(lambda r: r["exposure_monitor"].update(net_delta=1, total_exposure=np.float64(2.0))),
    "exposure text": _each(lambda r: r["exposure_monitor"].update(total_exposure="x")),
    "exposure asset text": _each(lambda r: r["exposure_monitor"]["asset_exposures"].update(
        DOGE={"delta": "x", "exposure_usd": 1.0})),
    "exposure asset added": _each(lambda r: r["exposure_monitor"]["asset_exposures"].update(
        DOGE={"delta": 0.5, "exposure_usd": -0.0})),
    "dust held": _each(_wallet(EIGEN=1.5, KING=2)),
    "dust text": _each(_wallet(EIGEN="x")),
    "events odd": _each(lambda r: r.update(event_logger=[
        {"order": 3.0, "event_type": "A", "timestamp": "2024-01-01T00:00:00Z", "details": None},
        {"order": np.int64(4), "event_type": "B", "timestamp": 1_704_067_200_000_000, "details": {"z": 1, "a": [1]}},
        {"order": 5, "event_type": "C", "timestamp": datetime(2024, 1, 1), "x_extra": {"k": 1}, "details": {"k": 0}},
        {"order": 6, "event_type": "D", "timestamp": pd.Timestamp("2024-01-01 01:00", tz="Europe/Paris")}])),
    "event order text": _each(lambda r: r.update(event_logger=[{"order": "1", "event_type": "A",
                                                                 "timestamp": "2024-01-01T00:00:00Z"}])),
    "event order beyond int64": _each(lambda r: r.update(event_logger=[{"order": 2**63, "event_type": "A",
                                                                         "timestamp": "2024-01-01T00:00:00Z"}])),
    "event order bool": _each(lambda r: r.update(event_logger=[{"order": True, "event_type": "A",
                                                                 "timestamp": "2024-01-01T00:00:00Z"}])),
    "event type a number": _each(lambda r: r.update(event_logger=[{"order": 1, "event_type": 7,
                                                                    "timestamp": "2024-01-01T00:00:00Z"}])),
    "event details a list": _each(lambda r: r.update(event_logger=[{"order": 1, "event_type": "A",
                                                                     "timestamp": "2024-01-01T00:00:00Z",
                                                                     "details": [1]}])),
    "event time garbage": _each(lambda r: r.update(event_logger=[{"order": 1, "event_type": "A",
                                                                   "timestamp": "soon"}])),
    "event_logger a dict": _each(lambda r: r.update(event_logger={"order": 1})),
    "results a list": _not_a_dict,
    "component a list": _each(lambda r: r.update(risk_monitor=[1])),
    "component None": _each(lambda r: r.update(pnl_calculator=None)),
}


def _batch(name: str) -> list[SnapshotItem]:
    """BATCH reference snapshots of a mode, deep-copied, with an event at each victim's timestep."""
    items = []
    for i, (ts, results) in enumerate(copy.deepcopy(_POOLS[name][:BATCH])):
        if not results["event_logger"]:
            results["event_logger"] = [{"order": 1, "event_type": "NOTE", "timestamp": ts, "details": {"i": i}}]
        items.append(SnapshotItem(i, ts, results))
    return items


def case_fingerprints(case: str) -> dict[str, str]:
    """The case's fingerprint in each mode ("n/a" where the mode's snapshots lack the key it breaks)."""
    out = {}
    for name, mode in _MODES.items():
        items = _batch(name)
        try:
            CASES[case](items)
        except (KeyError, IndexError, StopIteration):
            out[name] = "n/a"
            continue
        result = flatten_batch(items, mode, "golden-run")
        by_step = {id(item.results): item for item in items}
        for r in result.rejected:  # the payload is the snapshot itself, not a copy
            assert by_step[id(r.payload)].results is r.payload
        out[name] = _fingerprint(result)
    return out


# -- the golden fingerprints (computed from flatten_batch before it was tuned) -------------------------

GOLDEN_CHUNKS: dict[str, dict[str, str]] = {
    "pure_lending": {
        "balance_sheet": "4000:c8b0d920c5e2",
        "pnl_attribution": "14000:ea13ec310048",
        "risk_metrics": "20000:3b6be15e7a42",
        "execution_log": "3:eb61e20cb512",
    },
    "btc_basis": {
        "balance_sheet": "20000:e3f891f62ee8",
        "pnl_attribution": "16000:4d8676066c6b",
        "risk_metrics": "20000:a92c4652d690",
        "execution_log": "18:633b3fb496d2",
        "delta_tracking": "2000:56502ba6f6ee",
        "funding_tracking": "6000:3069de50e717",
    },
    "eth_basis": {
        "balance_sheet": "20000:c17492773ac8",
        "pnl_attribution": "16000:9928701fd113",
        "risk_metrics": "20000:f419b56fc4c8",
        "execution_log": "18:b3f7925880f3",
        "delta_tracking": "2000:2dcf31fd1ad8",
        "funding_tracking": "6000:adfec6d28ec1",
    },
    "eth_staking_only": {
        "balance_sheet": "4000:2c8d636244cc",
        "pnl_attribution": "14000:56a78b09a222",
        "risk_metrics": "20000:3b6be15e7a42",
        "execution_log": "3:054156178043",
        "dust_tracking": "6000:ec82cac805b4",
    },
    "eth_leveraged": {
        "balance_sheet": "6000:98164aed79a6",
        "pnl_attribution": "18000:16b05c917921",
        "risk_metrics": "22000:494a6486884c",
        "execution_log": "7:3d7caa4c0429",
        "leverage_tracking": "2000:ca935f6ab116",
        "dust_tracking": "6000:ec82cac805b4",
    },
    "usdt_market_neutral_no_leverage": {
        "balance_sheet": "16000:42dc139e6ab5",
        "pnl_attribution": "18000:404c0e32af50",
        "risk_metrics": "20000:05c4ffd7afd2",
        "execution_log": "23:4d03f0d91f83",
        "delta_tracking": "2000:aa87b0ed7f0b",
        "funding_tracking": "6000:280822a4b37f",
        "dust_tracking": "6000:ec82cac805b4",
    },
    "usdt_market_neutral": {
        "balance_sheet": "18000:6e9d6326edd4",
        "pnl_attribution": "22000:fb6fe9bc3e00",
        "risk_metrics": "22000:c2047d059c2c",
        "execution_log": "25:1abbd3649bd6",
        "delta_tracking": "2000:a695117f4b32",
        "leverage_tracking": "2000:3911e3d2655b",
        "funding_tracking": "6000:280822a4b37f",
        "dust_tracking": "6000:ec82cac805b4",
    },
}

GOLDEN_CASES: dict[str, str] = {
    "valid":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "drop risk_monitor.risk_metrics.ltv_risk.current_ltv":
        "ec56ded2df5b b365afd0d37d 0c3db828bb96 b22a10f198a3 ab660a5ff861 1936670e2cb9 8312f685e656",
    "drop risk_monitor.risk_metrics.liquidation_risk.at_risk":
        "1aab8e6c13a8 0b121b63d810 b1db27d2bc97 7f34ca18c626 7331e7fe3e81 665acd839af5 c927e738341d",
    "drop position_monitor.perp_positions.binance.ETHUSDT-PERP.entry_price":
        "n/a n/a 0d9a29f4007d n/a n/a 25e43f00deab 1d8053aa3dc2",
    "drop exposure_monitor.asset_exposures.ETH.exposure_usd":
        "n/a n/a 874f7d19751e c3f97d2a73da 7279f5b7fd3a 331c651b6261 c0890710196b",
    "drop pnl_calculator.reconciliation.passed":
        "7709d1660331 3d8a94a7ac35 211bc7950691 f9fe3d639595 7081498db044 c4e85c56da80 3c33bfe86365",
    "drop event_logger.0.order":
        "fc2c5df15a4e 1fa4deae09a7 7a16f88b579a bacc10903a8b cbbdff56d8e1 5e64dc1f1f8e b95e83350ada",
    "drop position_monitor.wallet":
        "d2ac90b40a88 6b3b0495bf88 150302029db0 625db3df4200 4e8ef192728f 04fd835d0d87 d33bb038aeb2",
    "drop event_logger":
        "e29c3eac1183 4f56d8adb431 70f29b358867 485d2e601387 f6b74d82262a 3ead05bff6f1 cecbe5b6c2e4",
    "wallet USDT text":
        "efe91cb03515 c458e30b854f 5a610a0b43e8 73de97350d58 365d17f7c288 3b795cd2f063 caee9caa9cb5",
    "extra keys everywhere":
        "f79a076f71b7 3cb0ac7b6262 503a66e1dba6 7c1da50a5bcf 78d0d7569dd4 00605f07ee84 a526b71ced3b",
    "no funding":
        "n/a 545a1e9b7f97 d7ad91e159e6 n/a n/a a37b4f3feeff 16517eb71282",
    "timestep 9223372036854775808":
        "0399cf8740ba f09fc67d8c8f 7c4b4cc1168e 1fb7105e5acd 7796d6dbf216 fa68b2d8bc7a b00553d92d3d",
    "timestep -1":
        "eee445da1f4c 12e9173ac486 cc747f3848c7 eec9dce463f3 2358c205cc82 eb323653b055 ae2bc5b3f9be",
    "timestep -9223372036854775809":
        "e1bd4f3165a8 7914d03067b3 3c9c612a0f9f a82cc29b170d c7ceced6d96a 8fdaeb5d64f4 ea6b664aac77",
    "timestep True":
        "9faf722ea480 900f2ab5611d 2158b89c6ef6 5e4ac949ebe3 ec3ce99e5985 58ec421ec79f bfcd683f8802",
    "timestep 1.5":
        "c9561dab88ee 9d59882587ef 73d78e46913d 6e16e17b4dce 0a18d2186183 6b18fa4ad700 81dab7592d80",
    "timestep 7.0":
        "f82ec1eeb0e7 7f8aaf5d7d49 cf0ca2ecc187 9ed24bbc156e 6087be143ca7 ffa95f07cc41 5b72f23eab57",
    "timestep '3'":
        "59124ed0b23c c16854519998 ff1116c1c8b7 5de709943a04 d3d0f8abfc4d 2bc237fe9bfd 71eb6f7618b4",
    "timestep Decimal('7')":
        "abf7a07730be 92cbd0e0062d e6bdcb5e6a76 e8ad4035a78f b8981ab2408f 085dc34a2828 136a00bc2968",
    "timestep np.int64(2)":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "timestamp 2262-06":
        "baf2c29f12f7 f651057b803a cd257e6dc2cf 573df9f4eb82 a16d61586420 0cbf1d6cefd5 ce53c1897362",
    "timestamp 1600":
        "5c9175a3df59 9504bb956323 97bad63dd5b2 4e6bfd5d61b1 8e000d860993 abc7cd290e29 90e7336a55ad",
    "timestamp garbage":
        "86e3a427f95a 02773bc43b73 7ac0763fdfcc 3e5762b5ebf4 98f3607df63a 15462bd518e8 cd9ad7f32af2",
    "timestamp None":
        "dbf7fe1f9a67 64d11fc1efa7 9f462a982a48 6ed1f27aac70 e1e9000101f1 261413e8b22e 67f026bb8aa0",
    "timestamp NaT":
        "ac2bb3a3d8e8 0de5cc0ad64a 755e998b9f17 ac666a1aeaa1 95997a0dee05 668163c7afe5 0d351445d3ae",
    "timestamp int-beyond-int64":
        "858d0d3574f7 26a93e785550 57af45996333 d0d30220a641 611b1e54c02c c7aa1db71cc2 034f2cb90eb9",
    "timestamp int64-min":
        "56f625f35f19 23c3e6352532 506424e0424e 52fb1ef24e31 6807fc4f08f9 22a6609a2b75 03bf1911e9a0",
    "timestamp naive":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "timestamp ISO text":
        "1b489248fcf8 a0a68eae04f8 499abc53bdb7 32fd1b3e21ff 81129693719b 1bcf54304368 4ff5dc3bf7ac",
    "timestamp int µs":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "pandas edges":
        "ae99868eaf53 e84f586c1ae5 b09b1037e2ad ca56f8712cd2 8b9a702bb268 142306640801 2ade4abfc330",
    "event time past pandas":
        "abc1e51654d3 7fce7550981f 04a0ef4f62ee 75664e6a0b35 80b333cfea0b a5c6a170e795 9cef2785a43d",
    "unencodable operator.fee":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "unencodable position_monitor.wallet.USDT":
        "57f87408b97d dfb3c1b05644 464ee5ae3051 ff2866ba60f5 a65a54498923 a7ede46ba912 f6c9498b3e29",
    "unencodable event_logger.0.details.tags":
        "7b026a528c93 b670c351a347 fbcf80f28cf8 d6b5c23008c6 00f2d91fe8b5 8f6dc999c9c0 cba8cc008a96",
    "unencodable risk_monitor.risk_alerts.when":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "unencodable operator.counter":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "nested deeper than JSON goes":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "containing itself":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "true as a wallet balance":
        "29d3e12b801a e28c062f2992 1676d1666e48 332bf527f1ae e325cf1e003e 4eaccbe15bf8 b7d8cc25e771",
    "true as a cex balance":
        "n/a f4af0661411d f0f90ef07ec6 n/a n/a ed4edfcb6e11 62519c3d1807",
    "event from 1970":
        "d84823f2fa83 1346d46923de 69493c060762 40884905cff1 d17e34e45f56 e723b5887cb0 71d69b9e6883",
    "gap of 1000":
        "775518239672 aa8480b0518b 5666b062328b 4c6eafb5f8bb a1aa8f398431 345e71fb8dd6 4ecec61fca07",
    "breakage ISO text timestamp":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "breakage NaN balance":
        "6571bfd136ca bcb6f8a758e0 8795afad741c 43b11d99d355 9f57ca488d61 72e67f871213 c78c987943fe",
    "breakage None for a number":
        "n/a n/a bf317cc5664f c3f97d2a73da 7279f5b7fd3a 80c17d101160 10052f6b7734",
    "breakage backwards timestamp":
        "8aa97b484141 d9bd0cbd52fc e42f7d649ec0 3349c6e2e09c fb77525f9410 921e1c8cd91d accb36b7bd1a",
    "breakage duplicate timestep":
        "d6d849ba37c5 432e53ded2bf 198b240d2ba5 9c0e5701c14a e1465ef14d59 dd4bf0b60f53 ee1100735add",
    "breakage event time past pandas":
        "d1b0c083b412 1f1ab4288761 8107c7a33b80 ad26f065b0be 5e38b26c7c69 2475dd2e974c ac2248539a3d",
    "breakage exact Decimal extra":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "breakage flag of 2":
        "247c5a5c8b6f fb921d3ff85a 7cd59cbf83d4 747f663e7620 4c1cceee9a00 f79e07c94a41 ce54ab6f0fbf",
    "breakage fractional event order":
        "7cf1fc7137f1 04c91caa8190 9e9b6e3ee8b5 7fba8c8b7e3a 36bc1dd8bb06 85ecb932c816 c2f27c2cc1a7",
    "breakage fractional timestep":
        "933510384427 f9710d8205c6 33896cbb3289 330af8eb5f91 054eeee10996 21ab5026389c 68c4f771a319",
    "breakage huge float":
        "1ba6061d3d71 ec8940b94c7d 29711857cebc ee0d2651268d 66e169bd70eb 743acdd83bea 3bc9b42f1677",
    "breakage inexact Decimal extra":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "breakage infinite LTV":
        "c53e6caf7726 b4f1182103e6 4abcf6e54818 074b1dcdb8f9 ce1548bd3f6f 46c80eccd11f 9b71de717342",
    "breakage integer beyond 64 bits":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "breakage missing component":
        "32b17c55a858 86d182219767 f9d9c6791ed3 e0022e45dc82 572069110196 b0b1ad997c81 ff33b3aa38ed",
    "breakage missing key":
        "5e94ec63ad3c a4bb83842294 f58cb25aeb62 7ffd762985b1 b514f2536cc2 53ee8386f2ce 95417117dff8",
    "breakage naive timestamp":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "breakage negative timestep":
        "eee445da1f4c 12e9173ac486 cc747f3848c7 eec9dce463f3 2358c205cc82 eb323653b055 ae2bc5b3f9be",
    "breakage numpy timestep":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "breakage object in event details":
        "292315915e34 423f3bf6ac3a 87842ed2d884 25a6633d7b74 b071c41f47c6 3bf31728a20a 9b0ca0bf76fd",
    "breakage set in component data":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "breakage text for a number":
        "eff03b34d733 5fdeff26fb4e adfb67fc7b5e 48e3ada46160 a1da6d2ce681 802c06cd0885 f55bc89f1ffe",
    "breakage timestamp before pandas":
        "04711fd5a878 b4ad698a25e0 d1979d98dbbd 5936571d2004 a7ffb49d4f83 d09a6e7f1bf0 8292b866ee0b",
    "breakage timestamp not a time":
        "d79204076581 ae18687f826c 9b196d991905 3ed81e4da03c ba795cf12d43 ad9bf7caf5f5 c2b06f354fea",
    "breakage timestamp past pandas":
        "3c3a30746f35 3c8d5e4c7579 2a2f2a51ada2 b02135f4afb2 035a7fa3776f 5cdce0e49096 620706cbb4e9",
    "breakage timestep as text":
        "a6dffb84fbc0 eb5376ba7d62 124016ac37c0 5b7ae619b127 edb761addf42 b7ada1fe251c 6b09d960e33c",
    "breakage timestep beyond int64":
        "d611f42cd2ce a690a675ce6e 5a72227db500 f310257b7857 b840bb9821c8 06fa890eca50 f8ac66192930",
    "breakage timestep gap":
        "808a133060ac e2bf3417d90b a1b0cb8b1835 2676baafd627 3927d4c8d374 c93af35d760c 1d51469a2913",
    "breakage timestep left to the store":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "breakage unknown asset":
        "f17e203b25e3 ea13f44c7cb1 5b858a833650 a05f656de3a5 600c35f7cf42 348fc874690a 82fdc963c7a1",
    "empty funding":
        "44c0f976513f 545a1e9b7f97 d7ad91e159e6 c3f97d2a73da 7279f5b7fd3a a37b4f3feeff 16517eb71282",
    "no exposure_monitor":
        "32b31d3bf67f fbe6db6e8a17 3e217339730d 524cc4da21c4 ab3b0be52bca b8a8a74bcc5a 5dcbae923453",
    "no entry_price":
        "n/a f2cdf3a1cea8 0d9a29f4007d n/a n/a 25e43f00deab 1d8053aa3dc2",
    "wallet None":
        "f7231c1afae9 ceb98d5e73fb c643d6d00383 c779b489fbd4 aa7c225265b2 938e937ffbb3 947ef1e14a9b",
    "event order 1.5":
        "edb71823ea82 32137fc0a549 c456878a5309 a929877f0704 2e264e4bc6c3 81c1fd1914b2 411936a18720",
    "risk threshold text":
        "0476f356185f d511d1070407 1d481f20afcf 4888338e93e9 a9093bb581ef e41f188b2dfe 4a19f120b23c",
    "attribution list":
        "00f89f78bbee 9f281c111f9e 5cc49a78241f 751d16b2a28f ec9733317683 6777ac9820ae 5204e52cda6d",
    "all broken":
        "397361471c1f 9cbb7bfb95f3 9cbb7bfb95f3 4f9162a8b537 3849cf219c42 121c3640578b fe35c8bf3e56",
    "mixed":
        "1831f911e0c1 34bbb1534082 8cd72c69c1d9 cfe5263bf173 2c13ee3296f5 e8ae8afbced9 fd66f8b344a8",
    "nan inf -0.0 balances":
        "cfdbe38698b9 0c78fe15ed03 e719da80ac8f 792928ee8cd4 9e2959135b5e 57681f26116e d1565b4ee148",
    "int balances":
        "8e6274d0722b 04e8fec46249 fc3bc3494d49 d6215babac32 88f6eb74144c ecd98ecfef6c 2ed1de779c76",
    "int beyond 64 bits balance":
        "58d2eb76c265 52734ec77f93 06a9e9f28ce5 92d8ce68676c 9481e2864938 a408fd254105 1c40333d1860",
    "int beyond float balance":
        "d0111e1ee192 ae4e9cb5b950 7137da599f4f 6ba7cdc62277 b6ec50ea21f2 75837949455d ad7ecf0dfe4e",
    "numpy balances":
        "013860d8299b 4a6196c5f7ab 00ba884379bb eb0564568ae4 416ce15053bd b82fa69a3c48 686d829a8788",
    "numpy bool balance":
        "d07ea2a2890a 193e5ebe3ddf 69132e4be13c 05d6450701a4 a1f4f5a47fc9 42532340641e 0a4e6114ab97",
    "Decimal balance":
        "c4d5c382e349 b57694319723 0b9d2a182b97 22c96fe1e2be 81dce0a35fae 0f222d537338 2b8b76f435ac",
    "cex balance text":
        "n/a 4a057a1dc1bc 9b2427a64d5e n/a n/a d98a79bce13d 7f6428e1e9d7",
    "cex account a list":
        "567c1d51c256 af7875d4bc1a 0892c36eb043 f066d2b10d61 953359a3206c 977771ee2fc4 bc3b65f643cf",
    "wallet a list":
        "9cea457f8749 4dc4e05ae12f 876765ecccb2 fa40a7f378d9 5330b8b4c1b5 49fbe89ec625 e6fa7d737df2",
    "no tracked_assets":
        "c2b209a85672 d0bb9e822fad a17fa9fa0031 c7d569c05add 8d4ca440ba2a 660c340aaef9 8f7841be280c",
    "perp size text":
        "n/a 02698650522a cbfb88a13bab n/a n/a 11d725702e62 a1a727bd573c",
    "perp size None":
        "n/a bb5233a9b0e0 642aaa19f832 n/a n/a f33d7d456ce0 a56bbb76c2ff",
    "perp size int":
        "n/a c22cfddcc14b dd73d478e15d n/a n/a 84b288c6ef67 6577a4faa8f8",
    "perp named by a number":
        "n/a 44547e2e2939 0a785282c7b8 n/a n/a e8f21949861b eab9e8fe71fb",
    "perp named oddly":
        "n/a 72e6101147fb 68ad08452035 n/a n/a addf7c559492 dfb0c900983d",
    "risk figures odd":
        "7ec6bf77c0b9 b1c469fba418 c985819f3588 7b7e787ddb7e ead1db2911c9 48abc5430db2 4fa149242d3e",
    "risk figure None":
        "12c6ec6eed59 80a30485946f ec23e2cf6176 66c4bb405f6c 6365b83bec37 d8f0ec00574a 3aef2b77ba92",
    "risk figure text":
        "8d89d8bcf89b 667457808193 796f8b2bebf9 8f0e066082ba d0916612da74 852157e0a9db d90c4bfc08fb",
    "risk extra beyond float":
        "7ec6bf77c0b9 b1c469fba418 c985819f3588 7b7e787ddb7e ead1db2911c9 48abc5430db2 4fa149242d3e",
    "risk group a list":
        "75458ee59be0 bcc71c6ca1e8 62c4fe92cb27 13bd07113b89 38dd1aa7c15f 107a14eb2abf e2f118f563a1",
    "no risk_alerts":
        "09d5cde5a269 0589c2427a72 cdefb3e00f06 8fb773e48c1d 9293edabc492 c595b42d1e83 cee9230dc8e3",
    "at_risk 1":
        "d22ddeedafe3 a3a05d084361 5d588d8f87b7 198d3e4184a9 f1e08c019ab4 7abd2bc69bd3 54f5e4d8d1fe",
    "at_risk 1.0 and numpy":
        "3a23103c64d4 ce2d6316f0ae 7ec511ea96e3 a58267046344 5b76e7ce8b73 aa2439e020c8 0e90394a8886",
    "at_risk 2":
        "a9a465daee4a 1aa7973b838f f1bdb9033076 19b369f930bd 89dc382e05c5 7474f0e15a23 4bcd91168e83",
    "at_risk text":
        "c05cfff134a1 7b1a2db2f9a0 b6f273297395 0ac5fa0bf449 7d0edf98a76e e725c89b5e2c 70126b506d0f",
    "leverage absent, ltv 1":
        "3b6bbe044d15 959a07a6ac9c 0d94b1d04e4e d58e685cb030 40d87f71d57d 0ab844092e4c 11c224d3667b",
    "leverage absent, ltv int":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da ccf346cdcd9a b4a3496caa01 6ebdbe60b993",
    "leverage absent, ltv text":
        "0d4a578376bd cae131fbc57b 047570fd81c3 5195b863130a 27148469f952 89c487f7aaa5 3b3491c2d377",
    "leverage None":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da a096c48b9a74 b4a3496caa01 df3dfac39044",
    "leverage text":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 405bf8c00fe8 b4a3496caa01 9cf109dff399",
    "balance_based odd":
        "fd97b146e7ee a55c2fb27841 af67e6e364d1 32b0d1136287 0c4ba58116d6 2ce6e7d79793 ae5dbbb878ed",
    "balance_based required text":
        "613989202939 32256fb0c59c 12dc2379796f 1176ddbff951 456f0ee27bee a3a1f31afea5 7b162a7a8234",
    "balance_based missing":
        "d052ac7e543c 8789928a0372 5cfb315c5d15 440efa146130 f2b0585049c6 8cb802ab657d 31dae14aa284",
    "attribution odd":
        "11517bef1673 bca86d2e51b7 9f3938ecd9ca 9550b76717f2 5cbef542b848 056bc7e5de8c 6990f38ab0f5",
    "attribution text":
        "7cea8b457ba0 80d0ebdddb4e 5891c928a461 b62721609830 4e375629b58a 26a16f0b6996 962c9aa0bf6a",
    "passed 0 and 1":
        "4e9f43b5f309 831cbffa3550 89562eab41a5 04bdd12df999 73e2a324f6af 36de515feaad ac9d6b78d2e1",
    "passed 1.0":
        "44c0f976513f a8e9617a5421 74c26c9b6371 c3f97d2a73da 7279f5b7fd3a b4a3496caa01 6a4e2216487a",
    "passed numpy":
        "04f3d0454451 c56cf295ce1c 8157b16e72a2 e0c5d52636d3 429f267accca 41de352590d1 e3a3b661591d",
    "passed None":
        "d0cd5ae67c92 4230d054f29a c16da1804310 961fedd31142 c96eca4d9273 49f863900cb5 66040c570ac9",
    "difference text":
        "213b0a6ca0ee ce448f1fe339 182f538c6fdd ed0d4f3f7713 28466ea53e1a 1b08df97a092 154f555c728b",
    "tolerance int":
        "44c0f976513f a8e9617a5421 74c26c9b6371 15dc81308dab 7891ab42d58c b4a3496caa01 6a4e2216487a",
    "funding odd":
        "n/a 1f9780ddac2f 702ca50cc753 n/a n/a c8bf02c24899 07f7b65bb52e",
    "funding text":
        "n/a 3cf256ce8a66 fc7fa9d1ab1e n/a n/a 0709da9019e6 04c8774999fb",
    "funding missing a figure":
        "n/a 554baaefbb62 4b66d80cb0a0 n/a n/a 801251b233c3 0f3543a3609a",
    "exposure odd":
        "44c0f976513f 71e36c6ba1f3 fbe079b734ee c3f97d2a73da 7279f5b7fd3a 81ecf99cbc02 de111e3de4fd",
    "exposure text":
        "44c0f976513f 86b85099e16d 8f6c2b5e272f c3f97d2a73da 7279f5b7fd3a 0ab743639e20 e1625c4abc02",
    "exposure asset text":
        "44c0f976513f c369b5870916 0e8546f59f51 c3f97d2a73da 7279f5b7fd3a c9a1769eaa73 a9cec74af68e",
    "exposure asset added":
        "44c0f976513f f3015ae291c0 57b0e12c27ce c3f97d2a73da 7279f5b7fd3a 835585a38700 9d4f6e8f9092",
    "dust held":
        "c117ac96d103 6ef36c85fdad 6045be96d127 7e6fd19758c4 e74c2b6fbe66 99305b5ddf47 97d480f87de3",
    "dust text":
        "a0ae9f435ab8 c8b22986b2fb 38632b50ad92 989ed56e3fc1 73fdc95a5769 ca7f6421ea80 d5908c5ce186",
    "events odd":
        "f5472292d0df 40068e87c5a6 e3f4657cdadc b9e751228fa9 0c903cebfc38 92d26260d871 ffd495d4d230",
    "event order text":
        "c21f09e17177 f873715aeadc 529289ea061a 0b5051a2654d db94299d4317 f5709b9034c4 032a432d84ba",
    "event order beyond int64":
        "92e2ca3e881e cbb52436787d 82ccca7adc95 c66fe30edbd2 5b80bfb62ee1 98e49994e811 d71b02628261",
    "event order bool":
        "0edf57fd8f60 c58c1eea995e 59a7633e87ba ab9ad531c9b6 ef6edb824dc9 93a45c2fc46a d120ac3ae375",
    "event type a number":
        "816fa36cbb6e 4de18b23466f ebbdc113283c 034fdc1f810f c727994307ba f95a0526f5c5 65cf21b53e8c",
    "event details a list":
        "34641252e2d1 254b83dedd8c f214aaddf02a 7220cb9e4e06 92f0abe0d46e 883a5fa89424 77b3aa0adb2f",
    "event time garbage":
        "f558221e1d88 9331bf67ee04 c2c8b7637f38 b96c8b81a36b 1cc1ac89b4dc e0756ccabe2c 8649bd87815e",
    "event_logger a dict":
        "f09f1b905e22 5346af69a78b 845d8d304079 5c16714c9c13 975c8eecee75 4aff2309b186 22b5c5ae1eba",
    "results a list":
        "f07c9df578e4 6f95a0018dba 0c57bc2ffc6e 1a6b4f76620c b80c1454f460 e55f35a235d3 dabf76890f8b",
    "component a list":
        "64855da55e3d 8eb85d9c3245 abc72902c44f 16930f06a5e7 f0162514fc4a f60e99529953 8d126e9fa0d9",
    "component None":
        "a467078bbd2a e82c0ec3398f d3b4275e94fe 43b02a434de8 6cbc5e7b1d2e 5b65ec3f57d4 4fc03be66905",
}


def _one_line(prints: dict[str, str]) -> str:
    """A case's seven fingerprints, one string (modes in MODE_NAMES order)."""
    return " ".join(prints[name] for name in MODE_NAMES)


@pytest.fixture(params=["bulk", "exact"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The batch goes to the bulk reader first (which hands what it does not read cleanly to the
    exact one), or to the exact reader alone, whatever its size."""
    monkeypatch.setattr(flatten, "_BULK_MIN", 1 if request.param == "bulk" else 10**9)
    return str(request.param)


@pytest.mark.parametrize("mode_name", MODE_NAMES)
def test_a_reference_chunk_flattens_to_the_same_tables(mode_name, reader):
    assert chunk_fingerprints(mode_name) == GOLDEN_CHUNKS[mode_name]


@pytest.mark.parametrize("mode_name", MODE_NAMES)
def test_the_bulk_reader_reads_a_reference_chunk_itself(mode_name):
    # The fast path is taken (a fallback to the exact reader would give the same tables, slowly).
    result = flatten._bulk(_chunk(mode_name), _MODES[mode_name], "golden-run")
    assert {t.value: f"{table.num_rows}:{_table_digest(table)[:12]}" for t, table in result.tables.items()} == \
        GOLDEN_CHUNKS[mode_name]


def _reorder(mapping: dict[str, Any], rng: random.Random) -> None:
    """The same keys and values in another order."""
    entries = list(mapping.items())
    rng.shuffle(entries)
    mapping.clear()
    mapping.update(entries)


def _vary(results: dict[str, Any], rng: random.Random) -> None:
    """A valid snapshot with keys another engine might write differently: reordered, dropped or added."""
    pm, pnl = results["position_monitor"], results["pnl_calculator"]
    risk = results["risk_monitor"]["risk_metrics"]
    mappings = [pm["wallet"], pm["cex_accounts"], pm["perp_positions"], *pm["cex_accounts"].values(),
                *pm["perp_positions"].values(), pnl["attribution"], pnl["balance_based"], pnl.get("funding", {}),
                results["exposure_monitor"]["asset_exposures"], *risk.values()]
    for mapping in rng.sample(mappings, k=3):
        _reorder(mapping, rng)
    change = rng.randrange(12)
    if change == 0 and pm["wallet"]:
        pm["wallet"].pop(rng.choice(list(pm["wallet"])))
    elif change == 1:
        pm["wallet"][rng.choice(["EIGEN", "KING", "DOGE", "USDT"])] = rng.choice([1.5, 2, -0.0, float("nan")])
    elif change == 2:
        pm["cex_accounts"][rng.choice(["kraken", "binance"])] = {"USDT": 5.0, "ETH": rng.choice([0.25, 3])}
    elif change == 3:
        pm["perp_positions"].setdefault("okx", {})["BTC-USD-SWAP"] = {"size": -1.0, "entry_price": 60_000.0}
    elif change == 4:
        pnl["attribution"][rng.choice(["fees", "rebates"])] = rng.choice([0.5, 1, True])
    elif change == 5:
        pnl["balance_based"]["fees_paid"] = rng.choice([3.0, 4, np.float64(0.5)])
    elif change == 6:
        risk["ltv_risk"].pop("leverage", None)
        risk["delta_risk"]["extra"] = rng.choice([0.1, 7, False])
    elif change == 7 and len(pnl.get("funding", {})) > 1:
        pnl["funding"].pop(next(iter(pnl["funding"])))
    elif change == 8:
        results["exposure_monitor"]["asset_exposures"]["BTC"] = {"delta": 0.5, "exposure_usd": 10.0}
    elif change == 9:  # descriptive extras: no row (they stay in raw_snapshots)
        rng.choice(list(risk.values()))["status"] = rng.choice(["ok", None, Decimal("0.5")])
        pnl["balance_based"]["note"] = "from the ledger"
    elif change == 10:  # a flag as 0/1
        pnl["reconciliation"]["passed"] = rng.choice([0, 1, 1.0, -0.0, np.float64(1.0)])
    elif change == 11:
        risk["liquidation_risk"]["at_risk"] = rng.choice([0, 1, 0.0])


def _same_extras(results: dict[str, Any], rng: random.Random) -> None:
    """The same descriptive extras and 0/1 flags in every snapshot."""
    results["risk_monitor"]["risk_metrics"]["ltv_risk"]["note"] = "descriptive"
    results["pnl_calculator"]["reconciliation"]["passed"] = 1
    results["risk_monitor"]["risk_metrics"]["liquidation_risk"]["at_risk"] = 0


@pytest.mark.parametrize("mode_name", MODE_NAMES)
@pytest.mark.parametrize(("vary", "share"), [(_vary, 0.5), (_same_extras, 1.0)], ids=["irregular", "same-extras"])
def test_the_bulk_reader_reads_irregular_batches_as_the_exact_one_does(mode_name, vary, share):
    # Snapshots whose keys differ from one to the next (order, number), with values the exact
    # reader skips or converts: the bulk reader's general paths, which the reference chunks (every
    # snapshot alike, plain floats and bools) do not take.
    rng = random.Random(mode_name)
    items = _chunk(mode_name)[:400]
    varied = []
    for item in items:
        results = copy.deepcopy(item.results)
        if rng.random() < share:
            vary(results, rng)
        varied.append(SnapshotItem(item.timestep, item.timestamp, results))
    bulk = flatten._bulk(varied, _MODES[mode_name], "r")  # clean: the bulk reader reads it itself
    exact = flatten._flatten(varied, _MODES[mode_name], "r")
    assert exact.rejected == []
    assert _fingerprint(bulk) == _fingerprint(exact)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_and_odd_snapshots_flatten_and_reject_the_same(case, reader):
    assert _one_line(case_fingerprints(case)) == GOLDEN_CASES[case]


def test_every_case_is_pinned():
    assert set(GOLDEN_CASES) == set(CASES)


if __name__ == "__main__":
    print("GOLDEN_CHUNKS: dict[str, dict[str, str]] = {")
    for mode_name in MODE_NAMES:
        print(f"    {json.dumps(mode_name)}: {{")
        for table, fp in chunk_fingerprints(mode_name).items():
            print(f"        {json.dumps(table)}: {json.dumps(fp)},")
        print("    },")
    print("}\n")
    print("GOLDEN_CASES: dict[str, str] = {")
    for case in CASES:
        print(f"    {json.dumps(case, ensure_ascii=False)}:\n        {json.dumps(_one_line(case_fingerprints(case)))},")
    print("}")
