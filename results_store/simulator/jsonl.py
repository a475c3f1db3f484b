"""JSON Lines snapshot files: one timestep per line, as an external engine would write them.

``{"timestamp": "2024-01-01T00:00:00+00:00", "timestep": 0, "position_monitor": {...}, ...}``

Timestamps are ISO-8601 strings: the line's in UTC, the events' as the project's JSON policy
writes them (with their own offset; the engine's are UTC). Reading turns them back into tz-aware
UTC ``pd.Timestamp`` objects, so a written engine run reads back equal to what the engine yielded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson
import pandas as pd

from results_store.json_policy import dumps
from results_store.utc import to_utc
from schemas.errors import ComponentError

__all__ = ["SnapshotSource", "read_jsonl", "write_jsonl"]

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


def _bad(path: Path, line_no: int, message: str, exc: BaseException | None = None) -> ComponentError:
    return ComponentError("RST-101", f"{path}:{line_no}: {message}", original_exception=exc,
                          details={"file": str(path), "line": line_no})


def _parse_time(raw: Any, path: Path, line_no: int, what: str) -> pd.Timestamp:
    if not isinstance(raw, str):
        raise _bad(path, line_no, f"{what} must be an ISO-8601 string, got {raw!r}")
    try:
        return to_utc(raw)
    except (TypeError, ValueError) as exc:
        raise _bad(path, line_no, f"{what} {raw!r} is not an ISO-8601 timestamp", exc) from None


def read_jsonl(path: Path | str) -> Iterator[Snapshot]:
    """Yield ``(timestamp, results)`` per line, lazily; ``results`` keeps ``"timestep"``.

    A line that is not a JSON object with an ISO ``"timestamp"`` (and, if present, a
    non-negative integer ``"timestep"``) raises ComponentError RST-101 naming ``file:line``.
    Blank lines are skipped. Whether the components follow the snapshot contract is the store's
    check, not this reader's.
    """
    path = Path(path)
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise _bad(path, line_no, f"not valid JSON ({exc})", exc) from None
            if not isinstance(record, dict):
                raise _bad(path, line_no, f"expected a JSON object, got {type(record).__name__}")
            if "timestamp" not in record:
                raise _bad(path, line_no, "no 'timestamp' key")
            timestamp = _parse_time(record.pop("timestamp"), path, line_no, "timestamp")
            step = record.get("timestep")
            if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
                raise _bad(path, line_no, f"'timestep' must be a non-negative integer, got {step!r}")
            events = record.get("event_logger")
            if isinstance(events, list):
                for event in events:
                    if isinstance(event, dict) and isinstance(event.get("timestamp"), str):
                        event["timestamp"] = _parse_time(event["timestamp"], path, line_no, "event timestamp")
            yield timestamp, record
