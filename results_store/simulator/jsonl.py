"""JSON Lines snapshot files: one timestep per line, as an external engine would write them.

``{"timestamp": "2024-01-01T00:00:00+00:00", "timestep": 0, "position_monitor": {...}, ...}``

Timestamps are ISO-8601 strings: the line's in UTC, the events' as the project's JSON policy
writes them (with their own offset; the engine's are UTC). Reading turns them back into tz-aware
UTC ``pd.Timestamp`` objects, so a written engine run reads back equal to what the engine yielded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson
import pandas as pd

from results_store.json_policy import dumps
from results_store.utc import to_utc
from schemas.errors import ComponentError

__all__ = ["BadLine", "FileCheck", "SnapshotSource", "check_jsonl", "parse_line", "read_jsonl", "write_jsonl"]

Snapshot = tuple[pd.Timestamp, dict[str, Any]]


@runtime_checkable
class SnapshotSource(Protocol):
    """Anything with the reference engine's ``iter_snapshots()``."""

    def iter_snapshots(self, start_timestep: int = 0, stop_timestep: int | None = None) -> Iterator[Snapshot]:
        """``(timestamp, results)`` pairs in timestep order."""
        ...


def write_jsonl(source: SnapshotSource | Iterable[tuple[Any, dict[str, Any]]], path: Path | str) -> int:
    """Write snapshots one per line and return how many were written.

    ``source`` is an engine (anything with ``iter_snapshots()``) or an iterable of
    ``(timestamp, results)`` pairs. A result without ``"timestep"`` is numbered by its position.
    Values are encoded by the project's JSON policy (:func:`results_store.json_policy.dumps`): a
    value with no lossless JSON form raises ``UnencodableValue`` and no file is written.
    The file appears under its name only when complete (written beside it, then renamed), so a
    watcher never picks up half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = source.iter_snapshots() if isinstance(source, SnapshotSource) else source
    partial = path.with_name(path.name + ".part")
    count = 0
    try:
        with partial.open("wb") as handle:
            for index, (timestamp, results) in enumerate(pairs):
                line: dict[str, Any] = {"timestamp": to_utc(timestamp).isoformat(),
                                        "timestep": results.get("timestep", index)}
                line.update((k, v) for k, v in results.items() if k != "timestep")
                handle.write(dumps(line, option=orjson.OPT_APPEND_NEWLINE))
                count += 1
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


# Timestamps the tables hold: Arrow µs in pandas' nanosecond range (years 1677-2262).
_MIN_TS, _MAX_TS = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
_MAX_TIMESTEP = 2**63 - 1
_MAX_TEXT = 10_000  # a bad line's raw text kept for the quarantine row, in characters


@dataclass(frozen=True)
class BadLine:
    """A line the reader could not turn into a snapshot: where, what it said, and why (RST-101)."""

    line: int
    text: str
    error: ComponentError


def _bad(path: Path, line_no: int, message: str, exc: BaseException | None = None) -> ComponentError:
    return ComponentError("RST-101", f"{path}:{line_no}: {message}", original_exception=exc,
                          details={"file": str(path), "line": line_no})


# The ISO-8601 spellings engines write (``write_jsonl``'s among them), which ``datetime.fromisoformat``
# reads exactly as pandas does: at most microseconds (pandas keeps nanoseconds, fromisoformat drops
# them), an offset in hours and minutes or Z, or none (UTC). ASCII digits only.
_PLAIN_ISO = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})?")


def _plain_utc(raw: str) -> pd.Timestamp | None:
    """``to_utc(raw)`` for a plain ISO-8601 timestamp well inside 1677-2262, without pandas' string parser
    (a tenth of its cost); None for anything else, which takes the general path."""
    if _PLAIN_ISO.fullmatch(raw) is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:  # e.g. Feb 30, 24:00, an offset of 24 hours: the general path says why
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    # The years 1677 and 2262 hold the bounds: the general path checks those to the nanosecond.
    return pd.Timestamp(moment) if 1678 <= moment.year <= 2261 else None


def _parse_time(raw: Any, path: Path, line_no: int, what: str) -> pd.Timestamp:
    if not isinstance(raw, str):
        raise _bad(path, line_no, f"{what} must be an ISO-8601 string, got {type(raw).__name__}")
    plain = _plain_utc(raw)
    if plain is not None:
        return plain
    try:
        stamp = to_utc(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _bad(path, line_no, f"{what} {raw[:64]!r} is not an ISO-8601 timestamp the tables can hold", exc) from None
    if not _MIN_TS <= stamp <= _MAX_TS:
        raise _bad(path, line_no, f"{what} {raw[:64]!r} is outside what the tables hold (1677-2262)")
    return stamp


def parse_line(raw: bytes, path: Path, line_no: int) -> tuple[pd.Timestamp, dict[str, Any]]:
    """One line as ``(timestamp, record)``; RST-101 naming ``file:line`` when it cannot be a snapshot."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson's message names NaN/Infinity literals, 1e400, a BOM and a truncated line.
        raise _bad(path, line_no, f"not valid JSON ({exc})", exc) from None
    except RecursionError as exc:
        raise _bad(path, line_no, "JSON nested too deeply", exc) from None
    if not isinstance(record, dict):
        raise _bad(path, line_no, f"expected a JSON object, got {type(record).__name__}")
    if "timestamp" not in record:
        raise _bad(path, line_no, "no 'timestamp' key")
    timestamp = _parse_time(record.pop("timestamp"), path, line_no, "timestamp")
    step = record.get("timestep")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_TIMESTEP):
        raise _bad(path, line_no, f"'timestep' must be an integer from 0 to 2^63-1, got {str(step)[:32]}")
    events = record.get("event_logger")
    if isinstance(events, list):
        for event in events:
            if isinstance(event, dict) and isinstance(event.get("timestamp"), str):
                event["timestamp"] = _parse_time(event["timestamp"], path, line_no, "event timestamp")
    return timestamp, record


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if raw.strip():
                yield line_no, raw


def read_jsonl(path: Path | str, on_bad_line: Callable[[BadLine], None] | None = None) -> Iterator[Snapshot]:
    """Yield ``(timestamp, results)`` per line, lazily; ``results`` keeps ``"timestep"``.

    A line that is not a JSON object with an ISO ``"timestamp"`` the tables can hold (and, if
    present, an integer ``"timestep"`` in 0..2^63-1) is a bad line (RST-101 naming ``file:line``):
    with ``on_bad_line`` it is handed over and reading goes on; without, it raises (``--strict``).
    Blank lines are skipped. Whether the components follow the snapshot contract is the store's
    check, not this reader's.
    """
    path = Path(path)
    for line_no, raw in _lines(path):
        try:
            yield parse_line(raw, path, line_no)
        except ComponentError as exc:
            if on_bad_line is None:
                raise
            on_bad_line(BadLine(line_no, raw.decode("utf-8", "replace").rstrip("\r\n")[:_MAX_TEXT], exc))


@dataclass
class FileCheck:
    """What a whole-file check found: snapshots that would be stored, and every bad line at once."""

    lines: int = 0
    snapshots: int = 0
    bad: list[BadLine] = field(default_factory=list)

    def report(self, limit: int = 50) -> str:
        """One line per bad line (the first ``limit``), then a count of the rest."""
        shown = [str(b.error) for b in self.bad[:limit]]
        if len(self.bad) > limit:
            shown.append(f"... and {len(self.bad) - limit} more bad lines")
        return "\n".join(shown)


def check_jsonl(path: Path | str) -> FileCheck:
    """Parse every line and check the order the store requires, reporting every bad line, not the first.

    Order: timesteps (where given) strictly increase and timestamps never decrease, in UTC; a line
    breaking it is a bad line (RST-103) as the store would refuse it.
    """
    path = Path(path)
    check = FileCheck()
    last_step: int | None = None
    last_ts: pd.Timestamp | None = None

    def collect(bad: BadLine) -> None:
        check.bad.append(bad)

    position = 0
    for line_no, raw in _lines(path):
        check.lines += 1
        try:
            timestamp, record = parse_line(raw, path, line_no)
        except ComponentError as exc:
            collect(BadLine(line_no, raw.decode("utf-8", "replace").rstrip("\r\n")[:_MAX_TEXT], exc))
            continue
        step = record.get("timestep", position)
        position += 1
        problem = None
        if last_step is not None and step <= last_step:
            problem = f"timestep {step} after {last_step}: timesteps must increase"
        elif last_ts is not None and timestamp < last_ts:
            problem = f"timestamp {timestamp.isoformat()} is before the previous line's {last_ts.isoformat()}"
        if problem:
            error = ComponentError("RST-103", f"{path}:{line_no}: {problem}", details={"file": str(path), "line": line_no})
            collect(BadLine(line_no, raw.decode("utf-8", "replace").rstrip("\r\n")[:_MAX_TEXT], error))
            continue
        last_step, last_ts = step, timestamp
        check.snapshots += 1
    return check
