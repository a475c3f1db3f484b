"""Ingesting a snapshot file reads it as the store goes: at most one chunk of parsed snapshots waits in the
store's queue, every line still ends up written, and a store that fails ends the ingest instead of leaving
the reader waiting for room."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from results_store import delta_tables, file_ingest
from results_store.file_ingest import LineAccounting, feed_file
from results_store.reading import read_table
from results_store.simulator.jsonl import write_jsonl
from results_store.simulator.reference import ReferenceEngine
from results_store.store import CHUNK_TIMESTEPS, ResultsStore
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.store.faults import HANG_S, FailingAppend, disk_full, finish_within

MODE = load_mode("pure_lending")


def _file(tmp_path: Path, minutes: int = 60) -> Path:
    path = tmp_path / "run.jsonl"
    write_jsonl(ReferenceEngine(MODE, "2024-01-01", f"2024-01-01 {minutes // 60:02d}:{minutes % 60:02d}", "1min"), path)
    return path


def _store(root: Path, batch_size: int | None = None) -> ResultsStore:
    settings = load_settings(MODE, data_dir=root, execution_mode="backtest", backtest_batch_size=batch_size)
    return ResultsStore(MODE, "backtest", data_dir=root, run_id="r", settings=settings)


def test_the_reader_of_a_file_keeps_one_chunk_at_most_queued_ahead_of_the_store(tmp_path, monkeypatch):
    assert file_ingest.LEAD == CHUNK_TIMESTEPS
    monkeypatch.setattr(file_ingest, "LEAD", 7)
    path = _file(tmp_path)
    queued: list[int] = []

    async def ingest() -> LineAccounting:
        store = _store(tmp_path / "data")
        put = store.store_timestep_results

        async def spy(timestamp: Any, results: dict[str, Any]) -> None:
            queued.append(store.get_queue_size())
            await put(timestamp, results)

        store.store_timestep_results = spy  # type: ignore[method-assign]
        async with store:
            return await feed_file(store, path)

    tally = asyncio.run(ingest())
    assert tally.to_dict() == {"read": 60, "written": 60, "quarantined": 0, "refused": 0}
    assert len(queued) == 60 and max(queued) < 7  # without the limit, the whole file was queued at once
    assert read_table(tmp_path / "data", "backtest", "raw_snapshots", run_id="r")["timestep"].to_pylist() == \
        list(range(60))


def test_a_store_that_fails_while_the_reader_waits_for_room_ends_the_ingest_with_its_error(tmp_path, monkeypatch):
    monkeypatch.setattr(file_ingest, "LEAD", 3)
    monkeypatch.setattr(delta_tables, "commit_run_files", FailingAppend(disk_full))
    path = _file(tmp_path)

    async def ingest() -> LineAccounting:
        async with _store(tmp_path / "data", batch_size=5) as store:
            return await feed_file(store, path)

    with pytest.raises(ComponentError) as caught:
        finish_within(HANG_S, ingest)
    assert caught.value.error_code == "RST-004"
