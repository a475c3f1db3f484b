"""Live sources a real engine can feed the live flow with, and how a flow names one.

:class:`JsonlLiveSource` reads a JSON Lines file (or a directory of daily ``*.jsonl`` files, in
name order) that a live engine appends to, one snapshot per line. A collection takes the lines
after the last stored timestep. The engine may be writing while we read: a last line without its
newline is a line still being written, so it is left for the next collection, never quarantined.

A flow names its source by import path (``package.module:Class``) plus JSON keyword arguments,
since a flow parameter must be JSON; :func:`load_live_source` builds it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from results_store.simulator.jsonl import BadLine, parse_line
from results_store.simulator.live_source import LiveSource
from results_store.utc import to_utc
from schemas.errors import ComponentError
from schemas.modes import ModeConfig

__all__ = ["REFERENCE_SOURCE", "JsonlLiveSource", "load_live_source"]

REFERENCE_SOURCE = "results_store.simulator.live_source:ReferenceLiveSource"


class JsonlLiveSource:
    """The complete lines of an engine's live JSON Lines file(s), after a timestep and up to a time.

    Args:
        path: one ``.jsonl`` file, or a directory whose ``*.jsonl`` files are read in name order
            (e.g. one per UTC day: ``2024-11-30.jsonl``).
        max_batch: most snapshots one collection takes (the rest wait for the next one).
    """

    def __init__(self, path: str | Path, max_batch: int = 100_000) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self.bad_lines: list[BadLine] = []  # complete lines that could not be read, in this collection

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.glob("*.jsonl") if p.is_file())
        return [self.path] if self.path.exists() else []

    def _complete_lines(self, file: Path) -> Iterator[tuple[int, bytes]]:
        data = file.read_bytes()
        end = data.rfind(b"\n") + 1  # anything after the last newline is still being written
        for line_no, raw in enumerate(data[:end].splitlines(), start=1):
            if raw.strip():
                yield line_no, raw

    def pending(self, after_timestep: int | None, now: datetime) -> list[tuple[pd.Timestamp, dict[str, Any]]]:
        """See :meth:`LiveSource.pending`: complete lines with timestep > ``after_timestep`` and timestamp <= ``now``."""
        limit = to_utc(now)
        self.bad_lines = []
        out: list[tuple[pd.Timestamp, dict[str, Any]]] = []
        for file in self._files():
            for line_no, raw in self._complete_lines(file):
                try:
                    timestamp, record = parse_line(raw, file, line_no)
                except ComponentError as exc:
                    self.bad_lines.append(BadLine(line_no, raw.decode("utf-8", "replace"), exc))
                    continue
                step = record.get("timestep")
                if not isinstance(step, int):
                    self.bad_lines.append(BadLine(line_no, raw.decode("utf-8", "replace"), ComponentError(
                        "RST-101", f"{file}:{line_no}: a live line needs its 'timestep'", details={"line": line_no})))
                    continue
                if after_timestep is not None and step <= after_timestep:
                    continue
                if timestamp > limit:
                    return out
                out.append((timestamp, record))
                if len(out) >= self.max_batch:
                    return out
        return out


def load_live_source(import_path: str, kwargs: dict[str, Any] | str | None, mode: ModeConfig) -> LiveSource:
    """The live source a flow names: ``package.module:Class`` built with its JSON keyword arguments.

    The reference source also takes the mode (its first argument), as the flow knows it.
    """
    module_name, _, attr = import_path.partition(":")
    if not module_name or not attr:
        raise ComponentError("RST-201", f"live source {import_path!r}: expected 'package.module:Class'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ComponentError("RST-201", f"live source {import_path!r} cannot be imported: {exc}") from None
    if isinstance(kwargs, str):
        try:
            kwargs = orjson.loads(kwargs or "{}")
        except orjson.JSONDecodeError as exc:
            raise ComponentError("RST-201", f"live source arguments are not JSON: {exc}") from None
    if not isinstance(kwargs, dict | None):
        raise ComponentError("RST-201", "live source arguments must be a JSON object")
    arguments = dict(kwargs or {})
    try:
        source = factory(mode, **arguments) if import_path == REFERENCE_SOURCE else factory(**arguments)
    except TypeError as exc:
        raise ComponentError("RST-201", f"live source {import_path}: bad arguments {sorted(arguments)}: {exc}") from None
    if not callable(getattr(source, "pending", None)):
        raise ComponentError("RST-201", f"live source {import_path} has no pending(after_timestep, now) method")
    return source  # type: ignore[no-any-return]  # checked above: it has the protocol's one method
