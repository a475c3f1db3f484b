"""Processes clean up after themselves: the Prefect server a ``results-store`` command runs for its
flow does not outlive the command, whether the command finishes or is killed with SIGKILL.

Without PREFECT_API_URL a flow command needs a local Prefect API server, a subprocess of the
command (~200 MB). A command killed with ``kill -9`` runs no clean-up code of its own, so the
server must die with it: two killed runs used to leave two orphaned servers behind.

The tests find the command's child processes by walking the process tree (psutil) while it runs,
and then check that each one is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SERVER_APP = "prefect.server.api.server:create_app"
# A generous bound: the kernel signals the server the moment its parent dies.
GONE_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PREFECT_HOME for the module, so only the first command pays for the migrations."""
    return tmp_path_factory.mktemp("prefect-home")


def _env(prefect_home: Path) -> dict[str, str]:
    """The caller's environment without its Prefect settings (the command chooses its own server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(prefect_home)
    return env


def _backtest(data_dir: Path, prefect_home: Path, end: str, log: Path) -> subprocess.Popen[bytes]:
    # Commits every 500 timesteps, so the run is seen writing long before it could finish.
    args = [str(BIN / "results-store"), "backtest", "--mode", "usdt_market_neutral", "--start", "2024-01-01",
            "--end", end, "--freq", "1min", "--batch-size", "500", "--data-dir", str(data_dir)]
    with log.open("wb") as out:
        return subprocess.Popen(args, env=_env(prefect_home), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)


def _has_committed(data_dir: Path) -> bool:
    """A first data commit in balance_sheet: the flow runs, so its API server is up."""
    return any('"txn"' in f.read_text() for f in (data_dir / "backtest" / "balance_sheet" / "_delta_log").glob("*.json"))


def _descendants(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return list(psutil.Process(proc.pid).children(recursive=True))
    return []


def _is_server(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return SERVER_APP in " ".join(process.cmdline())
    return False


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running. A zombie has exited: only its exit status waits for a reaper."""
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            # is_running() compares the creation time too, so a reused pid does not count.
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


def _wait_until_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (alive := _alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _describe(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            lines.append(f"pid {process.pid}, {process.memory_info().rss / 2**20:.0f} MB: "
                         f"{' '.join(process.cmdline())[:160]}")
    return "\n".join(lines)


@contextlib.contextmanager
def _reaping(proc: subprocess.Popen[bytes], children: list[psutil.Process]) -> Iterator[None]:
    """Whatever the test's outcome, leave no process behind (the command, then what it left)."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for process in _alive(children):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no output)"


def test_a_backtest_killed_with_sigkill_takes_its_prefect_server_with_it(tmp_path, prefect_home):
    log = tmp_path / "backtest.log"
    # Two months of minutes: far longer than the wait for the first commit, so the kill lands mid-run.
    proc = _backtest(tmp_path / "data", prefect_home, "2024-03-01", log)
    children: list[psutil.Process] = []
    with _reaping(proc, children):
        deadline = time.monotonic() + 180
        while not _has_committed(tmp_path / "data"):
            assert proc.poll() is None, f"the backtest ended (code {proc.returncode}) before its first commit:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no commit within 180 s:\n{_tail(log)}"
            time.sleep(0.1)
        children.extend(_descendants(proc))
        assert any(map(_is_server, children)), f"no Prefect server among the children: {_describe(children)}"

        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the backtest finished before the kill"

        left = _wait_until_gone(children, GONE_WITHIN_S)
        assert not left, f"still running {GONE_WITHIN_S:g} s after the command was killed:\n{_describe(left)}"


def test_a_finished_backtest_stops_its_prefect_server(tmp_path, prefect_home):
    log = tmp_path / "backtest.log"
    proc = _backtest(tmp_path / "data", prefect_home, "2024-01-02", log)
    children: list[psutil.Process] = []
    with _reaping(proc, children):
        deadline = time.monotonic() + 180
        while not any(map(_is_server, children)):
            assert proc.poll() is None, f"the backtest ended (code {proc.returncode}) before a server was seen:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no Prefect server started within 180 s:\n{_tail(log)}"
            children[:] = _descendants(proc)
            time.sleep(0.1)
        assert proc.wait(timeout=300) == 0, _tail(log)
        left = _wait_until_gone(children, GONE_WITHIN_S)
        assert not left, f"still running after the command exited:\n{_describe(left)}"
