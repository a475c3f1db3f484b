"""A CLI that scripts can use: piped output is never cut, listings speak JSON, and the backtest's
progress bar counts what was stored, not what was fed.

Before, piped output was cut to 80 columns (``usdt_market_neutral_no_lever…``, run ids as
``usdt_mar…``), and the bar showed ``80640/40320`` after Prefect retried the store task.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import stamina
from typer.testing import CliRunner

from results_store import delta_tables
from results_store.cli.main import app
from results_store.drive import run_snapshots
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import MODE_NAMES, load_mode

runner = CliRunner()
BIN = Path(sys.executable).parent
LONG_RUN_ID = "usdt_market_neutral_no_leverage-20240101T000000-0a1b2c"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run with a long id, as ``ResultsStore.new_run_id`` makes them."""
    root = tmp_path_factory.mktemp("scripting")
    mode = load_mode("usdt_market_neutral_no_leverage")
    run_snapshots(mode, ReferenceEngine(mode, "2024-01-01", "2024-01-01 04:00", "1h").iter_snapshots(),
                  data_dir=root, run_id=LONG_RUN_ID)
    return root


def _piped(*args: str | Path) -> str:
    """The command's stdout as a script reading a pipe sees it (no terminal, no COLUMNS)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run([BIN / "results-store", *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_piped_listings_hold_every_name_and_id_whole(data_dir):
    modes = _piped("modes")
    assert "…" not in modes
    for name in MODE_NAMES:  # one row each, the name whole on it
        assert sum(f"│ {name} " in line for line in modes.splitlines()) == 1, name
    runs = _piped("show", "--data-dir", data_dir)
    assert "…" not in runs
    assert LONG_RUN_ID in runs


def test_modes_schema_and_show_speak_json(data_dir):
    modes = orjson.loads(runner.invoke(app, ["modes", "--json"]).stdout)
    assert [m["mode"] for m in modes] == list(MODE_NAMES)
    assert {"balance_sheet", "dust_tracking"} <= set(modes[5]["result_types"])

    columns = orjson.loads(runner.invoke(app, ["schema", "balance_sheet", "--json"]).stdout)
    assert columns[0] == {"column": "run_id", "type": "string", "description": "the run this row belongs to"}

    listing = orjson.loads(runner.invoke(app, ["show", "--json", "--data-dir", str(data_dir)]).stdout)
    assert [(r["run_id"], r["status"], r["parent_run_id"]) for r in listing] == [(LONG_RUN_ID, "finished", None)]
    assert listing[0]["started_at"].startswith("20") and "T" in listing[0]["started_at"]  # ISO 8601

    one = orjson.loads(runner.invoke(app, ["show", LONG_RUN_ID, "--json", "--data-dir", str(data_dir)]).stdout)
    assert one["mode"] == "usdt_market_neutral_no_leverage" and one["row_counts"]["raw_snapshots"] == 4

    rows = orjson.loads(runner.invoke(app, ["show", LONG_RUN_ID, "-t", "risk_metrics", "-n", "3", "--json",
                                            "--data-dir", str(data_dir)]).stdout)
    assert len(rows) == 3 and {r["run_id"] for r in rows} == {LONG_RUN_ID}


class FailOnce:
    """The real commit, except that ``table``'s ``nth`` commit fails once with a transient error (EAGAIN)."""

    def __init__(self, table: str, nth: int) -> None:
        self.table, self.nth, self.calls = table, nth, 0
        self._real = delta_tables.commit_run_files
        self._lock = threading.Lock()

    def __call__(self, path: Path, data: Any, **kwargs: Any) -> int | None:
        if path.name == self.table:
            with self._lock:
                self.calls += 1
                fail = self.calls == self.nth
            if fail:
                raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return self._real(path, data, **kwargs)


@pytest.fixture
def _one_attempt_per_store() -> Iterator[None]:
    # The store gives up at once on the transient error, so that Prefect's task retry resumes the run.
    with stamina.set_testing(True, attempts=1):
        yield


@pytest.mark.usefixtures("prefect_harness", "_one_attempt_per_store")
def test_the_progress_bar_counts_stored_timesteps_once_across_a_prefect_retry(tmp_path, monkeypatch):
    from tasks.store import store_snapshots

    monkeypatch.setattr(store_snapshots, "retry_delay_seconds", 0)
    # 30 timesteps in commits of 10: the first attempt commits 10 and fails on the next commit.
    monkeypatch.setattr(delta_tables, "commit_run_files", FailOnce("balance_sheet", nth=2))
    result = runner.invoke(app, ["backtest", "--mode", "pure_lending", "--start", "2024-01-01", "--end",
                                 "2024-01-02 06:00", "--freq", "1h", "--batch-size", "10", "--run-id", "retried",
                                 "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "timesteps: 30 received, 10 skipped (already committed)" in result.output  # the retry resumed
    bar = next(line for line in result.output.splitlines() if line.startswith("storing timesteps"))
    assert " 30/30 " in bar, bar
