"""Values that pass the reader never crash a batch.

One policy: what the tables (and JSON) hold losslessly is stored; a snapshot holding anything else
is quarantined alone (RST-101, naming its timestep and the key path), and a timestep the run's
order cannot place is refused alone (the store raises at once; nothing else is affected). Either
way the rest of the batch is written and an error event says what happened.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from results_store.events import event_log_path
from results_store.flatten import Rejected, SnapshotItem, encode_snapshots, flatten_batch, json_safe_snapshot
from results_store.reading import read_table
from results_store.store import ResultsStore
from results_store.validate import quarantine_rejected
from results_store.wal import WriteAheadLog
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.result_types import ResultType
from schemas.settings import load_settings
from schemas.snapshot import explain_placement, explain_snapshot
from tests.store.conftest import snapshots

MODE = load_mode("usdt_market_neutral")  # all eight result types
DAY = 1_440
_DAY_OF_SNAPSHOTS = snapshots(MODE, DAY)

BEYOND_PANDAS = pd.Timestamp("2262-06-01", tz="UTC")  # past pandas' last nanosecond (2262-04-11)
BEFORE_PANDAS = datetime(1600, 1, 1, tzinfo=UTC)  # before its first (1677-09-21)


def _day() -> list[tuple[Any, dict[str, Any]]]:
    return copy.deepcopy(_DAY_OF_SNAPSHOTS)


@dataclass
class Outcome:
    """What a run made of its snapshots."""

    refused: dict[int, ComponentError]  # position in the input -> the error the engine got
    written: list[int]  # timesteps in raw_snapshots
    quarantine: list[dict[str, Any]]
    errors: list[dict[str, Any]]  # the data of every "error" event

    def table_steps(self, root: Path, execution_mode: str, run_id: str, table: str) -> set[int]:
        return set(read_table(root, execution_mode, table, run_id=run_id).column("timestep").to_pylist())


async def _run(root: Path, run_id: str, snaps: list[tuple[Any, dict[str, Any]]], execution_mode: str = "backtest",
               **settings: Any) -> Outcome:
    """Offer every snapshot, the way an engine that logs refusals and carries on would."""
    store = ResultsStore(MODE, execution_mode, data_dir=root, run_id=run_id,
                         settings=load_settings(MODE, data_dir=root, **settings))
    refused: dict[int, ComponentError] = {}
    async with store:
        for position, (timestamp, results) in enumerate(snaps):
            try:
                await store.store_timestep_results(timestamp, results)
            except ComponentError as exc:
                refused[position] = exc
    raw = read_table(root, execution_mode, "raw_snapshots", run_id=run_id)
    quarantine = read_table(root, execution_mode, "quarantine", run_id=run_id).to_pylist()
    events = [orjson.loads(line) for line in event_log_path(root).read_text().splitlines()]
    return Outcome(refused, sorted(raw.column("timestep").to_pylist()), quarantine,
                   [e["data"] for e in events if e["event_type"] == "error"])


def _snapshot_rows(outcome: Outcome) -> dict[int, dict[str, Any]]:
    """The RST-101 quarantine rows (whole snapshots), by timestep."""
    rows = [r for r in outcome.quarantine if r["result_type"] == "snapshot"]
    assert all(r["error_code"] == "RST-101" for r in rows)
    return {r["timestep"]: r for r in rows}


# ------------------------------------------------------------------ timesteps the tables cannot hold

async def test_a_timestep_beyond_int64_is_refused_alone_and_every_valid_timestep_is_written(tmp_path):
    snaps = _day()
    snaps[700][1]["timestep"] = 2**63

    outcome = await _run(tmp_path, "big-step", snaps)

    assert list(outcome.refused) == [700]
    error = outcome.refused[700]
    assert error.error_code == "RST-101"
    assert "timestep" in error.details["paths"] and str(2**63) in str(error)
    # It took no place in the order: timestep 701 and every later one are written.
    assert outcome.written == [s for s in range(DAY) if s != 700]
    assert outcome.table_steps(tmp_path, "backtest", "big-step", "risk_metrics") == set(outcome.written)
    assert any(e["error_code"] == "RST-101" and str(2**63) in e["error_message"] for e in outcome.errors)


@pytest.mark.parametrize("step", [-1, -(2**63) - 1, True, 7.0, "7", Decimal(7)], ids=repr)
async def test_a_timestep_that_is_not_an_int64_from_zero_is_refused_naming_the_key(tmp_path, step):
    snaps = _day()[:10]
    snaps[5][1]["timestep"] = step

    outcome = await _run(tmp_path, "odd-step", snaps)

    assert list(outcome.refused) == [5]
    assert outcome.refused[5].error_code == "RST-101" and outcome.refused[5].details["paths"] == ["timestep"]
    assert outcome.written == [0, 1, 2, 3, 4, 6, 7, 8, 9]


async def test_a_numpy_integer_timestep_is_an_integer(tmp_path):
    snaps = _day()[:10]
    for _, results in snaps:
        results["timestep"] = np.int64(results["timestep"])

    outcome = await _run(tmp_path, "np-step", snaps)

    assert outcome.refused == {} and outcome.written == list(range(10))


# ------------------------------------------------------------------ timestamps the tables cannot hold

@pytest.mark.parametrize("stamp", [BEYOND_PANDAS, BEFORE_PANDAS, "not a time", None, pd.NaT, 10**20],
                         ids=["2262-06", "1600", "garbage", "None", "NaT", "int-beyond-int64"])
async def test_a_timestamp_the_tables_cannot_hold_quarantines_only_its_snapshot(tmp_path, stamp):
    snaps = _day()
    snaps[700] = (stamp, snaps[700][1])

    outcome = await _run(tmp_path, "far-time", snaps)

    # Nothing is refused: neither that snapshot nor the later ones (its timestamp takes no part in the order).
    assert outcome.refused == {}
    assert outcome.written == [s for s in range(DAY) if s != 700]
    (row,) = _snapshot_rows(outcome).values()
    assert row["timestep"] == 700 and row["column"] == "timestamp"
    assert "timestep 700" in row["message"] and "timestamp" in row["message"]
    assert row["timestamp"] == datetime(1970, 1, 1, tzinfo=UTC)  # unknown; the message keeps what was given
    for table in ("balance_sheet", "execution_log", "dust_tracking"):
        assert 700 not in outcome.table_steps(tmp_path, "backtest", "far-time", table)
    assert any(e["error_code"] == "RST-101" and "timestep 700" in e["error_message"] for e in outcome.errors)


async def test_an_event_timestamp_the_tables_cannot_hold_quarantines_its_snapshot(tmp_path):
    snaps = _day()[:20]
    snaps[7][1]["event_logger"] = [{"order": 1, "event_type": "TRADE", "timestamp": BEYOND_PANDAS, "details": {}}]

    outcome = await _run(tmp_path, "far-event", snaps)

    assert outcome.written == [s for s in range(20) if s != 7]
    assert _snapshot_rows(outcome)[7]["column"] == "event_logger.0.timestamp"


# ------------------------------------------------------------------ values with no lossless JSON form

def _put(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def put(results: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node: Any = results
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[leaf] = value
    return put


UNENCODABLE = [
    ("operator.fee", Decimal("0.1"), "Decimal"),  # an extra key: the issue's `Type is not JSON serializable`
    ("position_monitor.wallet.USDT", Decimal("0.1"), "Decimal"),  # component data
    ("event_logger.0.details.tags", {"a", "b"}, "set"),  # event details
    ("risk_monitor.risk_alerts.when", object(), "object"),
    ("operator.counter", 2**70, "int"),  # beyond JSON's 64-bit integers
]


@pytest.mark.parametrize(("path", "value", "type_name"), UNENCODABLE, ids=[u[0] for u in UNENCODABLE])
async def test_an_unencodable_value_anywhere_quarantines_only_its_snapshot(tmp_path, path, value, type_name):
    snaps = _day()[:50]
    timestamp, results = snaps[20]
    results["event_logger"] = results["event_logger"] or [
        {"order": 1, "event_type": "NOTE", "timestamp": timestamp, "details": {}}]
    _put(path, value)(results)

    outcome = await _run(tmp_path, "unencodable", snaps)

    assert outcome.refused == {}
    assert outcome.written == [s for s in range(50) if s != 20]
    row = _snapshot_rows(outcome)[20]
    assert row["column"] == path
    assert type_name in row["message"] and "timestep 20" in row["message"]
    # The record keeps the whole snapshot, the bad value tagged (visibly not data) where it was.
    node: Any = orjson.loads(row["payload"])
    for key in path.split("."):
        node = node[int(key)] if isinstance(node, list) else node[key]
    assert node["__unencodable__"] == type_name
    for table in ("balance_sheet", "risk_metrics", "execution_log"):
        assert 20 not in outcome.table_steps(tmp_path, "backtest", "unencodable", table)
    assert any(e["error_code"] == "RST-101" and path in e["error_message"] for e in outcome.errors)


async def test_a_decimal_a_float_holds_exactly_is_stored_as_that_float(tmp_path):
    snaps = _day()[:5]
    snaps[2][1]["operator"] = {"fee": Decimal("0.5")}

    outcome = await _run(tmp_path, "exact", snaps)

    assert outcome.written == list(range(5)) and outcome.quarantine == []
    raw = read_table(tmp_path, "backtest", "raw_snapshots", run_id="exact").sort_by("timestep")
    assert orjson.loads(raw.column("payload")[2].as_py())["operator"] == {"fee": 0.5}


@pytest.mark.parametrize("shape", ["nested deeper than JSON goes", "containing itself"])
@pytest.mark.parametrize("execution_mode", ["backtest", "live"])
async def test_a_snapshot_json_cannot_nest_is_quarantined_too(tmp_path, shape, execution_mode):
    snaps = _day()[:10]
    results = snaps[4][1]
    if shape == "containing itself":
        results["operator"] = results
    else:
        deep: Any = {}
        for _ in range(300):  # orjson stops at 254 levels
            deep = {"d": deep}
        results["operator"] = deep

    outcome = await _run(tmp_path, "nest", snaps, execution_mode=execution_mode, flush_interval=0.1)

    assert outcome.refused == {}
    assert outcome.written == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert _snapshot_rows(outcome)[4]["column"] == "(snapshot)"


async def test_live_never_raises_a_bad_value_into_the_engine_even_through_the_write_ahead_log(tmp_path):
    # A queue of 3 fed without pause: snapshots spill to the WAL and come back from it as JSON.
    snaps = _day()[:40]
    snaps[1][1]["operator"] = {"fee": Decimal("0.1")}  # through the queue
    snaps[30][1]["operator"] = {"fee": Decimal("0.1")}  # spilled, read back from the WAL
    snaps[31] = (BEYOND_PANDAS, snaps[31][1])
    snaps[32] = ("not a time", snaps[32][1])
    snaps[33][1]["position_monitor"]["wallet"]["USDT"] = {1, 2}

    outcome = await _run(tmp_path, "live-bad", snaps, execution_mode="live", queue_size=3, flush_interval=0.1,
                         batch_size=8)

    assert outcome.refused == {}
    assert outcome.written == [s for s in range(40) if s not in (1, 30, 31, 32, 33)]
    rows = _snapshot_rows(outcome)
    assert {step: row["column"] for step, row in rows.items()} == {
        1: "operator.fee", 30: "operator.fee", 31: "timestamp", 32: "timestamp",
        33: "position_monitor.wallet.USDT"}
    assert "Decimal" in rows[30]["message"] and "set" in rows[33]["message"]


# ------------------------------------------------------------------ the contract and the flattener alone

def _items(n: int = 5) -> list[SnapshotItem]:
    return [SnapshotItem(i, ts, results) for i, (ts, results) in enumerate(_day()[:n])]


@pytest.mark.parametrize("step", [2**63, -1, True, 1.5, "3"], ids=repr)
def test_the_flattener_rejects_a_timestep_no_table_holds_naming_the_timestep_key(step):
    items = _items()
    items[2] = SnapshotItem(step, items[2].timestamp, items[2].results)  # type: ignore[arg-type]

    result = flatten_batch(items, MODE, "r")

    (rejected,) = result.rejected
    assert rejected.timestep is step and rejected.error.error_code == "RST-101"
    assert rejected.error.details["paths"][0] == "timestep"
    for table in result.tables.values():
        assert set(table.column("timestep").to_pylist()) <= {0, 1, 3, 4}
    assert set(result.tables[ResultType.RISK_METRICS].column("timestep").to_pylist()) == {0, 1, 3, 4}


@pytest.mark.parametrize("stamp", [BEYOND_PANDAS, BEFORE_PANDAS, "not a time", None, pd.NaT, 10**20, -(2**63)],
                         ids=["2262-06", "1600", "garbage", "None", "NaT", "int-beyond-int64", "int64-min"])
def test_the_flattener_rejects_a_timestamp_no_table_holds_naming_the_timestamp_key(stamp):
    items = _items()
    items[3] = SnapshotItem(3, stamp, items[3].results)

    result = flatten_batch(items, MODE, "r")

    (rejected,) = result.rejected
    assert rejected.timestep == 3 and rejected.error.details["paths"][0] == "timestamp"
    assert "timestep 3" in str(rejected.error)
    assert set(result.tables[ResultType.RISK_METRICS].column("timestep").to_pylist()) == {0, 1, 2, 4}


def test_the_edges_of_pandas_range_are_stored_and_one_microsecond_beyond_is_not():
    first = pd.Timestamp.min.ceil("us")
    last = pd.Timestamp.max.floor("us")
    items = _items(4)
    stamps = [first, last, first.as_unit("us") - pd.Timedelta(1, "us"), last.as_unit("us") + pd.Timedelta(1, "us")]
    items = [SnapshotItem(i, stamp, item.results) for i, (stamp, item) in enumerate(zip(stamps, items, strict=True))]

    result = flatten_batch(items, MODE, "r")

    assert [r.timestep for r in result.rejected] == [2, 3]
    stored = result.tables[ResultType.LEVERAGE_TRACKING].column("timestamp").to_pylist()
    assert [pd.Timestamp(s) for s in stored] == [first.tz_localize("UTC"), last.tz_localize("UTC")]


def test_the_contract_names_the_timestep_timestamp_and_event_timestamp_keys_no_table_holds():
    placement = explain_placement(2**63, BEFORE_PANDAS)
    assert placement is not None and placement.error_code == "RST-101"
    assert placement.details["paths"] == ["timestep", "timestamp"]
    assert str(2**63) in str(placement) and "1600" in str(placement)
    assert explain_placement(0, pd.Timestamp("2024-01-01", tz="UTC")) is None

    (timestamp, results) = _day()[0]
    results["event_logger"] = [{"order": 1, "event_type": "X", "timestamp": BEYOND_PANDAS}]
    error = explain_snapshot(results, timestep=0, timestamp=timestamp)
    assert error is not None and error.details["paths"] == ["event_logger.0.timestamp"]
    assert "2262-06-01" in str(error)


def test_a_snapshot_the_wal_cannot_hold_goes_in_tagged_and_comes_back_rejected_with_the_same_path(tmp_path):
    (timestamp, results) = _day()[0]
    results["operator"] = {"fee": Decimal("0.1")}
    wal = WriteAheadLog(tmp_path)

    wal.append(0, 0, json_safe_snapshot(results))  # what the live store appends: never a TypeError
    (entry,) = wal.entries()
    payloads, rejected = encode_snapshots([SnapshotItem(0, timestamp, entry.results)])

    assert payloads == [None]
    assert rejected[0].error.error_code == "RST-101" and rejected[0].error.details["paths"] == ["operator.fee"]
    assert "Decimal" in str(rejected[0].error)
    assert json_safe_snapshot(entry.results) is entry.results  # encodable as it is now


def test_a_quarantine_record_is_written_whatever_the_snapshot_holds():
    deep: Any = {}
    for _ in range(300):  # deeper than orjson nests
        deep = {"d": deep}
    error = ComponentError("RST-101", "bad", details={"paths": ["x"]})
    rejected = [Rejected(2**63, BEYOND_PANDAS, error, {"x": deep}), Rejected(4, "not a time", error, {"x": 2**70})]

    table = quarantine_rejected(rejected, "r")

    rows = table.to_pylist()
    assert [r["timestep"] for r in rows] == [-1, 4]  # -1: no int64 names that timestep; the message does
    assert [r["timestamp"] for r in rows] == [datetime(1970, 1, 1, tzinfo=UTC)] * 2
    assert all(orjson.loads(r["payload"]) for r in rows)
