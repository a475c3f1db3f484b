"""Reruns lose nothing and spread nothing: they take the run's lock, refuse a run that is not finished
(or a live day that is not over), keep the contract rejections, and refuse corrupted raw snapshots."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from results_store import delta_tables
from results_store.drive import collect_pending, feed, run_snapshots
from results_store.maintenance import verify_checksums
from results_store.reading import read_table
from results_store.rerun import rederive_run, rederive_run_async
from results_store.runs import latest_run
from results_store.simulator.live_source import ReferenceLiveSource
from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.store.conftest import fingerprint, snapshots

ROOT = Path(__file__).resolve().parents[2]
MODE = "usdt_market_neutral"
RESULT_TABLES = ["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log", "delta_tracking",
                 "leverage_tracking", "funding_tracking", "dust_tracking"]
# Holds an OS lock on argv[1] until stdin closes; gives up after 60 s so that a regression which waits
# for the lock instead of refusing fails the test instead of hanging it.
HOLD_LOCK = """
import fcntl, os, select, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("LOCKED", flush=True)
select.select([sys.stdin], [], [], 60)
"""


def _steps(data_dir: Path, table: str, run_id: str, execution_mode: str = "backtest") -> set[int]:
    return set(read_table(data_dir, execution_mode, table, run_id=run_id).column("timestep").to_pylist())


def _backtest(data_dir: Path, run_id: str, steps: int, snaps: list | None = None) -> None:
    mode = load_mode(MODE)
    run_snapshots(mode, snaps if snaps is not None else snapshots(mode, steps), data_dir=data_dir, run_id=run_id,
                  settings=load_settings(mode, data_dir=data_dir, backtest_batch_size=50))


def _versions(data_dir: Path, execution_mode: str = "backtest") -> dict[str, int | None]:
    return {t: delta_tables.version(delta_tables.table_path(data_dir, execution_mode, t))
            for t in [*RESULT_TABLES, "quarantine"]}


# ------------------------------------------------------------------ a run that is still being written
def _hold(data_dir: Path, run_id: str) -> subprocess.Popen[str]:
    """A backtest of 400 timesteps in another process, paused with 200 committed: its lock held, status running."""
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.store.hold_runner", str(data_dir), run_id, MODE, "400", "200", "50"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    line = writer.stdout.readline()
    if line.split() != ["HOLDING", "200"]:
        writer.kill()
        _, err = writer.communicate()
        pytest.fail(f"the writer did not get to 200 committed timesteps: {line!r} {err}")
    return writer


@pytest.mark.slow
def test_an_in_place_rerun_of_a_run_still_being_written_is_refused_and_the_run_ends_whole(tmp_path):
    writer = _hold(tmp_path, "B")
    try:
        before = _versions(tmp_path)

        with pytest.raises(ComponentError) as refused:
            rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="B")
        assert refused.value.error_code == "RST-301"
        assert "'B' is being written" in str(refused.value)
        assert _versions(tmp_path) == before  # the refusal wrote nothing

        out, err = writer.communicate("go on\n", timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert writer.returncode == 0, err
    assert "DONE 400" in out
    uninterrupted = tmp_path / "uninterrupted"
    _backtest(uninterrupted, "B", 400)  # the same 400 snapshots (seed 7), written without a rerun attempt
    for table in ["raw_snapshots", "quarantine", *RESULT_TABLES]:
        assert fingerprint(tmp_path, "backtest", table, "B") == fingerprint(uninterrupted, "backtest", table, "B"), table
    record = latest_run(tmp_path, "backtest", "B")
    assert record is not None and record["status"] == "finished" and record["row_counts"]["raw_snapshots"] == 400

    # Once it has finished, the same rerun goes through and re-derives every timestep.
    summary = rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="B")
    assert summary.timesteps_received == 400
    assert _steps(tmp_path, "risk_metrics", "B") == set(range(400))


@pytest.mark.slow
def test_an_interrupted_run_is_not_rerun_in_place_nor_copied_until_it_has_been_resumed(tmp_path):
    writer = _hold(tmp_path, "I")
    writer.kill()  # SIGKILL with 200 of 400 timesteps committed: status running, and nobody holds the lock
    writer.communicate()
    assert latest_run(tmp_path, "backtest", "I")["status"] == "running"
    before = _versions(tmp_path)

    with pytest.raises(ComponentError) as in_place:
        rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="I")
    assert in_place.value.error_code == "RST-301"
    assert "status running" in str(in_place.value) and "resume it" in str(in_place.value)
    with pytest.raises(ComponentError) as copied:
        rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="I", new_run_id="I-copy")
    assert copied.value.error_code == "RST-301"
    assert _versions(tmp_path) == before
    assert latest_run(tmp_path, "backtest", "I")["status"] == "running"
    assert latest_run(tmp_path, "backtest", "I-copy") is None

    _backtest(tmp_path, "I", 400)  # the resume: the same snapshots, the committed ones skipped
    summary = rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="I")
    assert summary.timesteps_received == 400
    assert _steps(tmp_path, "risk_metrics", "I") == set(range(400))


async def test_a_failed_run_is_not_rerun_in_place(tmp_path):
    mode = load_mode(MODE)
    snaps = copy.deepcopy(snapshots(mode, 20))
    snaps[12][1]["risk_monitor"]["risk_metrics"]["ltv_risk"]["current_ltv"] = 1.7  # breaks a rule: strict fails
    store = ResultsStore(mode, "backtest", data_dir=tmp_path, run_id="F",
                         settings=load_settings(mode, data_dir=tmp_path, strict=True, backtest_batch_size=5))
    await store.start()
    await feed(store, snaps)
    with pytest.raises(ComponentError):
        await store.stop()
    assert latest_run(tmp_path, "backtest", "F")["status"] == "failed"

    with pytest.raises(ComponentError) as refused:
        await rederive_run_async(data_dir=tmp_path, execution_mode="backtest", run_id="F")
    assert refused.value.error_code == "RST-301" and "status failed" in str(refused.value)


# ------------------------------------------------------------------ the new run of a rerun is locked too
@pytest.mark.slow
def test_a_rerun_into_a_new_run_another_process_is_writing_is_refused_at_once(tmp_path):
    _backtest(tmp_path, "src", 60)
    lock = tmp_path / "backtest" / "_locks" / "child.lock"  # where every writer of run "child" locks it
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(ComponentError) as refused:
            rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="src", new_run_id="child")
        assert refused.value.error_code == "RST-301" and "'child' is being written" in str(refused.value)
    finally:
        holder.kill()
        holder.communicate()
    assert latest_run(tmp_path, "backtest", "child") is None
    assert not _steps(tmp_path, "raw_snapshots", "child")


# ------------------------------------------------------------------ contract rejections survive a rerun
def test_an_in_place_rerun_keeps_the_snapshots_that_broke_the_contract_in_quarantine(tmp_path):
    mode = load_mode(MODE)
    snaps = copy.deepcopy(snapshots(mode, 60))
    del snaps[30][1]["exposure_monitor"]["net_delta"]  # RST-101: never reaches raw_snapshots
    snaps[10][1]["risk_monitor"]["risk_metrics"]["ltv_risk"]["current_ltv"] = 1.7  # RST-102: re-derivable
    _backtest(tmp_path, "Q", 60, snaps)

    def quarantined() -> list[tuple[int, str, str, str]]:
        rows = read_table(tmp_path, "backtest", "quarantine", run_id="Q").to_pylist()
        return sorted((r["timestep"], r["result_type"], r["error_code"], r["payload"]) for r in rows)

    original = quarantined()
    assert any(step == 30 and code == "RST-101" for step, _, code, _ in original)
    assert any(step == 10 and code == "RST-102" for step, _, code, _ in original)

    first = rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="Q")
    assert quarantined() == original
    assert first.quarantined == len(original)
    rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="Q")
    assert quarantined() == original  # kept once, not once per rerun


# ------------------------------------------------------------------ live days
async def _live_run(data_dir: Path, run_id: str, anchor: datetime, now: datetime) -> int:
    mode = load_mode(MODE)
    settings = load_settings(mode, data_dir=data_dir, execution_mode="live", flush_interval=0.2)
    async with ResultsStore(mode, "live", data_dir=data_dir, run_id=run_id, settings=settings) as store:
        _, _, fed = await collect_pending(store, ReferenceLiveSource(mode, anchor), now)
    return fed


async def test_a_live_run_is_rerun_in_place_only_once_its_day_is_over(tmp_path):
    now = datetime.now(UTC)
    fed = await _live_run(tmp_path, "live-today", now - timedelta(minutes=30), now)
    assert fed > 0
    before = _versions(tmp_path, "live")

    with pytest.raises(ComponentError) as refused:
        await rederive_run_async(data_dir=tmp_path, execution_mode="live", run_id="live-today")
    assert refused.value.error_code == "RST-301"
    assert "day is not over" in str(refused.value) and "--new-run-id" in str(refused.value)
    assert _versions(tmp_path, "live") == before

    # As a new run it is allowed at any time: a copy of the timesteps stored so far, which says so.
    copy_summary = await rederive_run_async(data_dir=tmp_path, execution_mode="live", run_id="live-today",
                                            new_run_id="live-today-copy")
    assert copy_summary.timesteps_received == fed
    copied = latest_run(tmp_path, "live", "live-today-copy")
    assert copied is not None and copied["parent_run_id"] == "live-today"
    assert f"timesteps 0..{fed - 1}" in copied["note"]

    anchor = datetime(2024, 5, 1, tzinfo=UTC)
    old = await _live_run(tmp_path, "live-20240501", anchor, anchor + timedelta(minutes=30))
    summary = await rederive_run_async(data_dir=tmp_path, execution_mode="live", run_id="live-20240501")
    assert summary.timesteps_received == old


# ------------------------------------------------------------------ corrupted raw snapshots
def _corrupt_payload(data_dir: Path, run_id: str, timestep: int) -> float:
    """Change one stored payload the way a flipped bit would: other content, the same payload_sha256."""
    path = delta_tables.table_path(data_dir, "backtest", "raw_snapshots")
    table = DeltaTable(str(path)).to_pyarrow_table(filters=[("run_id", "=", run_id)])
    payloads = table.column("payload").to_pylist()
    index = table.column("timestep").to_pylist().index(timestep)
    payload = orjson.loads(payloads[index])
    ltv = payload["risk_monitor"]["risk_metrics"]["ltv_risk"]
    ltv["current_ltv"] = damaged = ltv["current_ltv"] - 0.001
    payloads[index] = orjson.dumps(payload).decode()
    column = table.schema.get_field_index("payload")
    table = table.set_column(column, "payload", pa.array(payloads, table.schema.field(column).type))
    write_deltalake(str(path), table, mode="overwrite", predicate=f"run_id = '{run_id}'", partition_by=["run_id"])
    return float(damaged)


def test_a_rerun_refuses_a_raw_snapshot_whose_payload_no_longer_matches_its_sha256(tmp_path):
    _backtest(tmp_path, "C", 60)
    damaged = _corrupt_payload(tmp_path, "C", 17)
    assert {"run_id": "C", "timestep": 17} in verify_checksums(tmp_path, "backtest")["mismatches"]
    before = _versions(tmp_path)
    risk_before = fingerprint(tmp_path, "backtest", "risk_metrics", "C")

    with pytest.raises(ComponentError) as in_place:
        rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="C")
    assert in_place.value.error_code == "RST-005"
    assert "run 'C'" in str(in_place.value) and "timestep 17" in str(in_place.value)
    assert in_place.value.details["timesteps"] == [17]
    with pytest.raises(ComponentError) as as_new:
        rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="C", new_run_id="C-copy")
    assert as_new.value.error_code == "RST-005"

    assert _versions(tmp_path) == before
    assert fingerprint(tmp_path, "backtest", "risk_metrics", "C") == risk_before
    risk = read_table(tmp_path, "backtest", "risk_metrics", run_id="C").to_pylist()
    ltv_17 = [r["value"] for r in risk if r["timestep"] == 17 and r.get("metric") == "current_ltv"]
    assert damaged not in ltv_17
    assert latest_run(tmp_path, "backtest", "C-copy") is None
