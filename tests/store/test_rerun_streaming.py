"""A rerun reads its raw snapshots a chunk at a time and still checks all of them before it writes anything:
the same tables whatever the layout of the files (the store's, sorted; a merge's, interleaved), damage
anywhere refused up front, and memory that does not grow with the run."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, WriterProperties, write_deltalake

from results_store import delta_tables, rerun
from results_store.drive import run_snapshots
from results_store.reading import read_table
from results_store.rerun import read_raw_snapshots, rederive_run
from results_store.runs import latest_run
from results_store.store import CHUNK_TIMESTEPS, ResultsStore
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.store.conftest import fingerprint, snapshots
from tests.store.test_rerun_safety import _corrupt_payload

MODE = load_mode("usdt_market_neutral")
TABLES = ["raw_snapshots", *(t.value for t in MODE.results_store.result_types)]


def _backtest(root: Path, run_id: str, steps: int, batch: int = 40) -> None:
    run_snapshots(MODE, snapshots(MODE, steps), data_dir=root, run_id=run_id,
                  settings=load_settings(MODE, data_dir=root, backtest_batch_size=batch))


def _small_chunks(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    for name in ("RERUN_CHUNK", "READ_ROWS", "WINDOW_ROWS"):
        monkeypatch.setattr(rerun, name, rows)


def _interleave(root: Path, run_id: str) -> None:
    """Rewrite the run's raw snapshots shuffled, in row groups of 16 rows: no group, nor the files, in order."""
    path = delta_tables.table_path(root, "backtest", "raw_snapshots")
    table = DeltaTable(str(path)).to_pyarrow_table(filters=[("run_id", "=", run_id)])
    order = list(range(table.num_rows))
    random.Random(5).shuffle(order)
    write_deltalake(str(path), table.take(pa.array(order)), mode="overwrite", predicate=f"run_id = '{run_id}'",
                    partition_by=["run_id"], writer_properties=WriterProperties(max_row_group_size=16))


def test_a_rerun_reads_the_raw_snapshots_in_timestep_order_whatever_the_layout(tmp_path, monkeypatch):
    _small_chunks(monkeypatch, 25)  # many chunks, windows and row groups for 120 timesteps
    _backtest(tmp_path, "S", 120)
    _interleave(tmp_path, "S")
    raw = read_raw_snapshots(tmp_path, "backtest", "S")
    assert not raw.ordered and len(raw) == 120 and (raw.first_timestep, raw.last_timestep) == (0, 119)
    assert [step for step, _, _ in raw] == list(range(120))

    _backtest(tmp_path / "sorted", "S", 120)
    sorted_raw = read_raw_snapshots(tmp_path / "sorted", "backtest", "S")
    assert sorted_raw.ordered and len(sorted_raw.groups) == 3  # one file of one row group per batch of 40
    assert [(s, t, r) for s, t, r in sorted_raw] == [(s, t, r) for s, t, r in raw]


@pytest.mark.parametrize("layout", ["sorted", "interleaved"])
def test_a_rerun_into_a_new_run_and_in_place_re_derives_the_same_tables_read_in_chunks(tmp_path, monkeypatch, layout):
    _small_chunks(monkeypatch, 25)
    _backtest(tmp_path, "S", 120)
    original = {t: fingerprint(tmp_path, "backtest", t, "S") for t in TABLES}
    if layout == "interleaved":
        _interleave(tmp_path, "S")
    summary = rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="S", new_run_id="S-copy")
    assert summary.timesteps_written == 120
    rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="S")
    for table in TABLES:
        rows, _ = original[table]
        assert fingerprint(tmp_path, "backtest", table, "S")[0] == rows, table
        assert fingerprint(tmp_path, "backtest", table, "S-copy")[0] == rows, table
        # The same rows but for the run id: a copy's rows are the run's.
        mine = read_table(tmp_path, "backtest", table, run_id="S").drop_columns(["run_id"])
        copy = read_table(tmp_path, "backtest", table, run_id="S-copy").drop_columns(["run_id"])
        assert mine.equals(copy), table
    assert fingerprint(tmp_path, "backtest", "balance_sheet", "S") == original["balance_sheet"]


@pytest.mark.parametrize("new_run_id", [None, "C-copy"])
def test_a_damaged_payload_in_the_last_chunk_is_refused_before_anything_is_written(tmp_path, monkeypatch, new_run_id):
    _small_chunks(monkeypatch, 10)
    _backtest(tmp_path, "C", 60)
    _corrupt_payload(tmp_path, "C", 58)
    versions = {t: delta_tables.version(delta_tables.table_path(tmp_path, "backtest", t)) for t in [*TABLES, "quarantine"]}
    with pytest.raises(ComponentError) as caught:
        rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="C", new_run_id=new_run_id)
    assert caught.value.error_code == "RST-005" and caught.value.details["timesteps"] == [58]
    assert {t: delta_tables.version(delta_tables.table_path(tmp_path, "backtest", t))
            for t in [*TABLES, "quarantine"]} == versions
    assert latest_run(tmp_path, "backtest", "C-copy") is None


def test_reading_a_runs_raw_snapshots_holds_a_row_group_of_payloads_at_most_not_the_run(tmp_path, monkeypatch):
    _small_chunks(monkeypatch, 100)
    _backtest(tmp_path, "M", 3_000, batch=500)  # six files of one row group each
    payload_bytes = read_table(tmp_path, "backtest", "raw_snapshots", run_id="M")["payload"].nbytes
    pool = pa.default_memory_pool()
    base = pool.bytes_allocated()
    raw = read_raw_snapshots(tmp_path, "backtest", "M")
    held_after_check = pool.bytes_allocated() - base
    peak = 0
    for step, _, _ in raw:
        if step % 50 == 0:
            peak = max(peak, pool.bytes_allocated() - base)
    assert held_after_check < payload_bytes / 10
    assert peak < payload_bytes / 3, (peak, payload_bytes)


@pytest.mark.parametrize(("configured", "queued"), [("20000", CHUNK_TIMESTEPS), ("100", 100)])
def test_a_backtest_rerun_into_a_new_run_queues_at_most_one_chunk_of_stored_snapshots(tmp_path, monkeypatch,
                                                                                       configured, queued):
    _backtest(tmp_path, "Q", 30)
    seen: list[int] = []
    original = ResultsStore.__init__

    def spy(self: ResultsStore, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(self.settings.queue_size)

    monkeypatch.setattr(ResultsStore, "__init__", spy)
    monkeypatch.setenv("RESULTS_STORE_QUEUE_SIZE", configured)
    summary = rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="Q", new_run_id="Q-copy")
    assert seen == [queued] and summary.timesteps_written == 30
