"""The component's event log: ``{data_dir}/logs/events/results_store_events.jsonl``.

JSON Lines through the standard library's rotating handler (daily, 30 days kept). Backtest
buffers events in a MemoryHandler and flushes on batch boundaries and errors; live writes each
event at once.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from results_store.json_policy import tagged_default as json_tagged_default

__all__ = ["EVENT_TYPES", "EventLog", "event_log_path"]

EVENT_TYPES = (
    "component_initialization",
    "state_update",
    "batch_committed",
    "error",
    "storage_failed",
    "queue_full",
    "write_timeout",
    "run_finalized",
)

_counter = 0
_counter_lock = threading.Lock()


def event_log_path(data_dir: Path) -> Path:
    return Path(data_dir) / "logs" / "events" / "results_store_events.jsonl"




class _JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(record.msg, default=json_tagged_default).decode()


class EventLog:
    """Writes the spec's events as JSON lines; one instance per store."""

    def __init__(self, data_dir: Path, *, buffered: bool, component: str = "ResultsStore") -> None:
        global _counter
        path = event_log_path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _counter_lock:
            _counter += 1
            name = f"results_store.events.{_counter}"
        self.component = component
        self._logger = logging.getLogger(name)
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._file = logging.handlers.TimedRotatingFileHandler(
            path, when="midnight", backupCount=30, utc=True, encoding="utf-8"
        )
        self._file.setFormatter(_JsonLineFormatter())
        self._handler: logging.Handler = self._file
        if buffered:
            # flushLevel=ERROR: an error event reaches disk at once, with what led up to it.
            self._handler = logging.handlers.MemoryHandler(
                capacity=10_000, flushLevel=logging.ERROR, target=self._file, flushOnClose=True
            )
        self._logger.addHandler(self._handler)
        self.path = path

    def log_event(self, event_type: str, data: dict[str, Any], *, timestamp: datetime | None = None,
                  level: int = logging.INFO) -> None:
        """Record one event; ``timestamp`` is engine time where there is one, else now."""
        self._logger.log(level, {
            "timestamp": (timestamp or datetime.now(UTC)),
            "logged_at": datetime.now(UTC),
            "event_type": event_type,
            "component": self.component,
            "data": data,
        })

    def flush(self) -> None:
        self._handler.flush()

    def close(self) -> None:
        self._handler.flush()
        self._logger.removeHandler(self._handler)
        self._handler.close()
        self._file.close()
