"""The tables stay plain Delta: a reader that knows nothing of this project gets the same rows.

DuckDB plays that reader. It cannot load its Delta extension here (nothing may download at run
time), so the test follows the Delta protocol by hand — replay the log's add and remove actions,
from the last checkpoint on — and lets DuckDB read the Parquet files the log lists, with the
partition value from the log, as Spark or polars would.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import duckdb
import pandas as pd
import pytest

from results_store.drive import run_snapshots
from results_store.query import retrieve_results
from results_store.rerun import rederive_run
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import load_mode


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs of btc_basis, the first re-derived in place (so its log has removes as well as adds)."""
    root = tmp_path_factory.mktemp("readers")
    mode = load_mode("btc_basis")
    for run_id, seed in (("d1", 1), ("d2", 2)):
        run_snapshots(mode, ReferenceEngine(mode, "2024-02-01", "2024-02-02", "30min", seed=seed).iter_snapshots(),
                      data_dir=root, run_id=run_id)
    rederive_run(data_dir=root, execution_mode="backtest", run_id="d1", overrides={})
    return root


def live_files(table: Path) -> dict[str, str]:
    """Data file path -> run_id of the table's latest version, from its _delta_log alone."""
    log = table / "_delta_log"
    files: dict[str, str] = {}
    first = 0
    last_checkpoint = log / "_last_checkpoint"
    if last_checkpoint.exists():
        version = json.loads(last_checkpoint.read_text())["version"]
        checkpoint = log / f"{version:020d}.checkpoint.parquet"
        rows = duckdb.sql(f"SELECT add.path, add.partitionValues FROM '{checkpoint}' WHERE add IS NOT NULL").fetchall()
        files = {path: dict(values)["run_id"] if isinstance(values, list) else values["run_id"] for path, values in rows}
        first = version + 1
    commits = sorted(p for p in log.glob("*.json") if int(p.stem) >= first)
    for commit in commits:
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                files[action["add"]["path"]] = action["add"]["partitionValues"]["run_id"]
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
    return files


@pytest.mark.parametrize("table", ["balance_sheet", "pnl_attribution", "execution_log", "funding_tracking"])
def test_duckdb_on_the_files_the_log_lists_reads_what_retrieve_results_returns(root: Path, table: str) -> None:
    path = root / "backtest" / table
    parts = []
    for file, run_id in sorted(live_files(path).items()):
        frame = duckdb.sql(f"SELECT * FROM read_parquet('{path / unquote(file)}', hive_partitioning=false)").df()
        frame.insert(0, "run_id", run_id)
        parts.append(frame)
    order = ["run_id", "timestep", "event_order"] if table == "execution_log" else ["run_id", "timestep"]
    theirs = pd.concat(parts).sort_values(order, kind="stable").reset_index(drop=True)
    ours = retrieve_results(root, {"result_type": table}).reset_index(drop=True)
    assert list(theirs.columns) == list(ours.columns)
    assert len(theirs) == len(ours) > 0
    for column in ours.columns:
        if column in ("timestamp", "event_timestamp"):
            assert (pd.to_datetime(theirs[column], utc=True) == ours[column]).all(), column
        else:
            assert theirs[column].tolist() == ours[column].tolist(), column
