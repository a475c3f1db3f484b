"""The reference engine: a seeded simulator of the seven strategy modes, the project's default data source.

- :class:`~results_store.simulator.reference.ReferenceEngine` yields ``(timestamp, results)`` snapshots of a mode;
- :func:`~results_store.simulator.jsonl.write_jsonl` / :func:`~results_store.simulator.jsonl.read_jsonl` store them
  as JSON Lines;
- :class:`~results_store.simulator.live_source.ReferenceLiveSource` replays the engine as a live feed.

This package imports from ``schemas`` and, of the store, only its shared UTC and JSON policies
(``results_store.utc``, ``results_store.json_policy``).
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
