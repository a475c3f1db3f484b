"""Live mode's write-ahead log: an acknowledged snapshot is on disk (fsync) before the engine
hears back, and stays there until every table has committed it.

Segments are JSON Lines files ``seg-<timestep>.wal`` under ``{root}/live/_wal/{run_id}/``, named
after the first timestep they can hold, so that their names sort in timestep order. Appends go
on into the open segment across batches; once it holds ``segment_bytes`` it is rolled over: sealed,
and the next one opened. The store rolls the log (``roll``) from its worker, when it starts and
before each commit, so the next segment is open before the engine appends to it: an acknowledgement
is one write and one fsync, never a file creation and a directory fsync as well (a segment per batch
made it two fsyncs per acknowledgement at one snapshot a second). A sealed segment is deleted once
its last timestep is committed; the open one when the log is closed with all of it committed.

A torn last line (a crash mid-append) was never acknowledged and is ignored on replay. An append
that fails (a full disk) truncates its partial line away before it raises, so the next append does
not land behind a torn line that would hide it on replay.

Not thread-safe: ``results_store.live.LiveDurability`` makes every call under one lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from results_store.json_policy import default as json_default

__all__ = ["SEGMENT_BYTES", "WalEntry", "WriteAheadLog"]

# A segment is rolled over once it holds this much: ~3,000 snapshots of usdt_market_neutral (~2.7 KB
# each), 50 minutes at one a second. A replay after a crash reads at most this much of snapshots
# already committed (skipped by timestep); the disk holds at most this much of them meanwhile.
SEGMENT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WalEntry:
    timestep: int
    timestamp_us: int
    results: dict[str, Any]


class WriteAheadLog:
    """Append-only, fsynced, segmented log of acknowledged live snapshots."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._fd: int | None = None
        self._current: Path | None = None
        self._size = 0  # bytes in the open segment
        # The newest timestep appended or read: the next segment is named after it.
        self._newest = -1
        # Every timestep up to this one is committed (``release_through``): the open segment goes at close then.
        self._released = -1
        # last timestep in each segment, so committed segments can be dropped without reading them
        self._last_step: dict[Path, int] = {}
        # (timestep of a line read, byte offset just after it) per segment: draining a long backlog
        # chunk by chunk then reads each line once instead of re-reading the segment from its start
        self._resume: dict[Path, tuple[int, int]] = {}

    def append(self, timestep: int, timestamp_us: int, results: dict[str, Any]) -> None:
        """Write one snapshot and fsync it; returns only once it is durable. On failure nothing of
        it stays in the log (the snapshot was not acknowledged) and the OS error is raised."""
        line = orjson.dumps({"t": timestep, "ts": timestamp_us, "r": results}, default=json_default,
                            option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        if self._fd is None:  # not rolled beforehand (the store always does): open one here
            self._open(self.directory / f"seg-{timestep:012d}.wal")
        assert self._current is not None and self._fd is not None
        fd = self._fd
        end = os.lseek(fd, 0, os.SEEK_END)  # where this line starts (O_APPEND writes at the end)
        try:
            view = memoryview(line)
            while view:  # a full disk may take part of the line and refuse the rest
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):  # shrinking frees space, so it works on a full disk
                os.ftruncate(fd, end)
            raise
        self._size = end + len(line)
        self._last_step[self._current] = timestep
        self._newest = max(self._newest, timestep)

    def roll(self, after: int = -1) -> bool:
        """Have a segment open with room for the next append: seal a full one and open the next,
        named after the first timestep it can hold (above ``after`` and every timestep this log
        has seen). True if a segment was opened. Call it off the engine's path: it fsyncs the directory."""
        if self._fd is not None and self._size < self.segment_bytes:
            return False
        self.seal()
        self._open(self.directory / f"seg-{max(after, self._newest) + 1:012d}.wal")
        return True

    def _open(self, segment: Path) -> None:
        """Make ``segment`` (created if new, durably: its directory is fsynced) the one appends go to."""
        fd = os.open(segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._size = os.fstat(fd).st_size
            self._fsync_dir()
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._current = fd, segment

    def seal(self) -> None:
        """End the current segment; the next append (or ``roll``) opens a new one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._current = None

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("seg-*.wal"))

    def entries(self, after_timestep: int = -1) -> Generator[WalEntry, None, None]:
        """Every durable entry with timestep > ``after_timestep``, in log order."""
        for segment in self.segments():
            last = self._last_step.get(segment)
            if last is not None and last <= after_timestep:
                continue
            # Timesteps only grow within the log, so every line before a remembered position that
            # is not after ``after_timestep`` can be skipped unread.
            resume = self._resume.get(segment)
            start = resume[1] if resume is not None and resume[0] <= after_timestep else 0
            for entry in self._read_segment(segment, start):
                if entry.timestep > after_timestep:
                    yield entry

    def _read_segment(self, segment: Path, start: int = 0) -> Iterator[WalEntry]:
        with segment.open("rb") as handle:
            handle.seek(start)
            offset = start
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # torn tail: never acknowledged
                try:
                    item = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    break
                offset += len(raw)
                self._last_step[segment] = max(self._last_step.get(segment, -1), item["t"])
                self._newest = max(self._newest, item["t"])
                self._resume[segment] = (item["t"], offset)
                yield WalEntry(item["t"], item["ts"], item["r"])

    def release_through(self, timestep: int) -> int:
        """Delete sealed segments whose entries are all committed (last timestep <= ``timestep``).

        The open segment stays (appends go on into it): it goes once rolled over and committed, or
        at ``close`` if all of it is committed by then.
        """
        self._released = max(self._released, timestep)
        removed = 0
        for segment in self.segments():
            if segment == self._current:
                continue
            last = self._last_step.get(segment)
            if last is None:
                for _ in self._read_segment(segment):
                    pass
                last = self._last_step.get(segment, -1)
            if last <= timestep:
                self._forget(segment)
                removed += 1
        if removed:
            self._fsync_dir()
        return removed

    def _forget(self, segment: Path) -> None:
        segment.unlink(missing_ok=True)
        self._last_step.pop(segment, None)
        self._resume.pop(segment, None)

    def pending_count(self) -> int:
        return sum(1 for _ in self.entries())

    def close(self) -> None:
        """Seal the open segment, and delete it if every entry in it is committed (or it has none)."""
        current = self._current
        self.seal()
        if current is not None and self._last_step.get(current, -1) <= self._released:
            self._forget(current)
            self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
