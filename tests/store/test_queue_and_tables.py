"""The store's queue, ordering and table layout, against real Delta tables."""

from __future__ import annotations

import asyncio
import copy
import hashlib
from pathlib import Path

import orjson
import pytest

from results_store import delta_tables
from results_store.batch_writer import FINALIZE_MAX_FILES
from results_store.drive import feed
from results_store.events import event_log_path
from results_store.reading import read_table
from results_store.runs import latest_run
from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.store.conftest import snapshots


def _settings(mode, tmp_path: Path, **kw):
    return load_settings(mode, data_dir=tmp_path, **kw)


async def test_timesteps_are_written_in_fifo_order(tmp_path, mn_mode):
    snaps = snapshots(mn_mode, 300)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="fifo",
                         settings=_settings(mn_mode, tmp_path, backtest_batch_size=64, queue_size=16))
    async with store:
        await feed(store, snaps)
    raw = read_table(tmp_path, "backtest", "raw_snapshots", run_id="fifo")
    assert raw.column("timestep").to_pylist() == list(range(300))
    balance = read_table(tmp_path, "backtest", "balance_sheet", run_id="fifo")
    assert sorted(set(balance.column("timestep").to_pylist())) == list(range(300))
    assert store.summary is not None and store.summary.timesteps_received == 300


async def test_out_of_order_input_is_refused_not_reordered(tmp_path, mn_mode):
    snaps = snapshots(mn_mode, 5)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="order", settings=_settings(mn_mode, tmp_path))
    async with store:
        for ts, results in snaps[:3]:
            await store.store_timestep_results(ts, results)
        with pytest.raises(ComponentError) as repeated:
            await store.store_timestep_results(snaps[1][0], snaps[1][1])
        assert repeated.value.error_code == "RST-103"
        assert "timestep 1 after timestep 2" in str(repeated.value)
        earlier = dict(snaps[3][1], timestep=3)
        with pytest.raises(ComponentError) as backwards:
            await store.store_timestep_results(snaps[0][0], earlier)
        assert backwards.value.error_code == "RST-103"
        assert "earlier than the previous" in str(backwards.value)
        await store.store_timestep_results(snaps[3][0], snaps[3][1])
    raw = read_table(tmp_path, "backtest", "raw_snapshots", run_id="order")
    assert raw.column("timestep").to_pylist() == [0, 1, 2, 3]


async def test_a_four_type_mode_writes_exactly_four_result_tables(tmp_path):
    mode = load_mode("pure_lending")
    async with ResultsStore(mode, "backtest", data_dir=tmp_path, run_id="four",
                            settings=_settings(mode, tmp_path)) as store:
        await feed(store, snapshots(mode, 50))
    tables = sorted(p.name for p in (tmp_path / "backtest").iterdir() if (p / "_delta_log").is_dir())
    assert tables == sorted(["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log",
                             "raw_snapshots", "quarantine", "runs"])


async def test_quarantine_takes_bad_rows_and_keeps_the_good_ones(tmp_path, mn_mode):
    snaps = copy.deepcopy(snapshots(mn_mode, 40))
    snaps[10][1]["risk_monitor"]["risk_metrics"]["ltv_risk"]["current_ltv"] = 1.7
    snaps[20][1]["position_monitor"]["wallet"]["USDT"] = float("nan")
    del snaps[30][1]["exposure_monitor"]["net_delta"]
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="q", settings=_settings(mn_mode, tmp_path))
    async with store:
        await feed(store, snaps)
    quarantine = read_table(tmp_path, "backtest", "quarantine", run_id="q").to_pylist()
    by_step = {(r["timestep"], r["result_type"], r["rule"]) for r in quarantine}
    assert (10, "risk_metrics", "ltv_in_unit_interval") in by_step
    assert (20, "balance_sheet", "finite") in by_step
    assert any(step == 30 and rt == "snapshot" for step, rt, _ in by_step)
    snapshot_row = next(r for r in quarantine if r["timestep"] == 30)
    assert snapshot_row["error_code"] == "RST-101" and "net_delta" in snapshot_row["message"]
    # the rest of those timesteps and every other timestep are written
    risk = read_table(tmp_path, "backtest", "risk_metrics", run_id="q")
    assert set(risk.column("timestep").to_pylist()) == set(range(40)) - {10, 30}
    balance = read_table(tmp_path, "backtest", "balance_sheet", run_id="q").to_pylist()
    assert {r["timestep"] for r in balance} == set(range(40)) - {30}
    assert not any(r["timestep"] == 20 and r["asset"] == "USDT" and r["venue"] == "wallet" for r in balance)
    raw = read_table(tmp_path, "backtest", "raw_snapshots", run_id="q")
    assert 30 not in raw.column("timestep").to_pylist()
    events = [orjson.loads(line) for line in event_log_path(tmp_path).read_text().splitlines()]
    codes = {e["data"].get("error_code") for e in events if e["event_type"] == "error"}
    assert {"RST-101", "RST-102"} <= codes


async def test_strict_mode_fails_the_run_instead_of_quarantining(tmp_path, mn_mode):
    snaps = copy.deepcopy(snapshots(mn_mode, 20))
    snaps[5][1]["risk_monitor"]["risk_metrics"]["ltv_risk"]["current_ltv"] = -0.2
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="strict",
                         settings=_settings(mn_mode, tmp_path, strict=True))
    await store.start()
    await feed(store, snaps)
    with pytest.raises(ComponentError) as failed:
        await store.stop()
    assert failed.value.error_code == "RST-102"
    assert latest_run(tmp_path, "backtest", "strict")["status"] == "failed"


async def test_backtest_waits_when_the_queue_is_full_and_drops_nothing(tmp_path, mn_mode):
    snaps = snapshots(mn_mode, 200)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="bp",
                         settings=_settings(mn_mode, tmp_path, queue_size=4, backtest_batch_size=50))
    max_seen = 0
    async with store:
        for ts, results in snaps:
            await store.store_timestep_results(ts, results)
            max_seen = max(max_seen, store.get_queue_size())
    assert max_seen <= 4
    assert store.summary is not None and store.summary.rows["raw_snapshots"] == 200


async def test_same_run_id_with_another_config_is_a_run_conflict(tmp_path, mn_mode):
    async with ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="c",
                            settings=_settings(mn_mode, tmp_path)) as store:
        await feed(store, snapshots(mn_mode, 5))
    other = load_mode("btc_basis")
    with pytest.raises(ComponentError) as conflict:
        await ResultsStore(other, "backtest", data_dir=tmp_path, run_id="c", settings=_settings(other, tmp_path)).start()
    assert conflict.value.error_code == "RST-301"


async def test_finalize_merges_a_run_of_many_batches_into_one_file_per_table_and_records_it(tmp_path, mn_mode):
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="fin",
                         settings=_settings(mn_mode, tmp_path, backtest_batch_size=10))
    async with store:
        await feed(store, snapshots(mn_mode, 200))
    summary = store.summary
    assert summary is not None
    assert summary.commits["balance_sheet"] == 20 > FINALIZE_MAX_FILES
    assert all(n <= 1 for n in summary.data_files.values())
    record = latest_run(tmp_path, "backtest", "fin")
    assert record["status"] == "finished"
    assert record["row_counts"]["raw_snapshots"] == 200
    assert record["table_versions"]["balance_sheet"] == summary.table_versions["balance_sheet"]
    rows = await store.retrieve_results({"result_type": "leverage_tracking", "run_id": "fin"})
    assert len(rows) == 200 and rows["timestep"].iloc[0] == 0


async def test_a_run_of_a_few_batches_keeps_the_one_file_per_table_each_batch_streamed(tmp_path, mn_mode):
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="few",
                         settings=_settings(mn_mode, tmp_path, backtest_batch_size=50))
    async with store:
        await feed(store, snapshots(mn_mode, 200))
    assert store.summary is not None
    # Each batch's chunks went into one file per table (chunks are at most the batch size).
    assert store.summary.data_files["balance_sheet"] == store.summary.commits["balance_sheet"] == 4
    assert store.summary.data_files["raw_snapshots"] == 4
    rows = delta_tables.read(delta_tables.table_path(tmp_path, "backtest", "raw_snapshots"), run_id="few")
    assert sorted(rows["timestep"].to_pylist()) == list(range(200))


async def test_event_log_records_lifecycle_and_aggregated_state_updates(tmp_path, mn_mode):
    async with ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="ev",
                            settings=_settings(mn_mode, tmp_path, backtest_batch_size=100)) as store:
        await feed(store, snapshots(mn_mode, 300))
    events = [orjson.loads(line) for line in event_log_path(tmp_path).read_text().splitlines()]
    kinds = [e["event_type"] for e in events]
    assert kinds[0] == "component_initialization"
    assert kinds.count("batch_committed") == 3
    assert kinds.count("state_update") == 3  # one per batch, not one per call
    assert kinds[-1] == "run_finalized"


def test_store_refuses_an_unknown_execution_mode(tmp_path, mn_mode):
    with pytest.raises(ComponentError) as bad:
        ResultsStore(mn_mode, "paper", data_dir=tmp_path, run_id="x")
    assert bad.value.error_code == "RST-201"


async def test_live_commits_without_waiting_for_stop(tmp_path, mn_mode):
    # Behaviour, not latency (bench/ measures that): acknowledged snapshots get committed while the
    # store keeps running, driven by the flush interval, not by stop(). Polled with a generous bound.
    settings = _settings(mn_mode, tmp_path, flush_interval=0.2)
    store = ResultsStore(mn_mode, "live", data_dir=tmp_path, run_id="lv", settings=settings)
    async with store:
        snaps = snapshots(mn_mode, 3)
        for ts, results in snaps:
            await store.store_timestep_results(ts, results)
        deadline = asyncio.get_running_loop().time() + 30
        for _ in range(600):  # the store has no commit event to await; poll it
            if store.last_committed_timestep() == 2 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert store.last_committed_timestep() == 2


async def test_raw_snapshots_keep_each_payload_byte_exact_with_its_sha256(tmp_path, mn_mode):
    snaps = snapshots(mn_mode, 40)
    # A key outside the contract with non-ASCII text and an empty string must survive unchanged.
    snaps[5] = (snaps[5][0], dict(snaps[5][1], operator_note="ETH → weETH, prêt ✓", empty=""))
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="raw",
                         settings=_settings(mn_mode, tmp_path, backtest_batch_size=16))
    async with store:
        await feed(store, snaps)
    raw = read_table(tmp_path, "backtest", "raw_snapshots", run_id="raw").sort_by("timestep")
    payloads = raw.column("payload").to_pylist()
    assert [orjson.loads(p)["timestep"] for p in payloads] == list(range(40))
    assert orjson.loads(payloads[5])["operator_note"] == "ETH → weETH, prêt ✓"
    assert orjson.loads(payloads[5])["empty"] == ""
    assert raw.column("payload_sha256").to_pylist() == [hashlib.sha256(p.encode()).hexdigest() for p in payloads]


async def test_two_runs_writing_the_same_tables_at_once_each_keep_all_their_rows(tmp_path, mn_mode):
    # Each run's writer keeps its own open handle of the shared tables; the other run's commits land
    # in between, and neither may lose, double or block the other's rows.
    settings = _settings(mn_mode, tmp_path, backtest_batch_size=50)
    stores = [ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id=f"side-{i}", settings=settings)
              for i in range(2)]

    async def run(store: ResultsStore, seed: int) -> None:
        async with store:
            await feed(store, snapshots(mn_mode, 400, seed=seed))

    await asyncio.gather(run(stores[0], 1), run(stores[1], 2))
    for i, store in enumerate(stores):
        assert store.summary is not None and store.summary.commits["balance_sheet"] == 8
        raw = read_table(tmp_path, "backtest", "raw_snapshots", run_id=f"side-{i}")
        assert sorted(raw.column("timestep").to_pylist()) == list(range(400))
        per_step = read_table(tmp_path, "backtest", "delta_tracking", run_id=f"side-{i}")
        assert per_step.num_rows == 400


async def test_the_store_puts_arrow_on_the_system_allocator_and_says_so(tmp_path, mn_mode, monkeypatch):
    import pyarrow as pa

    from results_store.allocators import tune_allocators

    monkeypatch.delenv("RESULTS_STORE_TUNE_ALLOCATORS", raising=False)
    store = ResultsStore(mn_mode, "backtest", data_dir=tmp_path, run_id="alloc", settings=_settings(mn_mode, tmp_path))
    async with store:
        await feed(store, snapshots(mn_mode, 3))
    assert pa.default_memory_pool().backend_name == "system"
    events = [orjson.loads(line) for line in event_log_path(tmp_path).read_text().splitlines()]
    init = next(e for e in events if e["event_type"] == "component_initialization")
    assert init["data"]["allocators"] == tune_allocators()  # what this process applied, once

    monkeypatch.setenv("RESULTS_STORE_TUNE_ALLOCATORS", "false")
    assert _settings(mn_mode, tmp_path).tune_allocators is False
