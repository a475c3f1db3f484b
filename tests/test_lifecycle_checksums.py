"""File checksums and the corruption drill: every damaged file is found and named, and restore undoes it.

Real tables written by the store, real files damaged on disk: one bit flipped at 50 random offsets of
a data file (each case on its own), a data file truncated or deleted, a Delta log entry deleted or
altered, on a result table and on raw_snapshots. Each case: ``verify`` names the file, ``restore``
brings it back from the backup, and the table then reads exactly as before.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from results_store import backup, checksums, delta_tables
from results_store.cli.main import app
from results_store.drive import run_snapshots
from results_store.events import event_log_path
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode

MODE = "pure_lending"
DRILL_TABLES = ["balance_sheet", "raw_snapshots"]


def _backtest(root: Path, run_id: str, start: str = "2024-01-01", end: str = "2024-01-03", freq: str = "1h") -> None:
    mode = load_mode(MODE)
    run_snapshots(mode, ReferenceEngine(mode, start, end, freq).iter_snapshots(), data_dir=root, run_id=run_id)


def _content(root: Path, table: str) -> pa.Table:
    data = delta_tables.read(root / "backtest" / table)
    return data.sort_by([(c, "ascending") for c in ("run_id", "timestep", "result_type", "metric", "asset")
                         if c in data.column_names])


def _data_file(root: Path, table: str) -> Path:
    return max((root / "backtest" / table).glob("run_id=*/*.parquet"), key=lambda p: p.stat().st_size)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, pa.Table]]:
    """Two finished backtests, backed up once; the drill restores from that backup after each case."""
    root = tmp_path_factory.mktemp("drill") / "data"
    _backtest(root, "a")
    _backtest(root, "b", "2024-02-01", "2024-02-02")
    location = backup.default_backup_uri(root)
    assert backup.backup(root, "backtest", location).ok
    return root, location, {t: _content(root, t) for t in DRILL_TABLES}


def _assert_found_named_and_restored(root: Path, location: str, before: dict[str, pa.Table], table: str,
                                     damage: Callable[[], str]) -> None:
    """Damage once; verify must name the file; restore must bring back the exact content."""
    damaged = damage()
    report = checksums.verify(root, ["backtest"], table=table, in_flight_seconds=0)
    named = {p.path for p in report.problems}
    assert damaged in named, f"{damaged} not named; found {[p.line() for p in report.problems]}"
    assert report.error().error_code == "RST-005" and report.error().severity == "CRITICAL"
    restored = backup.restore(root, "backtest", location, table=table, in_flight_seconds=0, record=False)
    assert restored.ok, restored.to_json()
    assert f"backtest/{table}/{damaged}" in restored.restored
    assert _content(root, table).equals(before[table])
    assert checksums.verify(root, ["backtest"], table=table, in_flight_seconds=0).ok


@pytest.mark.parametrize("table", DRILL_TABLES)
def test_a_bit_flipped_anywhere_in_a_data_file_is_found_named_and_restored(store, table):
    root, location, before = store
    file = _data_file(root, table)
    rel = os.path.relpath(file, root / "backtest" / table)
    size = file.stat().st_size
    offsets = random.Random(f"drill-{table}").sample(range(size), 50)
    for offset in offsets:  # 50 cases, each on its own: restore undoes one before the next
        def flip(offset: int = offset) -> str:
            data = bytearray(file.read_bytes())
            data[offset] ^= 1 << (offset % 8)
            file.write_bytes(bytes(data))
            return rel

        _assert_found_named_and_restored(root, location, before, table, flip)


@pytest.mark.parametrize("table", DRILL_TABLES)
def test_a_truncated_a_deleted_data_file_and_a_deleted_or_altered_log_entry_are_found_and_restored(store, table):
    root, location, before = store
    table_dir = root / "backtest" / table
    file = _data_file(root, table)
    rel = os.path.relpath(file, table_dir)
    log = table_dir / "_delta_log" / "00000000000000000001.json"

    def truncate() -> str:
        with open(file, "r+b") as handle:
            handle.truncate(file.stat().st_size // 2)
        return rel

    def delete() -> str:
        file.unlink()
        return rel

    def delete_log() -> str:
        log.unlink()
        return "_delta_log/00000000000000000001.json"

    def alter_log() -> str:
        text = log.read_bytes()
        log.write_bytes(text.replace(b'"numRecords', b'"numRecordz', 1) if b'"numRecords' in text else text + b" ")
        return "_delta_log/00000000000000000001.json"

    for damage in (truncate, delete, delete_log, alter_log):
        _assert_found_named_and_restored(root, location, before, table, damage)


def test_what_verify_reports_names_the_table_the_runs_and_the_versions(store):
    root, location, before = store
    table_dir = root / "backtest" / "raw_snapshots"
    run_a = next(table_dir.glob("run_id=a/*.parquet"))
    with open(run_a, "r+b") as handle:
        handle.truncate(100)
    report = checksums.verify(root, ["backtest", "live"], in_flight_seconds=0)
    [problem] = report.problems
    assert (problem.execution_mode, problem.table, problem.problem) == ("backtest", "raw_snapshots", "truncated")
    assert problem.runs == ("a",)
    assert problem.versions and problem.kind == "data" and "100 bytes on disk" in problem.detail
    assert {t.table for t in report.tables} >= {"balance_sheet", "raw_snapshots", "quarantine", "runs", "lifecycle"}
    # --run limits data files to that run's partition: run b is intact.
    assert checksums.verify(root, ["backtest"], run_id="b", in_flight_seconds=0).ok
    assert not checksums.verify(root, ["backtest"], run_id="a", in_flight_seconds=0).ok
    assert backup.restore(root, "backtest", location, run_id="a", in_flight_seconds=0, record=False).ok
    assert _content(root, "raw_snapshots").equals(before["raw_snapshots"])


def test_a_commit_without_a_manifest_entry_is_untracked_and_a_damaged_entry_is_named(store):
    root, location, _ = store
    entry = root / "backtest" / "balance_sheet" / "_checksums" / "00000000000000000001.json"
    saved = entry.read_bytes()
    entry.unlink()
    found = checksums.verify(root, ["backtest"], table="balance_sheet", in_flight_seconds=0).problems
    assert {p.problem for p in found} == {"untracked"}
    assert "_delta_log/00000000000000000001.json" in {p.path for p in found}
    # A commit landed a moment ago may still be writing its entry: not reported before it is settled.
    assert checksums.verify(root, ["backtest"], table="balance_sheet").ok

    altered = orjson.loads(saved)
    altered["files"][0]["size"] += 1  # still parses, but no longer matches its digest
    entry.write_bytes(orjson.dumps(altered))
    found = checksums.verify(root, ["backtest"], table="balance_sheet", in_flight_seconds=0).problems
    [damaged] = [p for p in found if p.problem == "manifest"]
    assert damaged.path == "_checksums/00000000000000000001.json" and "digest" in damaged.detail
    # What only that entry vouched for can no longer be vouched for: named too.
    assert {p.problem for p in found} == {"manifest", "untracked"}
    assert backup.restore(root, "backtest", location, table="balance_sheet", in_flight_seconds=0, record=False).ok
    assert entry.read_bytes() == saved


def test_every_write_path_records_its_files_and_writes_page_checksums(tmp_path):
    _backtest(tmp_path, "r", "2024-01-01", "2024-01-01 12:00")
    path = tmp_path / "backtest" / "balance_sheet"
    # An overwrite (a rerun), a delete and a sorted compaction: delta-rs and pyarrow writers alike.
    rows = delta_tables.read(path, run_id="r")
    delta_tables.overwrite_run(path, rows, run_id="r", last_timestep=11)
    delta_tables.compact_run_sorted(path, "r", force=True)
    delta_tables.delete_run(path, "r")
    manifest = checksums.load_manifest(path)
    assert manifest.versions == set(range(delta_tables.version(path) + 1))
    assert checksums.verify(tmp_path, ["backtest"], all_versions=True, in_flight_seconds=0).ok
    # The files the store writes itself carry page checksums: a reader that checks them notices damage
    # that the codec would let through (here one flipped bit in one page of a single large value).
    blob = tmp_path / "blob"
    delta_tables.append_exactly_once(blob, pa.table({"run_id": ["r"], "timestep": [0], "blob": [os.urandom(200_000).hex()]}),
                                     run_id="r", last_timestep=0)
    file = next(blob.glob("run_id=r/*.parquet"))
    chunk = pq.ParquetFile(file).metadata.row_group(0).column(1)
    data = bytearray(file.read_bytes())
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data[start + chunk.total_compressed_size // 2] ^= 0x10
    file.write_bytes(bytes(data))
    with pytest.raises(OSError, match=r"(?i)crc|checksum"):
        pq.ParquetFile(file, page_checksum_verification=True).read()


def test_tables_written_before_checksums_are_adopted_only_after_they_are_read_whole(tmp_path):
    _backtest(tmp_path, "r", "2024-01-01", "2024-01-01 12:00")
    table = tmp_path / "backtest" / "risk_metrics"
    for entry in (table / "_checksums").iterdir():
        entry.unlink()
    old = os.path.getmtime(table / "_delta_log" / "00000000000000000000.json") - 3600
    for log in (table / "_delta_log").iterdir():
        os.utime(log, (old, old))
    assert {p.problem for p in checksums.verify(tmp_path, ["backtest"], table="risk_metrics").problems} == {"untracked"}
    assert checksums.adopt(table) == [0, 1]
    assert checksums.verify(tmp_path, ["backtest"], table="risk_metrics").ok


def test_the_cli_exits_1_naming_the_damaged_file_and_logs_rst_005(tmp_path):
    _backtest(tmp_path, "r", "2024-01-01", "2024-01-01 06:00")
    runner = CliRunner()
    ok = runner.invoke(app, ["checksum", "verify", "--data-dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert runner.invoke(app, ["backup", "--data-dir", str(tmp_path)]).exit_code == 0

    file = next((tmp_path / "backtest" / "risk_metrics").glob("run_id=r/*.parquet"))
    file.write_bytes(file.read_bytes()[:-1] + b"!")
    bad = runner.invoke(app, ["checksum", "verify", "--table", "risk_metrics", "--json", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 1
    [problem] = orjson.loads(bad.stdout)["problems"]
    assert problem["problem"] == "corrupt" and problem["path"].endswith(file.name) and problem["table"] == "risk_metrics"
    events = [orjson.loads(line) for line in event_log_path(tmp_path).read_text().splitlines()]
    critical = [e for e in events if e["event_type"] == "error" and e["data"].get("error_code") == "RST-005"]
    assert critical and critical[-1]["data"]["error_severity"] == "CRITICAL" and file.name in critical[-1]["message"]

    fixed = runner.invoke(app, ["restore", "--data-dir", str(tmp_path)])
    assert fixed.exit_code == 0, fixed.output
    assert runner.invoke(app, ["checksum", "verify", "--data-dir", str(tmp_path)]).exit_code == 0


def test_a_damaged_page_fails_a_read_as_corruption_not_as_a_retried_storage_error(tmp_path):
    path = tmp_path / "t"
    delta_tables.append_exactly_once(path, pa.table({"run_id": ["r"], "timestep": [0], "blob": [os.urandom(200_000).hex()]}),
                                     run_id="r", last_timestep=0)
    file = next(path.glob("run_id=r/*.parquet"))
    chunk = pq.ParquetFile(file).metadata.row_group(0).column(1)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(file.read_bytes())
    data[start + chunk.total_compressed_size // 2] ^= 0x10
    file.write_bytes(bytes(data))
    with pytest.raises(ComponentError) as damaged:
        delta_tables.read(path)
    assert damaged.value.error_code == "RST-005" and not damaged.value.transient


def test_log_files_delta_rs_cleaned_up_past_the_log_retention_are_expired_not_missing(tmp_path, monkeypatch):
    path = tmp_path / "backtest" / "t"
    for step in range(12):
        delta_tables.append_exactly_once(path, pa.table({"run_id": ["r"], "timestep": [step], "v": [1.0]}),
                                         run_id="r", last_timestep=step)
    assert delta_tables.checkpoint(path) == 12
    for version in range(6):  # what delta-rs' log clean-up removes: entries before a checkpoint, past the retention
        (path / "_delta_log" / f"{version:020d}.json").unlink()
    missing = checksums.verify(tmp_path, ["backtest"], in_flight_seconds=0)
    assert {p.problem for p in missing.problems} == {"missing"}  # within the retention: a loss, named
    monkeypatch.setattr(checksums, "LOG_RETENTION", checksums.timedelta(0))
    report = checksums.verify(tmp_path, ["backtest"], in_flight_seconds=0)
    assert report.ok and len(report.tables[0].expired) == 6
    assert len(checksums.expired_log_files(path)) == 6
    checksums.forget(path, checksums.expired_log_files(path), reason="log retention")
    assert checksums.expired_log_files(path) == [] and len(checksums.load_manifest(path).forgotten) == 6
    assert delta_tables.read(path).num_rows == 12
