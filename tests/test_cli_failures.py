"""A failing `results-store` command ends with one line: the RST code, what was wrong and where; its exit
code says whose move it is (2: change the input or configuration; 1: the run failed, e.g. storage).

Bad options and data dirs are refused before Prefect starts (no ``{data_dir}/.prefect``, no server),
and Prefect's report of a failed flow, traceback included, stays in the flow-run log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from results_store.cli.main import app
from results_store.cli.output import report_failure
from results_store.drive import run_snapshots
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode
from tests.store.faults import remount, tmpfs

runner = CliRunner()
BIN = Path(sys.executable).parent


def _invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, [str(a) for a in args], env=env)


def _the_line(result: Result) -> str:
    """The command's failure: exactly one line on stderr."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_failure_line_keeps_its_brackets_on_one_line_and_a_storage_failure_exits_1(capsys):
    # rich markup used to swallow "[errno 28]"; delta-rs chains causes over several lines.
    error = ComponentError("RST-004", "commit failed for /data/backtest/balance_sheet: OSError: [errno 28] "
                                      "No space left on device\n  ↳ [red]cause[/red]" + " padding" * 30)
    assert report_failure(error) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("RST-004 storage refused: commit failed for /data/backtest/balance_sheet")
    assert "[errno 28] No space left on device ↳ [red]cause[/red]" in err


@pytest.mark.parametrize("args", [
    pytest.param(["backtest", "--mode", "usdt_market_neutral_v2"], id="backtest --mode"),
    pytest.param(["live", "--mode", "btc"], id="live --mode"),
    pytest.param(["ingest", "{data}/../snapshots.jsonl", "--mode", "btc"], id="ingest --mode"),
    pytest.param(["rerun", "some-run", "-e", "paper"], id="rerun -e"),
    pytest.param(["backup", "-e", "paper"], id="backup -e"),
    pytest.param(["retention", "-e", "paper"], id="retention -e"),
    pytest.param(["checksum", "verify", "-e", "paper"], id="checksum verify -e"),
    pytest.param(["show", "-e", "paper"], id="show -e"),
    pytest.param(["export", "some-run", "-e", "paper"], id="export -e"),
])
def test_a_bad_mode_or_execution_mode_is_rst201_exit_2_before_prefect_starts(tmp_path, args):
    data_dir = tmp_path / "data"
    (tmp_path / "snapshots.jsonl").write_text("")
    result = _invoke(*[a.replace("{data}", str(data_dir)) for a in args], "--data-dir", data_dir)
    assert result.exit_code == 2, result.output
    line = _the_line(result)
    assert line.startswith("RST-201 invalid configuration: --")
    assert "'usdt_market_neutral_v2'" in line or "'btc'" in line or "'paper'" in line  # what was wrong
    assert not (data_dir / ".prefect").exists()  # Prefect never started


def test_a_bad_execution_mode_in_the_environment_names_the_variable(tmp_path):
    result = _invoke("backup", "--data-dir", tmp_path, env={"BASIS_EXECUTION_MODE": "paper"})
    assert result.exit_code == 2
    assert "BASIS_EXECUTION_MODE" in _the_line(result) and "'paper'" in _the_line(result)


# ----------------------------------------------------------------------------- data dirs
WRITING_COMMANDS = [
    pytest.param(["backtest", "--mode", "pure_lending"], id="backtest"),
    pytest.param(["live", "--mode", "pure_lending"], id="live"),
    pytest.param(["rerun", "some-run"], id="rerun"),
]


@pytest.mark.parametrize("args", [*WRITING_COMMANDS, pytest.param(["show"], id="show")])
def test_a_data_dir_that_is_a_file_is_one_rst004_line_naming_it(tmp_path, args):
    data_dir = tmp_path / "data"
    data_dir.write_text("not a directory")
    result = _invoke(*args, "--data-dir", data_dir)
    assert result.exit_code == 1, result.output
    assert _the_line(result) == f"RST-004 storage refused: data dir {data_dir} is not a directory"


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "frozen"
    path.mkdir()
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("args", WRITING_COMMANDS)
def test_an_immutable_data_dir_is_one_rst004_line_naming_it(immutable_dir, args):
    result = _invoke(*args, "--data-dir", immutable_dir)
    assert result.exit_code == 1, result.output
    line = _the_line(result)
    assert line.startswith(f"RST-004 storage refused: data dir {immutable_dir} refuses writes"), line
    assert "(EPERM)" in line


@pytest.fixture(scope="module")
def read_only_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real read-only mount holding one finished run (written before the remount)."""
    mount = tmp_path_factory.mktemp("ro")
    with tmpfs(mount, size_mb=64):
        data_dir = mount / "data"
        mode = load_mode("pure_lending")
        run_snapshots(mode, ReferenceEngine(mode, "2024-01-01", "2024-01-01 06:00", "1h").iter_snapshots(),
                      data_dir=data_dir, run_id="kept")
        remount(mount, read_only=True)
        yield data_dir


@pytest.mark.parametrize("args", WRITING_COMMANDS)
def test_a_read_only_mount_refuses_the_writing_commands_with_one_line(read_only_data, args):
    result = _invoke(*args, "--data-dir", read_only_data)
    assert result.exit_code == 1, result.output
    assert _the_line(result) == f"RST-004 storage refused: data dir {read_only_data} is on a read-only file system (EROFS)"


def test_show_and_audit_keep_working_on_a_read_only_mount(read_only_data):
    listing = _invoke("show", "--data-dir", read_only_data)
    assert listing.exit_code == 0 and "kept" in listing.output, listing.output
    one = _invoke("show", "kept", "-t", "risk_metrics", "--data-dir", read_only_data)
    assert one.exit_code == 0 and "risk_metrics · kept" in one.output, one.output
    audit = _invoke("audit", "kept", "--data-dir", read_only_data)
    assert audit.exit_code == 0, audit.output
    assert "pass" in audit.output


def _env() -> dict[str, str]:
    """The caller's environment without its Prefect settings: the command chooses its own server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def test_checksum_verify_keeps_working_on_a_read_only_mount(read_only_data):
    # Nothing it needs to write may live in the data dir (a flow keeps Prefect's database elsewhere).
    done = subprocess.run([BIN / "results-store", "checksum", "verify", "--data-dir", read_only_data],
                          capture_output=True, text=True, timeout=300, env=_env(), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RST-" not in done.stdout + done.stderr


@pytest.mark.slow
def test_a_failed_flow_ends_with_its_one_line_and_no_prefect_traceback(tmp_path):
    done = subprocess.run([BIN / "results-store", "rerun", "no-such-run", "--data-dir", tmp_path],
                          capture_output=True, text=True, timeout=300, env=_env(), check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"RST-302 not found: no run 'no-such-run' in the backtest runs registry under {tmp_path}"]
