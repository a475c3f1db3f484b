"""The reader under queries, exports and reports: Parquet row groups, pruned by statistics, in timestep order.

Delta says which files make up a version (``delta_tables.table_files``, with each file's run and
min/max statistics); this module reads them. Per file it keeps the footer and each row group's
min/max ``timestep`` and ``timestamp`` (files are immutable, so a cached footer never goes stale),
and reads only the row groups a range can touch: one day out of a one-year run reads the day's
row groups, not the run. pyarrow's dataset scanner would do the same pruning, but it costs a few
milliseconds per scan in planning and thread hand-offs, which is most of a one-day query.

Rows come out per run (runs in the order given), in timestep order (then ``event_order``), in
windows of about ``window_rows`` rows, so an export or a report streams a one-year run with flat
memory. A window is sorted after it is read: the store's appended files are sorted, but a Delta
``optimize`` interleaves the files it merges, and such a layout must still come out in order
(it only costs more row groups per window).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "DataFile",
    "FileIndex",
    "ReadStats",
    "ScanRange",
    "file_index",
    "read_ordered",
    "run_span",
]

PARTITION_COLUMN = "run_id"
# A window's target size: large enough that per-read overheads vanish, small enough to stay flat
# in memory (~30-60 MB of Arrow for our widest tables).
WINDOW_ROWS = 500_000
_INDEX_CACHE_FILES = 4_096
_NO_MIN = np.iinfo(np.int64).min
_NO_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class DataFile:
    """One data file of a table version, with what the Delta log says about it."""

    path: str
    run_id: str
    size_bytes: int
    num_records: int | None = None
    min_timestep: int | None = None
    max_timestep: int | None = None
    min_timestamp_us: int | None = None
    max_timestamp_us: int | None = None
    # The path as the Delta log spells it (relative to the table), for commits that remove the file.
    log_path: str = ""


@dataclass(frozen=True)
class ScanRange:
    """Rows to read: timesteps in ``[step_lo, step_hi)`` and timestamps (µs since epoch, UTC) in ``[ts_lo, ts_hi)``."""

    step_lo: int = _NO_MIN
    step_hi: int = _NO_MAX
    ts_lo: int = _NO_MIN
    ts_hi: int = _NO_MAX

    def touches_file(self, file: DataFile) -> bool:
        """False only when the file's statistics prove it holds no row in range."""
        if file.min_timestep is not None and file.max_timestep is not None and (
                file.max_timestep < self.step_lo or file.min_timestep >= self.step_hi):
            return False
        return not (file.min_timestamp_us is not None and file.max_timestamp_us is not None and (
            file.max_timestamp_us < self.ts_lo or file.min_timestamp_us >= self.ts_hi))

    def narrowed(self, step_lo: int, step_hi: int) -> ScanRange:
        return ScanRange(max(self.step_lo, step_lo), min(self.step_hi, step_hi), self.ts_lo, self.ts_hi)


class FileIndex:
    """A file's footer and its row groups' row counts and min/max timestep and timestamp."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.metadata = pq.read_metadata(path)
        self.schema = self.metadata.schema.to_arrow_schema()
        groups = self.metadata.num_row_groups
        self.rows = np.array([self.metadata.row_group(i).num_rows for i in range(groups)], dtype=np.int64)
        self.step_min, self.step_max = self._bounds("timestep")
        self.ts_min, self.ts_max = self._bounds("timestamp")

    def _bounds(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Per row group min/max of ``column`` as int64; unknown statistics never prune."""
        groups = self.metadata.num_row_groups
        low = np.full(groups, _NO_MIN, dtype=np.int64)
        high = np.full(groups, _NO_MAX, dtype=np.int64)
        names = self.metadata.schema.names
        if column not in names:
            return low, high
        position = names.index(column)
        for i in range(groups):
            stats = self.metadata.row_group(i).column(position).statistics
            if stats is not None and stats.has_min_max:
                low[i], high[i] = _as_int(stats.min), _as_int(stats.max)
        return low, high

    def groups_in(self, scan: ScanRange) -> np.ndarray:
        """Indices of the row groups that may hold rows of ``scan``, in file order."""
        keep = ((self.step_max >= scan.step_lo) & (self.step_min < scan.step_hi)
                & (self.ts_max >= scan.ts_lo) & (self.ts_min < scan.ts_hi))
        return np.flatnonzero(keep)

    def bytes_of(self, groups: Sequence[int], columns: Sequence[str] | None) -> int:
        """Compressed bytes of these row groups' column chunks (what a read of them costs on disk)."""
        total = 0
        for i in groups:
            group = self.metadata.row_group(int(i))
            for c in range(group.num_columns):
                chunk = group.column(c)
                if columns is None or chunk.path_in_schema in columns:
                    total += chunk.total_compressed_size
        return total


def _as_int(value: object) -> int:
    """A Parquet statistic (int, or datetime for timestamps) as int64 µs."""
    if isinstance(value, int):
        return value
    return int(pa.scalar(value, pa.timestamp("us", "UTC")).cast(pa.int64()).as_py())


_CACHE: OrderedDict[tuple[str, int], FileIndex] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def file_index(file: DataFile) -> FileIndex:
    """The file's index, from cache: a path and size name an immutable Delta data file."""
    key = (file.path, file.size_bytes)
    with _CACHE_LOCK:
        found = _CACHE.get(key)
        if found is not None:
            _CACHE.move_to_end(key)
            return found
    index = FileIndex(file.path)
    with _CACHE_LOCK:
        _CACHE[key] = index
        while len(_CACHE) > _INDEX_CACHE_FILES:
            _CACHE.popitem(last=False)
    return index


def run_span(files: Sequence[DataFile], scan: ScanRange) -> tuple[int, int, int] | None:
    """(first timestep, last timestep + 1, rows) that ``scan`` can touch in these files, from statistics only."""
    lo, hi, rows = _NO_MAX, _NO_MIN, 0
    for file in files:
        if not scan.touches_file(file):
            continue
        index = file_index(file)
        groups = index.groups_in(scan)
        if groups.size == 0:
            continue
        lo = min(lo, int(index.step_min[groups].min()))
        hi = max(hi, int(index.step_max[groups].max()) + 1)
        rows += int(index.rows[groups].sum())
    if rows == 0:
        return None
    return max(lo, scan.step_lo), min(hi, scan.step_hi), rows


@dataclass
class ReadStats:
    """What a scan cost: row groups and compressed bytes read, rows returned."""

    row_groups: int = 0
    bytes_read: int = 0
    rows: int = 0


def read_ordered(
    runs: Sequence[tuple[str, Sequence[DataFile]]],
    schema: pa.Schema,
    *,
    columns: Sequence[str] | None = None,
    scan: ScanRange = ScanRange(),
    predicate: pc.Expression | None = None,
    predicate_columns: Sequence[str] = (),
    dictionary_columns: Sequence[str] = (),
    order_by: Sequence[str] = ("timestep",),
    window_rows: int = WINDOW_ROWS,
    stats: ReadStats | None = None,
    as_stored: bool = False,
) -> Iterator[pa.Table]:
    """Each run's rows in ``scan`` (and matching ``predicate``), ordered by ``order_by``, window by window.

    ``schema``: the table's schema (with ``run_id``); every window comes out in it, projected to
    ``columns`` (all by default), whatever the files say (a file without a column reads it as null).
    ``predicate_columns``: the columns ``predicate`` names; they and ``order_by`` are read even
    when not returned. ``dictionary_columns``: low-cardinality strings to decode as dictionaries,
    which is several times faster; the predicate runs on them before the surviving rows are cast
    back to plain strings (unless ``as_stored``, which hands the dictionaries out as they are).
    """
    wanted = list(columns) if columns is not None else schema.names
    needed = list(dict.fromkeys([*wanted, *order_by, "timestep", "timestamp", *predicate_columns]))
    out_schema = pa.schema([schema.field(c) for c in wanted])
    read_schema = pa.schema([_dictionary_field(schema.field(c)) if c in dictionary_columns else schema.field(c)
                             for c in needed])
    for run_id, files in runs:
        for window in _windows(files, scan, window_rows):
            table = _read_window(run_id, files, window, read_schema, stats)
            if table is None:
                continue
            if predicate is not None:
                table = table.filter(predicate)
            if table.num_rows == 0:
                continue
            table = _sorted(table, order_by).select(wanted)
            if stats is not None:
                stats.rows += table.num_rows
            yield table if as_stored else table.cast(out_schema)


def _dictionary_field(field: pa.Field) -> pa.Field:
    return field.with_type(pa.dictionary(pa.int32(), field.type)) if pa.types.is_string(field.type) else field


def _windows(files: Sequence[DataFile], scan: ScanRange, window_rows: int) -> Iterator[ScanRange]:
    """Timestep windows of about ``window_rows`` rows, cut where row groups start.

    In a sorted layout every row group then falls in exactly one window and is read once; in an
    interleaved one (Delta optimize's) a window reads every row group overlapping it, so reads repeat
    but the output is still complete and ordered.
    """
    groups: list[tuple[int, int, int]] = []  # (first timestep, last timestep, rows) of each row group in range
    for file in files:
        if not scan.touches_file(file):
            continue
        index = file_index(file)
        for i in index.groups_in(scan):
            groups.append((int(index.step_min[i]), int(index.step_max[i]), int(index.rows[i])))
    if not groups:
        return
    groups.sort()
    start = max(groups[0][0], scan.step_lo)
    end_all = min(max(g[1] for g in groups) + 1, scan.step_hi)
    rows = 0
    for i, (_, _, group_rows) in enumerate(groups):
        rows += group_rows
        following = groups[i + 1][0] if i + 1 < len(groups) else None
        if following is not None and rows >= window_rows and start < following < end_all:
            yield scan.narrowed(start, following)
            start, rows = following, 0
    if start < end_all:
        yield scan.narrowed(start, end_all)


def _read_window(run_id: str, files: Sequence[DataFile], window: ScanRange, schema: pa.Schema,
                 stats: ReadStats | None) -> pa.Table | None:
    parts: list[pa.Table] = []
    file_columns = [n for n in schema.names if n != PARTITION_COLUMN]
    as_dictionary = [f.name for f in schema if pa.types.is_dictionary(f.type)]
    for file in files:
        if not window.touches_file(file):
            continue
        index = file_index(file)
        groups = index.groups_in(window)
        if groups.size == 0:
            continue
        present = [c for c in file_columns if c in index.schema.names]
        reader = pq.ParquetFile(file.path, metadata=index.metadata,
                                read_dictionary=[c for c in as_dictionary if c in present])
        part = reader.read_row_groups(groups.tolist(), columns=present, use_threads=True)
        if stats is not None:
            stats.row_groups += int(groups.size)
            stats.bytes_read += index.bytes_of(groups.tolist(), present)
        parts.append(_within(_conform(part, schema, run_id), window))
    if not parts:
        return None
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _within(table: pa.Table, window: ScanRange) -> pa.Table:
    """Exactly the window's rows: a zero-copy slice when the part is sorted by timestep, else a filter."""
    steps = np.asarray(table.column("timestep").to_numpy(), dtype=np.int64)
    if steps.size == 0:
        return table
    if bool(np.all(steps[1:] >= steps[:-1])):
        lo = int(np.searchsorted(steps, window.step_lo, side="left")) if window.step_lo != _NO_MIN else 0
        hi = int(np.searchsorted(steps, window.step_hi, side="left")) if window.step_hi != _NO_MAX else steps.size
        table = table.slice(lo, max(hi - lo, 0))
        if window.ts_lo == _NO_MIN and window.ts_hi == _NO_MAX:
            return table
        # Timestamps never decrease with timesteps (the store refuses it): sorted too.
        micros = np.asarray(table.column("timestamp").cast(pa.int64()).to_numpy(), dtype=np.int64)
        lo = int(np.searchsorted(micros, window.ts_lo, side="left")) if window.ts_lo != _NO_MIN else 0
        hi = int(np.searchsorted(micros, window.ts_hi, side="left")) if window.ts_hi != _NO_MAX else micros.size
        return table.slice(lo, max(hi - lo, 0))
    mask = _range_mask(table, window)
    return table if mask is None else table.filter(mask)


def _conform(part: pa.Table, schema: pa.Schema, run_id: str) -> pa.Table:
    """A file's columns in the table's schema: the partition column added, missing columns as nulls."""
    columns = []
    for field in schema:
        if field.name == PARTITION_COLUMN:
            columns.append(pa.repeat(pa.scalar(run_id, pa.string()), part.num_rows))
        elif field.name in part.column_names:
            column = part.column(field.name)
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(part.num_rows, field.type))
    return pa.table(columns, schema=schema)


def _range_mask(table: pa.Table, window: ScanRange) -> pa.ChunkedArray | None:
    conditions = []
    step = table.column("timestep")
    if window.step_lo != _NO_MIN:
        conditions.append(pc.greater_equal(step, window.step_lo))
    if window.step_hi != _NO_MAX:
        conditions.append(pc.less(step, window.step_hi))
    if window.ts_lo != _NO_MIN or window.ts_hi != _NO_MAX:
        micros = table.column("timestamp").cast(pa.int64())
        if window.ts_lo != _NO_MIN:
            conditions.append(pc.greater_equal(micros, window.ts_lo))
        if window.ts_hi != _NO_MAX:
            conditions.append(pc.less(micros, window.ts_hi))
    if not conditions:
        return None
    mask = conditions[0]
    for condition in conditions[1:]:
        mask = pc.and_(mask, condition)
    return mask


def _sorted(table: pa.Table, order_by: Sequence[str]) -> pa.Table:
    """``table`` ordered by ``order_by`` (stable, so rows of one timestep keep their stored order)."""
    steps = table.column("timestep" if "timestep" in order_by else order_by[0]).to_numpy()
    if len(order_by) == 1 and (steps.size < 2 or bool(np.all(steps[1:] >= steps[:-1]))):
        return table  # the common case: the store's files are sorted, so a window usually is
    return table.sort_by([(c, "ascending") for c in order_by])
