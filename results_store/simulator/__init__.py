"""The reference engine: a seeded simulator of the seven strategy modes, the project's default data source.

- :class:`~results_store.simulator.reference.ReferenceEngine` yields ``(timestamp, results)`` snapshots of a mode;
- :func:`~engine.jsonl.write_jsonl` / :func:`~engine.jsonl.read_jsonl` store them as JSON Lines;
- :class:`~engine.live_source.ReferenceLiveSource` replays the engine as a live feed.

This package imports from ``schemas`` only.
"""

from results_store.simulator.jsonl import read_jsonl, write_jsonl
from results_store.simulator.live_source import LiveSource, ReferenceLiveSource
from results_store.simulator.reference import RECONCILIATION_TOLERANCE, ReferenceEngine

__all__ = [
    "RECONCILIATION_TOLERANCE",
    "LiveSource",
    "ReferenceEngine",
    "ReferenceLiveSource",
    "read_jsonl",
    "write_jsonl",
]
