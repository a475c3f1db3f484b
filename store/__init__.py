"""The store: the async in-flow FIFO queue, its batch writer, and the API engines call.

``from store.results_store import ResultsStore`` is the entry point; see docs/design.md.
"""
