"""A backtest that cannot write must fail, never hang: on a disk that fills up, when its worker
dies, when recording the failure fails too; its lock is free afterwards, and the same command
completes once the cause is gone."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import stamina
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

import results_store.store as store_module
from flows.backtest_results import backtest_results
from results_store import delta_tables
from results_store.drive import feed, run_snapshots_async
from results_store.run_lock import RunLock
from results_store.runs import latest_run
from results_store.store import ResultsStore
from results_store.summary import RunSummary
from schemas.errors import ComponentError
from schemas.modes import ModeConfig
from schemas.settings import load_settings
from tests.store.conftest import fingerprint, snapshots
from tests.store.faults import HANG_S, FailingAppend, disk_full, fill, finish_within, io_hiccup, tmpfs

TABLES = ["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log", "delta_tracking",
          "leverage_tracking", "funding_tracking", "dust_tracking", "raw_snapshots", "quarantine"]
# How the OS names a full disk, through Python, pyarrow ("[Errno 28] ...") or delta-rs ("(os error 28)").
DISK_FULL = re.compile(r"No space left on device|os error 28|errno 28", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    # Retries keep their production number of attempts; only the waits between them go.
    with stamina.set_testing(True, attempts=4, cap=True):
        yield


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB filesystem of its own, so that filling it fills nothing else."""
    with tmpfs(tmp_path / "disk", size_mb=16) as disk:
        yield disk


def assert_lock_free(store: ResultsStore) -> None:
    """This process can take the run's lock at once: nothing of the failed run still holds it."""
    lock = RunLock(store.root / store.execution_mode / "_locks" / f"{store.run_id}.lock", timeout_s=1)
    lock.acquire()
    lock.release()


def test_a_backtest_whose_disk_fills_up_fails_with_rst004_then_completes_once_space_is_freed(
        small_disk: Path, tmp_path: Path, mn_mode: ModeConfig) -> None:
    steps = 1_500
    snaps = snapshots(mn_mode, steps)
    # Small batches and a queue of one batch: several batches commit before the disk is full, and
    # the engine waits on a full queue when the writer fails.
    settings = load_settings(mn_mode, data_dir=small_disk, backtest_batch_size=100, queue_size=100)
    filler = fill(small_disk, leave_bytes=700 * 1024)

    def attempt() -> Any:
        return run_snapshots_async(mn_mode, snaps, data_dir=small_disk, run_id="full", settings=settings)

    started = time.monotonic()
    with pytest.raises(ComponentError) as first:
        finish_within(HANG_S, attempt)
    assert time.monotonic() - started < HANG_S
    # Prefect retries a task in the same process: the lock must be free, and the disk is still full.
    with pytest.raises(ComponentError) as second:
        finish_within(HANG_S, attempt)
    for failure in (first.value, second.value):
        assert failure.error_code == "RST-004" and not failure.transient
        assert DISK_FULL.search(str(failure)) and "\n" not in str(failure), str(failure)
    committed = delta_tables.count_rows(delta_tables.table_path(small_disk, "backtest", "raw_snapshots"),
                                        run_id="full")
    assert 0 < committed < steps, "the disk filled up mid-run, after some committed batches"

    filler.unlink()
    resumed: RunSummary = finish_within(HANG_S, attempt)
    assert resumed.status == "finished" and resumed.timesteps_skipped > 0
    reference = tmp_path / "reference"
    finish_within(HANG_S, lambda: run_snapshots_async(
        mn_mode, snaps, data_dir=reference, run_id="full",
        settings=load_settings(mn_mode, data_dir=reference, backtest_batch_size=100)))
    for table in TABLES:
        assert fingerprint(small_disk, "backtest", table, "full") == fingerprint(reference, "backtest", table, "full"), table


@pytest.mark.parametrize("error", [disk_full, io_hiccup], ids=["terminal", "transient-until-retries-run-out"])
def test_when_the_worker_dies_the_engine_gets_its_error_instead_of_waiting_on_a_full_queue(
        tmp_path: Path, mn_mode: ModeConfig, monkeypatch: pytest.MonkeyPatch, error: Any) -> None:
    monkeypatch.setattr(delta_tables, "commit_run_files", FailingAppend(error))
    settings = load_settings(mn_mode, data_dir=tmp_path, queue_size=4, backtest_batch_size=2)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="dies", settings=settings)
    snaps = snapshots(mn_mode, 48)

    async def engine() -> tuple[int, ComponentError | None, ComponentError]:
        await store.start()
        accepted, refused = 0, None
        for timestamp, results in snaps:
            try:
                await store.store_timestep_results(timestamp, results)
            except ComponentError as exc:
                refused = exc
                break
            accepted += 1
        with pytest.raises(ComponentError) as stopped:
            await store.stop()
        return accepted, refused, stopped.value

    accepted, refused, stopped = finish_within(HANG_S, engine)
    assert refused is not None and accepted < len(snaps), "the engine hears of the failure while it feeds"
    assert refused is stopped, "store_timestep_results and stop() raise the worker's own error"
    assert refused.error_code == ("RST-004" if error is disk_full else "RST-001")
    assert store.check_component_health()["status"] == "unhealthy"
    assert_lock_free(store)


async def test_the_runs_failure_reads_as_one_line_when_the_storage_error_spans_several(
        tmp_path: Path, mn_mode: ModeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    def delta_rs_style() -> OSError:  # how delta-rs chains causes: one per line, in colour
        return OSError(28, "Generic LocalFileSystem error\n  \x1b[31m↳\x1b[0m No space left on device (os error 28)\n")

    monkeypatch.setattr(delta_tables, "commit_run_files", FailingAppend(delta_rs_style))
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="lines",
                         settings=load_settings(mn_mode, data_dir=tmp_path))
    await store.start()
    await feed(store, snapshots(mn_mode, 5))
    with pytest.raises(ComponentError) as failed:
        await store.stop()
    assert str(failed.value).endswith("Generic LocalFileSystem error ↳ No space left on device (os error 28)")
    assert failed.value.error_code == "RST-004"
    record = latest_run(tmp_path, "backtest", "lines")
    assert record is not None and record["note"] == str(failed.value)


def test_the_lock_is_released_and_the_runs_own_error_raised_even_when_recording_the_failure_fails(
        tmp_path: Path, mn_mode: ModeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(mn_mode, data_dir=tmp_path, backtest_batch_size=10)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="rec", settings=settings)
    snaps = snapshots(mn_mode, 30)

    def disk_full_on_record(*args: Any, **kwargs: Any) -> None:
        raise disk_full()

    async def fail_then_run_again() -> tuple[ComponentError, RunSummary]:
        await store.start()
        # From here on the disk is full: the tables and the run's failure record cannot be written.
        monkeypatch.setattr(delta_tables, "commit_run_files", FailingAppend(disk_full))
        monkeypatch.setattr(store_module, "append_run_record", disk_full_on_record)
        await feed(store, snaps)
        with pytest.raises(ComponentError) as failed:
            await store.stop()
        monkeypatch.undo()
        # Space is back. Prefect would retry in this same process: the run's lock must be free.
        again = await run_snapshots_async(mn_mode, snaps, data_dir=tmp_path, run_id="rec", settings=settings)
        return failed.value, again

    failed, again = finish_within(HANG_S, fail_then_run_again)
    assert failed.error_code == "RST-004" and DISK_FULL.search(str(failed))
    assert again.status == "finished" and again.rows["raw_snapshots"] == 30


def test_a_finalize_that_cannot_write_fails_the_run_with_rst004_and_releases_the_lock(
        tmp_path: Path, mn_mode: ModeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    compact_run = delta_tables.compact_run

    def disk_full_on_compact(path: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if path.name == "runs":  # the registry merges its own records with it: that still works
            return compact_run(path, *args, **kwargs)
        raise disk_full()

    monkeypatch.setattr(delta_tables, "compact_run", disk_full_on_compact)
    settings = load_settings(mn_mode, data_dir=tmp_path, backtest_batch_size=10)
    snaps = snapshots(mn_mode, 30)
    with pytest.raises(ComponentError) as failed:
        finish_within(HANG_S, lambda: run_snapshots_async(mn_mode, snaps, data_dir=tmp_path, run_id="fin",
                                                          settings=settings))
    assert failed.value.error_code == "RST-004"
    record = latest_run(tmp_path, "backtest", "fin")
    assert record is not None and record["status"] == "failed" and "RST-004" in record["note"]

    monkeypatch.undo()
    again = finish_within(HANG_S, lambda: run_snapshots_async(mn_mode, snaps, data_dir=tmp_path, run_id="fin",
                                                              settings=settings))
    assert again.status == "finished" and again.timesteps_skipped == 30


async def _store_task_runs(flow_run_id: UUID | None) -> int:
    assert flow_run_id is not None
    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return next(r.run_count for r in runs if r.name.startswith("store-snapshots"))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
async def test_a_backtest_flow_on_a_full_disk_ends_failed_with_rst004_in_one_line_and_is_not_retried(
        small_disk: Path) -> None:
    filler = fill(small_disk, leave_bytes=700 * 1024)
    params: dict[str, Any] = {"mode": "usdt_market_neutral", "run_id": "full-flow", "start": "2024-01-01",
                              "end": "2024-01-02", "freq": "1min", "data_dir": str(small_disk), "batch_size": 100}
    state = await asyncio.wait_for(backtest_results(**params, return_state=True), HANG_S)
    assert state.is_failed()
    message = str(state.message)
    assert "RST-004" in message and DISK_FULL.search(message) and "\n" not in message, message
    assert await _store_task_runs(state.state_details.flow_run_id) == 1, "a full disk is terminal: no retry"

    filler.unlink()
    summary = await asyncio.wait_for(backtest_results(**params), HANG_S)
    assert summary["status"] == "finished" and summary["rows"]["raw_snapshots"] == 24 * 60
