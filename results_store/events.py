"""The component's event log: ``{data_dir}/logs/events/results_store_events.jsonl``.

One JSON line per event. Several processes write the same file (the every-minute live flow,
backtests, the inbox), so a write is one ``os.write`` of whole lines on an ``O_APPEND`` descriptor,
made while holding an exclusive ``flock`` on ``.events.lock`` beside the file: lines never tear or
interleave, and rotation (the standard library's rotating handler renames the file under other
processes' feet) happens under the same lock. Rotation is daily by UTC date: the first writer of a
new day renames yesterday's file to ``results_store_events.jsonl.YYYY-MM-DD`` and removes rotated
files older than 30 days.

A backtest buffers its events in memory and writes them at batch boundaries; an error event is
written at once, with everything buffered before it. Live writes each event at once. Writing the
log never raises: on a full disk an event log must not hide the run's own error, so failed writes
are counted (``dropped``) and reported once on stderr.
"""

from __future__ import annotations

import fcntl
import os
import sys
import traceback
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from results_store.json_policy import tagged_default as json_tagged_default
from schemas.errors import ComponentError
from schemas.modes import LogLevel

__all__ = ["EVENT_TYPES", "KEEP_DAYS", "LEVELS", "URGENT_EVENT_TYPES", "EventLog", "event_log_path"]

EVENT_TYPES = (
    "component_initialization",
    "state_update",
    "batch_committed",
    "error",
    "storage_failed",
    "queue_full",
    "write_timeout",
    "run_finalized",
    "performance_metric",
    "warning",
)
LEVELS: dict[str, int] = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
# Events that reach disk at once even when the log buffers.
URGENT_EVENT_TYPES = frozenset({"error", "storage_failed", "write_timeout", "queue_full", "run_finalized"})
KEEP_DAYS = 30


def event_log_path(data_dir: Path) -> Path:
    return Path(data_dir) / "logs" / "events" / "results_store_events.jsonl"


class EventLog:
    """Writes the spec's events as JSON lines; one instance per store, any number of processes per file."""

    def __init__(self, data_dir: Path, *, buffered: bool, component: str = "ResultsStore",
                 level: LogLevel | str = "DEBUG", correlation_id: str | None = None) -> None:
        self.path = event_log_path(data_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.component = component
        self.buffered = buffered
        # Events below this level are not written (BASIS_LOG_LEVEL); errors always are.
        self.min_level = LEVELS[str(level).upper()]
        # Ties every event of one store (one run's collection or backtest) together, e.g. the run id.
        self.correlation_id = correlation_id
        self.dropped = 0
        self._pending: list[bytes] = []
        self._lock_path = self.path.with_name(".events.lock")

    def log_event(self, event_type: str, data: dict[str, Any], *, timestamp: datetime | None = None,
                  urgent: bool = False, level: str | None = None) -> None:
        """Record one event; ``timestamp`` is engine time where there is one, else now."""
        self.log_structured_event(timestamp, event_type, level or ("ERROR" if event_type == "error" else "INFO"),
                                  None, self.component, data, urgent=urgent)

    def log_structured_event(self, timestamp: datetime | None, event_type: str, level: str, message: str | None,
                             component_name: str, data: dict[str, Any] | None = None,
                             correlation_id: str | None = None, *, urgent: bool = False) -> None:
        """The spec's one event format: time, type, level, message, component, data and a correlation id."""
        level = level.upper()
        if LEVELS.get(level, 20) < self.min_level and LEVELS.get(level, 20) < LEVELS["ERROR"]:
            return
        now = datetime.now(UTC)
        record: dict[str, Any] = {
            "timestamp": timestamp or now,
            "logged_at": now,
            "event_type": event_type,
            "level": level,
            "component": component_name,
            "data": data or {},
        }
        if message is not None:
            record["message"] = message
        if correlation_id or self.correlation_id:
            record["correlation_id"] = correlation_id or self.correlation_id
        self._pending.append(orjson.dumps(record, default=json_tagged_default, option=orjson.OPT_APPEND_NEWLINE))
        if not self.buffered or urgent or event_type in URGENT_EVENT_TYPES or LEVELS.get(level, 20) >= LEVELS["ERROR"]:
            self.flush()

    def log_component_event(self, event_type: str, message: str, data: dict[str, Any] | None = None,
                            level: str = "INFO") -> None:
        """An event of this component, stamped now."""
        self.log_structured_event(None, event_type, level, message, self.component, data)

    def log_performance_metric(self, metric_name: str, value: float, unit: str,
                               data: dict[str, Any] | None = None) -> None:
        """One measured figure (e.g. commit latency in ms, throughput in timesteps/s)."""
        self.log_structured_event(None, "performance_metric", "INFO", f"{metric_name} = {value:g} {unit}",
                                  self.component, {"metric": metric_name, "value": value, "unit": unit, **(data or {})})

    def log_error(self, error: BaseException, context: dict[str, Any] | None = None,
                  correlation_id: str | None = None) -> None:
        """An ``error`` event with the code, the message, the severity and the stack trace; written at once."""
        if isinstance(error, ComponentError):
            fields = error.to_event()
        else:  # not one of ours: a bug or an unmapped failure, still logged with what we know
            fields = {"error_code": "RST-901", "error_message": f"{type(error).__name__}: {error}",
                      "error_severity": "CRITICAL", "component": self.component}
        fields["stack_trace"] = "".join(traceback.format_exception(error))
        self.log_structured_event(None, "error", "ERROR", fields["error_message"], self.component,
                                  {**fields, **(context or {})}, correlation_id)

    def log_warning(self, message: str, data: dict[str, Any] | None = None, correlation_id: str | None = None) -> None:
        """A ``warning`` event (accepted but suspicious input, a degraded state)."""
        self.log_structured_event(None, "warning", "WARNING", message, self.component, data, correlation_id)

    def flush(self) -> None:
        """Write the buffered events (one locked append); a failure drops them and never raises."""
        if not self._pending:
            return
        lines, self._pending = b"".join(self._pending), []
        try:
            self._append(lines)
        except OSError as exc:
            if not self.dropped:
                print(f"results-store: could not write the event log {self.path}: {exc}", file=sys.stderr)
            self.dropped += lines.count(b"\n")

    def close(self) -> None:
        self.flush()

    def _append(self, lines: bytes) -> None:
        lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._rotate_if_new_day()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(lines)
                while view:  # a regular file takes it in one write; loop for the rare short write
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        finally:
            os.close(lock_fd)  # closing drops the flock

    def _rotate_if_new_day(self) -> None:
        try:
            modified = datetime.fromtimestamp(self.path.stat().st_mtime, UTC).date()
        except FileNotFoundError:
            return
        today = datetime.now(UTC).date()
        if modified >= today:
            return
        target = self.path.with_name(f"{self.path.name}.{modified:%Y-%m-%d}")
        if target.exists():  # rotated before, then written again on that day: keep both, in order
            with target.open("ab") as out:
                out.write(self.path.read_bytes())
            self.path.unlink()
        else:
            os.rename(self.path, target)
        self._remove_older_than(today - timedelta(days=KEEP_DAYS))

    def _remove_older_than(self, cutoff: date) -> None:
        for rotated in self.path.parent.glob(f"{self.path.name}.*"):
            try:
                day = date.fromisoformat(rotated.name.rsplit(".", 1)[-1])
            except ValueError:
                continue
            if day < cutoff:
                rotated.unlink(missing_ok=True)
