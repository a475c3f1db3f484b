"""Where live snapshots come from: a small protocol a real engine can implement.

The default, :class:`ReferenceLiveSource`, is the reference engine anchored at a fixed time:
timestep k is ``anchor + k * freq`` and becomes due once the clock reaches it. Because the engine
is deterministic and its history does not depend on how far ahead it was simulated, a live
process that restarts continues after the last committed timestep with exactly the data it
would have had.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import pandas as pd

from results_store.simulator.reference import ReferenceEngine, parse_freq
from results_store.utc import to_utc
from schemas.modes import ModeConfig

__all__ = ["LiveSource", "ReferenceLiveSource"]

_MIN_HORIZON = 1_440  # timesteps simulated ahead at least, so a polling process rarely re-simulates


class LiveSource(Protocol):
    """Produces the live snapshots the store does not have yet."""

    def pending(self, after_timestep: int | None, now: datetime) -> list[tuple[pd.Timestamp, dict[str, Any]]]:
        """Snapshots with timestep > ``after_timestep`` (all if None) and timestamp <= ``now``, in order."""
        ...


class ReferenceLiveSource:
    """The reference engine replayed as a live feed whose timestep 0 is at ``anchor``.

    Args:
        mode: the mode's config.
        anchor: time of timestep 0 (naive means UTC).
        freq: timestep length, 1min..1D.
        seed: the engine's seed.
        max_batch: most snapshots one ``pending`` call returns (the oldest first); the rest
            come with the next call.
    """

    def __init__(self, mode: ModeConfig, anchor: datetime | str, freq: str = "1min", seed: int = 0,
                 max_batch: int = 1_000) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.mode = mode
        self.anchor = to_utc(anchor)
        self.freq = freq
        self.seed = seed
        self.max_batch = max_batch
        self.step = parse_freq(freq)
        self._engine: ReferenceEngine | None = None

    def last_due(self, now: datetime | str) -> int:
        """The newest timestep whose time has come at ``now``; -1 before the anchor."""
        now_ts = to_utc(now)
        if now_ts < self.anchor:
            return -1
        return int((now_ts - self.anchor) // self.step)

    def _engine_for(self, stop: int) -> ReferenceEngine:
        """An engine covering timesteps [0, stop); grown geometrically and reused between calls."""
        engine = self._engine
        if engine is None or len(engine) < stop:
            horizon = max(stop, _MIN_HORIZON, 2 * len(engine) if engine is not None else 0)
            engine = ReferenceEngine(self.mode, self.anchor, self.anchor + horizon * self.step, self.freq,
                                     seed=self.seed)
            self._engine = engine
        return engine

    def pending(self, after_timestep: int | None, now: datetime) -> list[tuple[pd.Timestamp, dict[str, Any]]]:
        """See :meth:`LiveSource.pending`; at most ``max_batch`` snapshots."""
        start = 0 if after_timestep is None else max(after_timestep + 1, 0)
        stop = min(self.last_due(now) + 1, start + self.max_batch)
        if stop <= start:
            return []
        return list(self._engine_for(stop).iter_snapshots(start, stop))
