"""Live mode's write-ahead log: an acknowledged snapshot is on disk (fsync) before the engine
hears back, and stays there until every table has committed it.

Segments are JSON Lines files ``seg-<first timestep>.wal`` under ``{root}/live/_wal/{run_id}/``.
A new segment starts at every batch boundary, so a whole segment can be deleted once its last
timestep is committed. A torn last line (a crash mid-append) was never acknowledged and is
ignored on replay. An append that fails (a full disk) truncates its partial line away before it
raises, so the next append does not land behind a torn line that would hide it on replay.

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

__all__ = ["WalEntry", "WriteAheadLog"]


@dataclass(frozen=True, slots=True)
class WalEntry:
    timestep: int
    timestamp_us: int
    results: dict[str, Any]




class WriteAheadLog:
    """Append-only, fsynced, segment-per-batch log of acknowledged live snapshots."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._current: Path | None = None
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
        if self._fd is None:
            self._current = self.directory / f"seg-{timestep:012d}.wal"
            self._fd = os.open(self._current, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._fsync_dir()
        assert self._current is not None
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
        self._last_step[self._current] = timestep

    def seal(self) -> None:
        """End the current segment; the next append starts a new one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

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
                self._resume[segment] = (item["t"], offset)
                yield WalEntry(item["t"], item["ts"], item["r"])

    def release_through(self, timestep: int) -> int:
        """Delete segments whose entries are all committed (last timestep <= ``timestep``)."""
        removed = 0
        for segment in self.segments():
            last = self._last_step.get(segment)
            if last is None:
                for _ in self._read_segment(segment):
                    pass
                last = self._last_step.get(segment, -1)
            if last <= timestep:
                if segment == self._current:
                    self.seal()
                    self._current = None
                segment.unlink()
                self._last_step.pop(segment, None)
                self._resume.pop(segment, None)
                removed += 1
        if removed:
            self._fsync_dir()
        return removed

    def pending_count(self) -> int:
        return sum(1 for _ in self.entries())

    def close(self) -> None:
        self.seal()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
