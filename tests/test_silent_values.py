"""Inputs the store used to accept silently each have a named rule now:

- a JSON ``true`` as a balance is not 1.0: the snapshot is quarantined (RST-101, contract);
- an event timestamp far from its snapshot's (a 1970 event in a 2024 run) quarantines that
  execution_log row (RST-102, rule ``event_near_its_timestep``); the rest of the timestep is written;
- a gap in the timesteps (0, 1, then 1,001) is stored, with a ``timestep_gap`` warning event.
"""

from __future__ import annotations

import copy

import orjson

from results_store.drive import run_snapshots
from results_store.events import event_log_path
from results_store.reading import read_table
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import load_mode
from schemas.settings import load_settings

MODE = load_mode("pure_lending")


def _snapshots(n: int = 3) -> list[tuple[object, dict[str, object]]]:
    return list(ReferenceEngine(MODE, "2024-01-01", "2024-01-01 01:00", "1min").iter_snapshots(0, n))


def _run(root, snapshots, run_id="r"):
    return run_snapshots(MODE, snapshots, data_dir=root, run_id=run_id, settings=load_settings(MODE, data_dir=root))


def _quarantine(root, run_id="r"):
    return read_table(root, "backtest", "quarantine", run_id=run_id).to_pylist()


def test_true_as_a_wallet_balance_quarantines_the_snapshot_instead_of_storing_1(tmp_path):
    snaps = _snapshots()
    bad = copy.deepcopy(snaps[1][1])
    token = next(iter(bad["position_monitor"]["wallet"]))
    bad["position_monitor"]["wallet"][token] = True
    snaps[1] = (snaps[1][0], bad)
    _run(tmp_path, snaps)
    [row] = _quarantine(tmp_path)
    assert row["timestep"] == 1 and row["error_code"] == "RST-101"
    assert f"position_monitor.wallet.{token}" in row["message"]
    assert 1 not in read_table(tmp_path, "backtest", "balance_sheet", run_id="r").column("timestep").to_pylist()


def test_an_event_from_1970_in_a_2024_run_quarantines_that_event_row(tmp_path):
    snaps = _snapshots()
    bad = copy.deepcopy(snaps[1][1])
    bad["event_logger"] = [{"order": 0, "event_type": "trade", "timestamp": "1970-01-01T00:00:00+00:00"}]
    snaps[1] = (snaps[1][0], bad)
    _run(tmp_path, snaps)
    rows = [r for r in _quarantine(tmp_path) if r["rule"] == "event_near_its_timestep"]
    assert [(r["timestep"], r["result_type"], r["error_code"], r["column"]) for r in rows] == [
        (1, "execution_log", "RST-102", "event_timestamp")]
    assert 1 in read_table(tmp_path, "backtest", "balance_sheet", run_id="r").column("timestep").to_pylist()


def test_a_gap_of_1000_timesteps_is_stored_with_a_timestep_gap_warning(tmp_path):
    snaps = _snapshots()
    last = copy.deepcopy(snaps[2][1])
    last["timestep"] = 1_001
    snaps[2] = (snaps[2][0], last)
    summary = _run(tmp_path, snaps)
    assert summary.timesteps_written == 3
    events = [orjson.loads(line) for line in event_log_path(tmp_path).read_bytes().splitlines()]
    gaps = [e for e in events if e.get("event_type") == "warning" and "timestep_gap" in orjson.dumps(e).decode()]
    assert len(gaps) == 1
    assert "timestep 1001 follows 1, a gap of 1,000 (999 timesteps missing)" in gaps[0]["message"]
