"""Feeding a snapshot file (JSON Lines) through a store: report every bad line, lose no good one.

Each line of the file ends one of three ways, and the run's summary says how many of each:

- **written**: a snapshot fed to the store (stored now, or skipped as committed by an earlier
  attempt of the run; the contract may still quarantine its rows, as for any snapshot);
- **quarantined**: a line that is not a snapshot (invalid JSON, NaN/Infinity, 1e400, a BOM, a
  truncated last line, nesting too deep, a scalar, a timestamp the tables cannot hold). It becomes
  one quarantine row: ``result_type`` "snapshot", rule ``unparseable_line``, error RST-101 naming
  ``file:line``, column ``line N``, payload the raw text. The line has no timestep or timestamp of
  its own, so the row takes those of the nearest good snapshot (the next one; the last one for bad
  lines at the end of the file) and commits in that snapshot's batch: exactly once across resumes;
- **refused**: a snapshot that breaks the run's order (a duplicate or backwards timestep, a
  timestamp before the previous one). The store would refuse it (RST-103) and end the run, so it is
  not fed: it is logged as a warning with ``file:line`` and counted.

``strict=True`` keeps the all-or-nothing rule: the whole file is checked first
(:func:`~results_store.simulator.jsonl.check_jsonl`) and any bad line fails the run, naming every
bad line, before anything is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from results_store.drive import stored_timesteps
from results_store.simulator.jsonl import BadLine, check_jsonl, parse_line
from results_store.store import CHUNK_TIMESTEPS, ResultsStore
from schemas.errors import ComponentError

_MAX_TEXT = 10_000  # of a bad line's raw text kept for its quarantine row, as read_jsonl keeps
_READ_BUFFER = 1 << 20  # the file is read 1 MiB at a time (lines of a W1 snapshot are ~2 KB)
# Snapshots parsed ahead of the store's worker, at most. A file waits to be read, so one chunk queued
# keeps the worker busy; the store's queue (10,000 by default) filled up while each 100,000-timestep
# batch committed, ~45 MB more at a one-year file's peak (bench/bench_ingest.py), for the same pace.
LEAD = CHUNK_TIMESTEPS
_ROOM_POLL_S = 0.002  # while the worker commits a batch (seconds), the reader looks for room this often

__all__ = ["LineAccounting", "check_file_strict", "feed_file"]


@dataclass
class LineAccounting:
    """What became of each non-blank line of a snapshot file."""

    read: int = 0
    written: int = 0
    quarantined: int = 0
    refused: int = 0
    bad: list[BadLine] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {"read": self.read, "written": self.written, "quarantined": self.quarantined, "refused": self.refused}

    def check(self, path: Path) -> None:
        """The promise the summary makes; a broken one is a bug, never a silent loss."""
        if self.written + self.quarantined + self.refused != self.read:
            raise ComponentError("RST-901", f"{path}: {self.read} lines read but {self.written} written + "
                                 f"{self.quarantined} quarantined + {self.refused} refused")


def check_file_strict(path: Path | str) -> None:
    """``--strict``: refuse the file (RST-101, every bad line named) unless every line would be stored."""
    check = check_jsonl(path)
    if check.bad:
        raise ComponentError(
            "RST-101",
            f"{path}: {len(check.bad)} of {check.lines} lines are bad, nothing was written (--strict):\n"
            + check.report(),
            details={"file": str(path), "bad_lines": [b.line for b in check.bad]})


_Held = tuple[int, pd.Timestamp, dict[str, Any], list[BadLine]]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")[:_MAX_TEXT]


def _snapshots_with_their_bad_lines(path: Path, tally: LineAccounting) -> Iterator[_Held]:
    """``(timestep, timestamp, results, bad lines to quarantine with it)`` in file order; refused
    lines go to ``tally.bad`` with the unparseable ones.

    A snapshot is held until the next good one (or the end of the file) so that bad lines after the
    last snapshot still have one to travel with.
    """
    pending: list[BadLine] = []
    held: _Held | None = None
    last_step, last_ns, last_ts = -1, None, None
    parse = parse_line
    with path.open("rb", buffering=_READ_BUFFER) as handle:
        for line_no, raw in enumerate(handle, start=1):
            if raw.isspace():
                continue  # blank lines are not lines of data (read_jsonl skips them too)
            tally.read += 1
            try:
                timestamp, results = parse(raw, path, line_no)
            except ComponentError as exc:
                bad = BadLine(line_no, _text(raw), exc)
                tally.bad.append(bad)
                pending.append(bad)
                continue
            given = results.get("timestep")
            step = last_step + 1 if given is None else int(given)
            ns = timestamp.value  # parse_line's timestamps are UTC within 1677-2262: nanoseconds fit int64
            # The store's order rule (store_timestep_results): a line breaking it is refused, not fed.
            if step <= last_step or (last_ns is not None and ns < last_ns):
                why = (f"timestep {step} after {last_step}: timesteps must increase" if step <= last_step
                       else f"timestamp {timestamp.isoformat()} is before the previous line's {last_ts}")
                tally.refused += 1
                tally.bad.append(BadLine(line_no, _text(raw), ComponentError(
                    "RST-103", f"{path}:{line_no}: {why}; refused, not stored",
                    details={"file": str(path), "line": line_no})))
                continue
            last_step, last_ns, last_ts = step, ns, timestamp
            if held is not None:
                yield held
            held, pending = (step, timestamp, results, pending), []
    if held is not None:
        yield held[0], held[1], held[2], held[3] + pending
    elif pending:
        # Nothing to travel with: with no snapshot the run has no timestep to quarantine them at.
        raise ComponentError("RST-101", f"{path}: no line is a snapshot ({len(pending)} bad lines), nothing was "
                             "written:\n" + "\n".join(str(b.error) for b in pending[:50]),
                             details={"file": str(path), "bad_lines": [b.line for b in pending]})


async def _room(store: ResultsStore, lead: int) -> None:
    """Wait until the store's queue holds fewer than ``lead`` snapshots, or its worker has ended (then the
    next ``store_timestep_results`` raises why)."""
    # Polled: the store's queue signals no "a chunk was taken" that could be awaited instead.
    while store.get_queue_size() >= lead and store.is_worker_running():  # noqa: ASYNC110
        await asyncio.sleep(_ROOM_POLL_S)


async def feed_file(store: ResultsStore, path: Path | str, *, strict: bool = False,
                    progress: Callable[[int], None] | None = None, every: int = 1_000) -> LineAccounting:
    """Feed a snapshot file through an open backtest store; every line is accounted for (module doc).

    ``progress`` is given the store's stored timesteps every ``every`` snapshots, as ``drive.feed``.
    At most ``LEAD`` snapshots (one chunk) wait in the store's queue: the file is read as the store goes.
    """
    path = Path(path)
    if strict:
        await asyncio.to_thread(check_file_strict, path)
    tally = LineAccounting()
    put, queued = store.store_timestep_results, store.get_queue_size
    lead = min(store.settings.queue_size, LEAD)
    for step, timestamp, results, lines in _snapshots_with_their_bad_lines(path, tally):
        if lines:
            # Before the snapshot: the worker may prepare its batch as soon as it is queued.
            store.quarantine_lines(step, timestamp, lines)
            tally.quarantined += len(lines)
        if queued() >= lead:
            await _room(store, lead)
        await put(timestamp, results)
        tally.written += 1
        if progress is not None and tally.written % every == 0:
            await asyncio.sleep(0)  # let the worker run so the progress bar tracks commits
            progress(stored_timesteps(store))
    for bad in tally.bad:
        # One warning per bad line, each with its code and file:line: all of them, not the first.
        store.event_log.log_warning(str(bad.error), {"file": str(path), "line": bad.line,
                                                     "error_code": bad.error.error_code})
    if progress is not None:
        progress(stored_timesteps(store))
    tally.check(path)
    return tally
