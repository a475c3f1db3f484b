"""`results-store show`: what a person reads after a run — the runs, one run's tables, a table's rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from results_store.cli.main import app
from results_store.drive import run_snapshots
from results_store.rerun import rederive_run
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import load_mode

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run (no parent) and a rerun of it with fewer result types (parent set)."""
    root = tmp_path_factory.mktemp("show")
    mode = load_mode("pure_lending")
    run_snapshots(mode, ReferenceEngine(mode, "2024-01-01", "2024-01-01 06:00", "1h", seed=2).iter_snapshots(),
                  data_dir=root, run_id="lend-1")
    rederive_run(data_dir=root, execution_mode="backtest", run_id="lend-1", new_run_id="lend-2",
                 overrides={"result_types": ["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log"]})
    return root


def _show(*args: str, data_dir: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["show", *args, "--data-dir", str(data_dir)])
    return result.exit_code, result.output


def test_listing_runs_shows_each_with_its_status_and_parent(data_dir: Path) -> None:
    code, out = _show(data_dir=data_dir)
    assert code == 0, out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if "lend-" in line}
    assert set(lines) == {"lend-1", "lend-2"}
    assert "finished" in lines["lend-1"] and "lend-1" in lines["lend-2"].split("│")[6]
    assert "nan" not in out.lower()


def test_one_run_shows_its_lineage_and_rows_per_table(data_dir: Path) -> None:
    code, out = _show("lend-2", data_dir=data_dir)
    assert code == 0, out
    assert "parent run: lend-1" in out
    assert "balance_sheet" in out and "raw_snapshots" in out


def test_a_table_prints_its_rows_now_and_as_of_an_earlier_version(data_dir: Path) -> None:
    code, out = _show("lend-1", "--table", "risk_metrics", "--limit", "3", data_dir=data_dir)
    assert code == 0, out
    assert "risk_metrics · lend-1 · 60 rows" in out
    assert sum(line.startswith("│ lend-1") for line in out.splitlines()) == 3
    # Version 0 is the table's creation, before the run's first commit; version 1 holds that commit.
    code, created = _show("lend-1", "--table", "risk_metrics", "--version", "0", data_dir=data_dir)
    assert code == 0 and "no rows" in created, created
    code, first = _show("lend-1", "--table", "risk_metrics", "--version", "1", "--limit", "2", data_dir=data_dir)
    assert code == 0 and "· version 1" in first, first
    assert sum(line.startswith("│ lend-1") for line in first.splitlines()) == 2


def test_an_unknown_run_is_rst302_with_exit_code_2(data_dir: Path) -> None:
    code, out = _show("no-such-run", data_dir=data_dir)
    assert code == 2 and "RST-302" in out
