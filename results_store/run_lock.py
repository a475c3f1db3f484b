"""One writer per run: an exclusive OS file lock held from ``start()`` to the end of the run.

Two processes given the same run_id (two overlapping live collections, a backtest restarted while
the old process still runs) would both read the same committed versions and write the same
timesteps. The lock makes the second wait; when it gets the lock it re-reads the versions and
skips what the first committed. The OS drops the lock when a process dies, even by SIGKILL.

Waiting is bounded (``timeout_s``) and logged, so a run whose lock is never freed fails with
RST-301 naming the lock instead of hanging. ``flock`` locks belong to an open file, not to a
process, so two collections of one run in the same process (two flows on one event loop) also
wait for each other; acquiring again through the same object is a no-op.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from schemas.errors import ComponentError

__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "RunLock"]

DEFAULT_LOCK_TIMEOUT_S = 600.0
_POLL_S = 0.05

_log = logging.getLogger(__name__)


class RunLock:
    """An exclusive lock on ``path``; ``acquire`` waits at most ``timeout_s`` (None: forever)."""

    def __init__(self, path: Path, *, timeout_s: float | None = DEFAULT_LOCK_TIMEOUT_S, log_every_s: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.log_every_s = log_every_s
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Hold the lock; RST-301 if another holder keeps it past the timeout. Idempotent for this object."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._wait(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _wait(self, fd: int) -> None:
        started = last_log = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            now = time.monotonic()
            waited = now - started
            if self.timeout_s is not None and waited >= self.timeout_s:
                raise ComponentError(
                    "RST-301", f"{self.path}: another writer of this run still holds its lock after {self.timeout_s:g} s; "
                    "wait for it to finish, or stop it", details={"lock": str(self.path), "waited_s": round(waited, 1)})
            if now - last_log >= self.log_every_s:
                _log.info("waiting for %s, held by another writer of this run (%.0f s so far)", self.path, waited)
                last_log = now
            time.sleep(_POLL_S)

    def release(self) -> None:
        """Free the lock; safe to call when it is not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
