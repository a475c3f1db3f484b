"""A run's commits read the log after their table's version and never list the log directory.

delta-rs lists a table's whole ``_delta_log`` three times per commit on a local file system (to
bring a handle up to date, inside the commit, and after it; delta-kernel-rs#2335), so a commit's
cost grew with the log: a one-file commit took 13 ms of CPU at 100 versions and 48 ms at 6,000
(``bench/bench_log_growth.py``), and a live table commits every snapshot. The batch writer's
appends go through ``delta_tables.open_handle``, which follows the log by reading the next
version's file until there is none and lands its append as that version with put-if-absent.

Listings are watched with inotify: the kernel reports every ``getdents`` on a watched directory as
an access event on the directory itself (fs/readdir.c), below any code this project runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from results_store import checksums, delta_tables
from results_store.batch_writer import BatchWriter, PreparedBatch
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from schemas.store_tables import RAW_SNAPSHOTS
from tests.store.faults import remount, tmpfs

MODE = "usdt_market_neutral"
IN_ACCESS = 0x001
IN_ISDIR = 0x40000000


class DirectoryReads:
    """Counts listings of one directory (inotify access events without a name) and reads of its files."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self._fd, str(directory).encode(), IN_ACCESS) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self.listings = 0
        self.files_read: list[str] = []

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:  # pragma: no cover - an overflowed queue would undercount
                if exc.errno == errno.EAGAIN:
                    return
                raise
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if not name and mask & IN_ACCESS:
                    self.listings += 1
                elif name:
                    self.files_read.append(name)

    def close(self) -> None:
        os.close(self._fd)


@contextmanager
def watching(directory: Path) -> Iterator[DirectoryReads]:
    reads = DirectoryReads(directory)
    try:
        reads.drain()
        yield reads
        reads.drain()
    finally:
        reads.close()


def _writer(root: Path, run_id: str, execution_mode: str = "live") -> tuple[BatchWriter, pa.Table]:
    """The store's batch writer for ``raw_snapshots`` alone, and a day's prepared raw rows to commit."""
    config = load_mode(MODE)
    settings = load_settings(config, data_dir=root, execution_mode=execution_mode, tune_allocators=False)
    paths = {RAW_SNAPSHOTS: root / execution_mode / RAW_SNAPSHOTS}
    paths[RAW_SNAPSHOTS].parent.mkdir(parents=True, exist_ok=True)
    writer = BatchWriter(mode=config, settings=settings, run_id=run_id, table_paths=paths)
    anchor = pd.Timestamp("2024-03-01", tz="UTC")
    engine = ReferenceEngine(config, anchor, anchor + pd.Timedelta(minutes=40), "1min")
    entries = [(i, ts.value // 1000, ts, snapshot, 0.0) for i, (ts, snapshot) in enumerate(engine.iter_snapshots())]
    return writer, writer.prepare(entries).tables[RAW_SNAPSHOTS]


def _commit(writer: BatchWriter, raw: pa.Table, step: int) -> int | None:
    rows = raw.filter(pa.compute.equal(raw["timestep"], step))
    return writer.commit(PreparedBatch(step, step, 1, {RAW_SNAPSHOTS: rows}, 0)).versions.get(RAW_SNAPSHOTS)


def _log_entry(path: Path, version: int) -> list[dict[str, object]]:
    data = (path / "_delta_log" / f"{version:020d}.json").read_bytes()
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def test_a_runs_commits_never_list_the_log_and_read_only_the_entries_after_their_version(tmp_path: Path) -> None:
    writer, raw = _writer(tmp_path, "day-1")
    path = writer.table_paths[RAW_SNAPSHOTS]
    try:
        _commit(writer, raw, 0)  # creates the table (version 0) and appends (1)
        with watching(path / "_delta_log") as reads:
            versions = [_commit(writer, raw, step) for step in range(1, 26)]
    finally:
        writer.close()

    assert versions == list(range(2, 27))
    assert reads.listings == 0, f"{reads.listings} listings of the log in 25 commits"
    # What a commit reads of the log: the next version's file, which it finds absent (not an access).
    assert all(name.endswith(".json") for name in reads.files_read), reads.files_read
    # Every commit is a valid Delta commit delta-rs reads: rows, the run's watermark, its history.
    table = DeltaTable(str(path))
    assert table.version() == 26
    assert table.transaction_version(delta_tables.run_app_id("day-1")) == 25
    assert table.to_pyarrow_table().num_rows == 26
    assert [h["operation"] for h in table.history(3)] == ["WRITE"] * 3
    # ... and recorded in the checksum manifest, as every commit made here is.
    assert checksums.load_manifest(path).versions >= set(range(27))


def test_a_commit_lands_after_commits_of_other_writers_and_learns_their_watermarks(tmp_path: Path) -> None:
    writer, raw = _writer(tmp_path, "day-1")
    path = writer.table_paths[RAW_SNAPSHOTS]
    try:
        _commit(writer, raw, 0)
        _commit(writer, raw, 1)
        # Another run of the same table commits twice with delta-rs between two of ours.
        other, other_raw = _writer(tmp_path, "day-2")
        _commit(other, other_raw, 0)
        _commit(other, other_raw, 1)
        other.close()
        assert _commit(writer, raw, 2) == 5
    finally:
        writer.close()
    assert [e.get("txn") for e in _log_entry(path, 5) if "txn" in e] == [
        {"appId": delta_tables.run_app_id("day-1"), "version": 2}]
    table = DeltaTable(str(path))
    assert table.transaction_version(delta_tables.run_app_id("day-2")) == 1
    assert table.to_pyarrow_table().num_rows == 5


def test_a_commit_that_finds_its_version_taken_lands_as_the_next_one(tmp_path: Path) -> None:
    """Two writers that read the same version race for the next one: the loser lands after it."""
    writer, raw = _writer(tmp_path, "day-1")
    path = writer.table_paths[RAW_SNAPSHOTS]
    try:
        _commit(writer, raw, 0)
        handle = delta_tables.open_handle(path)
        assert handle is not None and handle.version == 1
        _commit(writer, raw, 1)  # takes version 2 behind the handle's back
        add = _one_file(path, "day-3", raw)
        version = delta_tables.commit_run_files(path, [add], run_id="day-3", last_timestep=0,
                                                schema=raw.schema, table=handle)
    finally:
        writer.close()
    assert version == 3
    assert DeltaTable(str(path)).to_pyarrow_table().num_rows == 3


def _one_file(path: Path, run_id: str, raw: pa.Table) -> delta_tables.FileAction:
    """One data file of ``run_id`` in the table at ``path``: a row of ``raw`` under that run."""
    rows = raw.slice(0, 1)
    rows = rows.set_column(rows.schema.get_field_index("run_id"), rows.schema.field("run_id"),
                           pa.array([run_id], rows.schema.field("run_id").type))
    file = delta_tables.open_run_file(path, run_id, rows.schema)
    file.write(rows)
    return delta_tables.close_run_file(file)


def test_a_retried_commit_whose_first_attempt_landed_adds_nothing(tmp_path: Path) -> None:
    writer, raw = _writer(tmp_path, "day-1")
    path = writer.table_paths[RAW_SNAPSHOTS]
    try:
        _commit(writer, raw, 0)
        stale = delta_tables.open_handle(path)
        assert stale is not None
        first = _one_file(path, "day-9", raw)
        assert delta_tables.commit_run_files(path, [first], run_id="day-9", last_timestep=0, schema=raw.schema,
                                             table=delta_tables.open_handle(path)) == 2
        # An attempt whose outcome was unclear is retried through a handle that has not seen it.
        again = delta_tables.commit_run_files(path, [first], run_id="day-9", last_timestep=0, schema=raw.schema,
                                              table=stale)
    finally:
        writer.close()
    assert again is None
    assert DeltaTable(str(path)).version() == 2


def test_writers_racing_on_one_table_each_land_every_commit_once(tmp_path: Path) -> None:
    """Four threads, each a run with its own handle, append 15 times each to one table at once."""
    path = tmp_path / "t"
    schema = pa.schema([("run_id", pa.string()), ("timestep", pa.int64()), ("value", pa.float64())])
    write_deltalake(str(path), pa.table({"run_id": ["seed"], "timestep": [0], "value": [0.0]}, schema=schema),
                    partition_by=["run_id"])
    errors: list[BaseException] = []

    def run(run_id: str) -> None:
        try:
            handle = delta_tables.open_handle(path)
            for step in range(15):
                file = delta_tables.open_run_file(path, run_id, schema)
                file.write(pa.table({"run_id": [run_id], "timestep": [step], "value": [float(step)]}, schema=schema))
                delta_tables.commit_run_files(path, [delta_tables.close_run_file(file)], run_id=run_id,
                                              last_timestep=step, schema=schema, table=handle, checkpoint=False)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    table = DeltaTable(str(path))
    assert table.version() == 60
    rows = table.to_pyarrow_table()
    assert rows.num_rows == 61
    for i in range(4):
        assert table.transaction_version(delta_tables.run_app_id(f"r{i}")) == 14
        mine = rows.filter(pa.compute.equal(rows["run_id"], f"r{i}"))
        assert sorted(mine["timestep"].to_pylist()) == list(range(15))
    assert not [n for n in os.listdir(path / "_delta_log") if n.endswith(".tmp")]


def test_a_table_whose_protocol_asks_more_of_a_writer_is_committed_by_delta_rs(tmp_path: Path) -> None:
    """A table with writer features this project does not write (here: constraints) goes through delta-rs."""
    path = tmp_path / "t"
    schema = pa.schema([("run_id", pa.string()), ("timestep", pa.int64()), ("value", pa.float64())])
    write_deltalake(str(path), pa.table({"run_id": ["seed"], "timestep": [0], "value": [1.0]}, schema=schema),
                    partition_by=["run_id"])
    DeltaTable(str(path)).alter.add_constraint({"positive": "value > 0"})
    handle = delta_tables.open_handle(path)
    assert handle is not None and not handle.direct
    file = delta_tables.open_run_file(path, "r", schema)
    file.write(pa.table({"run_id": ["r"], "timestep": [1], "value": [2.0]}, schema=schema))
    version = delta_tables.commit_run_files(path, [delta_tables.close_run_file(file)], run_id="r", last_timestep=1,
                                            schema=schema, table=handle)
    assert version == 2
    assert "engineInfo" in _log_entry(path, 2)[0]["commitInfo"]  # type: ignore[operator]
    assert str(_log_entry(path, 2)[0]["commitInfo"]["engineInfo"]).startswith("delta-rs")  # type: ignore[index]


def test_a_schema_change_by_another_writer_is_read_before_the_next_commit(tmp_path: Path) -> None:
    """Another writer widens the schema: the handle reopens the table as it is now (delta-rs reads
    the new metadata) before it appends, and the append lands after that writer's commit."""
    path = tmp_path / "t"
    schema = pa.schema([("run_id", pa.string()), ("timestep", pa.int64()), ("value", pa.float64())])
    write_deltalake(str(path), pa.table({"run_id": ["seed"], "timestep": [0], "value": [1.0]}, schema=schema),
                    partition_by=["run_id"])
    handle = delta_tables.open_handle(path)
    assert handle is not None and handle.direct
    wider = schema.append(pa.field("note", pa.string()))
    write_deltalake(str(path), pa.table({"run_id": ["seed"], "timestep": [1], "value": [1.0], "note": ["x"]},
                                        schema=wider), mode="append", schema_mode="merge", partition_by=["run_id"])
    file = delta_tables.open_run_file(path, "r", schema)
    file.write(pa.table({"run_id": ["r"], "timestep": [1], "value": [2.0]}, schema=schema))
    version = delta_tables.commit_run_files(path, [delta_tables.close_run_file(file)], run_id="r", last_timestep=1,
                                            schema=schema, table=handle)
    assert version == 2
    assert "note" in handle.table.schema().to_arrow().names  # the handle read the new metadata
    rows = DeltaTable(str(path)).to_pyarrow_table()
    assert rows.num_rows == 3
    assert rows.filter(pa.compute.equal(rows["run_id"], "r"))["note"].to_pylist() == [None]


def test_a_read_only_disk_fails_the_commit_with_a_storage_error_and_leaves_no_version(tmp_path: Path) -> None:
    """The log entry cannot be written (a real tmpfs remounted read-only after the data file is
    written): a terminal storage error naming the table, and the log as it was."""
    schema = pa.schema([("run_id", pa.string()), ("timestep", pa.int64()), ("value", pa.float64())])
    with tmpfs(tmp_path / "disk", 16) as disk:
        path = disk / "t"
        write_deltalake(str(path), pa.table({"run_id": ["seed"], "timestep": [0], "value": [1.0]}, schema=schema),
                        partition_by=["run_id"])
        handle = delta_tables.open_handle(path)
        assert handle is not None and handle.direct
        file = delta_tables.open_run_file(path, "r", schema)
        file.write(pa.table({"run_id": ["r"], "timestep": [1], "value": [2.0]}, schema=schema))
        add = delta_tables.close_run_file(file)
        remount(disk, read_only=True)
        try:
            with pytest.raises(ComponentError) as raised:
                delta_tables.commit_run_files(path, [add], run_id="r", last_timestep=1, schema=schema, table=handle)
        finally:
            remount(disk, read_only=False)
        assert raised.value.error_code == "RST-004", raised.value
        assert str(path) in str(raised.value.details)
        assert DeltaTable(str(path)).version() == 0
        assert not [n for n in os.listdir(path / "_delta_log") if n.endswith(".tmp")]


def test_a_handle_left_behind_a_cleaned_up_log_commits_after_the_latest_version_not_into_the_gap(
        tmp_path: Path) -> None:
    """A handle unused past the log's retention: the entries after its version were deleted behind a
    checkpoint. Its next commit must land after the latest version (delta-rs finds it), never as a
    version the clean-up removed."""
    path = tmp_path / "t"
    schema = pa.schema([("run_id", pa.string()), ("timestep", pa.int64()), ("value", pa.float64())])
    write_deltalake(str(path), pa.table({"run_id": ["seed"], "timestep": [0], "value": [1.0]}, schema=schema),
                    partition_by=["run_id"], configuration={"delta.logRetentionDuration": "interval 1 hours"})
    stale = delta_tables.open_handle(path)
    assert stale is not None and stale.version == 0
    for step in range(1, 13):
        write_deltalake(str(path), pa.table({"run_id": ["other"], "timestep": [step], "value": [1.0]}, schema=schema),
                        mode="append", partition_by=["run_id"])
    table = DeltaTable(str(path))
    table.create_checkpoint()
    hours_ago = os.stat(path / "_delta_log").st_mtime - 2 * 3600
    for name in os.listdir(path / "_delta_log"):
        if name.endswith(".json") and int(name.split(".")[0]) < 12:
            os.utime(path / "_delta_log" / name, (hours_ago, hours_ago))
    table.cleanup_metadata()
    assert not (path / "_delta_log" / delta_tables_log_name(1)).exists()

    file = delta_tables.open_run_file(path, "r", schema)
    file.write(pa.table({"run_id": ["r"], "timestep": [1], "value": [2.0]}, schema=schema))
    version = delta_tables.commit_run_files(path, [delta_tables.close_run_file(file)], run_id="r", last_timestep=1,
                                            schema=schema, table=stale)
    assert version == 13
    assert not (path / "_delta_log" / delta_tables_log_name(1)).exists()
    assert DeltaTable(str(path)).to_pyarrow_table().num_rows == 14
    assert stale.direct and stale.version == 13  # reopened, then appended by version


def delta_tables_log_name(version: int) -> str:
    return f"{version:020d}.json"
