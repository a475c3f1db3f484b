"""Faults for the store tests, injected below the production write path: a real filesystem that
fills up or turns read-only, a failing ``delta_tables.commit_run_files``, and a bound on how
long a scenario may take, so that a store that hangs fails its test instead of the suite."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from results_store import delta_tables

T = TypeVar("T")

# Generous: every scenario bounded by it ends in seconds; only a hang comes near it.
HANG_S = 120.0


def finish_within(seconds: float, scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``scenario`` in its own event loop and thread; fail if it has not ended after ``seconds``.

    A hung store blocks its event loop's tasks or a worker thread forever, which neither
    ``asyncio.wait_for`` nor pytest can interrupt; a daemon thread can at least be left behind.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(scenario())
        except BaseException as exc:  # handed to the test's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="bounded-scenario", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the scenario hung: still running after {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A real, small filesystem at ``path`` (the tests run as root); skipped where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path}: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            # Something still holds a file open there (a hung scenario's thread): detach it anyway.
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def remount(path: Path, *, read_only: bool) -> None:
    """Turn the tmpfs at ``path`` read-only or writable again, files kept."""
    subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(path)], check=True)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(path: Path, *, leave_bytes: int) -> Path:
    """Write a filler file so that only about ``leave_bytes`` stay free on ``path``'s filesystem."""
    filler = path / "filler.bin"
    remaining = free_bytes(path) - leave_bytes
    chunk = b"\0" * 2**20
    with filler.open("wb") as out:  # really written: a sparse file would take no space on tmpfs
        while remaining > 0:
            out.write(chunk[: min(len(chunk), remaining)])
            remaining -= len(chunk)
    return filler


class FailingAppend:
    """Stands in for ``delta_tables.commit_run_files``: raises ``error`` for the chosen tables,
    the first ``times`` calls (None: always), and commits for real otherwise."""

    def __init__(self, error: Callable[[], BaseException], *, tables: set[str] | None = None,
                 times: int | None = None) -> None:
        self.error = error
        self.tables = tables
        self.times = times
        self.failures = 0
        self.calls = 0
        self._real = delta_tables.commit_run_files
        self._lock = threading.Lock()  # tables commit from several writer threads at once

    def __call__(self, path: Path, data: Any, **kwargs: Any) -> int | None:
        with self._lock:
            self.calls += 1
            fail = (self.tables is None or path.name in self.tables) and (
                self.times is None or self.failures < self.times)
            if fail:
                self.failures += 1
        if fail:
            raise self.error()
        return self._real(path, data, **kwargs)


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def io_hiccup() -> OSError:
    return OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
