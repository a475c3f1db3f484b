"""Run identity through the backtest-results flow and the CLI: the same run id with other inputs is refused."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from flows.backtest_results import backtest_results
from results_store.cli.main import app
from results_store.reading import read_table
from results_store.simulator.jsonl import write_jsonl
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import load_mode

# Prefect's leaked keep-alive sockets are filtered for the whole suite in pyproject.toml.
pytestmark = pytest.mark.usefixtures("prefect_harness")

PERIOD = {"mode": "pure_lending", "start": "2024-01-01", "end": "2024-01-01 12:00", "freq": "1h"}


def _timesteps(data_dir, run_id: str) -> int:
    return read_table(data_dir, "backtest", "raw_snapshots", run_id=run_id).num_rows


async def test_a_backtest_resumed_with_another_seed_or_period_fails_and_says_what_differs(tmp_path):
    await backtest_results(run_id="id-1", data_dir=str(tmp_path), **PERIOD)

    state = await backtest_results(run_id="id-1", data_dir=str(tmp_path), **{**PERIOD, "seed": 7},
                                   return_state=True)
    assert state.is_failed()
    assert "RST-301" in str(state.message) and "seed 7 != 0" in str(state.message)

    state = await backtest_results(run_id="id-1", data_dir=str(tmp_path), return_state=True,
                                   **{**PERIOD, "start": "2024-03-01", "end": "2024-03-01 12:00"})
    assert state.is_failed() and "start 2024-03-01T00:00:00+00:00 != 2024-01-01T00:00:00+00:00" in str(state.message)
    assert _timesteps(tmp_path, "id-1") == 12  # nothing mixed in

    again = await backtest_results(run_id="id-1", data_dir=str(tmp_path), **PERIOD)
    assert again["timesteps_skipped"] == 12  # the same inputs still resume


async def test_an_ingest_of_other_content_under_a_taken_run_id_fails(tmp_path):
    mode = load_mode("eth_basis")
    first, other = tmp_path / "first.jsonl", tmp_path / "other.jsonl"
    write_jsonl(ReferenceEngine(mode, "2024-01-01", "2024-01-02", "1h", seed=3).iter_snapshots(), first)
    write_jsonl(ReferenceEngine(mode, "2024-01-01", "2024-01-02", "1h", seed=4).iter_snapshots(), other)
    await backtest_results(mode="eth_basis", run_id="file-1", snapshot_file=str(first), data_dir=str(tmp_path))

    state = await backtest_results(mode="eth_basis", run_id="file-1", snapshot_file=str(other),
                                   data_dir=str(tmp_path), return_state=True)
    assert state.is_failed() and "RST-301" in str(state.message) and "snapshot_sha256" in str(state.message)

    moved = shutil.copy(first, tmp_path / "moved.jsonl")  # the same content from elsewhere is the same run
    again = await backtest_results(mode="eth_basis", run_id="file-1", snapshot_file=str(moved), data_dir=str(tmp_path))
    assert again["timesteps_skipped"] == 24 and _timesteps(tmp_path, "file-1") == 24


def test_cli_backtest_with_another_seed_on_an_existing_run_exits_2_and_says_why(tmp_path):
    runner = CliRunner()
    args = ["backtest", "--mode", "pure_lending", "--start", "2024-01-01", "--end", "2024-01-01 12:00", "--freq", "1h",
            "--run-id", "cli-seed", "--data-dir", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, [*args, "--seed", "7"])
    assert result.exit_code == 2, result.output
    assert "RST-301" in result.output and "seed 7 != 0" in result.output
    assert _timesteps(tmp_path, "cli-seed") == 12
