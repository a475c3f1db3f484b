"""One writer per run: an exclusive OS file lock held from ``start()`` to the end of the run.

Two processes given the same run_id (two overlapping live collections, a backtest restarted while
the old process still runs) would both read the same committed versions and write the same
timesteps. The lock makes the second wait; when it gets the lock it re-reads the versions and
skips what the first committed. The OS drops the lock when a process dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["RunLock"]


class RunLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Block until this process holds the run's lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
