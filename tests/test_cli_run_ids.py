"""A run id that is not one (``schemas.identifiers``) is refused with RST-201 wherever one comes in: every
command's --run-id / RUN argument, the store's constructor and the flows' parameters, before any work.

Before, 300 characters gave ``OSError: File name too long``, 250 a misleading RST-001 after 20 s of
retries, a NUL a ``ValueError``, ``""`` a generated id, and a newline garbled ``show``.
"""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from flows.backtest_results import backtest_results
from flows.live_snapshots import live_snapshots
from flows.rerun_results import rerun_results
from results_store.cli.main import app
from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.modes import load_mode

runner = CliRunner()

BAD_RUN_IDS = [
    pytest.param("r" * 300, id="300 characters"),
    pytest.param("r" * 250, id="250 characters"),
    pytest.param("run\x00id", id="NUL"),
    pytest.param("", id="empty"),
    pytest.param("two\nlines", id="newline"),
    pytest.param("../../elsewhere", id="path"),
]

COMMANDS = [
    pytest.param(["backtest", "--mode", "pure_lending", "--run-id", "{id}"], id="backtest"),
    pytest.param(["ingest", "{file}", "--mode", "pure_lending", "--run-id", "{id}"], id="ingest"),
    pytest.param(["live", "--mode", "pure_lending", "--run-id", "{id}"], id="live"),
    pytest.param(["rerun", "{id}"], id="rerun"),
    pytest.param(["rerun", "a-run", "--new-run-id", "{id}"], id="rerun --new-run-id"),
    pytest.param(["show", "{id}"], id="show"),
    pytest.param(["export", "{id}"], id="export"),
    pytest.param(["report", "{id}"], id="report"),
    pytest.param(["audit", "a-run", "{id}"], id="audit"),
    pytest.param(["audits", "{id}"], id="audits"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_every_command_refuses_a_bad_run_id_with_rst201_before_any_work(tmp_path, command, run_id):
    snapshots = tmp_path / "snapshots.jsonl"
    snapshots.write_text("")
    data_dir = tmp_path / "data"
    args = [a.replace("{id}", run_id).replace("{file}", str(snapshots)) for a in command]
    result = runner.invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("RST-201 invalid configuration: "), result.output
    assert "\x00" not in result.output
    assert not data_dir.exists()  # nothing written, and no Prefect started


def test_ingest_refuses_a_file_stem_that_is_not_a_run_id_and_says_to_give_one(tmp_path):
    snapshots = tmp_path / "night run #1.jsonl"
    snapshots.write_text("")
    result = runner.invoke(app, ["ingest", str(snapshots), "--mode", "pure_lending", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "RST-201" in result.stderr and "--run-id" in result.stderr


@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_the_store_refuses_a_bad_run_id_before_touching_the_disk(tmp_path, run_id):
    with pytest.raises(ComponentError) as caught:
        ResultsStore(load_mode("pure_lending"), "backtest", data_dir=tmp_path, run_id=run_id)
    assert caught.value.error_code == "RST-201"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("prefect_harness")
async def test_the_flows_refuse_a_bad_run_id_at_start(tmp_path):
    calls = {
        "backtest-results run_id=''": backtest_results(mode="pure_lending", run_id="", data_dir=str(tmp_path)),
        "live-snapshots run_id with a newline": live_snapshots(mode="pure_lending", run_id="a\nb",
                                                               data_dir=str(tmp_path)),
        "rerun-results new_run_id of 300 characters": rerun_results(run_id="a-run", new_run_id="r" * 300,
                                                                    data_dir=str(tmp_path)),
    }
    for name, call in calls.items():
        with pytest.raises(ComponentError) as caught:
            await call
        assert caught.value.error_code == "RST-201", name
    assert os.listdir(tmp_path) == []  # nothing written
