"""A run id names one run: its mode, its config and its inputs. A resume with other inputs is refused
(RST-301, saying what differs); the same inputs resume; an engine that gives no inputs works as before."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from results_store import delta_tables
from results_store.drive import backtest_inputs, feed
from results_store.reading import read_table
from results_store.runs import append_run_record, latest_run, read_runs, runs_path
from results_store.simulator.jsonl import read_jsonl, write_jsonl
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from schemas.store_tables import RUNS_SCHEMA
from tests.store.conftest import snapshots

MODE = "pure_lending"


def _inputs(**changes: Any) -> dict[str, Any]:
    return backtest_inputs(snapshot_file=None, **{"start": "2024-01-01", "end": "2024-01-08", "freq": "1min",
                                                  "seed": 0, **changes})


def _store(data_dir: Path, run_id: str, inputs: dict[str, Any] | None) -> ResultsStore:
    mode = load_mode(MODE)
    return ResultsStore(mode, "backtest", data_dir=data_dir, run_id=run_id, run_inputs=inputs,
                        settings=load_settings(mode, data_dir=data_dir, backtest_batch_size=20))


async def _run(data_dir: Path, run_id: str, inputs: dict[str, Any] | None, steps: int,
               source: Path | None = None) -> ResultsStore:
    """A run through the store: the first ``steps`` snapshots of the reference engine, or of ``source``."""
    snaps = list(read_jsonl(source))[:steps] if source is not None else snapshots(load_mode(MODE), steps)
    store = _store(data_dir, run_id, inputs)
    async with store:
        await feed(store, snaps)
    return store


def _raw_steps(data_dir: Path, run_id: str) -> list[int]:
    return sorted(read_table(data_dir, "backtest", "raw_snapshots", run_id=run_id).column("timestep").to_pylist())


async def test_resuming_a_run_with_another_seed_is_refused_and_says_what_differs(tmp_path):
    await _run(tmp_path, "r", _inputs(seed=0), 30)
    finished = latest_run(tmp_path, "backtest", "r")

    with pytest.raises(ComponentError) as refused:
        await _store(tmp_path, "r", _inputs(seed=7)).start()
    assert refused.value.error_code == "RST-301"
    assert "seed 7 != 0" in str(refused.value)
    assert "start" not in str(refused.value)  # only what differs is named
    assert latest_run(tmp_path, "backtest", "r") == finished  # the refused start recorded nothing
    assert _raw_steps(tmp_path, "r") == list(range(30))


async def test_resuming_a_run_with_another_period_names_the_start_and_the_end(tmp_path):
    await _run(tmp_path, "r", _inputs(), 30)
    with pytest.raises(ComponentError) as refused:
        await _store(tmp_path, "r", _inputs(start="2024-03-01", end="2024-03-15")).start()
    message = str(refused.value)
    assert refused.value.error_code == "RST-301"
    assert "start 2024-03-01T00:00:00+00:00 != 2024-01-01T00:00:00+00:00" in message
    assert "end 2024-03-15T00:00:00+00:00 != 2024-01-08T00:00:00+00:00" in message


async def test_another_snapshot_file_under_a_taken_run_id_is_refused_and_the_same_content_resumes(tmp_path):
    mode = load_mode(MODE)
    first, other, copy = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "elsewhere" / "a.jsonl"
    write_jsonl(ReferenceEngine(mode, "2024-01-01", "2024-01-02", "1h", seed=3).iter_snapshots(), first)
    write_jsonl(ReferenceEngine(mode, "2024-01-01", "2024-01-02", "1h", seed=4).iter_snapshots(), other)
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())

    def from_file(path: Path) -> dict[str, Any]:
        return backtest_inputs(snapshot_file=str(path), start="ignored", end="ignored", freq="ignored", seed=0)

    await _run(tmp_path, "f", from_file(first), 10, first)
    with pytest.raises(ComponentError) as refused:
        await _store(tmp_path, "f", from_file(other)).start()
    assert refused.value.error_code == "RST-301" and "snapshot_sha256" in str(refused.value)
    resumed = await _run(tmp_path, "f", from_file(copy), 24, copy)  # the same bytes under another path: a resume
    assert resumed.summary is not None and resumed.summary.timesteps_skipped == 10
    assert _raw_steps(tmp_path, "f") == list(range(24))


async def test_a_resume_with_the_same_inputs_continues_the_run(tmp_path):
    await _run(tmp_path, "r", _inputs(), 40)  # the interrupted first attempt got this far
    # The same inputs spelled differently are the same inputs.
    again = await _run(tmp_path, "r", _inputs(start="2024-01-01 00:00", freq="60s"), 100)
    assert again.summary is not None
    assert again.summary.timesteps_skipped == 40 and again.summary.timesteps_written == 60
    assert _raw_steps(tmp_path, "r") == list(range(100))
    record = latest_run(tmp_path, "backtest", "r")
    assert record is not None and record["status"] == "finished" and record["inputs"] == _inputs()


async def test_an_engine_that_gives_no_inputs_resumes_as_it_always_did(tmp_path):
    await _run(tmp_path, "plain", None, 20)
    second = await _run(tmp_path, "plain", None, 40)
    assert second.summary is not None and second.summary.timesteps_skipped == 20
    assert latest_run(tmp_path, "backtest", "plain")["inputs"] is None
    # A run recorded with inputs, resumed by an engine that states none: nothing to compare, as before.
    await _run(tmp_path, "given", _inputs(), 20)
    third = await _run(tmp_path, "given", None, 40)
    assert third.summary is not None and third.summary.timesteps_skipped == 20
    assert latest_run(tmp_path, "backtest", "given")["inputs"] == _inputs()


def test_a_registry_table_from_before_inputs_were_recorded_is_read_and_extended(tmp_path):
    legacy_schema = pa.schema([f for f in RUNS_SCHEMA if f.name != "inputs_json"])
    legacy = {"run_id": "old", "mode": MODE, "execution_mode": "backtest", "status": "finished", "config_json": "{}",
              "config_hash": "abc", "code_version": "0.1.0", "parent_run_id": None,
              "started_at": datetime(2024, 1, 1, tzinfo=UTC), "finished_at": datetime(2024, 1, 1, 1, tzinfo=UTC),
              "row_counts_json": '{"balance_sheet": 3}', "table_versions_json": "{}", "note": "finished",
              "recorded_at": datetime(2024, 1, 1, 1, tzinfo=UTC)}
    path = runs_path(tmp_path, "backtest")
    write_deltalake(str(path), pa.Table.from_pylist([legacy], schema=legacy_schema), partition_by=["run_id"])

    old = latest_run(tmp_path, "backtest", "old")
    assert old is not None and old["inputs"] is None and old["row_counts"] == {"balance_sheet": 3}

    append_run_record(tmp_path, "backtest", run_id="new", mode=MODE, status="running", config_json={},
                      config_hash="def", started_at=datetime(2024, 2, 1, tzinfo=UTC), inputs={"seed": 7})
    assert latest_run(tmp_path, "backtest", "new")["inputs"] == {"seed": 7}
    assert latest_run(tmp_path, "backtest", "old")["inputs"] is None
    assert sorted(read_runs(tmp_path, "backtest")["run_id"]) == ["new", "old"]
    assert delta_tables.count_rows(path) == 2
