"""Live durability under concurrency: WAL appends, backlog reads, seals and releases from several
threads, several runs in one process, collections that fail and are picked up by the next one.

Nothing lost, nothing mixed: every acknowledged snapshot is in the tables exactly once, and no
file holds bytes meant for another (every Parquet file reads, every Delta log and WAL line parses).
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import stamina

from results_store import delta_tables
from results_store.health import HealthTracker
from results_store.live import LiveDurability, wal_directory
from results_store.reading import read_table
from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.modes import ModeConfig
from schemas.settings import load_settings
from tests.store.conftest import snapshots
from tests.store.faults import HANG_S, disk_full, finish_within

TABLES = ["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log", "delta_tracking",
          "leverage_tracking", "funding_tracking", "dust_tracking", "raw_snapshots", "quarantine"]


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=4, cap=True):
        yield


def _item(step: int) -> tuple[int, int, Any, dict[str, Any], float]:
    return step, 1_700_000_000_000_000 + step * 60_000_000, None, {"timestep": step}, 0.0


def _ignore_errors(error: ComponentError, *, event_type: str = "error") -> None:
    pass


async def test_a_snapshot_whose_append_lands_during_a_backlog_read_is_delivered_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
    durability = LiveDurability(tmp_path / "wal", queue=queue, health=HealthTracker("live"), log_error=_ignore_errors)
    delivered: list[int] = []

    # 0 goes through the queue, which is then full: 1 spills to the WAL.
    assert await durability.accept(_item(0))
    queue.put_nowait(_item(0))
    assert not await durability.accept(_item(1))
    # The worker takes 0: the queue has room again, and 1 waits in the backlog.
    delivered.append(queue.get_nowait()[0])

    # 2's append lands in the WAL, and the worker reads the backlog before 2's accept() resumes.
    appended, resume = threading.Event(), threading.Event()
    append = durability._append

    def append_then_pause(item: Any) -> None:
        append(item)
        if item[0] == 2:
            appended.set()
            resume.wait(HANG_S)

    monkeypatch.setattr(durability, "_append", append_then_pause)
    accepting = asyncio.create_task(durability.accept(_item(2)))
    assert await asyncio.to_thread(appended.wait, HANG_S)
    delivered += [entry[0] for entry in await durability.read_backlog(100)]
    resume.set()
    if await accepting:
        delivered.append(2)  # what the store does with True: queue it
    while durability.backlog:
        delivered += [entry[0] for entry in await durability.read_backlog(100)]

    assert delivered == [0, 1, 2]
    await asyncio.to_thread(durability.close)


class ArmedDiskFull:
    """``delta_tables.commit_run_files`` that, once armed for a run, fails that run's n-th next
    table commit with ENOSPC (a terminal error: the collection fails, its WAL stays)."""

    def __init__(self) -> None:
        self._real = delta_tables.commit_run_files
        self._armed: dict[str, int] = {}
        self._lock = threading.Lock()  # tables commit from several writer threads
        self.fired = 0

    def arm(self, run_id: str, after: int) -> None:
        with self._lock:
            self._armed[run_id] = after

    def disarm(self, run_id: str) -> None:
        with self._lock:
            self._armed.pop(run_id, None)

    def __call__(self, path: Path, data: Any, *, run_id: str, **kwargs: Any) -> int | None:
        with self._lock:
            left = self._armed.get(run_id)
            fire = left == 0
            if fire:
                del self._armed[run_id]
                self.fired += 1
            elif left is not None:
                self._armed[run_id] = left - 1
        if fire:
            raise disk_full()
        return self._real(path, data, run_id=run_id, **kwargs)


def _timesteps_per_table(data: Path, run_id: str) -> dict[str, list[int]]:
    return {t: sorted(read_table(data, "live", t, run_id=run_id).column("timestep").to_pylist()) for t in TABLES}


def _assert_no_stray_bytes(data: Path) -> None:
    """Every file the store writes still parses as what it is."""
    for parquet in data.rglob("*.parquet"):
        pq.read_table(parquet)
    for log in data.rglob("_delta_log/*.json"):
        for line in log.read_bytes().splitlines():
            orjson.loads(line)
    for segment in data.rglob("seg-*.wal"):
        for line in segment.read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n"), f"{segment}: a torn line"
            orjson.loads(line)


def test_many_live_runs_spilling_and_failing_at_once_keep_every_acknowledged_snapshot_exactly_once(
        tmp_path: Path, mn_mode: ModeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    runs, collections_per_run, per_collection = [f"s{n}" for n in range(3)], 4, 25
    total = collections_per_run * per_collection
    snaps = snapshots(mn_mode, total)
    data = tmp_path / "data"
    # A tiny queue and batches, so that every collection spills to the WAL and drains it while the
    # engine keeps appending, and commits (seals and releases) run all the time.
    settings = load_settings(mn_mode, data_dir=data, execution_mode="live", queue_size=2, batch_size=3,
                             flush_interval=0.01)
    failures = ArmedDiskFull()
    monkeypatch.setattr(delta_tables, "commit_run_files", failures)
    outcomes: collections.Counter[str] = collections.Counter()

    async def collect(run_id: str, rng: random.Random, count: int) -> None:
        store = ResultsStore(mn_mode, "live", data_dir=data, run_id=run_id, settings=settings)
        try:
            async with store:
                # The WAL replayed what earlier collections acknowledged: the engine goes on after it.
                start = store.get_storage_status()["last_timestep_received"] + 1
                for timestamp, results in snaps[start:start + count]:
                    await store.store_timestep_results(timestamp, results)
                    if rng.random() < 0.3:
                        await asyncio.sleep(0)  # let the worker and the other runs in between
            outcomes["finished"] += 1
        except ComponentError as exc:
            outcomes[exc.error_code] += 1  # RST-004 only, checked below
        finally:
            failures.disarm(run_id)

    async def run(run_id: str, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(collections_per_run):
            if rng.random() < 0.5:
                failures.arm(run_id, after=rng.randrange(40))
            await collect(run_id, rng, per_collection)
        await collect(run_id, rng, total)  # the last one feeds whatever is left and commits it all

    async def all_runs() -> None:
        await asyncio.gather(*(run(run_id, seed) for seed, run_id in enumerate(runs)))

    async def uninterrupted() -> None:
        reference = load_settings(mn_mode, data_dir=tmp_path / "reference", execution_mode="live")
        async with ResultsStore(mn_mode, "live", data_dir=tmp_path / "reference", run_id="ref",
                                settings=reference) as store:
            for timestamp, results in snaps:
                await store.store_timestep_results(timestamp, results)

    finish_within(HANG_S, all_runs)
    finish_within(HANG_S, uninterrupted)

    assert failures.fired and outcomes == {"RST-004": failures.fired, "finished": outcomes["finished"]}, \
        "collections failed where the disk was full, and only there"
    expected = _timesteps_per_table(tmp_path / "reference", "ref")  # rows per timestep, per table
    assert expected["raw_snapshots"] == list(range(total))
    for run_id in runs:
        assert _timesteps_per_table(data, run_id) == expected, f"{run_id}: a timestep lost or doubled"
        assert not list(wal_directory(data, run_id).glob("seg-*.wal")), "every committed segment is deleted"
    _assert_no_stray_bytes(data)
