"""Live mode's durability: every acknowledged snapshot is in the write-ahead log until committed.

``LiveDurability`` is the live path's state machine around the WAL, owned by ``ResultsStore``:

* acknowledge: fsync the snapshot to the WAL, then let it through the queue, or, when the queue
  is full (or a backlog already exists, so FIFO order holds), keep it only in the WAL ("spill")
  and report health ``degraded`` until the backlog drains;
* drain: read the spilled backlog back from the WAL in order, once the queue is empty; a read
  never goes past the last snapshot already counted as spilled, so a snapshot whose append has
  landed but whose ``accept`` has not yet decided its way is never also read from the backlog
  (it would then be committed twice);
* commit: roll the WAL over if its open segment is full (so that the next segment is open before
  the engine appends to it: an acknowledgement never creates a file), commit the batch (the batch
  writer retries transient failures), then delete fully committed segments. A commit that fails
  for good fails the run, and the batch stays in the WAL for the next run;
* recover: on start, what the WAL holds past the committed watermark becomes the backlog, and the
  segment the first acknowledgements go to is opened.

Storage errors are mapped by ``results_store.error_map``: a WAL append retries a transient one
briefly and raises a terminal one to the engine (the snapshot is then not acknowledged).

Every use of the ``WriteAheadLog`` goes through this class, under one lock: appends run in a
worker thread, backlog reads in another and segment roll-overs and releases in a third, and the
log's file descriptor and per-segment bookkeeping are not safe to share between them. Each locked
call is made from a worker thread, never from the event loop, so waiting for the lock (an fsync, a
chunk read) never stalls the engine's event loop. The spill counters are only touched on the event
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from itertools import islice, takewhile
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from results_store.batch_writer import CommitOutcome, PreparedBatch, Queued, RetryPolicy
from results_store.error_map import map_error, storage_errors
from results_store.health import HealthTracker
from results_store.wal import WalEntry, WriteAheadLog
from schemas.errors import ComponentError

__all__ = ["WAL_APPEND_RETRY", "ErrorSink", "LiveDurability", "wal_directory"]

# The engine waits for its WAL append: a transient failure gets a few quick tries, no more.
WAL_APPEND_RETRY = RetryPolicy(attempts=3, timeout_s=None, wait_initial_s=0.02, wait_max_s=0.2, wait_jitter_s=0.02)


def wal_directory(root: Path, run_id: str) -> Path:
    """Where a live run's WAL segments live: ``{root}/live/_wal/{run_id}/``."""
    return root / "live" / "_wal" / run_id


class ErrorSink(Protocol):
    """How errors reach the store's health counters and event log (``ResultsStore._log_error``)."""

    def __call__(self, error: ComponentError, *, event_type: str = "error") -> None: ...


class LiveDurability:
    """The WAL-and-spill state machine of one live run (see the module docstring)."""

    def __init__(self, directory: Path, *, queue: asyncio.Queue[Any], health: HealthTracker,
                 log_error: ErrorSink) -> None:
        with storage_errors("open the write-ahead log", directory):
            self._wal = WriteAheadLog(directory)
        # One lock for every WAL call: see the module docstring for which threads share the log.
        self._wal_lock = threading.Lock()
        # Read only (full, qsize, maxsize): the store owns the queue and puts into it.
        self._queue = queue
        self._health = health
        self._log_error = log_error
        self._spill_pending = 0  # acknowledged snapshots in the WAL but not in the queue
        self._spill_after = -1   # ... with timesteps greater than this
        self._spill_last = -1    # ... and not greater than this (the last one counted as spilled)
        self._queued_last_step = -1  # the last timestep that went through the queue

    @property
    def directory(self) -> Path:
        return self._wal.directory

    @property
    def backlog(self) -> int:
        """Acknowledged snapshots waiting in the WAL only (spilled or replayed), not in the queue."""
        return self._spill_pending

    # ----------------------------------------------------------------------------- start
    async def recover(self, watermark: int) -> WalEntry | None:
        """Turn what the WAL holds past ``watermark`` into the backlog; return its last entry, if any."""
        replay = await asyncio.to_thread(self._entries_after, watermark)
        # Every segment has been read: the one opened now is named after all of them.
        await self._roll(after=watermark)
        if not replay:
            return None
        self._spill_pending = len(replay)
        self._spill_after = watermark
        self._spill_last = replay[-1].timestep
        return replay[-1]

    def _entries_after(self, timestep: int) -> list[WalEntry]:
        with self._wal_lock, storage_errors("read the write-ahead log", self.directory):
            return list(self._wal.entries(timestep))

    # ----------------------------------------------------------------------------- acknowledge
    async def accept(self, item: Queued) -> bool:
        """Make ``item`` durable. True: the caller puts it in the queue now (there is room, and
        no backlog it would overtake). False: it was spilled and stays in the WAL for ``read_backlog``."""
        await asyncio.to_thread(self._append, item)
        if self._spill_pending or self._queue.full():
            if not self._spill_pending:
                self._start_spilling(item[0])
            self._spill_pending += 1
            self._spill_last = item[0]
            return False
        # No await between here and the caller's put_nowait, so the room seen above is still there.
        self._queued_last_step = item[0]
        return True

    def _append(self, item: Queued) -> None:
        for attempt in WAL_APPEND_RETRY.attempts_on_transient():
            # The lock is let go between attempts, so the worker's reads and releases go on meanwhile.
            with attempt, self._wal_lock, storage_errors("append to the write-ahead log", self.directory):
                self._wal.append(item[0], item[1], item[3])
                return

    def _start_spilling(self, timestep: int) -> None:
        # Everything after what the worker has already had (queued, or read from an earlier
        # backlog) is now read back from the WAL, in order.
        self._spill_after = max(self._spill_after, self._queued_last_step)
        error = ComponentError(
            "RST-002", f"queue full at {self._queue.maxsize} timesteps; timestep {timestep} "
            "and later go to the write-ahead log until the queue drains",
            details={"timestep": timestep, "queue_size": self._queue.qsize()},
        )
        self._log_error(error, event_type="queue_full")
        self._health.spilling = True

    # ----------------------------------------------------------------------------- drain
    async def read_backlog(self, limit: int) -> list[Queued]:
        """Up to ``limit`` backlog snapshots, in timestep order, read back from the WAL."""
        after, through, pending = self._spill_after, self._spill_last, self._spill_pending
        chunk = await asyncio.to_thread(self._read_between, after, through, limit)
        if not chunk or len(chunk) > pending:
            # Acknowledged snapshots the WAL no longer holds, or more than were spilled: never guess.
            raise ComponentError(
                "RST-005", f"the write-ahead log in {self.directory} holds {len(chunk)} snapshots after timestep "
                f"{after} up to {through}, but {pending} were acknowledged there",
                details={"after": after, "through": through, "pending": pending, "found": len(chunk)})
        self._spill_after = chunk[-1][0]
        self._spill_pending -= len(chunk)
        if not self._spill_pending:
            self._health.spilling = False
        return chunk

    def _read_between(self, after: int, through: int, limit: int) -> list[Queued]:
        # Only the WAL read holds the lock; building the queue tuples does not need it.
        with self._wal_lock, storage_errors("read the write-ahead log", self.directory), \
                contextlib.closing(self._wal.entries(after)) as entries:
            counted = list(islice(takewhile(lambda e: e.timestep <= through, entries), limit))
        return [(e.timestep, e.timestamp_us, pd.Timestamp(e.timestamp_us, unit="us", tz="UTC"), e.results,
                 time.monotonic()) for e in counted]

    # ----------------------------------------------------------------------------- commit
    async def commit(self, batch: PreparedBatch, write: Callable[[PreparedBatch], CommitOutcome]) -> CommitOutcome:
        """Commit ``batch`` with ``write``, which retries transient failures itself. A failure is
        raised: the batch stays in the WAL, and the next run (collection) commits it."""
        # Here, in a worker thread, rather than in the engine's append: a full segment is sealed
        # (to be deleted once committed) and the next one opened.
        await self._roll()
        return await asyncio.to_thread(write, batch)

    async def _roll(self, after: int = -1) -> None:
        """Open the next WAL segment if the open one is full (or there is none). A failure is
        logged, not raised: an append then opens the segment itself, and reports its own failure."""
        try:
            await asyncio.to_thread(self._roll_locked, after)
        except Exception as exc:
            self._log_error(map_error(exc, "open a write-ahead log segment", self.directory))

    def _roll_locked(self, after: int) -> None:
        with self._wal_lock, storage_errors("open a write-ahead log segment", self.directory):
            self._wal.roll(after)

    async def release_through(self, timestep: int) -> None:
        """Delete the WAL segments whose snapshots are all committed (timestep <= ``timestep``).

        A failure is logged, not raised: the snapshots are committed, and a segment left behind is
        skipped on replay (at or below the watermark) and deleted by a later release.
        """
        try:
            await asyncio.to_thread(self._release_through, timestep)
        except Exception as exc:
            self._log_error(map_error(exc, "delete committed write-ahead log segments", self.directory))

    def _release_through(self, timestep: int) -> None:
        with self._wal_lock:
            self._wal.release_through(timestep)

    def close(self) -> None:
        """Close the open segment (blocking: call it from a worker thread). Files stay for a restart."""
        with self._wal_lock, storage_errors("close the write-ahead log", self.directory):
            self._wal.close()
