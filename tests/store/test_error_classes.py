"""Errors are classified; only transient ones are retried.

A storage failure becomes its registry code (``results_store.error_map``): transient ones (RST-001,
RST-003) are retried with jittered backoff by the store and once more by Prefect; terminal ones
(RST-004/005/006/901) fail the run at their first occurrence. Live keeps what it acknowledged in
its write-ahead log when a commit fails for good, and the next collection commits it once.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import stamina
from deltalake.exceptions import CommitFailedError
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Failed

import tasks.store
from flows.backtest_results import backtest_results
from results_store import delta_tables
from results_store.drive import feed
from results_store.live import wal_directory
from results_store.reading import read_table
from results_store.store import ResultsStore
from results_store.wal import WriteAheadLog
from schemas.errors import ERROR_CODES, ComponentError
from schemas.modes import ModeConfig
from schemas.settings import load_settings
from tests.store.conftest import snapshots
from tests.store.faults import HANG_S, FailingAppend, finish_within, io_hiccup, remount, tmpfs


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    # Retries keep their production number of attempts (4 for a backtest); only the waits go.
    with stamina.set_testing(True, attempts=4, cap=True):
        yield


def _os_error(number: int) -> Any:
    return lambda: OSError(number, os.strerror(number))


@pytest.mark.parametrize(("error", "code"), [
    (_os_error(errno.ENOSPC), "RST-004"),
    (_os_error(errno.EROFS), "RST-004"),
    (_os_error(errno.EACCES), "RST-004"),
    (lambda: pa.ArrowTypeError("column timestep: expected int64, got string"), "RST-006"),
    (lambda: ValueError("a bug in the writer"), "RST-901"),
], ids=["disk-full", "read-only", "permission", "schema", "bug"])
async def test_a_terminal_error_fails_the_run_at_its_first_occurrence(
        tmp_path: Path, mn_mode: ModeConfig, monkeypatch: pytest.MonkeyPatch, error: Any, code: str) -> None:
    failing = FailingAppend(error, tables={"balance_sheet"})
    monkeypatch.setattr(delta_tables, "commit_run_files", failing)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="t",
                         settings=load_settings(mn_mode, data_dir=tmp_path))
    await store.start()
    await feed(store, snapshots(mn_mode, 10))
    with pytest.raises(ComponentError) as failed:
        await store.stop()
    assert failed.value.error_code == code and not failed.value.transient
    assert failing.failures == 1, "a terminal error is never retried"
    assert type(failed.value.original_exception) is type(error())  # the cause is kept


@pytest.mark.parametrize("error", [
    io_hiccup,
    lambda: CommitFailedError("Transaction failed: version already exists"),
], ids=["EAGAIN", "commit-conflict"])
async def test_a_transient_error_is_retried_until_it_clears(
        tmp_path: Path, mn_mode: ModeConfig, monkeypatch: pytest.MonkeyPatch, error: Any) -> None:
    failing = FailingAppend(error, tables={"balance_sheet"}, times=3)
    monkeypatch.setattr(delta_tables, "commit_run_files", failing)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="t",
                         settings=load_settings(mn_mode, data_dir=tmp_path))
    async with store:
        await feed(store, snapshots(mn_mode, 10))
    assert failing.failures == 3
    assert store.summary is not None and store.summary.rows["balance_sheet"] > 0


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_prefect_retries_a_task_only_for_a_transient_code(code: str) -> None:
    state = Failed(data=ComponentError(code, "injected"))
    assert tasks.store.retry_if_transient(None, None, state) is (code in {"RST-001", "RST-003"})  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
async def test_prefect_retries_a_transient_failure_in_the_same_process_and_the_run_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every attempt of the task's first try fails; the retry starts in this process, takes the
    # run's lock again and resumes.
    failing = FailingAppend(io_hiccup, tables={"balance_sheet"}, times=4)
    monkeypatch.setattr(delta_tables, "commit_run_files", failing)
    monkeypatch.setattr(tasks.store.store_snapshots, "retry_delay_seconds", 0)
    state = await backtest_results(mode="btc_basis", run_id="hiccup", start="2024-01-01", end="2024-01-01 12:00",
                                   freq="15min", data_dir=str(tmp_path), return_state=True)
    summary = await state.aresult()
    assert summary["status"] == "finished" and summary["rows"]["raw_snapshots"] == 48
    assert failing.failures == 4
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert next(r.run_count for r in runs if r.name.startswith("store-snapshots")) == 2


@pytest.fixture
def read_only_balance_sheet(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose live balance_sheet table sits on a filesystem of its own, to turn read-only."""
    data = tmp_path / "data"
    with tmpfs(data / "live" / "balance_sheet", size_mb=16):
        yield data


def test_a_live_collection_that_cannot_commit_ends_failed_and_unhealthy_and_the_next_commits_its_wal_once(
        read_only_balance_sheet: Path, mn_mode: ModeConfig) -> None:
    data = read_only_balance_sheet
    settings = load_settings(mn_mode, data_dir=data, execution_mode="live", flush_interval=0.05, batch_size=5)
    snaps = snapshots(mn_mode, 35)

    def collection(fed: list[Any]) -> tuple[ResultsStore, Any]:
        store = ResultsStore(mn_mode, "live", data_dir=data, run_id="l", settings=settings)

        async def collect() -> None:
            async with store:
                await feed(store, fed)

        return store, collect

    first, collect = collection(snaps[:10])
    finish_within(HANG_S, collect)
    assert first.last_committed_timestep() == 9

    remount(data / "live" / "balance_sheet", read_only=True)
    failing, collect = collection(snaps[10:30])
    with pytest.raises(ComponentError) as failed:
        finish_within(HANG_S, collect)
    assert failed.value.error_code == "RST-004" and "Read-only file system" in str(failed.value)
    assert failing.check_component_health()["status"] == "unhealthy"
    acknowledged = failing.get_storage_status()["last_timestep_received"]
    assert acknowledged >= 10
    in_wal = [e.timestep for e in WriteAheadLog(wal_directory(data, "l")).entries(9)]
    assert in_wal == list(range(10, acknowledged + 1)), "every acknowledged snapshot is still in the WAL"

    remount(data / "live" / "balance_sheet", read_only=False)
    again, collect = collection(snaps[acknowledged + 1:])
    finish_within(HANG_S, collect)
    assert again.last_committed_timestep() == 34
    raw = read_table(data, "live", "raw_snapshots", run_id="l").column("timestep").to_pylist()
    assert sorted(raw) == list(range(35)), "each timestep committed exactly once"
    balance = read_table(data, "live", "balance_sheet", run_id="l").to_pylist()
    keys = [(r["timestep"], r["venue"], r["account_type"], r["instrument"]) for r in balance]
    assert len(keys) == len(set(keys)) and {k[0] for k in keys} == set(range(35))
    assert not list(wal_directory(data, "l").glob("seg-*.wal")), "committed segments are deleted"
