"""results-store: the Prefect-free library a backtest or live engine embeds.

``from results_store import ResultsStore`` is the entry point: an async in-process FIFO queue with
one batch writer that validates each result type and commits it exactly once to Delta Lake tables.
See docs/design.md for the path of a batch.
"""

from results_store.store import ResultsStore

__all__ = ["ResultsStore"]
