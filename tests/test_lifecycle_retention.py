"""Retention on real tables: what goes, what stays, what a dry run touches (nothing), and what vacuum frees.

Runs are aged through the runs registry (a finished record dated in the past), the one place
retention reads a run's age from; the clock of each pass is an argument.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from results_store import backup, checksums, delta_tables, lifecycle, retention
from results_store.audit import audit_run, select_runs
from results_store.drive import run_snapshots_async
from results_store.events import event_log_path
from results_store.runs import append_run_record, latest_run
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from schemas.modes import load_mode
from schemas.settings import load_settings
from schemas.store_tables import RUN_TABLES

MODE = "pure_lending"
NOW = datetime.now(UTC)


def _run(root: Path, run_id: str, *, start: str = "2024-01-01", end: str = "2024-01-02", freq: str = "1h",
         execution_mode: str = "backtest") -> None:
    mode = load_mode(MODE)
    snapshots = ReferenceEngine(mode, start, end, freq).iter_snapshots()
    settings = load_settings(mode, data_dir=root, execution_mode=execution_mode, tune_allocators=False)
    asyncio.run(run_snapshots_async(mode, snapshots, data_dir=root, run_id=run_id, execution_mode=execution_mode,
                                    settings=settings))


def _finished_days_ago(root: Path, run_id: str, days: float) -> None:
    """Date the run's finish ``days`` back, as a run finished then would be recorded."""
    record = latest_run(root, "backtest", run_id)
    assert record is not None
    append_run_record(root, "backtest", run_id=run_id, mode=record["mode"], status="finished",
                      config_json=orjson.loads(record["config_json"]), config_hash=record["config_hash"],
                      started_at=NOW - timedelta(days=days + 1), finished_at=NOW - timedelta(days=days),
                      row_counts=record["row_counts"], note="finished")


def _data_bytes(root: Path, execution_mode: str = "backtest", run_id: str | None = None) -> int:
    """Bytes of the run tables' data files on disk (every version's, until vacuum removes them)."""
    pattern = f"run_id={run_id}/*.parquet" if run_id else "run_id=*/*.parquet"
    return sum(f.stat().st_size for name in RUN_TABLES for f in (root / execution_mode / name).glob(pattern))


def _snapshot_of_disk(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def aged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four finished backtests: two finished 40 days ago (one pinned), one 10 days ago, one just now."""
    root = tmp_path_factory.mktemp("retention") / "data"
    for run_id, days in [("old", 40), ("old-pinned", 40), ("recent", 10), ("new", 0)]:
        _run(root, run_id)
        if days:
            _finished_days_ago(root, run_id, days)
    lifecycle.pin(root, "backtest", "old-pinned", "the paper's reference run")
    return root


def test_a_dry_run_lists_exactly_what_would_go_and_changes_nothing(aged):
    before = _snapshot_of_disk(aged)
    result = retention.run_retention(aged, "backtest", dry_run=True, retention_days=30, now=NOW)
    assert [r.run_id for r in result.plan.removals] == ["old"]
    [old] = result.plan.removals
    assert old.whole and old.rows["raw_snapshots"] == 24 and sum(old.rows.values()) > 24
    assert old.files == sum(len(list((aged / "backtest" / t).glob("run_id=old/*.parquet"))) for t in RUN_TABLES)
    assert old.bytes == _data_bytes(aged, run_id="old")
    assert result.plan.held == [{"run_id": "old-pinned", "why": "pinned"}]
    assert _snapshot_of_disk(aged) == before


def test_retention_expires_old_runs_keeps_the_window_and_pins_then_vacuum_frees_what_it_reported(aged):
    version_before = delta_tables.version(aged / "backtest" / "balance_sheet")
    rows_before = delta_tables.count_rows(aged / "backtest" / "balance_sheet", run_id="old")
    kept_before = {r: delta_tables.count_rows(aged / "backtest" / "raw_snapshots", run_id=r)
                   for r in ("old-pinned", "recent", "new")}
    bytes_before = _data_bytes(aged)

    result = retention.run_retention(aged, "backtest", retention_days=30, now=NOW)
    [old] = result.plan.removals
    assert result.removed_runs == ["old"]

    # The run is gone from the latest version; everything inside the window or pinned is untouched.
    for name in RUN_TABLES:
        assert delta_tables.count_rows(aged / "backtest" / name, run_id="old") == 0
    assert {r: delta_tables.count_rows(aged / "backtest" / "raw_snapshots", run_id=r) for r in kept_before} == kept_before
    record = latest_run(aged, "backtest", "old")
    assert record["status"] == "expired" and record["row_counts"] == old.rows
    assert f"{sum(old.rows.values()):,} rows" in record["note"] and f"{old.bytes:,} bytes" in record["note"]

    # Inside the time-travel window its files stay: the version before the expiry still reads it whole.
    assert result.vacuumed_bytes == 0 and _data_bytes(aged) == bytes_before
    assert delta_tables.read(aged / "backtest" / "balance_sheet", version=version_before, run_id="old").num_rows == rows_before

    # A week later (past the window) the nightly pass frees exactly what the expiry reported.
    week = NOW + timedelta(hours=retention.TIME_TRAVEL_HOURS + 1)
    later = retention.run_retention(aged, "backtest", retention_days=30, now=week)
    assert later.plan.removals == [] and later.vacuumed_bytes == old.bytes
    assert bytes_before - _data_bytes(aged) == old.bytes and _data_bytes(aged, run_id="old") == 0

    # Consistent afterwards: every file is as recorded, the remaining runs audit clean, the expired
    # run is not picked for an audit, and the lifecycle log holds both passes.
    assert checksums.verify(aged, ["backtest"], all_versions=True, in_flight_seconds=0).ok
    for run_id in ("recent", "new"):
        assert audit_run(aged, "backtest", run_id).status == "pass"
    assert "old" not in select_runs(aged, "backtest", all_runs=False)
    passes = lifecycle.read_lifecycle(aged, "backtest", kind="retention")
    assert len(passes) == 2 and passes["bytes"].tolist() == [old.bytes, 0]

    lifecycle.unpin(aged, "backtest", "old-pinned")
    assert [r.run_id for r in retention.plan_retention(aged, "backtest", retention_days=30, now=NOW).removals] == ["old-pinned"]


def test_runs_no_complete_backup_holds_are_kept_when_backups_are_configured(tmp_path):
    root = tmp_path / "data"
    _run(root, "a")
    _finished_days_ago(root, "a", 40)
    location = str(tmp_path / "backups")
    os.environ[backup.BACKUP_URI_ENV] = location
    try:
        plan = retention.plan_retention(root, "backtest", retention_days=30, now=NOW, data_dir=root)
        assert plan.removals == [] and plan.held == [{"run_id": "a", "why": "no complete backup yet"}]
        assert backup.backup(root, "backtest", location).ok
        plan = retention.plan_retention(root, "backtest", retention_days=30, now=NOW, data_dir=root)
        assert [r.run_id for r in plan.removals] == ["a"] and plan.backup == location
    finally:
        del os.environ[backup.BACKUP_URI_ENV]
    # Not configured (no variable, nothing beside the data dir): retention does not wait for backups.
    assert [r.run_id for r in retention.plan_retention(root, "backtest", retention_days=30, now=NOW).removals] == ["a"]


def test_live_rows_older_than_retention_go_by_timestamp_and_the_rest_stays(tmp_path):
    root = tmp_path / "data"
    start = (NOW - timedelta(days=3)).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    _run(root, "live-a", start=str(start), end=str(start + timedelta(days=3)), freq="2h", execution_mode="live")
    raw = root / "live" / "raw_snapshots"
    total = delta_tables.count_rows(raw, run_id="live-a")
    cutoff = NOW - timedelta(days=2)
    older = sum(1 for t in delta_tables.read(raw, run_id="live-a", columns=["timestamp"]).column("timestamp").to_pylist()
                if t < cutoff)
    assert 0 < older < total

    result = retention.run_retention(root, "live", retention_days=2, now=NOW)
    [trim] = result.plan.removals
    assert not trim.whole and trim.rows["raw_snapshots"] == older
    stamps = delta_tables.read(raw, run_id="live-a", columns=["timestamp"]).column("timestamp").to_pylist()
    assert len(stamps) == total - older and min(stamps) >= cutoff
    record = latest_run(root, "live", "live-a")
    assert record["status"] == "finished" and record["row_counts"]["raw_snapshots"] == total - older
    assert checksums.verify(root, ["live"], in_flight_seconds=0).ok

    # Once every row is past retention, the run itself expires.
    gone = retention.run_retention(root, "live", retention_days=2, now=NOW + timedelta(days=3))
    assert gone.removed_runs == ["live-a"] and latest_run(root, "live", "live-a")["status"] == "expired"


def test_cleanup_old_results_is_the_same_retention_and_never_touches_its_own_run(tmp_path):
    root = tmp_path / "data"
    _run(root, "old")
    _finished_days_ago(root, "old", 40)
    mode = load_mode(MODE)

    async def clean() -> list[str]:
        async with ResultsStore(mode, "backtest", data_dir=root, run_id="current") as store:
            return await store.cleanup_old_results(30)

    assert asyncio.run(clean()) == ["old"]
    assert latest_run(root, "backtest", "old")["status"] == "expired"
    assert lifecycle.read_lifecycle(root, "backtest", kind="retention")["status"].tolist() == ["ok"]


def test_event_logs_older_than_30_days_are_pruned(tmp_path):
    current = event_log_path(tmp_path)
    current.parent.mkdir(parents=True)
    current.write_text("{}\n")
    for day in (45, 31, 29, 1):
        stamp = (NOW - timedelta(days=day)).date()
        current.with_name(f"{current.name}.{stamp:%Y-%m-%d}").write_text("{}\n")
    removed = retention.prune_event_logs(tmp_path, NOW)
    assert len(removed) == 2
    assert sorted(p.name[-10:] for p in current.parent.glob(f"{current.name}.*")) == sorted(
        f"{(NOW - timedelta(days=d)).date():%Y-%m-%d}" for d in (29, 1))
    assert current.exists()
