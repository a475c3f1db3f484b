"""Live compaction by policy: a day of one-minute collections, then the nightly retention; and the store's wiring.

The day is driven through the library the store itself uses for a live collection (``BatchWriter``
commits one minute's batch, ``LiveCompaction`` is told of it), with a clock the test controls: no
sleeping, and the whole day in well under a minute. The table is raw_snapshots, where the old
every-collection compaction took 72x the data's size after an hour.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from results_store import checksums, compaction, delta_tables, retention
from results_store.batch_writer import BatchWriter, PreparedBatch
from results_store.compaction import LiveCompaction, last_timestamp_us
from results_store.drive import collect_pending
from results_store.simulator.live_source import ReferenceLiveSource
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from schemas.modes import load_mode
from schemas.settings import load_settings
from schemas.store_tables import RAW_SNAPSHOTS

MODE = "pure_lending"
DAY = 1_440


def _sizes(table_dir: Path) -> dict[str, int]:
    """Bytes on disk of the table's data files, its Delta log and its checksum manifest."""
    found = {"data": 0, "log": 0, "manifest": 0}
    for file in table_dir.rglob("*"):
        if file.is_file():
            head = file.relative_to(table_dir).parts[0]
            found["log" if head == "_delta_log" else "manifest" if head == "_checksums" else "data"] += file.stat().st_size
    return found


def _written(table_dir: Path) -> tuple[int, int]:
    """Bytes of every data file ever added to the table, from its log: (appended, rewritten by compactions)."""
    appended = rewritten = 0
    for log in (table_dir / "_delta_log").glob("*.json"):
        for line in log.read_bytes().splitlines():
            if line.startswith(b'{"add"'):
                size = int(line.split(b'"size":', 1)[1].split(b",", 1)[0])
                if b"/part-" in line.split(b'"partitionValues"', 1)[0]:
                    appended += size
                else:
                    rewritten += size
    return appended, rewritten


class _Day:
    """One live run's minutes through the store's own batch writer and compaction policy."""

    def __init__(self, root: Path, run_id: str, anchor: pd.Timestamp, minutes: int) -> None:
        config = load_mode(MODE)
        settings = load_settings(config, data_dir=root, execution_mode="live", tune_allocators=False)
        self.paths = {RAW_SNAPSHOTS: root / "live" / RAW_SNAPSHOTS}
        self.paths[RAW_SNAPSHOTS].parent.mkdir(parents=True, exist_ok=True)
        self.writer = BatchWriter(mode=config, settings=settings, run_id=run_id, table_paths=self.paths)
        engine = ReferenceEngine(config, anchor, anchor + pd.Timedelta(minutes=minutes), "1min")
        # Prepared once (flatten, validate, payloads), then committed a minute at a time.
        entries = [(i, ts.value // 1000, ts, snapshot, 0.0) for i, (ts, snapshot) in enumerate(engine.iter_snapshots())]
        self.raw = self.writer.prepare(entries).tables[RAW_SNAPSHOTS]
        self.steps = self.raw.column("timestep").to_numpy()
        # One collection a minute, on the policy's clock too (its checkpoints are due by time as well).
        self.minute = 0
        self.policy = LiveCompaction(self.paths, run_id, clock=lambda: self.minute * 60.0)
        self.policy.start()  # as the store does before a run's first commit

    def collect(self, minute: int) -> None:
        """One collection: the minute's snapshot committed, then the policy told of it."""
        self.minute = minute
        lo, hi = np.searchsorted(self.steps, minute), np.searchsorted(self.steps, minute, side="right")
        batch = self.raw.slice(int(lo), int(hi - lo))
        outcome = self.writer.commit(PreparedBatch(minute, minute, 1, {RAW_SNAPSHOTS: batch}, 0))
        self.policy.after_commit(outcome.versions, last_timestamp_us(batch))


def test_a_day_of_one_minute_collections_ends_in_one_file_and_about_its_data_size_on_disk(tmp_path):
    root = tmp_path / "data"
    # Today (UTC), so that the nightly pass below runs hours after the roll-over in real time too.
    anchor = pd.Timestamp(datetime.now(UTC)).floor("1D")
    day = _Day(root, "live-day", anchor, DAY)
    table = day.paths[RAW_SNAPSHOTS]
    for minute in range(DAY):
        day.collect(minute)
    files = delta_tables.table_files(table).runs(["live-day"])[0][1]
    # Never a compaction per collection: the appends were merged once every 32 of them.
    assert [s["step"] for s in day.policy.done] == ["merge"] * (DAY // compaction.LIVE_MERGE_FILES)
    assert len(files) == DAY // compaction.LIVE_MERGE_FILES and all(not compaction.is_append(f.path) for f in files)

    # 00:00 the next day: the next day's run commits its first minute and compacts the finished day.
    tomorrow = _Day(root, "live-day-2", anchor + pd.Timedelta(days=1), 1)
    tomorrow.collect(0)
    assert [(s["run_id"], s["step"], s["rows"]) for s in tomorrow.policy.done] == [("live-day", "finished day", DAY)]
    [final] = delta_tables.table_files(table).runs(["live-day"])[0][1]
    assert Path(final.path).name.startswith(delta_tables.COMPACTED_PREFIX)

    # The nightly retention (04:00 of the controlled clock): vacuum removes every file the day replaced.
    nightly = retention.run_retention(root, "live", now=anchor + pd.Timedelta(days=1, hours=4), data_dir=root)
    assert nightly.vacuumed_files == DAY + DAY // compaction.LIVE_MERGE_FILES
    assert checksums.verify(root, ["live"], all_versions=True, in_flight_seconds=0).ok

    # The live data's size: the day's rows written once, as one Parquet file with the store's settings.
    rows = delta_tables.read(table, run_id="live-day").sort_by("timestep")
    assert rows.num_rows == DAY and rows.column("timestep").to_pylist() == list(range(DAY))
    reference = tmp_path / "day.parquet"
    pq.write_table(rows.drop_columns(["run_id"]), reference, compression="zstd", write_page_checksum=True,
                   row_group_size=delta_tables.ROW_GROUP_ROWS)
    live_size = reference.stat().st_size
    disk = _sizes(table)
    day_files = sum(f.stat().st_size for f in (table / "run_id=live-day").iterdir())
    assert day_files <= 1.5 * live_size, (day_files, live_size)
    # Bytes written over the day: each row appended once, merged once, compacted once. Rewriting the
    # day at every collection was quadratic (the day's data ~720 times over); this is under the appends.
    appended, rewritten = _written(table)
    assert rewritten <= appended
    # The log: one commit per minute (and per merge), a checkpoint every 100 versions; kept for the window.
    log = os.listdir(table / "_delta_log")
    commits = sum(1 for name in log if name.endswith(".json"))
    checkpoints = sum(1 for name in log if name.endswith(".checkpoint.parquet"))
    assert commits >= DAY + DAY // compaction.LIVE_MERGE_FILES and checkpoints >= commits // 100
    assert delta_tables.open_table(table).metadata().configuration["delta.logRetentionDuration"] == "interval 168 hours"
    print(f"\nlive day of {DAY} collections, raw_snapshots: data {day_files:,} B on disk vs {live_size:,} B written once "
          f"({day_files / live_size:.2f}x); written: {appended:,} B appended, {rewritten:,} B by compactions; "
          f"log {disk['log']:,} B in {commits} commits "
          f"and {checkpoints} checkpoints; manifest {disk['manifest']:,} B")


@pytest.mark.parametrize("merge_files", [4])
def test_the_store_compacts_a_live_run_by_policy_never_each_collection_and_at_the_day_roll_over(tmp_path, merge_files):
    """Through ResultsStore itself, one collection per minute across midnight (a run id spanning days)."""
    config = load_mode(MODE)
    root = tmp_path / "data"
    anchor = pd.Timestamp("2024-05-01 23:50", tz="UTC")
    source = ReferenceLiveSource(config, anchor, "1min")
    settings = load_settings(config, data_dir=root, execution_mode="live", tune_allocators=False)
    done: list[list[dict[str, object]]] = []

    async def collect(minute: int) -> None:
        store = ResultsStore(config, "live", data_dir=root, run_id="spans-days", settings=settings)
        assert store._live_compaction is not None
        store._live_compaction.merge_files = merge_files
        async with store:
            await collect_pending(store, source, (anchor + pd.Timedelta(minutes=minute)).to_pydatetime())
        done.append(store._live_compaction.done)

    for minute in range(12):  # 23:50 ... 00:01
        asyncio.run(collect(minute))
    steps = [[(a["table"], a["step"]) for a in actions] for actions in done]
    assert sum(1 for s in steps if s) < len(steps) / 2  # most collections compact nothing
    roll_over = next(i for i, s in enumerate(steps) if any(step == "day" for _, step in s))
    assert roll_over == 10  # the first collection of 2024-05-02
    raw = delta_tables.table_files(root / "live" / RAW_SNAPSHOTS).runs(["spans-days"])[0][1]
    day_file = [f for f in raw if Path(f.path).name.startswith(delta_tables.COMPACTED_PREFIX)]
    assert len(day_file) == 1 and day_file[0].num_records == 10  # 23:50..23:59, the day that was over
    rows = delta_tables.read(root / "live" / RAW_SNAPSHOTS, run_id="spans-days")
    assert sorted(rows.column("timestep").to_pylist()) == list(range(12))
    # A filter on any column finds its rows in compacted, merged and appended files alike (each file's
    # statistics cover every column).
    sheet = delta_tables.read(root / "live" / "balance_sheet", run_id="spans-days")
    asset = sheet.column("asset")[0].as_py()
    found = delta_tables.read(root / "live" / "balance_sheet", run_id="spans-days", filter=pc.field("asset") == asset)
    assert found.num_rows == pc.sum(pc.equal(sheet.column("asset"), asset)).as_py() > 0
    assert checksums.verify(root, ["live"], all_versions=True, in_flight_seconds=0).ok
