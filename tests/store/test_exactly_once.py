"""Nothing lost, nothing doubled: SIGKILL at several points, then run again with the same run_id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from results_store.drive import run_snapshots_async
from results_store.store import ResultsStore
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.store.conftest import fingerprint, snapshots

ROOT = Path(__file__).resolve().parents[2]
MODE = "usdt_market_neutral"
STEPS = 600
BATCH = 50
TABLES = ["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log", "delta_tracking",
          "leverage_tracking", "funding_tracking", "dust_tracking", "raw_snapshots", "quarantine"]


def _runner(data_dir: Path, run_id: str, kill_after: int = 0, live: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.store.kill_runner", str(data_dir), run_id, MODE, str(STEPS), str(BATCH),
            str(kill_after)]
    if live:
        args.append("live")
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """Fingerprints of an uninterrupted run."""
    data_dir = tmp_path_factory.mktemp("reference")
    proc = _runner(data_dir, "r")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return {t: fingerprint(data_dir, "backtest", t, "r") for t in TABLES}


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_after_writes",
    [
        1,        # after the very first table commit of the first batch
        10 * 3 + 4,   # mid-batch: 4 of the 10 tables of the 4th batch committed
        10 * 7 + 9,   # one table short of a whole batch
        10 * 11,      # exactly at a batch boundary
    ],
)
def test_sigkill_mid_commit_then_rerun_equals_an_uninterrupted_run(tmp_path, reference, kill_after_writes):
    killed = _runner(tmp_path, "r", kill_after=kill_after_writes)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    again = _runner(tmp_path, "r")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    for table in TABLES:
        assert fingerprint(tmp_path, "backtest", table, "r") == reference[table], table


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_run(tmp_path, reference):
    for delay in (1.5, 3.0):
        proc = _runner(tmp_path, "r")
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=300)
    final = _runner(tmp_path, "r")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    for table in TABLES:
        assert fingerprint(tmp_path, "backtest", table, "r") == reference[table], table


@pytest.mark.slow
async def test_live_snapshots_acknowledged_before_a_crash_are_committed_once_after_restart(tmp_path):
    proc = _runner(tmp_path, "live-1", live=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert f"ACKED {STEPS}" in out
    mode = load_mode(MODE)
    wal_dir = tmp_path / "live" / "_wal" / "live-1"
    assert list(wal_dir.glob("seg-*.wal")), "acknowledged snapshots must be in the WAL"
    settings = load_settings(mode, data_dir=tmp_path, flush_interval=0.2)
    store = ResultsStore(mode, "live", data_dir=tmp_path, run_id="live-1", settings=settings)
    async with store:
        pass  # start() replays the WAL; stop() commits it
    raw = fingerprint(tmp_path, "live", "raw_snapshots", "live-1")
    assert raw[0] == STEPS
    assert not list(wal_dir.glob("seg-*.wal")), "committed segments are deleted"
    # a second restart finds nothing left to do and writes nothing twice
    async with ResultsStore(mode, "live", data_dir=tmp_path, run_id="live-1", settings=settings):
        pass
    assert fingerprint(tmp_path, "live", "raw_snapshots", "live-1") == raw
    committed = store.last_committed_timestep()
    assert committed == STEPS - 1


async def test_backtest_rerun_after_completion_skips_everything(tmp_path):
    mode = load_mode(MODE)
    snaps = snapshots(mode, 120)
    settings = load_settings(mode, data_dir=tmp_path, backtest_batch_size=40)
    first = await run_snapshots_async(mode, snaps, data_dir=tmp_path, run_id="again", settings=settings)
    before = {t: fingerprint(tmp_path, "backtest", t, "again") for t in TABLES}
    second = await run_snapshots_async(mode, snaps, data_dir=tmp_path, run_id="again", settings=settings)
    assert first.timesteps_skipped == 0
    assert second.timesteps_skipped == 120
    assert sum(second.commits.values()) == 0
    assert {t: fingerprint(tmp_path, "backtest", t, "again") for t in TABLES} == before
