"""A fast screen in front of pandera: "every row passes every rule" or "not sure", on the Arrow table.

pandera costs a fixed few milliseconds per table and call (plus ``table.to_pandas()``), which
dominates the live path (a commit of one snapshot validates eight small tables) and is a visible
share of a backtest chunk. Almost every table is valid, so :func:`screen_passes` answers the one
question that lets :func:`results_store.validate.validate_table` skip pandera: does every row pass
every rule? It answers on the Arrow columns, never converting the table to pandas: strings with
pyarrow.compute, numbers, flags and timestamps as the numpy arrays pandas would hold (zero-copy where
Arrow allows), since pandas' own comparisons and ``np.isfinite`` are numpy's.

The screen holds no rule of its own. It reads them from the pandera schema of the table
(``schemas.tables.mode_schema``): column names, order and dtypes, the built-in checks by the
function pandera runs and their ``statistics``, the project's ``finite`` check (``np.isfinite``), and
the dataframe-level rules, which are :class:`schemas.tables.RowRule` functions written once for
pandas and for column arrays. It says "pass" only when it evaluated every one of them and each
held for every row; anything it does not recognise, a failure, or an error while evaluating makes it
say "not sure", and pandera then judges the table and reports exactly as it would without the
screen.

It also says "not sure" for a table with a missing value (an Arrow null, a float NaN, or the int64
minimum of a timestamp, which pandas reads as NaT): pandas treats those as missing, and how a
missing value meets ``nullable`` and each check's ``ignore_na`` is pandera's business.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandera.pandas as pdr
import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import ROW_RULE, RowRule, arrow_type

__all__ = ["Screen", "screen_for", "screen_passes"]

# A column test: True when every value of the column passes the check. It is given a string column
# as its Arrow array, any other column as a numpy array.
ColumnTest = Callable[[Any], bool]
_Compiler = Callable[[dict[str, Any], pa.DataType], ColumnTest | None]

# Timestamps handed to the row rules as numpy datetime64 stay within this many units of the epoch, so
# that a difference of two cannot overflow: numpy would wrap where pandas raises.
_TIMESTAMP_BOUND = 2**62
_CACHE_SIZE = 256


def _all(mask: pa.ChunkedArray | pa.Array) -> bool:
    # An empty column passes; a null (there is none: tables with one are never judged) would not.
    return bool(pc.all(mask).as_py()) if len(mask) else True


def _any(mask: pa.ChunkedArray | pa.Array) -> bool:
    return bool(pc.any(mask).as_py()) if len(mask) else False


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_numeric(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_integer(dtype) or pa.types.is_floating(dtype))


# ---- pandera's built-in checks ------------------------------------------------------------------------

def _comparison(compare: Callable[[Any, Any], Any], bound_key: str) -> _Compiler:
    """ge/gt/le/lt: pandas' ``series <op> bound``, a numpy comparison, on a numeric column."""

    def compile_(stats: dict[str, Any], dtype: pa.DataType) -> ColumnTest | None:
        bound = stats.get(bound_key)
        if set(stats) != {bound_key} or not _is_number(bound) or not _is_numeric(dtype):
            return None
        return lambda values: bool(compare(values, bound).all())

    return compile_


def _in_range(stats: dict[str, Any], dtype: pa.DataType) -> ColumnTest | None:
    low, high = stats.get("min_value"), stats.get("max_value")
    include_min, include_max = stats.get("include_min", True), stats.get("include_max", True)
    if (not set(stats) <= {"min_value", "max_value", "include_min", "include_max"} or not _is_number(low)
            or not _is_number(high) or not isinstance(include_min, bool) or not isinstance(include_max, bool)
            or not _is_numeric(dtype)):
        return None
    above: Callable[[Any, Any], Any] = operator.ge if include_min else operator.gt
    below: Callable[[Any, Any], Any] = operator.le if include_max else operator.lt
    return lambda values: bool((above(values, low) & below(values, high)).all())


def _equality(numeric: Callable[[Any, Any], Any], strings: str) -> _Compiler:
    def compile_(stats: dict[str, Any], dtype: pa.DataType) -> ColumnTest | None:
        value = stats.get("value")
        if set(stats) != {"value"}:
            return None
        if pa.types.is_string(dtype) and isinstance(value, str):
            compare = getattr(pc, strings)
            return lambda column: _all(compare(column, value))
        if _is_numeric(dtype) and _is_number(value):
            return lambda values: bool(numeric(values, value).all())
        return None

    return compile_


def _membership(key: str, negate: bool) -> _Compiler:
    """isin/notin, on string columns and a collection of strings only (pandas' isin of other types,
    with its NaN and int/float/bool equalities, is left to pandera)."""

    def compile_(stats: dict[str, Any], dtype: pa.DataType) -> ColumnTest | None:
        values = stats.get(key)
        if (set(stats) != {key} or not pa.types.is_string(dtype) or isinstance(values, str | bytes)
                or not isinstance(values, Iterable)):
            return None
        allowed = list(values)
        if not all(isinstance(v, str) for v in allowed):
            return None
        value_set = pa.array(allowed, pa.string())
        if negate:
            return lambda column: not _any(pc.is_in(column, value_set=value_set))
        return lambda column: _all(pc.is_in(column, value_set=value_set))

    return compile_


def _str_length(stats: dict[str, Any], dtype: pa.DataType) -> ColumnTest | None:
    low, high, exact = stats.get("min_value"), stats.get("max_value"), stats.get("exact_value")
    if (not set(stats) <= {"min_value", "max_value", "exact_value"} or not pa.types.is_string(dtype)
            or not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (low, high, exact))):
        return None
    if exact is None and low is None and high is None:
        return None  # pandera raises for this check: never vouch for it
    # pandas' str.len() counts code points, as utf8_length does; the bounds as pandera applies them.
    if exact is not None:
        return lambda column: _all(pc.equal(pc.utf8_length(column), exact))
    if high is None:
        return lambda column: _all(pc.greater_equal(pc.utf8_length(column), low))
    if low is None:
        return lambda column: _all(pc.less_equal(pc.utf8_length(column), high))
    return lambda column: _all(pc.and_(pc.less_equal(pc.utf8_length(column), high),
                                       pc.greater_equal(pc.utf8_length(column), low)))


def _affix(function: str) -> _Compiler:
    def compile_(stats: dict[str, Any], dtype: pa.DataType) -> ColumnTest | None:
        affix = stats.get("string")
        if set(stats) != {"string"} or not isinstance(affix, str) or not pa.types.is_string(dtype):
            return None
        test = getattr(pc, function)
        return lambda column: _all(test(column, pattern=affix))

    return compile_


# pandera's built-in checks the screen evaluates, by the name pandera registers their function under.
# Others (str_matches/str_contains: Python regexes, which Arrow's RE2 does not match exactly;
# unique_values_eq; anything new) are not recognised: "not sure".
_BUILTINS: dict[str, _Compiler] = {
    "greater_than_or_equal_to": _comparison(operator.ge, "min_value"),
    "greater_than": _comparison(operator.gt, "min_value"),
    "less_than_or_equal_to": _comparison(operator.le, "max_value"),
    "less_than": _comparison(operator.lt, "max_value"),
    "in_range": _in_range,
    "equal_to": _equality(operator.eq, "equal"),
    "not_equal_to": _equality(operator.ne, "not_equal"),
    "isin": _membership("allowed_values", negate=False),
    "notin": _membership("forbidden_values", negate=True),
    "str_length": _str_length,
    "str_startswith": _affix("starts_with"),
    "str_endswith": _affix("ends_with"),
}


def _builtin_name(check: pdr.Check) -> str | None:
    """The built-in check pandera will run for ``check``, by the rule pandera itself applies when it
    calls a check: a check function whose ``__name__`` is a registered built-in is run as that
    built-in (so ``configured_values``, an isin under another name, is one). The check's own name
    says nothing: a custom check may be named anything."""
    name = getattr(getattr(check, "_check_fn", None), "__name__", None)
    return name if isinstance(name, str) and name in _BUILTINS and pdr.Check.is_builtin_check(name) else None


def _arguments(check: pdr.Check) -> dict[str, Any] | None:
    """The check's ``statistics``, provided they are the arguments pandera passes to its function
    (isin keeps the allowed values as given in statistics and as a frozenset in the arguments)."""
    statistics = dict(check.statistics or {})
    passed = getattr(check, "_check_kwargs", statistics)
    if not isinstance(passed, dict) or set(passed) != set(statistics):
        return None
    for key, value in passed.items():
        given = statistics[key]
        if isinstance(value, frozenset):
            if isinstance(given, str | bytes) or not isinstance(given, Iterable) or frozenset(given) != value:
                return None
        elif not (value is given or (type(value) is type(given) and value == given)):
            return None
    return statistics


def _finite(dtype: pa.DataType) -> ColumnTest | None:
    """The schemas' ``finite`` check: ``np.isfinite`` on the column's values, as pandera runs it."""
    if _is_numeric(dtype):
        return lambda values: bool(np.isfinite(values).all())
    return None


def _column_test(check: pdr.Check, dtype: pa.DataType) -> ColumnTest | None:
    if check.groupby is not None or check.element_wise:
        return None
    if getattr(check, "_check_fn", None) is np.isfinite and not check.statistics:
        return _finite(dtype)
    name, arguments = _builtin_name(check), _arguments(check)
    if name is None or arguments is None:
        return None
    return _BUILTINS[name](arguments, dtype)


def _unique(dtype: pa.DataType) -> ColumnTest | None:
    # Strings and integers only: pandas counts -0.0 and 0.0 as one value, a hash of the bits may not.
    if pa.types.is_string(dtype):
        return lambda column: pc.count_distinct(column, mode="all").as_py() == len(column)
    if pa.types.is_integer(dtype):
        return lambda values: len(np.unique(values)) == len(values)
    return None


# ---- the columns, as the checks and the row rules read them -------------------------------------------

class _Strings:
    """An Arrow string column as a row rule sees it: ``==``, ``!=`` and ``isin`` give numpy booleans,
    as a pandas Series of strings with no missing value would."""

    __slots__ = ("_values",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, values: pa.ChunkedArray) -> None:
        self._values = values

    def __eq__(self, other: object) -> np.ndarray:  # type: ignore[override]
        if not isinstance(other, str):
            raise TypeError(f"the screen compares strings with strings, not {type(other).__name__}")
        return _numpy(pc.equal(self._values, other))

    def __ne__(self, other: object) -> np.ndarray:  # type: ignore[override]
        return ~self.__eq__(other)

    def isin(self, values: Iterable[object]) -> np.ndarray:
        if isinstance(values, str | bytes):
            raise TypeError("isin takes a collection of values")  # as pandas does
        allowed = list(values)
        if not all(isinstance(v, str) for v in allowed):
            raise TypeError("the screen matches strings against strings only")
        return _numpy(pc.is_in(self._values, value_set=pa.array(allowed, pa.string())))


def _numpy(mask: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(mask.to_numpy(), dtype=np.bool_)


class _Columns:
    """A table's columns, each converted at most once: strings stay Arrow (:class:`_Strings` for the
    rules), numbers and flags become the numpy arrays pandas would hold, timestamps numpy datetime64
    in the table's unit (UTC, as Arrow stores them)."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        self._values: dict[str, Any] = {}

    def values(self, name: str) -> Any:
        """What a column test is given: the Arrow array of a string column, else the numpy array."""
        if name not in self._values:
            column = self._table.column(name)
            if pa.types.is_string(column.type):
                self._values[name] = column
            elif _is_numeric(column.type) or pa.types.is_boolean(column.type) or pa.types.is_timestamp(column.type):
                self._values[name] = column.to_numpy()
            else:
                raise TypeError(f"the screen has no array form for {column.type}")
        return self._values[name]

    def without_missing(self, name: str) -> bool:
        """No value pandas would read as missing in the column."""
        column = self._table.column(name)
        if column.null_count:
            return False
        if pa.types.is_floating(column.type):
            return not bool(np.isnan(self.values(name)).any())
        if pa.types.is_timestamp(column.type) and len(column):
            # The bound also keeps out pandas' NaT (the int64 minimum).
            stamps = self.values(name).view(np.int64)
            return bool(stamps.min() > -_TIMESTAMP_BOUND and stamps.max() < _TIMESTAMP_BOUND)
        return True

    def __getitem__(self, name: str, /) -> Any:
        """A column as the row rules read it."""
        values = self.values(name)
        return _Strings(values) if isinstance(values, pa.ChunkedArray) else values


# ---- the screen of one schema -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _ColumnScreen:
    name: str
    tests: tuple[ColumnTest, ...]


@dataclass(frozen=True, slots=True)
class Screen:
    """The checks of one pandera schema, compiled for Arrow tables."""

    schema: pa.Schema  # the names, order and types a table must have exactly
    columns: tuple[_ColumnScreen, ...]
    rules: tuple[RowRule, ...]

    def passes(self, table: pa.Table) -> bool:
        """True when every row of ``table`` passes every rule; False means "not sure"."""
        try:
            return self._passes(table)
        except Exception:  # whatever the screen cannot evaluate, pandera judges
            return False

    def _passes(self, table: pa.Table) -> bool:
        if table.schema.names != self.schema.names or table.schema.types != self.schema.types:
            return False
        columns = _Columns(table)
        for spec in self.columns:
            if not columns.without_missing(spec.name):
                return False
            values = columns.values(spec.name)
            if not all(test(values) for test in spec.tests):
                return False
        for rule in self.rules:
            held = np.asarray(rule.holds(columns))
            if held.dtype != np.bool_ or held.shape != (table.num_rows,) or not held.all():
                return False
        return True


def _compile(schema: pdr.DataFrameSchema) -> Screen | str:
    """The screen of ``schema``, or why it cannot judge its tables (then it always says "not sure")."""
    # Schema-level options that change what pandera does with a table, which the screen does not model.
    options = {"coerce": schema.coerce, "unique": schema.unique, "index": schema.index, "dtype": schema.dtype,
               "drop_invalid_rows": schema.drop_invalid_rows, "parsers": getattr(schema, "parsers", None)}
    if any(options.values()):
        return f"schema options {sorted(k for k, v in options.items() if v)}"
    fields, columns = [], []
    for name, column in schema.columns.items():
        if (not isinstance(name, str) or column.coerce or column.regex or column.drop_invalid_rows
                or getattr(column, "parsers", None)):
            return f"column {name!r}: coerce, regex, drop_invalid_rows or parsers"
        try:
            dtype = arrow_type(column.dtype)
        except TypeError as exc:
            return f"column {name!r}: {exc}"
        tests = []
        for check in column.checks:
            test = _column_test(check, dtype)
            if test is None:
                return f"column {name!r}: check {check.name!r} ({check.statistics})"
            tests.append(test)
        if column.unique:
            unique = _unique(dtype)
            if unique is None:
                return f"column {name!r}: unique {dtype}"
            tests.append(unique)
        fields.append(pa.field(name, dtype))
        columns.append(_ColumnScreen(name, tuple(tests)))
    rules = []
    for check in schema.checks:
        rule = (check.statistics or {}).get(ROW_RULE)
        if not isinstance(rule, RowRule) or check.groupby is not None or check.element_wise:
            return f"dataframe check {check.name!r} is not a RowRule"
        rules.append(rule)
    return Screen(pa.schema(fields), tuple(columns), tuple(rules))


# Compiled once per schema object: mode_schema hands out one object per (result type, mode content),
# so this caches per (result type, mode). An entry keeps its schema alive, so its id is not reused.
_SCREENS: OrderedDict[int, tuple[pdr.DataFrameSchema, Screen | str]] = OrderedDict()
_SCREENS_LOCK = threading.Lock()


def screen_for(schema: pdr.DataFrameSchema) -> Screen | str:
    """The compiled screen of ``schema`` (cached), or why the screen cannot judge its tables."""
    key = id(schema)
    with _SCREENS_LOCK:
        cached = _SCREENS.get(key)
        if cached is not None and cached[0] is schema:
            _SCREENS.move_to_end(key)
            return cached[1]
    screen = _compile(schema)
    with _SCREENS_LOCK:
        _SCREENS[key] = (schema, screen)
        while len(_SCREENS) > _CACHE_SIZE:
            _SCREENS.popitem(last=False)
    return screen


def screen_passes(schema: pdr.DataFrameSchema, table: pa.Table) -> bool:
    """True when every row of ``table`` passes every rule of ``schema``; False means "not sure"."""
    screen = screen_for(schema)
    return isinstance(screen, Screen) and screen.passes(table)
