"""``--config PATH``: a user's own mode file, kept anywhere under any name, for backtest, ingest and live
(and the flows' ``config_path``). Its ``mode`` must be one of the strategy modes (it names what the
reference engine simulates and the mode the run is recorded under); a packaged file looked up by name
must still be named after its mode.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from results_store.cli.main import app
from results_store.runs import latest_run
from schemas.errors import ComponentError
from schemas.modes import MODE_NAMES, config_hash, load_mode, load_mode_file, mode_path

runner = CliRunner()


def _user_file(directory: Path, name: str = "desk-7 lending.yaml", **changes: Any) -> Path:
    """pure_lending with 2M of capital, saved outside the repository under a name of the user's."""
    raw = yaml.safe_load(mode_path("pure_lending").read_text())
    raw["strategy"]["initial_capital"] = 2_000_000.0
    raw.update(changes)
    path = directory / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_user_file_may_have_any_name_but_its_mode_must_be_a_strategy_mode(tmp_path):
    config = load_mode_file(_user_file(tmp_path), user_file=True)
    assert config.mode == "pure_lending" and config.strategy.initial_capital == 2_000_000.0
    with pytest.raises(ComponentError) as caught:
        load_mode_file(_user_file(tmp_path, name="mine.yaml", mode="desk_7_lending"), user_file=True)
    assert caught.value.error_code == "RST-201"
    assert "field 'mode' is 'desk_7_lending', not a strategy mode" in str(caught.value)
    assert all(name in str(caught.value) for name in MODE_NAMES)


@pytest.mark.parametrize(("args", "says"), [
    pytest.param(["--config", "{dir}/missing.yaml"], "no such mode file", id="missing file"),
    pytest.param(["--mode", "eth_basis", "--config", "{file}"], "is a mode file of 'pure_lending'", id="other mode"),
    pytest.param([], "give --mode, or --config", id="neither"),
])
def test_a_config_that_cannot_serve_is_rst201_before_prefect_starts(tmp_path, args, says):
    file = _user_file(tmp_path)
    data_dir = tmp_path / "data"
    result = runner.invoke(app, ["backtest", *[a.replace("{dir}", str(tmp_path)).replace("{file}", str(file))
                                               for a in args], "--data-dir", str(data_dir)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("RST-201") and says in result.stderr, result.stderr
    assert not data_dir.exists()


@pytest.mark.usefixtures("prefect_harness")
def test_backtest_runs_with_the_users_mode_file(tmp_path):
    file = _user_file(tmp_path)
    result = runner.invoke(app, ["backtest", "--config", str(file), "--start", "2024-01-01", "--end",
                                 "2024-01-01 06:00", "--freq", "1h", "--run-id", "desk-7", "--data-dir",
                                 str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    record = latest_run(tmp_path / "data", "backtest", "desk-7")
    assert record is not None and record["mode"] == "pure_lending"
    assert record["config_hash"] == config_hash(load_mode_file(file, user_file=True))
    assert record["config_hash"] != config_hash(load_mode("pure_lending"))  # the user's, not the packaged one


@pytest.mark.usefixtures("prefect_harness")
async def test_the_live_flow_takes_the_users_mode_file(tmp_path):
    from flows.live_snapshots import live_snapshots

    file = _user_file(tmp_path)
    now = datetime(2024, 1, 1, 0, 5, tzinfo=UTC)
    summary = await live_snapshots(mode="pure_lending", config_path=str(file), anchor=now - timedelta(minutes=5),
                                   now=now, run_id="desk-7-live", data_dir=str(tmp_path / "data"))
    assert summary["timesteps_received"] == 6
    record = latest_run(tmp_path / "data", "live", "desk-7-live")
    assert record is not None and record["config_hash"] == config_hash(load_mode_file(file, user_file=True))
    with pytest.raises(ComponentError, match="but the run's mode is 'eth_basis'"):
        await live_snapshots(mode="eth_basis", config_path=str(file), now=now, data_dir=str(tmp_path / "other"))
