"""Health bookkeeping for the store: counters, timings and the healthy/degraded/unhealthy rule."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psutil

__all__ = ["HealthTracker"]

# The spec's "healthy": no errors in the last 100 updates.
ERROR_WINDOW = 100


@dataclass
class HealthTracker:
    """Numbers the worker updates per batch; ``report`` turns them into the spec's health shape."""

    execution_mode: str
    error_count: int = 0
    write_count: int = 0
    batch_count: int = 0
    last_write_timestamp: datetime | None = None
    fatal: str | None = None
    spilling: bool = False
    recent: collections.deque[bool] = field(default_factory=lambda: collections.deque(maxlen=ERROR_WINDOW))
    recent_errors: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=10))
    _processing_ms_total: float = 0.0
    _timesteps_processed: int = 0

    def record_batch(self, *, timesteps: int, processing_s: float, commits: int, when: datetime) -> None:
        self.batch_count += 1
        self.write_count += commits
        self.last_write_timestamp = when
        self._processing_ms_total += processing_s * 1000.0
        self._timesteps_processed += timesteps
        self.recent.append(False)

    def record_error(self, error: dict[str, Any], *, degrades: bool = True) -> None:
        """Count an error; ``degrades=False`` for conditions tracked by their own flag (queue full)."""
        self.error_count += 1
        if degrades:
            self.recent.append(True)
        self.recent_errors.append(error)

    @property
    def avg_processing_time_ms(self) -> float:
        """Mean store-side processing time per timestep (flatten, validate, write)."""
        return self._processing_ms_total / self._timesteps_processed if self._timesteps_processed else 0.0

    def status(self, queue_fill: float) -> str:
        if self.fatal:
            return "unhealthy"
        if self.spilling or any(self.recent) or queue_fill >= 0.9:
            return "degraded"
        return "healthy"

    def report(self, *, queue_size: int, queue_capacity: int, oldest_queued_age_s: float | None,
               worker_running: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        fill = queue_size / queue_capacity if queue_capacity else 0.0
        return {
            "component": "ResultsStore",
            "status": self.status(fill),
            "execution_mode": self.execution_mode,
            "error_count": self.error_count,
            "queue_size": queue_size,
            "queue_capacity": queue_capacity,
            "write_count": self.write_count,
            "last_write_timestamp": self.last_write_timestamp.isoformat() if self.last_write_timestamp else None,
            "avg_processing_time_ms": round(self.avg_processing_time_ms, 6),
            "error_rate": self.error_count / max(self.batch_count + self.error_count, 1),
            "memory_usage_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            "oldest_queued_age_s": oldest_queued_age_s,
            "worker_running": worker_running,
            "spilling_to_wal": self.spilling,
            "errors": list(self.recent_errors),
            "fatal": self.fatal,
            "checked_at": time.time(),
            **(extra or {}),
        }
