"""Retries of transient failures injected below the production write path (the store's own
``delta_tables.commit_run_files`` calls); health degrading and recovering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import stamina

from results_store import delta_tables
from results_store.drive import feed
from results_store.events import event_log_path
from results_store.reading import read_table
from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.settings import load_settings
from tests.store.conftest import snapshots
from tests.store.faults import FailingAppend, io_hiccup


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    # Retries keep their production number of attempts; only the waits between them go.
    with stamina.set_testing(True, attempts=4, cap=True):
        yield


class SlowAppend:
    """The real append, sleeping past the write timeout once for one table."""

    def __init__(self, delay: float, table: str = "risk_metrics") -> None:
        self.delay = delay
        self.table = table
        self.slowed = False
        self._real = delta_tables.commit_run_files

    def __call__(self, path: Path, data: Any, **kwargs: Any) -> int | None:
        if path.name == self.table and not self.slowed:
            self.slowed = True
            time.sleep(self.delay)  # the slow storage itself, not a wait for another thread
        return self._real(path, data, **kwargs)


def _events(data_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in event_log_path(data_dir).read_text().splitlines()]


async def test_transient_storage_failures_are_retried_and_logged(tmp_path, mn_mode, monkeypatch):
    failing = FailingAppend(io_hiccup, tables={"balance_sheet"}, times=2)
    monkeypatch.setattr(delta_tables, "commit_run_files", failing)
    settings = load_settings(mn_mode, data_dir=tmp_path)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="retry", settings=settings)
    async with store:
        await feed(store, snapshots(mn_mode, 30))
    assert failing.failures == 2
    assert read_table(tmp_path, "backtest", "balance_sheet", run_id="retry").num_rows > 0
    failures = [e for e in _events(tmp_path) if e["event_type"] == "storage_failed"]
    assert [e["data"]["attempt"] for e in failures] == [1, 2]
    assert all(e["data"]["error_code"] == "RST-001" for e in failures)
    assert store.check_component_health()["error_count"] == 2


async def test_backtest_fails_loudly_after_three_retries(tmp_path, mn_mode, monkeypatch):
    monkeypatch.setattr(delta_tables, "commit_run_files", FailingAppend(io_hiccup, tables={"balance_sheet"}))
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="dead",
                         settings=load_settings(mn_mode, data_dir=tmp_path))
    await store.start()
    await feed(store, snapshots(mn_mode, 10))
    with pytest.raises(ComponentError) as failed:
        await store.stop()
    assert failed.value.error_code == "RST-001"
    assert store.check_component_health()["status"] == "unhealthy"
    assert [e["event_type"] for e in _events(tmp_path)].count("storage_failed") >= 4


async def test_a_write_slower_than_the_timeout_is_rst003_and_is_not_doubled(tmp_path, mn_mode, monkeypatch):
    monkeypatch.setattr(delta_tables, "commit_run_files", SlowAppend(delay=0.6))
    settings = load_settings(mn_mode, data_dir=tmp_path, timeout=0.2)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="slow", settings=settings)
    async with store:
        await feed(store, snapshots(mn_mode, 20))
    assert any(e["event_type"] == "write_timeout" and e["data"]["error_code"] == "RST-003"
               for e in _events(tmp_path))
    risk = read_table(tmp_path, "backtest", "risk_metrics", run_id="slow")
    assert sorted(set(risk.column("timestep").to_pylist())) == list(range(20))
    pairs = list(zip(risk.column("timestep").to_pylist(), risk.column("metric").to_pylist(),
                     risk.column("risk_group").to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs)), "the slow write and its retry must not both land"


async def test_live_health_goes_degraded_when_the_queue_fills_and_back_when_it_drains(tmp_path, mn_mode):
    settings = load_settings(mn_mode, data_dir=tmp_path, queue_size=3, flush_interval=0.1, batch_size=2)
    store = ResultsStore(mn_mode, "live", data_dir=tmp_path, run_id="h", settings=settings)
    snaps = snapshots(mn_mode, 40)
    statuses = []
    async with store:
        assert store.check_component_health()["status"] == "healthy"
        for ts, results in snaps:  # no awaits that yield to the worker in between: the queue overflows
            await store.store_timestep_results(ts, results)
        statuses.append(store.check_component_health()["status"])
        assert store.get_storage_stats()["spilled_backlog"] > 0
        for _ in range(100):
            await asyncio.sleep(0.1)
            if store.last_committed_timestep() == 39:
                break
        statuses.append(store.check_component_health())
    assert statuses[0] == "degraded"
    assert statuses[1]["spilling_to_wal"] is False
    assert statuses[1]["status"] == "healthy"
    assert store.last_committed_timestep() == 39
    raw = read_table(tmp_path, "live", "raw_snapshots", run_id="h")
    assert raw.column("timestep").to_pylist() == list(range(40))
    assert any(e["event_type"] == "queue_full" and e["data"]["error_code"] == "RST-002" for e in _events(tmp_path))


async def test_health_report_has_the_spec_fields(tmp_path, mn_mode):
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="f", settings=load_settings(mn_mode, data_dir=tmp_path))
    async with store:
        report = store.check_component_health()
    for key in ("status", "error_count", "queue_size", "write_count", "last_write_timestamp",
                "avg_processing_time_ms", "error_rate", "memory_usage_mb", "oldest_queued_age_s"):
        assert key in report
    assert report["status"] == "healthy"
