"""BASIS_LOG_LEVEL and BASIS_EXECUTION_MODE do what the README's settings table says.

Before, both were parsed and then applied nowhere: the event log wrote every level, a command's
terminal never showed Prefect's INFO logs, and every ``-e`` defaulted to backtest whatever the
environment said.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from results_store.cli.main import app
from results_store.drive import run_snapshots
from results_store.events import event_log_path
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode

runner = CliRunner()
BIN = Path(sys.executable).parent


def _events(data_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in event_log_path(data_dir).read_text().splitlines()]


def _a_run(data_dir: Path, run_id: str) -> None:
    mode = load_mode("pure_lending")
    run_snapshots(mode, ReferenceEngine(mode, "2024-01-01", "2024-01-01 03:00", "1h").iter_snapshots(),
                  data_dir=data_dir, run_id=run_id)


def test_the_event_log_writes_from_basis_log_level_and_names_the_run(tmp_path, monkeypatch):
    _a_run(tmp_path / "info", "at-info")
    events = _events(tmp_path / "info")
    assert {"component_initialization", "batch_committed", "run_finalized"} <= {e["event_type"] for e in events}
    assert {e.get("correlation_id") for e in events} == {"at-info"}

    monkeypatch.setenv("BASIS_LOG_LEVEL", "ERROR")
    _a_run(tmp_path / "error", "at-error")
    assert not event_log_path(tmp_path / "error").exists() or _events(tmp_path / "error") == []


def test_basis_execution_mode_is_the_default_of_the_execution_mode_options(tmp_path):
    listing = runner.invoke(app, ["show", "--data-dir", str(tmp_path)], env={"BASIS_EXECUTION_MODE": "live"})
    assert listing.exit_code == 0, listing.output
    assert f"live runs under {tmp_path}" in listing.output
    flag_wins = runner.invoke(app, ["show", "-e", "backtest", "--data-dir", str(tmp_path)],
                              env={"BASIS_EXECUTION_MODE": "live"})
    assert f"backtest runs under {tmp_path}" in flag_wins.output


@pytest.mark.usefixtures("prefect_harness")
async def test_basis_execution_mode_is_the_default_of_the_rerun_flow(tmp_path, monkeypatch):
    from flows.rerun_results import rerun_results

    monkeypatch.setenv("BASIS_EXECUTION_MODE", "live")
    with pytest.raises(ComponentError, match="in the live runs registry"):
        await rerun_results(run_id="not-there", data_dir=str(tmp_path))


@pytest.mark.slow
def test_a_command_shows_prefects_logs_from_basis_log_level(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    anchor = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()  # a few timesteps to collect
    done = subprocess.run([BIN / "results-store", "live", "--mode", "pure_lending", "--anchor", anchor,
                           "--data-dir", tmp_path], capture_output=True, text=True, timeout=300, check=False,
                          env={**env, "BASIS_LOG_LEVEL": "INFO"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| INFO    | Flow run " in done.stderr  # quiet (WARNING) unless BASIS_LOG_LEVEL is set
