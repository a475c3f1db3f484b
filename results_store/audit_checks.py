"""The audit's checks on one stored run, streamed window by window.

Each table of the run is read once, row group by row group in the order of their first timestep
(:class:`_TableStream`), and handed out in windows of consecutive timesteps; a background thread
reads the next window while this one is checked. Per window and table the rows are re-validated
with today's pandera schema (as ``validate_table`` does: its screen first, here on the names as
read, still dictionary-encoded, and pandera only where the screen is not sure: :class:`_SchemaScreen`),
the table's key and its timesteps and timestamps are checked against ``raw_snapshots``, and the
rows are reduced to a few per-timestep arrays (:class:`_Features`: the
sum of the attribution components, the legs of the net delta, each venue's balances...). The
reconciliation checks compare those arrays across tables; what they need from the previous window
(the last cumulative values, the last balances) is carried over (:class:`_Carry`). Memory
therefore depends on the window, not on the run.

Each disagreement is recorded with its timesteps and values (:class:`_Issue`); consecutive
timesteps become one finding naming the range and the values at its worst timestep, e.g.
``pnl_attribution: sum of components 1203.51 != balance-based PnL 1250.00 at timesteps 4410-4413
(tol 0.01)``.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pandera.pandas as pdr
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from results_store import delta_tables, error_map
from results_store.delta_tables import PARTITION_COLUMN
from results_store.flatten import perp_base_asset
from results_store.validate import validate_table
from results_store.validate_screen import Screen, screen_for
from schemas.errors import ComponentError
from schemas.modes import AuditConfig, ModeConfig
from schemas.result_types import ResultType
from schemas.store_tables import QUARANTINE, RAW_SNAPSHOTS, RAW_SNAPSHOTS_KEY, RAW_SNAPSHOTS_SCHEMA
from schemas.tables import SPARSE_TABLES, arrow_schema, key_columns, mode_schema

__all__ = [
    "CHECKS",
    "DEFAULT_WINDOW",
    "NOT_NULLABLE",
    "READ_ERRORS",
    "CheckResult",
    "Finding",
    "Findings",
    "Issue",
    "RunContext",
    "Status",
    "delta_legs",
    "null_template",
    "run_pass",
    "worst",
]

Status = Literal["pass", "warn", "fail", "skip"]
_RANK: dict[str, int] = {"skip": 0, "pass": 1, "warn": 2, "fail": 3}

# Every check, in report order, with what it establishes.
CHECKS: dict[str, str] = {
    "schema": "stored rows re-validated against today's pandera models and the run's mode",
    "completeness.gaps": "no missing timestep; timestamps one frequency apart",
    "completeness.order": "timestamps never decrease; a timestep's rows share one timestamp",
    "completeness.coverage": "every enabled table covers raw_snapshots' timesteps, with raw_snapshots' timestamps",
    "completeness.quarantine": "rows the store quarantined instead of writing",
    "uniqueness": "no two rows share a table's key",
    "reconciliation.pnl": "attribution components sum to the balance-based PnL, per timestep and cumulatively",
    "reconciliation.funding": "funding_tracking sums to the funding_pnl attribution and the funding events",
    "reconciliation.delta": "net delta agrees with the balance sheet and the perp positions at the timestep's price",
    "reconciliation.ltv_alerts": "an LTV at or over its threshold has a matching risk alert",
    "reconciliation.trades": "every trade event has a matching balance change",
    "integrity": "payload checksums, data files against the Delta log, decodable data",
    "registry": "rows per table agree with what the runs registry recorded",
    "drift": "backtest against live: distributions of funding rate paid, LTV and net delta",
}

# Timesteps per window: 2 of them are in memory at once (one checked, one read ahead). At 32,768,
# a window of the widest mode (usdt_market_neutral, ~39 rows per timestep) is ~60 MB of Arrow.
DEFAULT_WINDOW = 32_768
_KEPT_STEPS = 100_000        # failing timesteps kept per issue; beyond, only counted
_RANGES_SHOWN = 20           # findings (ranges) per issue; the rest are summed up in one more
_FLAGGED_PAYLOADS = 5_000    # LTV breaches per window whose raw payload is read for its alerts
_CASH_ASSETS = frozenset({"USDT", "USDC", "DAI", "USD", "BUSD"})
_CASH = _CASH_ASSETS | {"a" + a for a in _CASH_ASSETS}
_NO_STEP = np.iinfo(np.int64).min
_NO_TIME = np.iinfo(np.int64).min                        # a raw snapshot's timestamp that is null: compared with nothing
_FREE_TEXT = frozenset({"run_id", "details"})            # string columns that are not names: read as strings
_VALUE = re.compile(r"\(value (.*)\)$")                  # validate's quarantine message ends "(value 'TSDT')"
_RULE_TEXT = re.compile(r"rule '[^']*' \((.*)\) failed")  # and its error message gives the rule's description
_BINCOUNT_LIMIT = 1 << 24                                 # largest key space counted with bincount, not a sort

# What reading a damaged file raises; anything else is a bug and propagates.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, pa.ArrowException)


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe of ``statuses`` (fail > warn > pass > skip); pass when there are none."""
    return max(statuses, key=lambda s: _RANK[s], default="pass")


@dataclass(frozen=True)
class Finding:
    """One disagreement: which check, table and timesteps, and a message with the values."""

    check: str
    status: Status
    table: str
    first_timestep: int | None
    last_timestep: int | None
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def timesteps(self) -> str:
        if self.first_timestep is None:
            return ""
        if self.last_timestep is None or self.last_timestep == self.first_timestep:
            return str(self.first_timestep)
        return f"{self.first_timestep}-{self.last_timestep}"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "table": self.table,
                "first_timestep": self.first_timestep, "last_timestep": self.last_timestep,
                "message": self.message, "values": self.values}


@dataclass
class CheckResult:
    """One check of one run: its status, what it looked at, its findings (capped per kind) and a note."""

    check: str
    status: Status = "pass"
    rows_checked: int = 0
    failing: int = 0
    findings: list[Finding] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "rows_checked": self.rows_checked,
                "failing": self.failing, "note": self.note, "findings": [f.to_dict() for f in self.findings]}


@dataclass
class RunContext:
    """What the checks know about the run: where its tables are, its config and the audit's rules."""

    root: Path
    execution_mode: str
    run_id: str
    mode: ModeConfig
    audit: AuditConfig
    record: dict[str, Any] | None
    freq_us: int | None
    window: int = DEFAULT_WINDOW

    @property
    def capital(self) -> float:
        return float(self.mode.strategy.initial_capital)

    def path(self, table: str) -> Path:
        return delta_tables.table_path(self.root, self.execution_mode, table)

    def enabled(self) -> list[ResultType]:
        return [ResultType(t) for t in self.mode.results_store.result_types]


# -- findings ---------------------------------------------------------------------------------------
class Issue:
    """One kind of disagreement of one check on one table: failing timesteps, grouped into ranges at the end.

    ``template`` is formatted with the values at the range's worst timestep (largest ``|score|``),
    ``steps`` (e.g. "timesteps 4410-4413") and ``tol``.
    """

    def __init__(self, check: str, table: str, template: str, *, status: Status = "fail", tol: float = 0.0,
                 score: str | None = None) -> None:
        self.check, self.table, self.template, self.status = check, table, template, status
        self.tol, self.score = tol, score
        self.count = 0
        self.rows = 0  # failing rows, where a timestep can fail more than once (schema)
        self._steps: list[np.ndarray] = []
        self._values: dict[str, list[np.ndarray]] = {}
        self._kept = 0

    def add(self, steps: np.ndarray, **values: Any) -> None:
        """Record failing ``steps`` with their values (arrays aligned with ``steps``, or one value for all)."""
        n = len(steps)
        if not n:
            return
        self.count += n
        take = min(_KEPT_STEPS - self._kept, n)
        if take <= 0:
            return
        self._kept += take
        self._steps.append(np.asarray(steps[:take], dtype=np.int64))
        for name, value in values.items():
            array = np.asarray(value)
            array = np.full(take, value, dtype=object) if array.ndim == 0 else array[:take]
            self._values.setdefault(name, []).append(array)

    def findings(self) -> list[Finding]:
        if not self._steps:
            return []
        steps = np.concatenate(self._steps)
        order = np.argsort(steps, kind="stable")
        steps = steps[order]
        values = {k: np.concatenate(v)[order] for k, v in self._values.items()}
        breaks = np.flatnonzero(np.diff(steps) > 1) + 1
        starts = np.concatenate([[0], breaks]).astype(int)
        ends = np.concatenate([breaks, [len(steps)]]).astype(int)
        out = []
        for a, b in list(zip(starts, ends, strict=True))[:_RANGES_SHOWN]:
            pick = a
            if self.score is not None:
                score = np.abs(values[self.score][a:b].astype(np.float64))
                pick = a + int(np.nanargmax(score)) if np.isfinite(score).any() else a
            shown = {k: _plain(v[pick]) for k, v in values.items()}
            first, last = int(steps[a]), int(steps[b - 1])
            span = f"timestep {first}" if first == last else f"timesteps {first}-{last}"
            text = self.template.format(**shown, steps=span, tol=self.tol)
            if first != last and self.score is not None:  # say which timestep the values shown are from
                note = f"values at timestep {int(steps[pick])}, the largest gap"
                text = text[:-1] + f"; {note})" if text.endswith(")") else f"{text} ({note})"
            out.append(Finding(self.check, self.status, self.table, first, last, f"{self.table}: {text}",
                               {**shown, "timesteps_in_range": b - a}))
        if len(starts) > _RANGES_SHOWN:
            out.append(Finding(self.check, self.status, self.table, int(steps[starts[_RANGES_SHOWN]]), int(steps[-1]),
                               f"{self.table}: {len(starts) - _RANGES_SHOWN} more ranges like the above "
                               f"({self.count:,} timesteps in all)"))
        elif self.count > self._kept:
            out.append(Finding(self.check, self.status, self.table, int(steps[-1]), None,
                               f"{self.table}: {self.count - self._kept:,} more timesteps like the above"))
        if self.rows > len(steps):
            out.append(Finding(self.check, self.status, self.table, int(steps[0]), int(steps[-1]),
                               f"{self.table}: {self.rows:,} rows in all break it"))
        return out


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON and format() take."""
    return value.item() if isinstance(value, np.generic) else value


class Findings:
    """Everything one audit of a run found: issues by (check, table, kind), single findings, counts, notes."""

    def __init__(self) -> None:
        self.issues: dict[tuple[str, str, str], Issue] = {}
        self.single: dict[str, list[Finding]] = {}
        self.rows: dict[str, int] = {}
        self.notes: dict[str, str] = {}
        self.skipped: dict[str, str] = {}

    def issue(self, check: str, table: str, kind: str, template: str, **kwargs: Any) -> Issue:
        key = (check, table, kind)
        if key not in self.issues:
            self.issues[key] = Issue(check, table, template, **kwargs)
        return self.issues[key]

    def add(self, finding: Finding) -> None:
        self.single.setdefault(finding.check, []).append(finding)

    def checked(self, check: str, rows: int) -> None:
        self.rows[check] = self.rows.get(check, 0) + rows

    def skip(self, check: str, why: str) -> None:
        self.skipped.setdefault(check, why)

    def results(self) -> dict[str, CheckResult]:
        out: dict[str, CheckResult] = {}
        for check in CHECKS:
            findings = list(self.single.get(check, []))
            failing = len(findings)
            for (name, _, _), issue in self.issues.items():
                if name == check:
                    findings += issue.findings()
                    failing += issue.count
            status = worst(f.status for f in findings)
            if not findings and check in self.skipped and not self.rows.get(check):
                status = "skip"
            note = self.skipped.get(check, "") if status == "skip" else self.notes.get(check, "")
            out[check] = CheckResult(check, status, self.rows.get(check, 0), failing, findings, note)
        return out


# -- reading ----------------------------------------------------------------------------------------
class _TableStream:
    """One table's run partition, read once, row group by row group in order of first timestep, by window.

    A row group is read when a window reaches its first timestep (per its statistics; without
    statistics, at once); its rows past the window wait in ``pending`` for the next ones. The
    store's appended files are sorted, so pending stays small; a Delta ``optimize`` interleaves
    the files it merges, so a compacted run's row groups span up to ~100,000 timesteps and pending
    holds their tails, but no row group is ever read twice.

    Files are read with ``pyarrow.parquet`` directly, unbuffered and one thread (the audit reads on
    a thread of its own): through a pyarrow dataset the same year of raw payloads took 3x the CPU
    and ~200 MB more memory, its pre-buffered reads growing the heap with every row group.
    """

    def __init__(self, files: list[str], run_id: str, schema: pa.Schema, *, columns: list[str] | None = None,
                 dictionary: Sequence[str] = ()) -> None:
        self.run_id, self.columns, self.dictionary = run_id, columns, list(dictionary)
        self._open: OrderedDict[str, pq.ParquetFile] = OrderedDict()
        # What a window without rows looks like: the files' columns, else the model's.
        self.schema = schema if not files else self._read(files[0], None).schema
        groups = []
        for path in files:
            meta = self._file(path).metadata
            names = meta.schema.names
            at = names.index("timestep") if "timestep" in names else None
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                stats = group.column(at).statistics if at is not None else None
                low, high = (stats.min, stats.max) if stats is not None and stats.has_min_max else (_NO_STEP, None)
                groups.append((low, high, group.num_rows, path, i))
        groups.sort(key=lambda g: g[0])
        self._groups = deque(groups)
        self._pending: list[pa.Table] = []
        self.total_rows = sum(g[2] for g in groups)
        self.unplaced = 0  # rows read with a null timestep: no window holds them (reported by the pass)

    def _file(self, path: str) -> pq.ParquetFile:
        """An open file; a few stay open, since the row groups of a compacted run alternate between files."""
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        handle = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20, read_dictionary=self.dictionary or None)
        self._open[path] = handle
        while len(self._open) > 8:
            self._open.popitem(last=False)[1].close()
        return handle

    def _read(self, path: str, index: int | None) -> pa.Table:
        """Row group ``index`` of the file (None: no rows, only its columns)."""
        handle = self._file(path)
        columns = list(self.columns or handle.schema_arrow.names)
        table = (handle.read_row_group(index, columns=columns, use_threads=False) if index is not None
                 else handle.schema_arrow.empty_table().select(columns))
        if self.columns is None or PARTITION_COLUMN in self.columns:
            # Delta keeps the partition column out of the files; the table's rows carry it.
            run = pa.DictionaryArray.from_arrays(pa.array(np.zeros(table.num_rows, dtype=np.int32)), [self.run_id])
            table = table.add_column(0, PARTITION_COLUMN, run)
        return table

    def bounds(self) -> tuple[int, int] | None:
        """(first, last) timestep from the statistics; None when a row group has none."""
        if not self._groups or any(g[0] == _NO_STEP or g[1] is None for g in self._groups):
            return None
        return min(g[0] for g in self._groups), max(int(g[1] or 0) for g in self._groups)

    def take(self, lo: int, hi: int) -> tuple[pa.Table, pa.Table]:
        """(rows with lo <= timestep < hi, rows with timestep < lo: stragglers of no window)."""
        parts = self._pending
        while self._groups and self._groups[0][0] < hi:
            _, _, _, path, index = self._groups.popleft()
            parts.append(self._read(path, index))
        if not parts:
            empty = self.empty()
            return empty, empty
        # One dictionary per column across the window's row groups, so a column's codes mean one thing.
        table = self._placed((pa.concat_tables(parts) if len(parts) > 1 else parts[0]).unify_dictionaries()
                             .combine_chunks())
        ordered = table.column("timestep").to_numpy()
        if len(ordered) and bool((ordered[1:] >= ordered[:-1]).all()):
            # Rows in timestep order (as the store writes them): the three parts are slices, not copies.
            a, b = (int(i) for i in np.searchsorted(ordered, [lo, hi]))
            self._pending = [table.slice(b)] if b < len(ordered) else []
            return table.slice(a, b - a), table.slice(0, a)
        steps = table.column("timestep")
        late = pc.greater_equal(steps, hi)
        self._pending = [table.filter(late)] if pc.any(late).as_py() else []
        early = pc.less(steps, lo)
        window = table.filter(pc.and_(pc.invert(late), pc.invert(early)))
        before = table.filter(early) if pc.any(early).as_py() else window.slice(0, 0)
        return window, before

    def rest(self) -> pa.Table:
        """Every row not handed out yet (after the last window)."""
        parts = self._pending + [self._read(g[3], g[4]) for g in self._groups]
        self._pending, self._groups = [], deque()
        return self._placed(pa.concat_tables(parts).unify_dictionaries()) if parts else self.empty()

    def _placed(self, table: pa.Table) -> pa.Table:
        """``table`` without its rows whose timestep is null, which are counted in ``unplaced``.

        Such a row belongs to no window; filtering by timestep would drop it without a word.
        """
        steps = table.column("timestep")
        if not steps.null_count:
            return table
        self.unplaced += steps.null_count
        return table.filter(pc.is_valid(steps))

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def empty(self) -> pa.Table:
        return self.schema.empty_table()


def _dense(n: int, idx: np.ndarray, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
    out = np.full(n, fill, dtype=np.float64)
    out[idx] = values
    return out


@dataclass
class _Codes:
    """A string column of a window as dictionary codes: cheap equality tests and integer keys."""

    codes: np.ndarray
    values: list[str]

    @classmethod
    def of(cls, column: pa.ChunkedArray) -> _Codes:
        array = column.combine_chunks()
        encoded = array if pa.types.is_dictionary(array.type) else pc.dictionary_encode(array)
        return cls(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist())

    def equal(self, value: str) -> np.ndarray:
        return self.codes == self.values.index(value) if value in self.values else np.zeros(len(self.codes), dtype=bool)


class _Window:
    """One table's rows of one window: timestep offsets and, on demand, string columns as codes."""

    def __init__(self, table: pa.Table, lo: int) -> None:
        self.table = table
        self.idx = table.column("timestep").to_numpy() - lo
        self._codes: dict[str, _Codes] = {}
        self._numbers: dict[str, np.ndarray] = {}

    def codes(self, column: str) -> _Codes:
        if column not in self._codes:
            self._codes[column] = _Codes.of(self.table.column(column))
        return self._codes[column]

    def numbers(self, column: str) -> np.ndarray:
        if column not in self._numbers:
            self._numbers[column] = self.table.column(column).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        return self._numbers[column]

    def where(self, **equal: str) -> np.ndarray:
        mask = np.ones(self.table.num_rows, dtype=bool)
        for column, value in equal.items():
            mask &= self.codes(column).equal(value)
        return mask

    def pick(self, n: int, value: str = "value", **equal: str) -> np.ndarray:
        """The dense per-timestep array of ``value`` over the rows matching ``equal`` (NaN where absent)."""
        rows = np.flatnonzero(self.where(**equal))
        return _dense(n, self.idx[rows], self.numbers(value)[rows])

    def array(self, column: str) -> np.ndarray:
        """A column as numpy as stored (no copy where Arrow allows it; timestamps as datetime64[us])."""
        return np.asarray(self.table.column(column).to_numpy(zero_copy_only=False))


# -- the schema screen ---------------------------------------------------------------------------------
class _Names:
    """A string column as the screen's row rules read it: ``==``, ``!=`` and ``isin`` give numpy booleans.

    As ``validate_screen``'s string columns answer, but from the window's dictionary codes: each
    comparison is made once per distinct name and spread over the rows by their codes.
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, codes: _Codes) -> None:
        self._codes = codes

    def _spread(self, per_value: list[bool]) -> np.ndarray:
        return np.asarray(per_value, dtype=np.bool_)[self._codes.codes] if per_value \
            else np.zeros(len(self._codes.codes), dtype=np.bool_)

    def __eq__(self, other: object) -> np.ndarray:  # type: ignore[override]
        if not isinstance(other, str):
            raise TypeError(f"the screen compares strings with strings, not {type(other).__name__}")
        return self._spread([v == other for v in self._codes.values])

    def __ne__(self, other: object) -> np.ndarray:  # type: ignore[override]
        return ~self.__eq__(other)

    def isin(self, values: Iterable[object]) -> np.ndarray:
        if isinstance(values, str | bytes):
            raise TypeError("isin takes a collection of values")  # as pandas does
        allowed = set(values)
        if not all(isinstance(v, str) for v in allowed):
            raise TypeError("the screen matches strings against strings only")
        return self._spread([v in allowed for v in self._codes.values])


# pandera's built-in checks that judge each value on its own: on a string column, judging its distinct
# names is judging its rows.
_PER_VALUE_CHECKS = frozenset({"isin", "notin", "str_length", "equal_to", "not_equal_to", "str_startswith",
                               "str_endswith"})
_TIMESTAMP_BOUND = 2**62  # as validate_screen: a difference of two such timestamps cannot wrap in numpy


class _SchemaScreen:
    """``validate_table``'s screen (:mod:`results_store.validate_screen`) on a window as the audit reads it.

    ``validate_table`` skips pandera when its screen vouches that every row passes every rule of the
    table's mode schema; anything else goes to pandera. The audit keeps names dictionary-encoded,
    and that screen takes plain strings only: decoding a year's names (~23M rows) and comparing them
    string by string cost more than the rest of the schema check. This runs the same compiled
    screen (column tests, missing values, row rules) on the window's columns as read: a string
    column's tests on its distinct names in use (when each of its checks judges values one by one;
    otherwise on the decoded column), the row rules on :class:`_Names`. It says "pass" exactly when
    ``validate_table`` on the decoded window would take the screen's way, so the audit finds the same;
    when it says "not sure" the window is decoded and goes to ``validate_table``.
    """

    def __init__(self, schema: pdr.DataFrameSchema) -> None:
        compiled = screen_for(schema)
        self.screen = compiled if isinstance(compiled, Screen) else None
        self.per_value = {name for name, column in schema.columns.items() if not column.unique
                          and all(getattr(c._check_fn, "__name__", None) in _PER_VALUE_CHECKS for c in column.checks)}

    def passes(self, table: pa.Table, window: _Window) -> bool:
        """True only if every row of ``table`` (the window's rows, today's columns in order) passes every rule."""
        try:
            return self._passes(table, window)
        except Exception:  # whatever the screen cannot evaluate, pandera judges (as in validate_screen)
            return False

    def _passes(self, table: pa.Table, window: _Window) -> bool:
        screen = self.screen
        if screen is None or table.schema.names != screen.schema.names:
            return False
        columns: dict[str, Any] = {}
        for spec, target in zip(screen.columns, screen.schema, strict=True):
            stored = table.column(spec.name)
            if stored.null_count:
                return False
            values: Any
            if pa.types.is_string(target.type):
                if stored.type != target.type and not (pa.types.is_dictionary(stored.type)
                                                       and stored.type.value_type == target.type):
                    return False
                codes = window.codes(spec.name)
                if spec.name in self.per_value:
                    used = np.bincount(codes.codes, minlength=len(codes.values)) > 0
                    values = pa.array([v for v, u in zip(codes.values, used, strict=True) if u], pa.string())
                else:
                    values = stored.cast(target.type)
                columns[spec.name] = _Names(codes)
            else:
                if stored.type != target.type:
                    return False
                values = columns[spec.name] = window.array(spec.name)
                if pa.types.is_floating(target.type) and np.isnan(values).any():
                    return False  # missing to pandas: how it meets nullable and ignore_na is pandera's business
                if pa.types.is_timestamp(target.type) and len(values):
                    stamps = values.view(np.int64)
                    if stamps.min() <= -_TIMESTAMP_BOUND or stamps.max() >= _TIMESTAMP_BOUND:
                        return False
            if not all(test(values) for test in spec.tests):
                return False
        for rule in screen.rules:
            held = np.asarray(rule.holds(columns))
            if held.dtype != np.bool_ or held.shape != (table.num_rows,) or not held.all():
                return False
        return True


def _trivial_cast(table: pa.Table, schema: pa.Schema) -> bool:
    """Would casting ``table`` to ``schema`` (types only: see :func:`_loose`) only decode dictionaries, or change nothing?"""
    for column, target in zip(table.columns, schema, strict=True):
        kind = column.type
        if kind != target.type and not (pa.types.is_dictionary(kind) and kind.value_type == target.type
                                         and pa.types.is_string(target.type)):
            return False
    return True


_LOOSE: dict[str, pa.Schema] = {}
_REQUIRED: dict[str, list[str]] = {}
NOT_NULLABLE = "not_nullable"  # the rule a null breaks, by the name pandera gives its nullable check


def null_template(column: str, where: str = "at {steps}") -> str:
    """The finding of nulls in a non-nullable ``column``; by default an :class:`Issue` template (it adds the timesteps)."""
    return f"column {column} breaks rule '{NOT_NULLABLE}' (a null in a column declared non-nullable) {where}"


def _loose(name: str) -> pa.Schema:
    """Today's schema of a result table with every field nullable: the names and types a window is cast to.

    The tables declare every column non-nullable, and pyarrow refuses (ValueError) to cast a column
    holding a null to a non-nullable field. Conforming a window is about its columns and their
    types; a null is a value that breaks a rule, judged row by row (:meth:`_RunPass._nulls`).
    """
    if name not in _LOOSE:
        _LOOSE[name] = pa.schema([f.with_nullable(True) for f in arrow_schema(name)])
    return _LOOSE[name]


def _required(name: str) -> list[str]:
    """The columns of a result table that the table declares non-nullable (all of them, today)."""
    if name not in _REQUIRED:
        _REQUIRED[name] = [f.name for f in arrow_schema(name) if not f.nullable]
    return _REQUIRED[name]


# -- the pass ---------------------------------------------------------------------------------------
@dataclass
class _Carry:
    """What the per-timestep checks need from the last timestep of the previous window."""

    raw_step: int | None = None
    raw_ts: int | None = None
    table_step: dict[str, int] = field(default_factory=dict)
    table_ts: dict[str, int] = field(default_factory=dict)
    attr: tuple[int, float, float] | None = None            # (timestep, attribution sum, balance-based PnL)
    funding: tuple[int, float] | None = None                # (timestep, funding_pnl)
    venue_cum: dict[str, tuple[int, float]] = field(default_factory=dict)
    balances: dict[tuple[str, str, str], tuple[int, float]] = field(default_factory=dict)  # series -> (timestep, amount)


@dataclass(frozen=True)
class _Legs:
    """How the balance sheet's rows add up to the net delta of one tracked asset."""

    asset: str
    direct: frozenset[str]      # held 1:1 (ETH, WETH, spot BTC)
    wrapped: frozenset[str]     # held at the wrapper's rate (weETH, aWeETH)
    collateral: frozenset[str]  # the wrapped tokens the LTV is measured on (aWeETH)
    debt: frozenset[str]        # owed 1:1 (variableDebtWETH)


def delta_legs(mode: ModeConfig, asset: str) -> _Legs:
    """The balance-sheet assets that make up ``asset``'s delta, from the mode's strategy.

    The staking token wraps the spot asset and its Aave aToken is the collateral; the borrowed
    asset's variable-debt token is owed; the asset and its wrapped native form count 1:1. These
    are the naming conventions of the venues the modes use (Aave: ``a<Token>``, ``variableDebt<Token>``).
    """
    st = mode.strategy
    native = {asset, f"W{asset}"}
    wrapped: set[str] = set()
    collateral: set[str] = set()
    debt: set[str] = set()
    if st.staking_token and (st.spot_asset or "ETH") == asset:
        wrapped.add(st.staking_token)
    lending = st.lending
    if lending is not None:
        a_token = "a" + lending.supply_asset[:1].upper() + lending.supply_asset[1:]
        if lending.supply_asset in wrapped:
            wrapped.add(a_token)
            if lending.borrow_asset:
                collateral.add(a_token)
        elif lending.supply_asset in native:
            native.add(a_token)
        if lending.borrow_asset in native:
            debt.add(f"variableDebt{lending.borrow_asset}")
    return _Legs(asset, frozenset(native), frozenset(wrapped), frozenset(collateral), frozenset(debt))


class _RunPass:
    """One streaming pass over a run: every table read once, every per-window check run on each window."""

    def __init__(self, ctx: RunContext, out: Findings) -> None:
        self.ctx, self.out = ctx, out
        self.tol = ctx.audit.tolerances
        self.carry = _Carry()
        self.rows: dict[str, int] = {}
        self.streams: dict[str, _TableStream] = {}
        self.raw: pads.Dataset | None = None
        self.quarantined: dict[str, np.ndarray] = {}
        self.nulled: dict[str, np.ndarray] = {}  # per table: timesteps whose rows with nulls left the checks (_nulls)
        self.unplaced: dict[str, int] = {}       # per table: rows with a null timestep, which no window holds
        self.samples: dict[str, list[np.ndarray]] = {}
        self.sample_stride = 1
        self.first_step: int | None = None
        self.broken: set[str] = set()
        self.breaches = 0
        self.screens: dict[str, _SchemaScreen] = {}

    # ---- set-up
    def open(self) -> tuple[int, int] | None:
        """Open the run's tables; the run's timestep range (from raw_snapshots), or None if it has none."""
        for name in [RAW_SNAPSHOTS, *(t.value for t in self.ctx.enabled())]:
            path = self.ctx.path(name)
            if not delta_tables.table_exists(path):
                self.out.add(Finding("completeness.coverage", "fail", name, None, None,
                                     f"{name}: the table does not exist although the mode stores it"))
                continue
            try:
                files = [f.path for f in delta_tables.table_files(path).runs([self.ctx.run_id])[0][1]]
                if name == RAW_SNAPSHOTS:
                    self.raw = delta_tables.run_dataset(path, self.ctx.run_id)
                    columns = ["timestep", "timestamp"]
                    schema = pa.schema([RAW_SNAPSHOTS_SCHEMA.field(c) for c in columns])
                    self.streams[name] = _TableStream(files, self.ctx.run_id, schema, columns=columns)
                    continue
                # Names (venue, metric...) are read as Parquet stores them, dictionary-encoded: the
                # checks compare codes, and only validation turns them into strings.
                names = [f.name for f in arrow_schema(name) if pa.types.is_string(f.type) and f.name not in _FREE_TEXT]
                self.streams[name] = _TableStream(files, self.ctx.run_id, arrow_schema(name), dictionary=names)
            except READ_ERRORS as exc:  # a file whose footer cannot be read
                self._unreadable(name, None, None, exc)
        self._quarantine()
        # raw_snapshots decides which timesteps the run has; without it, the first table that has rows.
        source = next((n for n, stream in self.streams.items() if stream.total_rows), None)
        if source is None:
            self.out.add(Finding("completeness.coverage", "fail", RAW_SNAPSHOTS, None, None,
                                 f"{RAW_SNAPSHOTS}: the run has no rows in any table"))
            return None
        if source != RAW_SNAPSHOTS:
            self.out.add(Finding("completeness.coverage", "fail", RAW_SNAPSHOTS, None, None,
                                 f"{RAW_SNAPSHOTS}: the run has no raw snapshots; timesteps taken from {source}"))
        bounds = self.streams[source].bounds() or self._scan_bounds(source)
        if bounds is None:
            self.out.add(Finding("completeness.coverage", "fail", source, None, None,
                                 f"{source}: none of the run's rows has a timestep"))
            return None
        count = self.streams[source].total_rows
        self.first_step = bounds[0]
        self.sample_stride = max(1, -(-count // self.ctx.audit.drift.max_samples))
        return bounds

    def _scan_bounds(self, name: str) -> tuple[int, int] | None:
        """First and last timestep by reading the column (a file written without statistics); None if every one is null."""
        steps = delta_tables.run_dataset(self.ctx.path(name), self.ctx.run_id).to_table(columns=["timestep"])
        low, high = (v.as_py() for v in pc.min_max(steps.column("timestep")).values())
        return None if low is None or high is None else (int(low), int(high))

    def _unreadable(self, name: str, lo: int | None, hi: int | None, exc: BaseException) -> None:
        """A table that cannot be decoded: an integrity failure, and no more checks of it."""
        if error_map.is_transient(exc):
            raise error_map.map_error(exc, f"read {name}", self.ctx.path(name)) from exc
        self.broken.add(name)
        where = f" (timesteps {lo}-{hi})" if lo is not None else ""
        self.out.add(Finding("integrity", "fail", name, lo, hi,
                             f"{name}: data cannot be read{where}: {type(exc).__name__}: {str(exc)[:300]}"))

    def _quarantine(self) -> None:
        path = self.ctx.path(QUARANTINE)
        if not delta_tables.table_exists(path):
            return
        dataset = delta_tables.run_dataset(path, self.ctx.run_id)
        counts: dict[tuple[str, str, str], int] = {}
        steps: dict[str, list[np.ndarray]] = {}
        batches = dataset.to_batches(columns=["timestep", "result_type", "rule", "error_code"], batch_readahead=1,
                                     fragment_readahead=1)
        while True:
            try:
                batch = next(batches, None)
            except READ_ERRORS as exc:
                self._unreadable(QUARANTINE, None, None, exc)
                return
            if batch is None:
                break
            table = pa.Table.from_batches([batch])
            bad = self._null_rows(QUARANTINE, table, table.column_names)
            if bad is not None:  # a row that does not say which table, rule or timestep it was: named, not counted
                table = table.filter(pa.array(~bad))
            grouped = table.group_by(["result_type", "rule", "error_code"]).aggregate([("timestep", "count")])
            for row in grouped.to_pylist():
                key = (row["result_type"], row["rule"], row["error_code"])
                counts[key] = counts.get(key, 0) + row["timestep_count"]
            types = _Codes.of(table.column("result_type"))
            for index, rtype in enumerate(types.values):
                steps.setdefault(rtype, []).append(table.column("timestep").to_numpy()[types.codes == index])
        self.quarantined = {k: np.unique(np.concatenate(v)) for k, v in steps.items()}
        status: Status = "fail" if self.ctx.audit.quarantine_fails else "warn"
        for (rtype, rule, code), count in sorted(counts.items()):
            q_steps = self.quarantined[rtype]
            self.out.add(Finding("completeness.quarantine", status, rtype, int(q_steps[0]), int(q_steps[-1]),
                                 f"{rtype}: {count:,} rows quarantined by rule '{rule}' ({code})",
                                 {"rule": rule, "error_code": code, "rows": count}))
        self.out.checked("completeness.quarantine", sum(counts.values()))

    def _quarantined_mask(self, tables: Iterable[str], lo: int, n: int) -> np.ndarray:
        """Timesteps of the window where one of ``tables`` (or the whole snapshot) lost rows to quarantine,
        or rows with nulls to the schema check (:meth:`_nulls`): the reconciliations cannot judge them."""
        mask = np.zeros(n, dtype=bool)
        for name in [*tables, "snapshot"]:
            for lost in (self.quarantined, self.nulled):
                steps = lost.get(name)
                if steps is not None and len(steps):
                    inside = steps[(steps >= lo) & (steps < lo + n)]
                    mask[inside - lo] = True
        return mask

    # ---- the window loop
    def run(self) -> None:
        span = self.open()
        if span is None:  # no timestep to window by: what the streams hold is still counted and named
            self._outside()
            for stream in self.streams.values():
                stream.close()
            return
        low, high = span
        windows = [(lo, min(lo + self.ctx.window, high + 1)) for lo in range(low, high + 1, self.ctx.window)]
        # The next window is read (Arrow decodes without the GIL) while this one is checked.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-read") as reader:
            ahead = reader.submit(self._load, *windows[0])
            for i, (lo, hi) in enumerate(windows):
                loaded = ahead.result()
                if i + 1 < len(windows):
                    ahead = reader.submit(self._load, *windows[i + 1])
                self._window(lo, hi, loaded)
        self._outside()
        for stream in self.streams.values():
            stream.close()

    def _load(self, lo: int, hi: int) -> dict[str, tuple[pa.Table, pa.Table] | BaseException]:
        """Every table's rows of one window (or what stopped its reading); runs on the reader thread."""
        loaded: dict[str, tuple[pa.Table, pa.Table] | BaseException] = {}
        for name, stream in self.streams.items():
            if name in self.broken:
                continue
            try:
                loaded[name] = stream.take(lo, hi)
            except READ_ERRORS as exc:
                loaded[name] = exc
        return loaded

    def _window(self, lo: int, hi: int, loaded: dict[str, tuple[pa.Table, pa.Table] | BaseException]) -> None:
        n = hi - lo
        tables: dict[str, _Window] = {}
        for name, got in loaded.items():
            if isinstance(got, BaseException):
                self._unreadable(name, lo, hi - 1, got)
                continue
            window, before = got
            if before.num_rows:  # rows before raw_snapshots' first timestep: counted, as those after it (_outside)
                self.rows[name] = self.rows.get(name, 0) + before.num_rows
                self._extra(name, before.column("timestep").to_numpy())
            tables[name] = _Window(window, lo)
        raw = tables.pop(RAW_SNAPSHOTS, None)
        raw_present, raw_ts = self._raw_checks(raw, lo, n)
        for rtype in self.ctx.enabled():
            name = rtype.value
            if name not in tables:
                continue
            table = self._conform(name, tables[name].table)
            if table is None:
                del tables[name]
                continue
            self.rows[name] = self.rows.get(name, 0) + table.num_rows
            table, window = self._nulls(name, table, tables[name], lo)
            tables[name] = window
            self._schema(rtype, table, window)
            del table  # the strings were for pandera; the checks below use the dictionary codes
            self._unique(name, window, lo, key_columns(rtype))
            self._coverage(rtype, window, lo, n, raw_present, raw_ts)
        feats = _Features(self, tables, lo, n)
        self._pnl(feats)
        self._funding(feats)
        self._delta(feats)
        self._ltv(feats)
        self._trades(feats)
        self._sample(feats)

    def _conform(self, name: str, table: pa.Table) -> pa.Table | None:
        """The window with exactly today's columns and types, in order; a table whose columns differ is a schema finding.

        Nulls are left for :meth:`_nulls` (the cast is to :func:`_loose`, which takes them). Names
        stay dictionary-encoded where that is all that differs from today's types: that cast cannot
        fail, and it is made only if the window goes to pandera (:meth:`_schema`).
        """
        schema = _loose(name)
        missing = [c for c in schema.names if c not in table.column_names]
        extra = [c for c in table.column_names if c not in schema.names]
        try:
            if missing:
                raise TypeError(f"missing columns {missing}")
            selected = table.select(schema.names)
            if _trivial_cast(selected, schema):
                return selected
            return selected.cast(schema)
        except (TypeError, pa.ArrowException) as exc:
            if name not in self.broken:
                self.broken.add(name)
                self.out.add(Finding("schema", "fail", name, None, None,
                                     f"{name}: stored columns do not match today's model ({exc}"
                                     + (f"; extra columns {extra}" if extra else "") + ")"))
            return None

    # ---- schema, uniqueness, completeness
    def _nulls(self, name: str, table: pa.Table, window: _Window, lo: int) -> tuple[pa.Table, _Window]:
        """A null in a column the table declares non-nullable: a schema finding, and the row leaves the window.

        Each such column is one finding per range of timesteps (rule ``not_nullable``, with the rows
        counted), whatever the column's type. Its rows are left out of every other check, as the
        store would have quarantined them: a row with a null has no key, timestamp or value to
        vouch for, and as with quarantined rows, coverage and the reconciliations do not report
        their timesteps again (:meth:`_quarantined_mask`, :meth:`_missing_steps`). pandera is
        not asked: to pandas a null float is a NaN (the ``finite`` rule would name it a non-finite
        number) and a null integer or flag changes the column's dtype (the whole table would fail).
        Tables without nulls (all of them, normally) cost a look at each column's null count.
        """
        bad = self._null_rows(name, table, _required(name))
        if bad is None:
            return table, window
        self.out.checked("schema", int(bad.sum()))
        self.nulled[name] = np.union1d(self.nulled.get(name, np.zeros(0, dtype=np.int64)),
                                       table.column("timestep").to_numpy()[bad])
        keep = pa.array(~bad)
        return table.filter(keep), _Window(window.table.filter(keep), lo)

    def _null_rows(self, name: str, table: pa.Table, columns: Iterable[str]) -> np.ndarray | None:
        """The rows of ``table`` with a null in one of ``columns`` (None when there is none); each such
        column is a schema finding at the rows' timesteps (a null timestep is counted in ``unplaced``)."""
        nulls = {c: table.column(c).null_count for c in columns}
        if not any(nulls.values()):
            return None
        timestep = table.column("timestep")
        placed = np.asarray(timestep.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
        steps = timestep.fill_null(0).to_numpy()
        bad = np.zeros(table.num_rows, dtype=bool)
        for column, count in nulls.items():
            if not count:
                continue
            null = np.asarray(table.column(column).is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
            bad |= null
            if column == "timestep":
                self.unplaced[name] = self.unplaced.get(name, 0) + count
                continue
            issue = self.out.issue("schema", name, f"{column}:{NOT_NULLABLE}", null_template(column))
            issue.add(np.unique(steps[null & placed]))
            issue.rows += int((null & placed).sum())
        return bad

    def _schema(self, rtype: ResultType, table: pa.Table, window: _Window) -> None:
        name = rtype.value
        self.out.checked("schema", table.num_rows)
        if self._screened(rtype, table, window):
            return
        try:
            result = validate_table(rtype, table.cast(_loose(name)), self.ctx.mode)
        except ComponentError as exc:  # columns pandera cannot judge row by row
            self.out.add(Finding("schema", "fail", name, None, None, str(exc)))
            self.broken.add(name)
            return
        examples: dict[tuple[str, str], str] = {}
        if result.quarantine.num_rows:
            for column, rule, message in zip(result.quarantine.column("column").to_pylist(),
                                             result.quarantine.column("rule").to_pylist(),
                                             result.quarantine.column("message").to_pylist(), strict=True):
                value = _VALUE.search(message)
                examples.setdefault((column, rule), f", e.g. {value.group(1)}" if value else "")
        for error in result.errors:
            details = error.details
            column, rule = str(details.get("column")), str(details.get("rule"))
            why = _RULE_TEXT.search(error.message)
            steps = np.asarray(details.get("timesteps") or [], dtype=np.int64)
            issue = self.out.issue("schema", name, f"{column}:{rule}", f"column {column} breaks rule '{rule}'"
                                   + (f" ({why.group(1)})" if why else "") + " at {steps}{example}")
            issue.add(steps, example=examples.get((column, rule), ""))
            issue.rows += int(details.get("rows", len(steps)))

    def _screened(self, rtype: ResultType, table: pa.Table, window: _Window) -> bool:
        """Would ``validate_table`` take its screen's way on the (decoded) window? (see :class:`_SchemaScreen`)"""
        if not table.num_rows:
            return True  # validate_table judges no rows valid
        screen = self.screens.get(rtype.value)
        if screen is None:
            screen = self.screens[rtype.value] = _SchemaScreen(mode_schema(rtype, self.ctx.mode))
        return screen.passes(table, window)

    def _unique(self, name: str, window: _Window, lo: int, key: tuple[str, ...]) -> None:
        """Rows sharing the table's key: the key's columns as one integer per row, counted."""
        table = window.table
        self.out.checked("uniqueness", table.num_rows)
        if not table.num_rows:
            return
        # run_id is the partition: one value per run, so (timestep, the other columns) decide.
        others = [c for c in key if c not in RAW_SNAPSHOTS_KEY]
        code = np.zeros(table.num_rows, dtype=np.int64)
        radix = 1
        for column in others:
            codes = window.codes(column)
            code += codes.codes * radix
            radix *= max(1, len(codes.values))
        composite = window.idx.astype(np.int64) * radix + code
        if (int(window.idx.max()) + 1) * radix <= _BINCOUNT_LIMIT:
            seen = np.zeros((int(window.idx.max()) + 1) * radix, dtype=np.bool_)
            seen[composite] = True
            if np.count_nonzero(seen) == len(composite):  # as many keys as rows: none repeats (a byte per key, not a count)
                return
            tally = np.bincount(composite)
            if tally.max() <= 1:
                return
            repeated = np.flatnonzero(tally > 1)
            position = {int(k): i for i, k in enumerate(repeated)}
            rows = np.full(len(repeated), -1)
            for row in np.flatnonzero(np.isin(composite, repeated)):  # only the duplicated rows: few
                if rows[position[int(composite[row])]] < 0:
                    rows[position[int(composite[row])]] = row
            copies = tally[repeated]
        else:
            _, first, counts = np.unique(composite, return_index=True, return_counts=True)
            if counts.max() <= 1:
                return
            rows, copies = first[counts > 1], counts[counts > 1]
        labels = np.array(["/".join(str(window.codes(c).values[window.codes(c).codes[r]]) for c in others) for r in rows],
                          dtype=object)
        issue = self.out.issue("uniqueness", name, "key", "{copies} rows share the key (" + ", ".join(key) + ") at {steps}"
                               + (" (" + "/".join(others) + " = {key})" if others else ""))
        issue.add(window.idx[rows] + lo, copies=copies, key=labels)

    def _raw_checks(self, raw: _Window | None, lo: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Gaps, order and uniqueness of raw_snapshots' timesteps; its presence and timestamps per timestep."""
        present = np.zeros(n, dtype=bool)
        stamps = np.zeros(n, dtype=np.int64)
        if raw is None or not raw.table.num_rows:
            return present, stamps
        table = raw.table.sort_by([("timestep", "ascending")])
        steps = table.column("timestep").to_numpy()
        stamp = table.column("timestamp")
        if stamp.null_count:
            # The snapshot is there (its timestep counts for gaps and coverage); its time is unknown,
            # so it is left out of every comparison of timestamps.
            null = np.asarray(stamp.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
            issue = self.out.issue("schema", RAW_SNAPSHOTS, f"timestamp:{NOT_NULLABLE}", null_template("timestamp"))
            issue.add(np.unique(steps[null]))
            issue.rows += stamp.null_count
        ts = stamp.cast(pa.int64()).fill_null(_NO_TIME).to_numpy()
        self.rows[RAW_SNAPSHOTS] = self.rows.get(RAW_SNAPSHOTS, 0) + len(steps)
        for check in ("completeness.gaps", "completeness.order", "uniqueness"):
            self.out.checked(check, len(steps))
        present[steps - lo] = True
        stamps[steps - lo] = ts
        if self.carry.raw_step is not None:  # the previous window's last timestep pairs with this window's first
            all_steps = np.concatenate([[self.carry.raw_step], steps])
            all_ts = np.concatenate([[self.carry.raw_ts], ts])
        else:
            all_steps, all_ts = steps, ts
        self.carry.raw_step, self.carry.raw_ts = int(steps[-1]), int(ts[-1])
        steps, ts = all_steps[1:], all_ts[1:]
        prev_step, prev_ts = all_steps[:-1], all_ts[:-1]
        timed = (ts != _NO_TIME) & (prev_ts != _NO_TIME)
        with np.errstate(over="ignore"):  # a difference with _NO_TIME wraps; it is never looked at
            jump, dt = steps - prev_step, ts - prev_ts
        dup = jump == 0
        if dup.any():
            self.out.issue("uniqueness", RAW_SNAPSHOTS, "key", "{copies} rows share the key (run_id, timestep) at {steps}") \
                .add(steps[dup], copies=2)
        gaps = jump > 1
        if gaps.any():
            whole = self.quarantined.get("snapshot", np.zeros(0, dtype=np.int64))
            for a, b in zip(prev_step[gaps] + 1, steps[gaps] - 1, strict=True):
                missing = np.arange(a, b + 1)
                explained = np.isin(missing, whole)
                self.out.issue("completeness.gaps", RAW_SNAPSHOTS, "quarantined",
                               "missing at {steps}: the snapshots were quarantined (RST-101)", status="warn") \
                    .add(missing[explained])
                self.out.issue("completeness.gaps", RAW_SNAPSHOTS, "missing", "missing at {steps}") \
                    .add(missing[~explained])
        back = timed & (dt < 0)
        if back.any():
            self.out.issue("completeness.order", RAW_SNAPSHOTS, "backwards",
                           "timestamp {at} is before the previous timestep's {before} at {steps}") \
                .add(steps[back], at=_iso(ts[back]), before=_iso(prev_ts[back]))
        freq = self.ctx.freq_us
        if freq and self.ctx.audit.check_timestamp_spacing:
            odd = timed & (jump >= 1) & (dt >= 0) & (dt != jump * freq)
            if odd.any():
                self.out.issue("completeness.gaps", RAW_SNAPSHOTS, "spacing",
                               "timestamps {apart} apart at {steps} (the run's frequency: {freq})") \
                    .add(steps[odd], apart=_duration(dt[odd] // jump[odd]), freq=_duration(freq))
        return present, stamps

    def _coverage(self, rtype: ResultType, window: _Window, lo: int, n: int, raw_present: np.ndarray,
                  raw_ts: np.ndarray) -> None:
        """The table's timesteps against raw_snapshots', its timestamps against raw_snapshots' and in order."""
        name, table, idx = rtype.value, window.table, window.idx
        self.out.checked("completeness.coverage", table.num_rows)
        present = np.zeros(n, dtype=bool)
        present[idx] = True
        if rtype not in SPARSE_TABLES:
            self._missing_steps(name, lo, raw_present, present)
        if not table.num_rows:
            return
        extra = present & ~raw_present & raw_present.any()
        if extra.any():
            self._extra(name, np.flatnonzero(extra) + lo)
        ts = table.column("timestamp").cast(pa.int64()).to_numpy()
        low_ts = np.full(n, np.iinfo(np.int64).max)
        high_ts = np.full(n, np.iinfo(np.int64).min)
        if bool((idx[1:] >= idx[:-1]).all()):
            # Rows in timestep order: each timestep's rows are one run, reduced at once.
            starts = np.flatnonzero(np.concatenate([[True], idx[1:] != idx[:-1]]))
            low_ts[idx[starts]] = np.minimum.reduceat(ts, starts)
            high_ts[idx[starts]] = np.maximum.reduceat(ts, starts)
        else:
            np.minimum.at(low_ts, idx, ts)
            np.maximum.at(high_ts, idx, ts)
        differs = present & raw_present & (raw_ts != _NO_TIME) & ((low_ts != raw_ts) | (high_ts != raw_ts))
        if differs.any():
            at = np.flatnonzero(differs)
            stored = np.where(low_ts[at] != raw_ts[at], low_ts[at], high_ts[at])
            self.out.issue("completeness.coverage", name, "timestamp",
                           "timestamp {stored} differs from raw_snapshots' {raw} at {steps}") \
                .add(at + lo, stored=_iso(stored), raw=_iso(raw_ts[at]))
        steps = np.flatnonzero(present)
        self.out.checked("completeness.order", len(steps))
        mixed = present & (low_ts != high_ts)
        if mixed.any():
            at = np.flatnonzero(mixed)
            self.out.issue("completeness.order", name, "mixed",
                           "rows of one timestep carry timestamps {low} and {high} at {steps}") \
                .add(at + lo, low=_iso(low_ts[at]), high=_iso(high_ts[at]))
        # Across timesteps, the previous window's last one included: a timestamp never goes back.
        seq_low, seq_high = low_ts[steps], high_ts[steps]
        carried = self.carry.table_ts.get(name)
        before = np.concatenate([[carried if carried is not None else seq_low[0]], seq_high[:-1]])
        back = seq_low < before
        if back.any():
            self.out.issue("completeness.order", name, "backwards",
                           "timestamp {at} is before the previous timestep's {before} at {steps}") \
                .add(steps[back] + lo, at=_iso(seq_low[back]), before=_iso(before[back]))
        self.carry.table_step[name] = int(steps[-1] + lo)
        self.carry.table_ts[name] = int(seq_high[-1])

    def _missing_steps(self, name: str, lo: int, raw_present: np.ndarray, present: np.ndarray) -> None:
        missing = raw_present & ~present
        if not missing.any():
            return
        at = np.flatnonzero(missing) + lo
        at = at[~np.isin(at, self.nulled.get(name, np.zeros(0, dtype=np.int64)))]  # named by the schema check
        explained = np.isin(at, self.quarantined.get(name, np.zeros(0, dtype=np.int64)))
        self.out.issue("completeness.coverage", name, "quarantined", "no rows at {steps}: they were quarantined",
                       status="warn").add(at[explained])
        self.out.issue("completeness.coverage", name, "missing", "no rows at {steps}, which raw_snapshots has") \
            .add(at[~explained])

    def _extra(self, name: str, steps: np.ndarray) -> None:
        if name == RAW_SNAPSHOTS:
            return
        self.out.issue("completeness.coverage", name, "extra", "rows at {steps}, which raw_snapshots lacks") \
            .add(np.unique(steps))

    def _outside(self) -> None:
        """Rows after raw_snapshots' last timestep, left in the streams once every window is done."""
        for name, stream in self.streams.items():
            if name in self.broken:
                continue
            try:
                rest = stream.rest()
            except READ_ERRORS as exc:
                self._unreadable(name, None, None, exc)
                continue
            if rest.num_rows:
                self.rows[name] = self.rows.get(name, 0) + rest.num_rows
                self._extra(name, rest.column("timestep").to_numpy())
            if stream.unplaced:  # rows with a null timestep: counted, and named below, though no window holds them
                self.rows[name] = self.rows.get(name, 0) + stream.unplaced
                self.out.checked("schema", stream.unplaced)
                self.unplaced[name] = self.unplaced.get(name, 0) + stream.unplaced
        for name, count in self.unplaced.items():
            self.out.add(Finding("schema", "fail", name, None, None,
                                 f"{name}: " + null_template("timestep", f"in {count:,} rows, which no timestep places"),
                                 {"column": "timestep", "rule": NOT_NULLABLE, "rows": count}))

    # ---- reconciliation
    @staticmethod
    def _consecutive(present: np.ndarray, lo: int, carried: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(t, index of t-1) for present timesteps whose previous timestep is present too.

        Indexes are into the window's arrays with the carried value prepended: 0 is the previous
        window's last timestep, k + 1 is the window's k-th.
        """
        at = np.flatnonzero(present)
        prev = np.concatenate([[carried - lo if carried is not None else -(1 << 40)], at[:-1]])
        ok = (at - prev) == 1
        return at[ok], prev[ok] + 1

    def _pnl(self, f: _Features) -> None:
        if f.pnl is None:
            return
        attr, pnl, value = f.pnl["attr"], f.pnl["pnl"], f.pnl["total_value"]
        skip = self._quarantined_mask([ResultType.PNL_ATTRIBUTION.value], f.lo, f.n)
        present = ~np.isnan(attr) & ~np.isnan(pnl) & ~skip
        self.out.checked("reconciliation.pnl", int(present.sum()))
        cap = self.ctx.capital
        tol_cum, tol_step = self.tol.pnl_cumulative * cap, self.tol.pnl_step * cap
        diff = attr - pnl
        bad = present & (np.abs(diff) > tol_cum)
        if bad.any():
            at = np.flatnonzero(bad)
            self.out.issue("reconciliation.pnl", "pnl_attribution", "cumulative",
                           "sum of components {attr:.2f} != balance-based PnL {pnl:.2f} at {steps} (tol {tol:g})",
                           tol=tol_cum, score="gap").add(at + f.lo, attr=attr[at], pnl=pnl[at], gap=diff[at])
        # Per timestep: the change of each side since the previous timestep (across the window's edge too).
        carried = self.carry.attr
        with_attr = np.concatenate([[carried[1] if carried else np.nan], attr])
        with_pnl = np.concatenate([[carried[2] if carried else np.nan], pnl])
        at, prev = self._consecutive(present, f.lo, carried[0] if carried else None)
        d_attr, d_pnl = attr[at] - with_attr[prev], pnl[at] - with_pnl[prev]
        bad_step = np.abs(d_attr - d_pnl) > tol_step
        if bad_step.any():
            self.out.issue("reconciliation.pnl", "pnl_attribution", "step",
                           "change in sum of components {d_attr:.2f} != change in balance-based PnL {d_pnl:.2f} "
                           "at {steps} (tol {tol:g})", tol=tol_step, score="gap") \
                .add(at[bad_step] + f.lo, d_attr=d_attr[bad_step], d_pnl=d_pnl[bad_step], gap=(d_attr - d_pnl)[bad_step])
        done = np.flatnonzero(present)
        if len(done):
            j = done[-1]
            self.carry.attr = (int(j + f.lo), float(attr[j]), float(pnl[j]))
        # Balance-based PnL is the balance-based value less the initial capital.
        has_value = present & ~np.isnan(value)
        off = has_value & (np.abs(value - pnl - cap) > tol_step)
        if off.any():
            at = np.flatnonzero(off)
            self.out.issue("reconciliation.pnl", "pnl_attribution", "capital",
                           "total_value {value:.2f} - pnl_cumulative {pnl:.2f} != initial capital {cap:.2f} at {steps} "
                           "(tol {tol:g})", tol=tol_step, score="gap") \
                .add(at + f.lo, value=value[at], pnl=pnl[at], cap=cap, gap=(value - pnl - cap)[at])
        # The engine's own reconciliation figures, where it stores them, must say what the data says.
        stored, passed, tolerance = f.pnl["rec_difference"], f.pnl["rec_passed"], f.pnl["rec_tolerance"]
        has_rec = present & ~np.isnan(stored)
        wrong = has_rec & (np.abs(stored - diff) > tol_step)
        if wrong.any():
            at = np.flatnonzero(wrong)
            self.out.issue("reconciliation.pnl", "pnl_attribution", "stored_difference",
                           "stored reconciliation difference {stored:.6g} != recomputed {actual:.6g} at {steps} (tol {tol:g})",
                           tol=tol_step, score="gap").add(at + f.lo, stored=stored[at], actual=diff[at],
                                                         gap=(stored - diff)[at])
        flagged = has_rec & ~np.isnan(passed) & ~np.isnan(tolerance)
        lying = flagged & ((passed > 0.5) != (np.abs(diff) <= tolerance))
        if lying.any():
            at = np.flatnonzero(lying)
            self.out.issue("reconciliation.pnl", "pnl_attribution", "passed_flag",
                           "reconciliation 'passed' is {passed:g} but |difference| {actual:.6g} against its own tolerance "
                           "{own:g} at {steps}").add(at + f.lo, passed=passed[at], actual=np.abs(diff[at]), own=tolerance[at])

    def _funding(self, f: _Features) -> None:
        if not self.ctx.mode.results_store.enabled(ResultType.FUNDING_TRACKING):
            self.out.skip("reconciliation.funding", "funding_tracking is not stored by this mode")
            return
        if not f.funding or f.pnl is None:
            return
        venues = f.funding
        tol = self.tol.funding * self.ctx.capital
        pay = np.sum([v["payment"] for v in venues.values()], axis=0)
        cum = np.sum([v["cumulative"] for v in venues.values()], axis=0)
        attribution = f.pnl["funding_pnl"]
        if np.isnan(attribution).all():
            self.out.notes["reconciliation.funding"] = "no funding_pnl attribution rows: compared with 0"
            attribution = np.zeros(f.n)
        skip = self._quarantined_mask([ResultType.FUNDING_TRACKING.value, ResultType.PNL_ATTRIBUTION.value], f.lo, f.n)
        present = ~np.isnan(cum) & ~np.isnan(attribution) & ~skip
        self.out.checked("reconciliation.funding", int(present.sum()))
        off = present & (np.abs(cum - attribution) > tol)
        if off.any():
            at = np.flatnonzero(off)
            self.out.issue("reconciliation.funding", "funding_tracking", "cumulative",
                           "cumulative funding over venues {cum:.2f} != funding_pnl attribution {attr:.2f} at {steps} "
                           "(tol {tol:g})", tol=tol, score="gap") \
                .add(at + f.lo, cum=cum[at], attr=attribution[at], gap=(cum - attribution)[at])
        # Per timestep: the payments against the change of the attribution.
        carried = self.carry.funding or self._start(0.0)
        previous = np.concatenate([[carried[1] if carried else np.nan], attribution])
        at, prev = self._consecutive(present, f.lo, carried[0] if carried else None)
        change = attribution[at] - previous[prev]
        bad = np.abs(pay[at] - change) > tol
        if bad.any():
            self.out.issue("reconciliation.funding", "funding_tracking", "step",
                           "payments over venues {pay:.2f} != change of funding_pnl {change:.2f} at {steps} (tol {tol:g})",
                           tol=tol, score="gap") \
                .add(at[bad] + f.lo, pay=pay[at][bad], change=change[bad], gap=(pay[at] - change)[bad])
        done = np.flatnonzero(present)
        if len(done):
            self.carry.funding = (int(done[-1] + f.lo), float(attribution[done[-1]]))
        for venue, series in venues.items():
            v_cum, v_pay = series["cumulative"], series["payment"]
            v_present = ~np.isnan(v_cum) & ~np.isnan(v_pay) & ~skip
            carried_v = self.carry.venue_cum.get(venue) or self._start(0.0)
            previous = np.concatenate([[carried_v[1] if carried_v else np.nan], v_cum])
            at, prev = self._consecutive(v_present, f.lo, carried_v[0] if carried_v else None)
            moved = v_cum[at] - previous[prev]
            bad = np.abs(moved - v_pay[at]) > tol
            if bad.any():
                self.out.issue("reconciliation.funding", "funding_tracking", f"running:{venue}",
                               venue + ": cumulative moved by {moved:.2f} but the payment is {pay:.2f} at {steps} "
                               "(tol {tol:g})", tol=tol, score="gap") \
                    .add(at[bad] + f.lo, moved=moved[bad], pay=v_pay[at][bad], gap=(moved - v_pay[at])[bad])
            done = np.flatnonzero(v_present)
            if len(done):
                self.carry.venue_cum[venue] = (int(done[-1] + f.lo), float(v_cum[done[-1]]))
        # The execution log's funding events: each amount is its venue's payment at that timestep.
        for event in f.events("FUNDING_PAYMENT"):
            venue = str(event.get("venue"))
            series_of = venues.get(venue)
            amount = event.get("amount")
            j = event["_step"] - f.lo
            if series_of is None or not isinstance(amount, int | float) or np.isnan(series_of["payment"][j]):
                continue
            paid = series_of["payment"][j]
            if abs(paid - amount) > tol:
                self.out.issue("reconciliation.funding", "execution_log", "event",
                               "FUNDING_PAYMENT of {amount:.2f} at {venue} but funding_tracking records {paid:.2f} "
                               "at {steps} (tol {tol:g})", tol=tol, score="gap") \
                    .add(np.array([event["_step"]]), amount=float(amount), venue=venue, paid=paid, gap=float(amount) - paid)

    def _start(self, value: float) -> tuple[int, float] | None:
        """Before a run's timestep 0 nothing was paid: the running totals start from ``value``."""
        return (-1, value) if self.first_step == 0 else None

    def _delta(self, f: _Features) -> None:
        if not self.ctx.mode.results_store.enabled(ResultType.DELTA_TRACKING):
            self.out.skip("reconciliation.delta", "delta_tracking is not stored by this mode")
            return
        if f.delta is None or f.balances is None:
            return
        cap = self.ctx.capital
        tol_units, tol_usd, tol_price = self.tol.delta_units, self.tol.delta_usd * cap, self.tol.price
        skip = self._quarantined_mask([ResultType.DELTA_TRACKING.value, ResultType.BALANCE_SHEET.value], f.lo, f.n)
        net, total = f.delta["net_delta"], f.delta["total"]
        assets: dict[str, tuple[np.ndarray, np.ndarray]] = f.delta["assets"]
        if len(assets) == 1:  # one tracked asset: its delta is the portfolio's net delta
            (asset, (delta, _)), = assets.items()
            present = ~np.isnan(delta) & ~np.isnan(net) & ~skip
            off = present & (np.abs(delta - net) > tol_units)
            if off.any():
                at = np.flatnonzero(off)
                self.out.issue("reconciliation.delta", "delta_tracking", "net",
                               asset + " delta {delta:.6g} != net_delta {net:.6g} at {steps} (tol {tol:g})",
                               tol=tol_units, score="gap").add(at + f.lo, delta=delta[at], net=net[at], gap=(delta - net)[at])
        cash = f.balances["cash"]
        for asset, (delta, exposure) in assets.items():
            sums = f.leg_sums(delta_legs(self.ctx.mode, asset))
            if sums is None:
                continue
            # Where the balance sheet has no rows the coverage check reports it; nothing to compare here.
            present = ~np.isnan(delta) & ~np.isnan(total) & ~np.isnan(exposure) & f.balances["present"] & ~skip
            self.out.checked("reconciliation.delta", int(present.sum()))
            direct, perp, wrapped, collateral, debt = (sums[k] for k in ("direct", "perp", "wrapped", "collateral", "debt"))
            # The wrapper's rate (ETH per weETH): from the LTV where the wrapped tokens are collateral
            # (LTV = debt / (collateral x rate)); without an LTV, only what the net delta implies, and
            # then the units check reduces to the USD one below.
            rate_ltv = np.full(f.n, np.nan)
            if f.ltv is not None:
                ltv = f.ltv["ltv"]
                with np.errstate(divide="ignore", invalid="ignore"):
                    rate_ltv = np.where((ltv > 0) & (collateral > 0), debt / (collateral * ltv), np.nan)
            has_wrapped = wrapped > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                rate_implied = np.where(has_wrapped, (delta - direct - perp + debt) / wrapped, 0.0)
            rate = np.where(np.isnan(rate_ltv), rate_implied, rate_ltv)
            expected = direct + perp - debt + rate * wrapped
            judged = present & (~has_wrapped | ~np.isnan(rate_ltv))
            off = judged & (np.abs(delta - expected) > tol_units)
            if off.any():
                at = np.flatnonzero(off)
                self.out.issue("reconciliation.delta", "delta_tracking", f"units:{asset}",
                               asset + " net delta {delta:.6g} != {expected:.6g} from the balance sheet and perp positions "
                               "at {steps} (tol {tol:g})", tol=tol_units, score="gap") \
                    .add(at + f.lo, delta=delta[at], expected=expected[at], gap=(delta - expected)[at])
            # The price at which the gross position is worth total_exposure_usd less cash; exposure_usd
            # must be the net delta at that price.
            gross = sums["gross_direct"] + sums["gross_perp"] + debt + rate * wrapped
            with np.errstate(divide="ignore", invalid="ignore"):
                price = np.where(gross > 0, (total - cash) / gross, np.nan)
            priced = present & ~np.isnan(price)
            usd_off = priced & (np.abs(exposure - delta * price) > tol_usd)
            if usd_off.any():
                at = np.flatnonzero(usd_off)
                self.out.issue("reconciliation.delta", "delta_tracking", f"usd:{asset}",
                               asset + " exposure_usd {exposure:.2f} != net delta {delta:.6g} x price {price:.2f} at {steps} "
                               "(tol {tol:g})", tol=tol_usd, score="gap") \
                    .add(at + f.lo, exposure=exposure[at], delta=delta[at], price=price[at], gap=(exposure - delta * price)[at])
            # Trades and funding payments in the asset carry the market price of their timestep.
            for event in f.events(None):
                instrument, quoted = event.get("instrument"), event.get("price", event.get("mark_price"))
                if not isinstance(instrument, str) or not isinstance(quoted, int | float) or quoted <= 0:
                    continue
                j = event["_step"] - f.lo
                if perp_base_asset(instrument) != asset or not priced[j] or abs(price[j] - quoted) <= tol_price * quoted:
                    continue
                self.out.issue("reconciliation.delta", "delta_tracking", f"price:{asset}",
                               asset + " price {price:.2f} implied by total_exposure_usd and the balance sheet != the "
                               "{kind} price {quoted:.2f} of {instrument} at {steps} (tol {tol:g}, relative)",
                               tol=tol_price, score="gap") \
                    .add(np.array([event["_step"]]), price=price[j], kind=str(event["_type"]), quoted=float(quoted),
                         instrument=instrument, gap=price[j] - float(quoted))

    def _ltv(self, f: _Features) -> None:
        if f.ltv is None:
            return
        ltv, limit, flag = f.ltv["ltv"], f.ltv[self.ctx.audit.ltv_alert_threshold], f.ltv["at_risk"]
        skip = self._quarantined_mask([ResultType.RISK_METRICS.value], f.lo, f.n)
        levered = ~np.isnan(ltv) & ~np.isnan(limit) & (limit > 0) & ~skip
        self.out.checked("reconciliation.ltv_alerts", int(levered.sum()))
        if not levered.any():
            self.out.skip("reconciliation.ltv_alerts", "no LTV limit: the mode does not borrow")
        # leverage_tracking repeats the LTV and the flag: it must say what risk_metrics says.
        if f.leverage is not None:
            for column, ours in (("current_ltv", ltv), ("at_risk", flag)):
                theirs = f.leverage[column]
                off = ~np.isnan(theirs) & ~np.isnan(ours) & (np.abs(theirs - ours) > 1e-12)
                if off.any():
                    at = np.flatnonzero(off)
                    self.out.issue("reconciliation.ltv_alerts", "leverage_tracking", column,
                                   column + " {theirs:.6g} != risk_metrics' {ours:.6g} at {steps}") \
                        .add(at + f.lo, theirs=theirs[at], ours=ours[at])
        breach = levered & (ltv >= limit)
        if not breach.any():
            return
        at = np.flatnonzero(breach)
        self.breaches += len(at)
        self.out.notes["reconciliation.ltv_alerts"] = (f"{self.breaches:,} timesteps at or over "
                                                      f"{self.ctx.audit.ltv_alert_threshold}")
        alerts = self._alerts(at[:_FLAGGED_PAYLOADS] + f.lo)
        # Beyond the payloads read, a breach is judged by the stored flag alone.
        has_alert = np.array([alerts.get(int(s), True) for s in at + f.lo], dtype=bool)
        flagged = ~np.isnan(flag[at]) & (flag[at] > 0.5)
        missing = ~(has_alert & flagged)
        if missing.any():
            what = np.where(~flagged & ~has_alert, "liquidation_risk.at_risk is 0 and risk_alerts has no LTV alert",
                            np.where(~flagged, "liquidation_risk.at_risk is 0", "risk_alerts has no LTV alert"))
            threshold = self.ctx.audit.ltv_alert_threshold
            self.out.issue("reconciliation.ltv_alerts", "risk_metrics", "missing",
                           "LTV {ltv:.4f} >= " + threshold + " {limit:.4f} with no matching risk alert ({what}) at {steps}",
                           score="ltv") \
                .add(at[missing] + f.lo, ltv=ltv[at][missing], limit=limit[at][missing], what=what[missing].astype(object))

    def _alerts(self, steps: np.ndarray) -> dict[int, bool]:
        """Per timestep: does its raw payload carry an LTV risk alert (an alert named for or measuring the LTV)?"""
        if self.raw is None or not len(steps):
            return {}
        try:
            table = self.raw.to_table(columns=["timestep", "payload"],
                                      filter=pc.field("timestep").isin(pa.array(steps, pa.int64())))
        except READ_ERRORS as exc:
            self._unreadable(RAW_SNAPSHOTS, int(steps[0]), int(steps[-1]), exc)
            return {}
        found: dict[int, bool] = {int(s): False for s in steps}
        for step, payload in zip(table.column("timestep").to_pylist(), table.column("payload").to_pylist(), strict=True):
            try:
                alerts = orjson.loads(payload).get("risk_monitor", {}).get("risk_alerts") or {}
            except (orjson.JSONDecodeError, AttributeError):
                alerts = {}
            found[step] = isinstance(alerts, dict) and any(
                "ltv" in str(name).lower() or (isinstance(body, dict) and "current_ltv" in body)
                for name, body in alerts.items())
        return found

    def _trades(self, f: _Features) -> None:
        trade_types = set(self.ctx.audit.trade_event_types)
        events = [e for e in f.events(None) if e["_type"] in trade_types]
        self.out.skip("reconciliation.trades", f"no trade events ({', '.join(sorted(trade_types))}) in the run")
        self.out.checked("reconciliation.trades", len(events))
        if not events or f.balances is None:
            return
        series: dict[tuple[str, str, str], np.ndarray] = f.balances["series"]
        changed: dict[str, np.ndarray] = f.balances["changed"]
        # A trade that states the position it leaves: the last such trade of a timestep and perp decides.
        final: dict[tuple[int, str, str], tuple[int, float]] = {}
        for event in events:
            size = event.get("position_size")
            if isinstance(size, int | float) and isinstance(event.get("instrument"), str):
                key = (event["_step"], str(event.get("venue", "wallet")), event["instrument"])
                if key not in final or event["_order"] > final[key][0]:
                    final[key] = (event["_order"], float(size))
        tol = self.tol.position
        for event in events:
            venue, step = str(event.get("venue", "wallet")), event["_step"]
            j, instrument = step - f.lo, str(event.get("instrument"))
            perp = series.get((venue, "perp", instrument))
            if perp is not None and (step, venue, instrument) in final and not np.isnan(perp[j]):
                target = final[(step, venue, instrument)][1]
                if abs(perp[j] - target) > tol * max(1.0, abs(target)):
                    self.out.issue("reconciliation.trades", "execution_log", "position",
                                   "{event} leaves {venue} {instrument} at {target:.6g} but the balance sheet holds "
                                   "{held:.6g} at {steps}", score="gap") \
                        .add(np.array([step]), event=_describe(event), venue=venue, instrument=instrument,
                             target=target, held=perp[j], gap=perp[j] - target)
                continue
            moved = changed.get(venue)
            if moved is None or not moved[j]:
                self.out.issue("reconciliation.trades", "execution_log", "orphan",
                               "{event} has no matching balance change at {venue} at {steps}") \
                    .add(np.array([step]), event=_describe(event), venue=venue)

    def _sample(self, f: _Features) -> None:
        """Values for the backtest-against-live comparison, evenly spaced in time (every ``sample_stride``-th timestep)."""
        take = ((np.arange(f.n) + f.lo - (self.first_step or 0)) % self.sample_stride) == 0
        if f.ltv is not None:
            keep = take & ~np.isnan(f.ltv["ltv"]) & (f.ltv["max_ltv"] > 0)
            self.samples.setdefault("ltv", []).append(f.ltv["ltv"][keep])
        if f.delta is not None:
            net = f.delta["net_delta"]
            self.samples.setdefault("net_delta", []).append(net[take & ~np.isnan(net)])
        for series in (f.funding or {}).values():
            paid = ~np.isnan(series["payment"]) & (series["payment"] != 0)
            self.samples.setdefault("funding_rate_paid", []).append(series["rate"][paid])


def _describe(event: dict[str, Any]) -> str:
    parts = [str(event[k]) for k in ("venue", "instrument", "side", "size") if event.get(k) is not None]
    price = event.get("price")
    return f"{event['_type']} ({' '.join(parts)}" + (f" @ {price:.2f}" if isinstance(price, int | float) else "") + ")"


def _iso(micros: np.ndarray) -> np.ndarray:
    return np.asarray(micros, dtype="datetime64[us]").astype(str).astype(object)


def _duration(micros: Any) -> Any:
    def one(us: int) -> str:
        seconds = us / 1e6
        for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
            if seconds and seconds % size == 0:
                return f"{seconds / size:g}{unit}"
        return f"{seconds:g}s"

    if np.ndim(micros) == 0:
        return one(int(micros))
    return np.array([one(int(v)) for v in micros], dtype=object)


class _Features:
    """One window's tables reduced to dense per-timestep arrays (index: timestep - lo)."""

    def __init__(self, run: _RunPass, tables: dict[str, _Window], lo: int, n: int) -> None:
        self.run, self.lo, self.n = run, lo, n
        self.pnl = self._pnl(tables.get(ResultType.PNL_ATTRIBUTION.value))
        self.funding = self._funding(tables.get(ResultType.FUNDING_TRACKING.value))
        self.delta = self._delta(tables.get(ResultType.DELTA_TRACKING.value))
        self.ltv = self._ltv(tables.get(ResultType.RISK_METRICS.value))
        self.leverage = self._leverage(tables.get(ResultType.LEVERAGE_TRACKING.value))
        self.balances = self._balances(tables.get(ResultType.BALANCE_SHEET.value))
        self._events = self._parse_events(tables.get(ResultType.EXECUTION_LOG.value))

    def _pnl(self, w: _Window | None) -> dict[str, np.ndarray] | None:
        if w is None:
            return None
        n = self.n
        attribution = w.where(component="attribution")
        attr = np.bincount(w.idx[attribution], weights=w.numbers("value")[attribution], minlength=n)
        has = np.bincount(w.idx[attribution], minlength=n) > 0
        return {
            "attr": np.where(has, attr, np.nan),
            "pnl": w.pick(n, component="balance_based", metric="pnl_cumulative"),
            "total_value": w.pick(n, component="balance_based", metric="total_value"),
            "funding_pnl": w.pick(n, component="attribution", metric="funding_pnl"),
            "rec_difference": w.pick(n, component="reconciliation", metric="difference"),
            "rec_passed": w.pick(n, component="reconciliation", metric="passed"),
            "rec_tolerance": w.pick(n, component="reconciliation", metric="tolerance"),
        }

    def _funding(self, w: _Window | None) -> dict[str, dict[str, np.ndarray]] | None:
        if w is None:
            return None
        venues = w.codes("venue")
        return {venue: {out: w.pick(self.n, column, venue=venue)
                        for out, column in (("payment", "payment"), ("cumulative", "cumulative"), ("rate", "funding_rate"))}
                for venue in venues.values}

    def _delta(self, w: _Window | None) -> dict[str, Any] | None:
        if w is None:
            return None
        assets = {asset: (w.pick(self.n, "delta", asset=asset), w.pick(self.n, "exposure_usd", asset=asset))
                  for asset in w.codes("asset").values}
        return {"assets": assets, "net_delta": _dense(self.n, w.idx, w.numbers("net_delta")),
                "total": _dense(self.n, w.idx, w.numbers("total_exposure_usd"))}

    def _ltv(self, w: _Window | None) -> dict[str, np.ndarray] | None:
        if w is None:
            return None
        n = self.n
        return {
            "ltv": w.pick(n, risk_group="ltv_risk", metric="current_ltv"),
            "max_ltv": w.pick(n, risk_group="ltv_risk", metric="max_ltv"),
            "liquidation_threshold": w.pick(n, risk_group="ltv_risk", metric="liquidation_threshold"),
            "at_risk": w.pick(n, risk_group="liquidation_risk", metric="at_risk"),
        }

    def _leverage(self, w: _Window | None) -> dict[str, np.ndarray] | None:
        if w is None:
            return None
        return {"current_ltv": _dense(self.n, w.idx, w.numbers("current_ltv")),
                "at_risk": _dense(self.n, w.idx, w.numbers("at_risk"))}

    def _balances(self, w: _Window | None) -> dict[str, Any] | None:
        """Each balance series (venue, account type, instrument) as a dense array; per venue: did it change?"""
        if w is None:
            return None
        run, n = self.run, self.n
        venue, account, instrument, asset = (w.codes(c) for c in ("venue", "account_type", "instrument", "asset"))
        a_size, i_size = len(account.values), len(instrument.values)
        code = (venue.codes * a_size + account.codes) * i_size + instrument.codes
        amounts = w.numbers("amount")
        present = np.zeros(n, dtype=bool)
        present[w.idx] = True
        series: dict[tuple[str, str, str], np.ndarray] = {}
        assets: dict[tuple[str, str, str], str] = {}
        # The series present, in code order: a count per code (a few hundred at most), not np.unique's sort.
        for value in np.flatnonzero(np.bincount(code)) if len(code) else ():
            rows = np.flatnonzero(code == value)
            first = int(rows[0])
            key = (venue.values[venue.codes[first]], account.values[account.codes[first]],
                   instrument.values[instrument.codes[first]])
            series[key] = _dense(n, w.idx[rows], amounts[rows])
            assets[key] = asset.values[asset.codes[first]]
        # A venue's balances changed at t when a series differs from its value at the previous stored
        # timestep (a series that appears or disappears counts as a change).
        steps = np.flatnonzero(present)
        changed: dict[str, np.ndarray] = {}
        for key in set(series) | set(run.carry.balances):
            values = series.get(key, np.full(n, np.nan))
            carried = run.carry.balances.get(key)
            if not len(steps):
                continue
            before = np.concatenate([[carried[1] if carried else np.nan], values[steps[:-1]]])
            now = values[steps]
            differs = ~((now == before) | (np.isnan(now) & np.isnan(before)))
            if carried is None and steps[0] + self.lo == run.first_step:
                differs[0] = not np.isnan(now[0]) and now[0] != 0  # the run's first timestep: changed from nothing
            changed.setdefault(key[0], np.zeros(n, dtype=bool))[steps[differs]] = True
        if len(steps):
            last = steps[-1]
            run.carry.balances = {k: (int(last + self.lo), float(v[last])) for k, v in series.items()}
        cash = np.zeros(n)
        for key, values in series.items():
            if assets[key] in _CASH:
                cash += np.nan_to_num(values)
        return {"series": series, "changed": changed, "assets": assets, "cash": cash, "present": present}

    def leg_sums(self, legs: _Legs) -> dict[str, np.ndarray] | None:
        """Per timestep: units held directly, on perps, wrapped, as collateral and owed; gross direct and perp units."""
        assert self.balances is not None
        sums = {k: np.zeros(self.n) for k in ("direct", "perp", "wrapped", "collateral", "debt", "gross_direct",
                                              "gross_perp")}
        unknown = set()
        for key, values in self.balances["series"].items():
            asset, v = self.balances["assets"][key], np.nan_to_num(values)
            if key[1] == "perp":
                if asset == legs.asset:
                    sums["perp"] += v
                    sums["gross_perp"] += np.abs(v)
            elif asset in legs.direct:
                sums["direct"] += v
                sums["gross_direct"] += np.abs(v)
            elif asset in legs.wrapped:
                sums["wrapped"] += v
                if asset in legs.collateral:
                    sums["collateral"] += v
            elif asset in legs.debt:
                sums["debt"] += v
            elif asset not in _CASH:
                unknown.add(asset)
        if unknown:
            self.run.out.skip("reconciliation.delta", f"the balance sheet holds {sorted(unknown)}, which the audit "
                              f"cannot relate to {legs.asset}'s delta")
            return None
        return sums

    def _parse_events(self, w: _Window | None) -> list[dict[str, Any]]:
        """The window's trade and funding events with their details parsed (only these rows are parsed)."""
        if w is None or not w.table.num_rows:
            return []
        kinds = w.codes("event_type")
        wanted = set(self.run.ctx.audit.trade_event_types) | {"FUNDING_PAYMENT"}
        mask = np.isin(kinds.codes, [i for i, k in enumerate(kinds.values) if k in wanted])
        rows = w.table.filter(pa.array(mask))
        events = []
        for step, order, kind, details in zip(rows.column("timestep").to_pylist(), rows.column("event_order").to_pylist(),
                                              rows.column("event_type").to_pylist(), rows.column("details").to_pylist(),
                                              strict=True):
            try:
                body = orjson.loads(details)
            except orjson.JSONDecodeError:
                body = {}
            events.append({**(body if isinstance(body, dict) else {}), "_step": int(step), "_order": int(order),
                           "_type": str(kind)})
        return events

    def events(self, kind: str | None) -> list[dict[str, Any]]:
        return [e for e in self._events if kind is None or e["_type"] == kind]


def run_pass(ctx: RunContext, out: Findings) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Stream the run once through every per-window check into ``out``; rows read per table and drift samples."""
    run = _RunPass(ctx, out)
    run.run()
    return run.rows, {k: np.concatenate(v) if v else np.zeros(0) for k, v in run.samples.items()}
