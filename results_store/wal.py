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

Appends overwrite zeros written ahead of them (``roll`` keeps ``ZEROS_AHEAD`` of them in front of
the appends, off the engine's path), so that an append's ``fdatasync`` flushes its own bytes only:
an append that grew the file would have its new size and blocks journaled, and on ext4 a journal
commit also waits for every other file's dirty data, the store's Delta writes. Under the store's own
writes that halved an acknowledgement's p50 and p99 (bench/bench_live.py). A segment is therefore
lines, then zeros: a reader stops at the first zero byte (JSON lines never hold one).

A torn last line (a crash mid-append) was never acknowledged and is ignored on replay. An append
that fails (a full disk) removes its partial line (zeroed again, or truncated away where it grew the
file) before it raises, so the next append does not land behind a torn line that would hide it on replay.

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

from results_store import durable_files
from results_store.json_policy import default as json_default

__all__ = ["SEGMENT_BYTES", "ZEROS_AHEAD", "WalEntry", "WriteAheadLog"]

# A segment is rolled over once it holds this much: ~3,000 snapshots of usdt_market_neutral (~2.7 KB
# each), 50 minutes at one a second. A replay after a crash reads at most this much of snapshots
# already committed (skipped by timestep); the disk holds at most this much of them meanwhile.
SEGMENT_BYTES = 8 * 1024 * 1024
# Zeros written ahead of the appends: 1 MiB (~380 snapshots), topped up by ``roll`` once fewer than a
# quarter of it are left (a write of 1 MiB and an fdatasync, in the worker, every ~290 snapshots).
ZEROS_AHEAD = 1024 * 1024
_READ_BYTES = 256 * 1024


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
        self._size = 0  # bytes of entries in the open segment: the next append goes there
        self._zeroed = 0  # bytes of the open segment on disk (entries, then zeros): appends below overwrite
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
        fd, end = self._fd, self._size
        try:
            view, offset = memoryview(line), end
            while view:  # a full disk may take part of the line and refuse the rest
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            # Its own bytes, and the file's size if the line went past the zeros.
            os.fdatasync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                if end + len(line) > self._zeroed:  # shrinking frees space, so it works on a full disk
                    os.ftruncate(fd, max(end, self._zeroed))
                if end < self._zeroed:
                    os.pwrite(fd, bytes(min(len(line), self._zeroed - end)), end)
            raise
        self._size = end + len(line)
        self._zeroed = max(self._zeroed, self._size)
        self._last_step[self._current] = timestep
        self._newest = max(self._newest, timestep)

    def roll(self, after: int = -1) -> bool:
        """Have a segment open with room for the next appends: seal a full one and open the next,
        named after the first timestep it can hold (above ``after`` and every timestep this log
        has seen), and keep zeros written ahead of the appends. True if a segment was opened.
        Call it off the engine's path: it writes and syncs the zeros, and fsyncs the directory."""
        opened = self._fd is None or self._size >= self.segment_bytes
        if opened:
            self.seal()
            self._open(self.directory / f"seg-{max(after, self._newest) + 1:012d}.wal")
        if self._zeroed - self._size < ZEROS_AHEAD // 4:
            self._zero_ahead()
        return opened

    def _zero_ahead(self) -> None:
        """Write zeros from the end of the open segment to ``ZEROS_AHEAD`` past its entries, and sync
        them (the file's new size and blocks are journaled here, not in an append)."""
        assert self._fd is not None
        target = self._size + ZEROS_AHEAD
        try:
            written = os.pwrite(self._fd, bytes(target - self._zeroed), self._zeroed)
            os.fdatasync(self._fd)
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk: give the space back
                os.ftruncate(self._fd, self._zeroed)
            raise
        self._zeroed += written

    def _open(self, segment: Path) -> None:
        """Make ``segment`` (created if new, durably: its directory is fsynced) the one appends go to."""
        fd = os.open(segment, os.O_WRONLY | os.O_CREAT, 0o644)  # not O_APPEND: appends overwrite zeros
        try:
            zeroed = os.fstat(fd).st_size
            # A segment that exists already (left empty by an earlier process): after its last whole line.
            size = _entries_end(_read_data(segment)) if zeroed else 0
            self._fsync_dir()
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._current, self._size, self._zeroed = fd, segment, size, zeroed

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
        offset = start
        for raw in _lines(segment, start):
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
        durable_files.sync_dir(self.directory)


def _lines(segment: Path, start: int) -> Iterator[bytes]:
    """A segment's whole lines from byte ``start``, read as they are taken, up to its zeros (the
    space written ahead of the appends); what follows the last newline is a torn tail, never acknowledged."""
    with segment.open("rb") as handle:
        handle.seek(start)
        pending = b""
        while block := handle.read(_READ_BYTES):
            zeros = block.find(0)
            lines = (pending + (block if zeros < 0 else block[:zeros])).split(b"\n")
            pending = lines.pop()
            for line in lines:
                yield line + b"\n"
            if zeros >= 0:
                return


def _read_data(segment: Path, start: int = 0) -> bytes:
    """A segment's bytes from ``start`` up to its zeros (the space written ahead of the appends)."""
    with segment.open("rb") as handle:
        handle.seek(start)
        data = handle.read()
    end = data.find(0)
    return data if end < 0 else data[:end]


def _entries_end(data: bytes) -> int:
    """Where the whole lines of ``data`` end (a torn last line is overwritten by the next append)."""
    return data.rfind(b"\n") + 1
