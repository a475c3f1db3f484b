"""Nothing lost, nothing doubled: SIGKILL at chosen points of the writes, then run again with the same run_id.

Each kill lands at an exact point, whatever the machine's speed: the runner (``kill_runner``)
stops right after its N-th table commit, or right after a Parquet file is written but before the
commit that would add it, and waits there. The test checks the tables show exactly that point,
then SIGKILLs it. A runner that never reaches the point fails the test rather than passing it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from results_store import delta_tables
from results_store.drive import run_snapshots_async
from results_store.store import ResultsStore
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.store.conftest import fingerprint, snapshots
from tests.store.kill_runner import PAUSE_ENV

ROOT = Path(__file__).resolve().parents[2]
MODE = "usdt_market_neutral"
STEPS = 600
BATCH = 50
TABLES = ["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log", "delta_tracking",
          "leverage_tracking", "funding_tracking", "dust_tracking", "raw_snapshots", "quarantine"]
# Every batch commits each table once, empty ones too, one after the other (never two batches at once).
PER_BATCH = len(TABLES)
# A batch holds BATCH to 2 * BATCH - 1 timesteps (chunks can overshoot), so a run has at least
# this many: every kill point below lies within it.
MIN_BATCHES = -(-STEPS // (2 * BATCH - 1))
RUNNER_TIMEOUT_S = 300  # generous: a runner takes a few seconds


def _start(data_dir: Path, run_id: str, *, pause: str = "", live: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.store.kill_runner", str(data_dir), run_id, MODE, str(STEPS), str(BATCH)]
    if live:
        args.append("live")
    env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
    if pause:
        env[PAUSE_ENV] = pause
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_to_the_end(data_dir: Path, run_id: str) -> None:
    proc = _start(data_dir, run_id)
    out, err = proc.communicate(timeout=RUNNER_TIMEOUT_S)
    assert proc.returncode == 0 and "DONE" in out, err


@contextmanager
def _paused(data_dir: Path, run_id: str, pause: str = "", *, live: bool = False, until: str = "PAUSED") -> Iterator[str]:
    """A runner stopped at ``pause`` (the lines it printed so far); SIGKILLed when the block ends."""
    proc = _start(data_dir, run_id, pause=pause, live=live)
    # A runner that hangs before its pause would block the readline below forever.
    watchdog = threading.Timer(RUNNER_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        printed = ""
        for line in proc.stdout:
            printed += line
            if line.startswith(until):
                break
        else:
            _, err = proc.communicate()
            pytest.fail(f"the runner ended (code {proc.returncode}) without reaching {pause or until}:\n{printed}\n{err}")
        yield printed
    finally:
        watchdog.cancel()
        proc.kill()  # SIGKILL
        proc.communicate(timeout=RUNNER_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL


def _log(table_dir: Path) -> list[list[dict[str, Any]]]:
    """The table's commits in order, each as its list of Delta actions (read straight from _delta_log)."""
    files = sorted((table_dir / "_delta_log").glob("*.json"))
    return [[json.loads(line) for line in f.read_text().splitlines() if line.strip()] for f in files]


def _txn_versions(data_dir: Path, table: str, run_id: str) -> list[int]:
    """The run's application-transaction versions (last timestep of each committed batch), in commit order."""
    app_id = delta_tables.run_app_id(run_id)
    path = delta_tables.table_path(data_dir, "backtest", table)
    return [action["txn"]["version"] for commit in _log(path) for action in commit
            if "txn" in action and action["txn"]["appId"] == app_id]


def _commits_per_table(data_dir: Path, run_id: str) -> dict[str, int]:
    return {table: len(_txn_versions(data_dir, table, run_id)) for table in TABLES}


def _unreferenced_files(data_dir: Path) -> set[str]:
    """Parquet files in the tables that no commit ever added: invisible to every reader."""
    files = set()
    for table in TABLES:
        path = delta_tables.table_path(data_dir, "backtest", table)
        added = {action["add"]["path"] for commit in _log(path) for action in commit if "add" in action}
        files |= {f"{table}/{p}" for p in (q.relative_to(path).as_posix() for q in path.rglob("*.parquet"))
                  if p not in added}
    return files


def _expected_commits_per_table(commits: int) -> Counter[int]:
    """How many tables have how many commits after ``commits`` table commits: whole batches, then a part."""
    batches, tables_of_next = divmod(commits, PER_BATCH)
    return Counter({batches + 1: tables_of_next, batches: PER_BATCH - tables_of_next}) - Counter()


def _expected_at_write(writes: int, batch_files: list[int]) -> tuple[int, int]:
    """(table commits, files no commit refers to) when the ``writes``-th file has just been written
    whole: the batches before it are committed, and none of its batch's files (a batch writes one
    file per table it has rows for, every table's chunks streamed into them before the first is
    closed). ``batch_files``: files per batch, in order."""
    for batch, files in enumerate(batch_files):
        if writes <= files:
            return batch * PER_BATCH, files
        writes -= files
    raise AssertionError("past the run's last file")


def _assert_equals_an_uninterrupted_run(data_dir: Path, reference: dict[str, tuple[int, str]]) -> None:
    for table in TABLES:
        assert fingerprint(data_dir, "backtest", table, "r") == reference[table], table
        versions = _txn_versions(data_dir, table, "r")
        # Each commit moves the run's watermark forward: no batch was committed twice.
        assert versions == sorted(set(versions)) and versions[-1] == STEPS - 1, (table, versions)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run."""
    data_dir = tmp_path_factory.mktemp("reference")
    _run_to_the_end(data_dir, "r")
    assert sum(_commits_per_table(data_dir, "r").values()) >= MIN_BATCHES * PER_BATCH
    return data_dir


@pytest.fixture(scope="module")
def reference(reference_dir: Path) -> dict[str, tuple[int, str]]:
    """Fingerprints of an uninterrupted run."""
    return {t: fingerprint(reference_dir, "backtest", t, "r") for t in TABLES}


@pytest.fixture(scope="module")
def table_batch_files(reference_dir: Path) -> dict[str, list[int]]:
    """Data files each batch of the uninterrupted run added to each table (the same timesteps make the same batches)."""
    return {table: [sum("add" in action for action in commit) for commit in _log(delta_tables.table_path(
        reference_dir, "backtest", table)) if any("txn" in action for action in commit)] for table in TABLES}


@pytest.fixture(scope="module")
def batch_files(table_batch_files: dict[str, list[int]]) -> list[int]:
    """Data files each batch of the uninterrupted run added, over all tables."""
    return [sum(files) for files in zip(*table_batch_files.values(), strict=True)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "commits",
    [
        1,                          # after the very first table commit
        3 * PER_BATCH + 4,          # mid-batch: 4 of the 10 tables of the 4th batch committed
        6 * PER_BATCH - 1,          # one table short of a whole batch
        6 * PER_BATCH,              # exactly at a batch boundary
    ],
)
def test_sigkill_after_a_commit_then_rerun_equals_an_uninterrupted_run(tmp_path, reference, commits):
    assert commits <= MIN_BATCHES * PER_BATCH
    with _paused(tmp_path, "r", f"commit:{commits}"):
        per_table = _commits_per_table(tmp_path, "r")
        assert Counter(per_table.values()) == _expected_commits_per_table(commits)
        # A batch's files are all written before its commits start: the tables its commits have not
        # reached yet hold one written file each, which no version refers to (invisible to readers).
        behind = {t for t, n in per_table.items() if n < max(per_table.values())}
        unreferenced = _unreferenced_files(tmp_path)
        assert {f.split("/")[0] for f in unreferenced} <= behind
        assert len(unreferenced) <= len(behind)
    _run_to_the_end(tmp_path, "r")
    _assert_equals_an_uninterrupted_run(tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize(
    "writes",
    [
        1,                          # the very first file, before any commit
        32,                         # mid-batch: the 4th batch's 5th file (batches write 8 or 9)
    ],
)
def test_sigkill_between_a_file_write_and_its_commit_then_rerun_equals_an_uninterrupted_run(
        tmp_path, reference, batch_files, writes):
    assert writes <= sum(batch_files[:MIN_BATCHES])
    commits, written = _expected_at_write(writes, batch_files)
    with _paused(tmp_path, "r", f"write:{writes}"):
        assert Counter(_commits_per_table(tmp_path, "r").values()) == _expected_commits_per_table(commits)
        orphans = _unreferenced_files(tmp_path)
        assert len(orphans) == written, orphans
    _run_to_the_end(tmp_path, "r")
    _assert_equals_an_uninterrupted_run(tmp_path, reference)
    # The files of the lost commits are never added by the rerun: no reader ever sees their rows.
    assert _unreferenced_files(tmp_path) >= orphans


@pytest.mark.slow
def test_one_run_killed_three_times_at_different_points_then_finished_equals_an_uninterrupted_run(
        tmp_path, reference, batch_files, table_batch_files):
    commits, written = _expected_at_write(23, batch_files)
    with _paused(tmp_path, "r", "write:23"):  # between file writes and their commits, mid-batch
        assert sum(_commits_per_table(tmp_path, "r").values()) == commits
    orphans = _unreferenced_files(tmp_path)
    assert len(orphans) == written
    with _paused(tmp_path, "r", "commit:15"):  # the resumed run, 15 commits further
        per_table = _commits_per_table(tmp_path, "r")
        assert sum(per_table.values()) == commits + 15
    orphans = _unreferenced_files(tmp_path)
    # The next resumed run starts with the batch that kill interrupted, and writes it again for the
    # tables that had not committed it (the others skip it by their app-transaction version).
    batch = min(per_table.values())
    rewritten = sum(table_batch_files[t][batch] for t, n in per_table.items() if n == batch)
    with _paused(tmp_path, "r", "write:1"):  # at the first file the next resumed run writes
        assert sum(_commits_per_table(tmp_path, "r").values()) == commits + 15
    assert len(_unreferenced_files(tmp_path) - orphans) == rewritten
    _run_to_the_end(tmp_path, "r")
    _assert_equals_an_uninterrupted_run(tmp_path, reference)


@pytest.mark.slow
async def test_live_snapshots_acknowledged_before_a_crash_are_committed_once_after_restart(tmp_path):
    wal_dir = tmp_path / "live" / "_wal" / "live-1"
    # Live mode commits whenever its queue runs empty; holding the first write keeps every
    # acknowledged snapshot uncommitted until the kill, however fast the machine.
    with _paused(tmp_path, "live-1", "write:1", live=True, until="ACKED") as printed:
        assert f"ACKED {STEPS}" in printed
        assert list(wal_dir.glob("seg-*.wal")), "acknowledged snapshots must be in the WAL"
        raw_path = delta_tables.table_path(tmp_path, "live", "raw_snapshots")
        assert delta_tables.committed_txn_version(raw_path, "live-1") is None, "killed before any commit"
    mode = load_mode(MODE)
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
