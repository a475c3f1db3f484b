"""``retrieve_results(query)``: rows of one result table by run, time range, columns and version, optionally downsampled.

A query reads only what it asks for. Delta lists the files of the version asked for (latest,
``version`` or ``as_of``), each file's run and min/max statistics prune whole files, the row
groups' statistics prune the rest (``results_store.row_groups``), and only the asked-for columns
are decoded. One day out of a one-year run reads that day's row groups.

Downsampling (``points=N`` or ``every=FREQ``) happens while reading, window by window, so a
one-year run can be plotted without ever holding it: rows are grouped per run, per bucket of time
and per entity (``schemas.table_keys.ENTITY_COLUMNS``: one series per instrument, metric, venue...),
and each group gives one row: its last row (``how="last"``, the default), or its last row with
float columns averaged (``how="mean"``). ``points=N`` cuts the queried span (default: the run's)
into N equal buckets, so every series has at most N points; ``every="1h"`` uses buckets aligned
on the epoch. A downsampled row keeps the timestamp and timestep of the last row of its bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from results_store import delta_tables
from results_store.row_groups import ReadStats, ScanRange, file_index, read_ordered
from results_store.utc import to_utc
from schemas.errors import ComponentError
from schemas.result_types import ResultType
from schemas.table_keys import ENTITY_COLUMNS, ORDER_COLUMNS
from schemas.tables import arrow_schema

__all__ = ["How", "Output", "QueryScan", "ResultQuery", "retrieve_results", "scan_results"]

How = Literal["last", "mean"]
Output = Literal["pandas", "arrow"]
_BUCKET = "__bucket"
_RANK = "__run_rank"
_POSITION = "__position"


@dataclass(frozen=True, kw_only=True)
class ResultQuery:
    """What to read from one result table. Times are UTC; ``start`` is inclusive, ``end`` exclusive."""

    result_type: ResultType
    run_ids: tuple[str, ...] | None = None
    start: datetime | None = None
    end: datetime | None = None
    columns: tuple[str, ...] | None = None
    where: tuple[tuple[str, tuple[Any, ...]], ...] = field(default=())
    version: int | None = None
    as_of: datetime | None = None
    points: int | None = None
    every: timedelta | None = None
    how: How = "last"
    limit: int | None = None
    output: Output = "pandas"

    @classmethod
    def parse(cls, query: Mapping[str, Any] | ResultQuery) -> ResultQuery:
        """A query from a plain mapping, as the spec's ``retrieve_results(query)`` and the CLI pass it.

        Keys: ``result_type``; ``run_id`` or ``run_ids``; ``start``/``end`` (datetime or ISO text);
        ``columns``; ``where`` ({column: value or list of values}); ``version`` or ``as_of``;
        ``points`` or ``every`` (a pandas frequency such as ``"15min"``, ``"1h"``, ``"1D"``) and
        ``how`` (``last``/``mean``); ``limit``; ``output`` (``pandas``/``arrow``).
        """
        if isinstance(query, ResultQuery):
            return query.checked()
        known = {"result_type", "run_id", "run_ids", "start", "end", "columns", "where", "version", "as_of",
                 "points", "every", "how", "limit", "output"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise _invalid(f"unknown query keys {unknown}; allowed: {sorted(known)}")
        try:
            result_type = ResultType(str(query.get("result_type", "")))
        except ValueError:
            raise _invalid(f"result_type must be one of {[t.value for t in ResultType]}, "
                           f"got {query.get('result_type')!r}") from None
        run_ids = query.get("run_ids")
        if query.get("run_id") is not None:
            run_ids = [query["run_id"], *(run_ids or [])]
        where = query.get("where") or {}
        every = query.get("every")
        return cls(
            result_type=result_type,
            run_ids=tuple(str(r) for r in ([run_ids] if isinstance(run_ids, str) else run_ids)) if run_ids else None,
            start=_time(query.get("start"), "start"),
            end=_time(query.get("end"), "end"),
            columns=tuple(query["columns"]) if query.get("columns") else None,
            where=tuple((str(k), tuple(v) if isinstance(v, list | tuple | set) else (v,)) for k, v in where.items()),
            version=None if query.get("version") is None else int(query["version"]),
            as_of=_time(query.get("as_of"), "as_of"),
            points=None if query.get("points") is None else int(query["points"]),
            every=_frequency(every) if every is not None else None,
            how=query.get("how", "last"),
            limit=None if query.get("limit") is None else int(query["limit"]),
            output=query.get("output", "pandas"),
        ).checked()

    def checked(self) -> ResultQuery:
        """The query itself, once its parts are known to fit together (else RST-201 saying what does not)."""
        names = arrow_schema(self.result_type).names
        for column in [*(self.columns or ()), *(c for c, _ in self.where)]:
            if column not in names:
                raise _invalid(f"{self.result_type.value} has no column {column!r}; columns: {names}")
        if self.version is not None and self.as_of is not None:
            raise _invalid("give version or as_of, not both")
        if self.points is not None and self.every is not None:
            raise _invalid("give points or every, not both")
        if self.points is not None and self.points < 1:
            raise _invalid(f"points must be ≥ 1, got {self.points}")
        if self.every is not None and self.every <= timedelta(0):
            raise _invalid(f"every must be a positive duration, got {self.every}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise _invalid(f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})")
        if self.downsampled and self.result_type is ResultType.EXECUTION_LOG:
            raise _invalid("execution_log holds events, not a time series: filter it by time instead of downsampling")
        if self.how not in get_args(How):
            raise _invalid(f"how must be one of {get_args(How)}, got {self.how!r}")
        if self.output not in get_args(Output):
            raise _invalid(f"output must be one of {get_args(Output)}, got {self.output!r}")
        if self.limit is not None and self.limit < 0:
            raise _invalid(f"limit must be ≥ 0, got {self.limit}")
        return self

    @property
    def downsampled(self) -> bool:
        return self.points is not None or self.every is not None


def _invalid(message: str) -> ComponentError:
    return ComponentError("RST-201", f"invalid query: {message}")


def _time(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment: datetime = to_utc(pd.Timestamp(value)).to_pydatetime()
        return moment
    except (ValueError, TypeError) as exc:
        raise _invalid(f"{name} must be a datetime or ISO 8601 text, got {value!r}") from exc


def _frequency(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    try:
        width: timedelta = pd.Timedelta(pd.tseries.frequencies.to_offset(str(value))).to_pytimedelta()
        return width
    except (ValueError, TypeError) as exc:
        raise _invalid(f"every must be a fixed frequency such as '15min', '1h' or '1D', got {value!r}") from exc


@dataclass
class QueryScan:
    """A query's rows, window by window in run and timestep order, and the table version they come from."""

    query: ResultQuery
    table: delta_tables.TableFiles
    stats: ReadStats

    @property
    def version(self) -> int:
        return self.table.version

    def windows(self) -> Iterator[pa.Table]:
        """The matching rows (not downsampled), projected to the query's columns."""
        return self._read(self.query.columns)

    def _read(self, columns: Sequence[str] | None, *, as_stored: bool = False) -> Iterator[pa.Table]:
        q = self.query
        predicate, predicate_columns = _predicate(q.where)
        # Entity and filter columns repeat a few values: decoded as dictionaries they read several
        # times faster, and a filter on them runs before any string is materialised.
        schema = self.table.schema
        dictionary = [c for c in dict.fromkeys([*ENTITY_COLUMNS[q.result_type], *predicate_columns])
                      if c in schema.names and pa.types.is_string(schema.field(c).type)]
        return read_ordered(self.table.runs(q.run_ids), schema, columns=columns, scan=_scan_range(q),
                            predicate=predicate, predicate_columns=predicate_columns, dictionary_columns=dictionary,
                            order_by=ORDER_COLUMNS[q.result_type], stats=self.stats, as_stored=as_stored)


def scan_results(data_dir: Path, query: Mapping[str, Any] | ResultQuery, *,
                 execution_mode: str = "backtest") -> QueryScan:
    """Resolve a query's table version and files; read nothing yet."""
    q = ResultQuery.parse(query)
    path = delta_tables.table_path(Path(data_dir), execution_mode, q.result_type.value)
    table = delta_tables.table_files(path, version=q.version, as_of=q.as_of)
    return QueryScan(q, table, ReadStats())


def retrieve_results(data_dir: Path, query: Mapping[str, Any] | ResultQuery, *,
                     execution_mode: str = "backtest") -> pd.DataFrame | pa.Table:
    """The rows a query asks for, as a pandas DataFrame (default) or an Arrow table (``output="arrow"``).

    Rows come per run (in the order of ``run_ids``, else sorted by run id) in timestep order; the
    columns and their types are the table's (``schemas.tables``), projected to ``columns``.
    """
    scan = scan_results(data_dir, query, execution_mode=execution_mode)
    q = scan.query
    wanted = list(q.columns) if q.columns is not None else scan.table.schema.names
    result = _downsample(scan, wanted) if q.downsampled else _collect(scan.windows(), scan.table.schema, wanted, q.limit)
    if q.limit is not None:
        result = result.slice(0, q.limit)
    return result if q.output == "arrow" else result.to_pandas()


def _collect(windows: Iterable[pa.Table], schema: pa.Schema, wanted: list[str], limit: int | None) -> pa.Table:
    parts, rows = [], 0
    for window in windows:
        parts.append(window)
        rows += window.num_rows
        if limit is not None and rows >= limit:
            break  # the reader is lazy: later windows are never read
    if not parts:
        return pa.schema([schema.field(c) for c in wanted]).empty_table()
    return pa.concat_tables(parts)


def _scan_range(q: ResultQuery) -> ScanRange:
    bounds: dict[str, int] = {}
    if q.start is not None:
        bounds["ts_lo"] = _micros(q.start)
    if q.end is not None:
        bounds["ts_hi"] = _micros(q.end)
    return ScanRange(**bounds)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _predicate(where: tuple[tuple[str, tuple[Any, ...]], ...]) -> tuple[pc.Expression | None, list[str]]:
    expression: pc.Expression | None = None
    for column, values in where:
        term = pc.field(column) == values[0] if len(values) == 1 else pc.field(column).isin(list(values))
        expression = term if expression is None else expression & term
    return expression, [c for c, _ in where]


# ----------------------------------------------------------------------------- downsampling

def _downsample(scan: QueryScan, wanted: list[str]) -> pa.Table:
    """One row per (run, bucket, entity): the bucket's last row, or its mean (floats) and last row (the rest)."""
    q = scan.query
    entity = list(ENTITY_COLUMNS[q.result_type])
    schema = scan.table.schema
    read = list(dict.fromkeys(["run_id", "timestamp", "timestep", *entity, *wanted]))
    keys = ["run_id", _BUCKET, *entity]
    values = [c for c in read if c not in keys]
    floats = [c for c in values if pa.types.is_floating(schema.field(c).type)] if q.how == "mean" else []
    bucket_of = _bucketing(scan)
    # Each row's position in the read (timestep order, stored order within a timestep): the kept
    # rows are put back in that order at the end.
    values = [*values, _POSITION]
    partials, position = [], 0
    for window in scan._read(read, as_stored=True):
        window = window.append_column(_BUCKET, pa.array(bucket_of(window.column("timestamp")), pa.int64()))
        window = window.append_column(_POSITION, pa.array(np.arange(position, position + window.num_rows), pa.int64()))
        position += window.num_rows
        partials.append(_aggregate(window, keys, values, floats, first=True))
    if not partials:
        return pa.schema([schema.field(c) for c in wanted]).empty_table()
    merged = _aggregate(pa.concat_tables(partials), keys, values, floats, first=False)
    for name in floats:  # the mean from the sums and counts of every window
        mean = pc.divide(merged.column(f"{name}__sum"), pc.cast(merged.column(f"{name}__count"), pa.float64()))
        merged = merged.append_column(name, mean)
    ranks = {run: i for i, (run, _) in enumerate(scan.table.runs(q.run_ids))}
    merged = merged.append_column(_RANK, pa.array([ranks[r] for r in merged.column("run_id").to_pylist()], pa.int64())) \
        if len(ranks) > 1 else merged.append_column(_RANK, pa.repeat(pa.scalar(0, pa.int64()), merged.num_rows))
    merged = merged.sort_by([(_RANK, "ascending"), (_POSITION, "ascending")])
    return merged.select(wanted).cast(pa.schema([schema.field(c) for c in wanted]))


def _aggregate(table: pa.Table, keys: list[str], values: list[str], floats: list[str], *, first: bool) -> pa.Table:
    """Group by ``keys``: ``last`` of each value column (input order = timestep order), sums and counts of ``floats``.

    ``first``: a window's raw rows; else partial results to merge (sums of sums, sums of counts).
    """
    aggregations: list[tuple[str, str]] = [(c, "last") for c in values if c not in floats]
    if first:
        aggregations += [(c, agg) for c in floats for agg in ("sum", "count")]
    else:
        aggregations += [(f"{c}__{agg}", "sum") for c in floats for agg in ("sum", "count")]
    # use_threads=False: "last" means last in input order only on one thread (pyarrow's hash_last).
    # Windows decode their dictionaries separately: one dictionary per column first (cheap: no rows move).
    grouped = table.unify_dictionaries().group_by(keys, use_threads=False).aggregate(aggregations)
    renamed = {}
    for column, agg in aggregations:
        source = f"{column}_{agg}"
        if agg == "last":
            renamed[source] = column
        elif first:
            renamed[source] = f"{column}__{agg}"
        else:
            renamed[source] = column  # already named "<col>__sum" / "<col>__count"
    return grouped.rename_columns([renamed.get(n, n) for n in grouped.column_names])


def _bucketing(scan: QueryScan) -> Any:
    """The function from a timestamp column to bucket numbers (int64 numpy array)."""
    q = scan.query
    if q.every is not None:
        width = int(q.every / timedelta(microseconds=1))
        return lambda ts: np.floor_divide(_as_micros(ts), width)
    assert q.points is not None
    low, high = _time_span(scan)
    span = max(high - low + 1, 1)
    points = q.points
    # Bucket i holds [low + i*span/N, low + (i+1)*span/N): exactly N buckets over the span.
    return lambda ts: np.clip((_as_micros(ts) - low) * points // span, 0, points - 1)


def _as_micros(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(ts.cast(pa.int64()).to_numpy(), dtype=np.int64)


def _time_span(scan: QueryScan) -> tuple[int, int]:
    """First and last timestamp (µs) the query can return: its own bounds, else the row groups' statistics."""
    q = scan.query
    scan_range = _scan_range(q)
    low, high = None, None
    for _, files in scan.table.runs(q.run_ids):
        for file in files:
            if not scan_range.touches_file(file):
                continue
            index = file_index(file)
            groups = index.groups_in(scan_range)
            if groups.size:
                g_low, g_high = int(index.ts_min[groups].min()), int(index.ts_max[groups].max())
                low = g_low if low is None else min(low, g_low)
                high = g_high if high is None else max(high, g_high)
    if low is None or high is None:
        return 0, 0
    if q.start is not None:
        low = max(low, _micros(q.start))
    if q.end is not None:
        high = min(high, _micros(q.end) - 1)
    return low, high
