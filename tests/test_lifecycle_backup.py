"""Backups and restores on real tables: the disaster drill, incremental copies, and what is never trusted."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from results_store import backup, checksums, delta_tables, lifecycle
from results_store.drive import collect_pending, run_snapshots
from results_store.runs import append_run_record, latest_run
from results_store.simulator.live_source import ReferenceLiveSource
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings

MODE = "pure_lending"


def _backtest(root: Path, run_id: str, start: str = "2024-01-01", end: str = "2024-01-02") -> None:
    mode = load_mode(MODE)
    run_snapshots(mode, ReferenceEngine(mode, start, end, "1h").iter_snapshots(), data_dir=root, run_id=run_id)


def _live(root: Path, run_id: str, minutes: int) -> None:
    mode = load_mode(MODE)
    anchor = pd.Timestamp("2024-03-01", tz="UTC")
    source = ReferenceLiveSource(mode, anchor, "1min")
    settings = load_settings(mode, data_dir=root, execution_mode="live", tune_allocators=False)

    async def collect() -> None:
        async with ResultsStore(mode, "live", data_dir=root, run_id=run_id, settings=settings) as store:
            await collect_pending(store, source, (anchor + pd.Timedelta(minutes=minutes)).to_pydatetime())

    asyncio.run(collect())


def _every_table(root: Path) -> dict[str, pa.Table]:
    """Every table of both execution modes, at its latest version, in a stable order."""
    found = {}
    for mode in ("backtest", "live"):
        for name in checksums.list_tables(root, mode):
            data = delta_tables.read(root / mode / name)
            if name == "lifecycle":  # the restore adds its own record; compare what the backup held
                data = data.filter(pa.compute.not_equal(data["kind"], "restore"))
                if not data.num_rows:
                    continue
            found[f"{mode}/{name}"] = data.sort_by([(c, "ascending") for c in data.column_names
                                                    if pa.types.is_string(data.schema.field(c).type)
                                                    or pa.types.is_integer(data.schema.field(c).type)])
    return found


def test_the_disaster_drill_a_deleted_data_dir_comes_back_whole_into_a_fresh_one(tmp_path):
    data = tmp_path / "data"
    _backtest(data, "bt-1")
    _backtest(data, "bt-2", "2024-02-01", "2024-02-02")
    _live(data, "live-1", 30)
    lifecycle.pin(data, "backtest", "bt-1", "keep for the drill")
    location = str(tmp_path / "offsite")
    # What the backup holds: the tables as they are before it (its own record goes in the next one).
    before = _every_table(data)
    history_before = delta_tables.history(data / "backtest" / "balance_sheet")
    for mode in ("backtest", "live"):
        assert backup.backup(data, mode, location).ok

    shutil.rmtree(data)
    fresh = tmp_path / "fresh"
    for mode in ("backtest", "live"):
        restored = backup.restore(fresh, mode, location)
        assert restored.full and restored.ok, restored.to_json()

    after = _every_table(fresh)
    assert sorted(after) == sorted(before)
    for name, table in before.items():
        assert after[name].equals(table), name
    # The registry and the log came back too: every version, as before, readable by time travel.
    assert len(delta_tables.history(fresh / "backtest" / "balance_sheet")) == len(history_before)
    assert delta_tables.read(fresh / "backtest" / "raw_snapshots", version=1).num_rows > 0
    assert lifecycle.pinned_runs(fresh, "backtest") == {"bt-1"}
    assert checksums.verify(fresh, all_versions=True, in_flight_seconds=0).ok
    restores = lifecycle.read_lifecycle(fresh, "backtest", kind="restore")
    assert len(restores) == 1 and restores["status"][0] == "ok" and restores["files"][0] > 0


def test_a_second_backup_copies_only_the_new_runs_files(tmp_path):
    data = tmp_path / "data"
    _backtest(data, "first")
    location = backup.default_backup_uri(data)
    full = backup.backup(data, "backtest", location)
    assert full.ok and full.copied_files == full.files
    versions = dict(full.tables)

    _backtest(data, "second", "2024-02-01", "2024-02-02")
    again = backup.backup(data, "backtest", location)
    assert again.ok and 0 < again.copied_files < again.files
    for rel in again.copied:
        _, table, path = rel.split("/", 2)
        if table == "lifecycle":
            continue  # the first backup's own record, appended after it
        if path.startswith("run_id="):
            assert path.startswith("run_id=second/"), rel  # the new run's data only
        else:  # a log entry, checkpoint or manifest entry of a commit made since the first backup
            name = Path(path).name
            version = int(name[:20]) if name[:20].isdigit() else None
            assert version is not None and version > versions.get(table, -1), rel
    assert not any("run_id=first/" in rel for rel in again.copied)

    nothing = backup.backup(data, "backtest", location)
    # Nothing new but the record of the backup before (its data file, log entry and manifest entry).
    assert nothing.ok and {rel.split("/")[1] for rel in nothing.copied} == {"lifecycle"} and nothing.copied_files == 3
    assert [m.backup_id for m in backup.list_backups(location, "backtest")] == [full.backup_id, again.backup_id,
                                                                                nothing.backup_id]


def test_a_damaged_file_is_never_copied_over_a_good_copy_and_an_unfinished_backup_never_counts(tmp_path):
    data = tmp_path / "data"
    _backtest(data, "r")
    location = str(tmp_path / "b")
    good = backup.backup(data, "backtest", location)
    file = next((data / "backtest" / "raw_snapshots").glob("run_id=r/*.parquet"))
    copy = Path(location) / "backtest" / "raw_snapshots" / file.relative_to(data / "backtest" / "raw_snapshots")
    saved = copy.read_bytes()

    # A new run, and a damaged old file: the backup copies the new run but refuses the damaged file.
    _backtest(data, "r2", "2024-02-01", "2024-02-02")
    os.remove(copy)  # the backup lost its copy too: the damaged source must not take its place
    file.write_bytes(file.read_bytes()[:-1] + b"\x00")
    failed = backup.backup(data, "backtest", location)
    assert not failed.ok and any(file.name in f and "sha256" in f for f in failed.failures)
    assert failed.error().error_code == "RST-005"
    assert not copy.exists()
    # No manifest was written: the newest complete backup is still the good one.
    assert backup.latest_backup(location, "backtest").backup_id == good.backup_id

    copy.write_bytes(saved)
    assert backup.restore(data, "backtest", location).ok
    redo = backup.backup(data, "backtest", location)
    assert redo.ok and redo.reused_files > 0  # the files the failed backup copied are reused once they hash right


def test_a_backup_reaches_any_pyarrow_filesystem_uri(tmp_path):
    data = tmp_path / "data"
    _backtest(data, "r", "2024-01-01", "2024-01-01 06:00")
    location = (tmp_path / "uri target").as_uri()  # file:///…/uri%20target: a URI, not a plain path
    done = backup.backup(data, "backtest", location)
    assert done.ok and backup.latest_backup(location, "backtest").backup_id == done.backup_id
    file = next((data / "backtest" / "risk_metrics").glob("run_id=r/*.parquet"))
    file.unlink()
    assert backup.restore(data, "backtest", location).ok and file.exists()


def test_without_a_complete_backup_there_is_nothing_to_restore(tmp_path):
    with pytest.raises(ComponentError) as missing:
        backup.restore(tmp_path / "data", "backtest", str(tmp_path / "nowhere"))
    assert missing.value.error_code == "RST-302"


def test_the_lifecycle_commands_back_up_restore_list_pin_and_plan_retention(tmp_path):
    from typer.testing import CliRunner

    from results_store.cli.main import app

    data = tmp_path / "data"
    _backtest(data, "r", "2024-01-01", "2024-01-01 06:00")
    runner = CliRunner()

    def run(*args: str) -> object:
        return runner.invoke(app, [*args, "--data-dir", str(data)])

    done = run("backup")
    assert done.exit_code == 0 and "backtest: backup" in done.output, done.output
    assert "backtest" in run("backups").output
    (data / "backtest" / "runs" / "_delta_log" / "00000000000000000001.json").unlink()
    assert run("checksum", "verify").exit_code == 1
    fixed = run("restore", "--table", "runs")
    assert fixed.exit_code == 0 and "1 files" in fixed.output, fixed.output

    # A run finished 40 days ago: pinned, retention keeps it; unpinned, a dry run lists it.
    record = latest_run(data, "backtest", "r")
    append_run_record(data, "backtest", run_id="r", mode=record["mode"], status="finished",
                      config_json=orjson.loads(record["config_json"]), config_hash=record["config_hash"],
                      started_at=pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=41),
                      finished_at=pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=40), row_counts=record["row_counts"])
    assert run("pin", "r").exit_code == 0 and lifecycle.pinned_runs(data, "backtest") == {"r"}
    planned = orjson.loads(run("retention", "--dry-run", "--days", "30", "-e", "backtest", "--json").stdout)
    assert planned["backtest"]["held"] == [{"run_id": "r", "why": "pinned"}] and planned["backtest"]["removals"] == []
    assert run("unpin", "r").exit_code == 0 and lifecycle.pinned_runs(data, "backtest") == set()
    planned = orjson.loads(run("retention", "--dry-run", "--days", "30", "-e", "backtest", "--json").stdout)
    [removal] = planned["backtest"]["removals"]
    assert removal["run_id"] == "r" and removal["rows"]["raw_snapshots"] == 6 and removal["bytes"] > 0
    assert planned["backtest"]["dry_run"] and latest_run(data, "backtest", "r")["status"] == "finished"
    unknown = run("pin", "no-such-run")
    assert unknown.exit_code == 2 and "RST-302" in unknown.output
