"""The fast screen vouches for a table only when pandera would pass it, and vouches for every valid one.

- Held to pandera: generated tables of every result type (reference-engine rows, then broken or
  bent: NaN/inf, negative balances and dust, LTVs outside [0, 1], values outside the mode's lists,
  empty strings, nulls, out-of-order events, an unset clock, repeated or missing rows, columns of
  another type or order). Whenever the screen says "pass", pandera passes the same table.
- Useful: on reference-engine output it says "pass" for every table of every one of the seven modes.
- Invisible: ``validate_table`` gives the same valid rows, quarantine rows and errors with it or without.
- Honest about what it does not know: an unrecognised check (even one named like a built-in) makes it
  "not sure" for that schema.

The generated examples are derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandera.pandas as pdr
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from results_store.flatten import SnapshotItem, flatten_batch
from results_store.validate import validate_table
from results_store.validate_screen import Screen, _Columns, screen_for, screen_passes
from schemas.errors import ComponentError
from schemas.modes import load_mode, modes_dir
from schemas.result_types import ResultType
from schemas.tables import ROW_RULE, RowRule, arrow_schema, mode_schema
from tests.store.conftest import snapshots

MODE = load_mode("usdt_market_neutral")  # all eight result types
MODE_NAMES = sorted(p.stem for p in modes_dir().glob("*.yaml"))


def _tables(mode_name: str, steps: int) -> dict[ResultType, pa.Table]:
    mode = load_mode(mode_name)
    items = [SnapshotItem(i, ts, r) for i, (ts, r) in enumerate(snapshots(mode, steps))]
    result = flatten_batch(items, mode, "run-screen")
    assert result.rejected == []
    return result.tables


# Timesteps 0-2: every table has rows, and execution_log has its ten opening events at timestep 0.
BASE = _tables("usdt_market_neutral", 3)
T0 = BASE[ResultType.BALANCE_SHEET].column("timestamp")[0].as_py()


# ---- the screen is useful: every valid table of every mode passes it ---------------------------------

def test_the_seven_modes_are_all_here():
    assert len(MODE_NAMES) == 7


@pytest.mark.parametrize("mode_name", MODE_NAMES)
def test_the_screen_passes_every_table_of_reference_engine_output_in_every_mode(mode_name):
    mode = load_mode(mode_name)
    tables = _tables(mode_name, 120)
    assert set(tables) == {ResultType(t) for t in mode.results_store.result_types}
    for rtype, table in tables.items():
        schema = mode_schema(rtype, mode)
        screen = screen_for(schema)
        assert isinstance(screen, Screen), f"{mode_name}/{rtype.value}: {screen}"
        assert screen.passes(table), f"{mode_name}/{rtype.value}"
        assert validate_table(rtype, table, mode, screen=False).errors == []  # and pandera agrees


def test_the_screen_is_derived_once_per_schema():
    schema = mode_schema(ResultType.RISK_METRICS, MODE)
    assert screen_for(schema) is screen_for(schema)


# ---- the screen is sound: "pass" only where pandera passes --------------------------------------------

NAN, INF = float("nan"), float("inf")
FLOATS = [NAN, INF, -INF, -1.0, -0.01, -0.0, 0.0, 0.5, 0.9, 0.95, 1.0, 1.2, 3.0, 1e300, None]
INTS = [-1, 0, 1, 2, 3, 7, 2**53 + 1, None]
STRINGS = ["", "DOGE", " wallet", "wallet", "cex", "perp", "binance", "okx", "ETH", "USDT", "weETH", "EIGEN",
           "ltv_risk", "liquidation_risk", "delta_risk", "current_ltv", "max_ltv", "liquidation_threshold",
           "at_risk", "attribution", "balance_based", "funding_pnl", "alpha_magic", "TRADE_EXECUTED", "é", None]
TIMESTAMPS = [datetime(1970, 1, 1, tzinfo=UTC), T0, T0 + timedelta(days=6), T0 + timedelta(days=8),
              T0 - timedelta(days=8), None]
BOOLS = [True, False, None]
# Other Arrow types a column might arrive as (pandera then rejects the table as a whole).
OTHER_TYPES = {pa.types.is_floating: pa.float32(), pa.types.is_string: pa.large_string(),
               pa.types.is_integer: pa.int32(), pa.types.is_timestamp: pa.timestamp("ns", tz="UTC"),
               pa.types.is_boolean: pa.int8()}


def _values_for(dtype: pa.DataType) -> list[Any]:
    if pa.types.is_floating(dtype):
        return FLOATS
    if pa.types.is_integer(dtype):
        return INTS
    if pa.types.is_string(dtype):
        return STRINGS
    if pa.types.is_timestamp(dtype):
        return TIMESTAMPS
    return BOOLS


@st.composite
def bent_tables(draw: st.DrawFn, rtype: ResultType) -> pa.Table:
    """The base table of ``rtype`` with a few changes, each valid or not (most are not)."""
    base = BASE[rtype]
    schema = base.schema
    rows = copy.deepcopy(base.to_pylist())
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["value", "value", "value", "value", "copy_row", "drop_row", "swap_rows"]))
        if not rows:
            break
        i = draw(st.integers(0, len(rows) - 1))
        if kind == "value":
            field = schema.field(draw(st.sampled_from(schema.names)))
            column_values = sorted({repr(r[field.name]): r[field.name] for r in rows}.items())
            rows[i][field.name] = draw(st.sampled_from([*_values_for(field.type), *(v for _, v in column_values)]))
        elif kind == "copy_row":
            rows.insert(draw(st.integers(0, len(rows))), dict(rows[i]))
        elif kind == "drop_row":
            rows.pop(i)
        else:
            j = draw(st.integers(0, len(rows) - 1))
            rows[i], rows[j] = rows[j], rows[i]
    # Nullable fields so a generated None becomes a null (the types are the schema's).
    table = pa.Table.from_pylist(rows, schema=pa.schema([f.with_nullable(True) for f in schema]))
    change = draw(st.sampled_from(["none"] * 8 + ["retype", "reorder", "drop_column", "extra_column"]))
    if change == "retype":
        name = draw(st.sampled_from(schema.names))
        target = next(t for is_kind, t in OTHER_TYPES.items() if is_kind(schema.field(name).type))
        table = table.set_column(schema.get_field_index(name), pa.field(name, target),
                                 table.column(name).cast(target, safe=False))
    elif change == "reorder":
        table = table.select(list(reversed(schema.names)))
    elif change == "drop_column":
        table = table.drop_columns([draw(st.sampled_from(schema.names))])
    elif change == "extra_column":
        table = table.append_column("extra", pa.array(["x"] * table.num_rows, pa.string()))
    return table


def _pandera_passes(rtype: ResultType, table: pa.Table) -> bool:
    try:
        outcome = validate_table(rtype, table, MODE, screen=False)
    except ComponentError:
        return False
    return not outcome.errors and outcome.quarantine.num_rows == 0 and outcome.valid.equals(table)


def _row_rules(rtype: ResultType) -> list[RowRule]:
    return [check.statistics[ROW_RULE] for check in mode_schema(rtype, MODE).checks]


def _without_missing_values(table: pa.Table, schema: pa.Schema) -> bool:
    if table.schema.names != schema.names or table.schema.types != schema.types:
        return False
    frame = table.to_pandas()
    return table.num_rows > 0 and not frame.isna().to_numpy().any()


@pytest.mark.parametrize("rtype", list(ResultType), ids=[t.value for t in ResultType])
@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_whenever_the_screen_says_pass_pandera_passes_the_same_table(rtype, data):
    table = data.draw(bent_tables(rtype))
    schema = mode_schema(rtype, MODE)
    if screen_passes(schema, table):
        assert _pandera_passes(rtype, table), table.to_pylist()
    if _without_missing_values(table, arrow_schema(rtype)):
        # The row rules are one function run on pandas (by pandera) and on Arrow columns (by the
        # screen): row for row they agree, wherever the Arrow side can judge at all.
        # A figure repeated in a timestep is left to pandas' alignment: the Arrow side raises (the
        # screen declines), and pandas may raise too (pandera then rejects the table as a whole).
        frame = table.to_pandas()
        for rule in _row_rules(rtype):
            try:
                on_arrow = np.asarray(rule.holds(_Columns(table)), dtype=bool).tolist()
            except ValueError:
                continue
            on_pandas = rule.on_frame(frame).to_numpy(dtype=bool).tolist()
            assert on_arrow == on_pandas, (rule.name, table.to_pylist())


BREAKS: list[tuple[ResultType, str, Any]] = [
    (ResultType.DUST_TRACKING, "amount", -2.0),
    (ResultType.DUST_TRACKING, "token", "PEPE"),
    (ResultType.LEVERAGE_TRACKING, "current_ltv", 1.3),
    (ResultType.LEVERAGE_TRACKING, "health_factor", 0.0),
    (ResultType.BALANCE_SHEET, "amount", NAN),
    (ResultType.BALANCE_SHEET, "amount", INF),
    (ResultType.BALANCE_SHEET, "venue", "ftx"),
    (ResultType.FUNDING_TRACKING, "payment", -INF),
    (ResultType.DELTA_TRACKING, "asset", "SOL"),
    (ResultType.PNL_ATTRIBUTION, "component", "vibes"),
    (ResultType.RISK_METRICS, "value", 1.2),  # row 0 is current_ltv
    (ResultType.EXECUTION_LOG, "event_type", ""),
    (ResultType.EXECUTION_LOG, "event_order", 99),
    (ResultType.EXECUTION_LOG, "event_timestamp", datetime(1970, 1, 1, tzinfo=UTC)),
    (ResultType.EXECUTION_LOG, "run_id", ""),
    (ResultType.RISK_METRICS, "timestep", -1),
    (ResultType.BALANCE_SHEET, "asset", None),
]


def _broken(rtype: ResultType, column: str, value: Any) -> pa.Table:
    rows = BASE[rtype].to_pylist()
    rows[0][column] = value
    return pa.Table.from_pylist(rows, schema=pa.schema([f.with_nullable(True) for f in BASE[rtype].schema]))


@pytest.mark.parametrize(("rtype", "column", "value"), BREAKS, ids=[f"{t.value}.{c}={v!r}" for t, c, v in BREAKS])
def test_a_broken_rule_makes_the_screen_unsure_and_pandera_reports_it(rtype, column, value):
    table = _broken(rtype, column, value)
    assert not screen_passes(mode_schema(rtype, MODE), table)
    assert validate_table(rtype, table, MODE).errors


# ---- the screen knows what it does not know ----------------------------------------------------------

def test_a_column_check_the_screen_does_not_recognise_makes_it_unsure_even_under_a_built_in_name():
    schema = mode_schema(ResultType.DUST_TRACKING, MODE)
    impostor = pdr.Check(lambda s: s < 2.0, name="greater_than_or_equal_to", statistics={"min_value": 0})
    bent = schema.update_columns({"amount": {"checks": [*schema.columns["amount"].checks, impostor]}})
    assert isinstance(screen_for(bent), str)
    assert not screen_passes(bent, BASE[ResultType.DUST_TRACKING])


def test_a_dataframe_check_that_is_no_row_rule_makes_the_screen_unsure():
    schema = copy.copy(mode_schema(ResultType.DUST_TRACKING, MODE))
    schema.checks = [*schema.checks, pdr.Check(lambda df: df["amount"] < 1e6, name="not_too_much")]
    assert "not_too_much" in str(screen_for(schema))
    assert not screen_passes(schema, BASE[ResultType.DUST_TRACKING])


def test_a_table_whose_columns_differ_from_the_schema_is_left_to_pandera_which_rejects_it():
    table = BASE[ResultType.FUNDING_TRACKING]
    schema = mode_schema(ResultType.FUNDING_TRACKING, MODE)
    variants = [table.select(list(reversed(table.column_names))),
                table.drop_columns(["cumulative"]),
                table.append_column("extra", pa.array([1] * table.num_rows)),
                table.set_column(table.schema.get_field_index("payment"), "payment",
                                 table.column("payment").cast(pa.float32()))]
    for variant in variants:
        assert not screen_passes(schema, variant), variant.schema
        with pytest.raises(ComponentError, match="does not have its result type's schema"):
            validate_table(ResultType.FUNDING_TRACKING, variant, MODE)


# ---- the screen is invisible in validate_table's outcome ---------------------------------------------

def _batch_with_bad_rows() -> dict[ResultType, pa.Table]:
    tables = _tables("usdt_market_neutral", 40)
    bent: dict[ResultType, pa.Table] = {}
    for rtype, table in tables.items():
        rows = table.to_pylist()
        if rtype is ResultType.BALANCE_SHEET:
            rows[3]["amount"] = -5.0 if rows[3]["account_type"] != "perp" else NAN
            rows[20]["venue"] = "ftx"
        elif rtype is ResultType.DUST_TRACKING:
            rows[7]["amount"] = -1.0
        elif rtype is ResultType.RISK_METRICS:
            rows[0]["value"] = 1.5  # current_ltv above 1, and above the liquidation threshold unflagged
        elif rtype is ResultType.EXECUTION_LOG:
            rows[2]["event_type"] = ""
            rows[4]["event_order"] = 1
        elif rtype is ResultType.PNL_ATTRIBUTION:
            rows[5]["value"] = INF
        # delta, leverage and funding tracking stay valid: the screen's path is in the comparison too.
        bent[rtype] = pa.Table.from_pylist(rows, schema=table.schema)
    return bent


def _outcome(rtype: ResultType, table: pa.Table, *, screen: bool) -> tuple[pa.Table, list[Any], list[Any]]:
    outcome = validate_table(rtype, table, MODE, screen=screen)
    quarantine = outcome.quarantine.drop_columns(["quarantined_at"]).to_pylist()
    errors = [(e.error_code, e.message, e.details) for e in outcome.errors]
    return outcome.valid, quarantine, errors


def test_validate_table_gives_the_same_outcome_with_the_screen_on_and_off():
    batch = _batch_with_bad_rows()
    bad_tables = 0
    for rtype, table in batch.items():
        valid_on, quarantine_on, errors_on = _outcome(rtype, table, screen=True)
        valid_off, quarantine_off, errors_off = _outcome(rtype, table, screen=False)
        assert valid_on.equals(valid_off), rtype
        assert quarantine_on == quarantine_off, rtype
        assert errors_on == errors_off, rtype
        bad_tables += bool(errors_on)
    assert bad_tables == 5


def test_strict_validation_raises_the_same_error_with_the_screen_on_and_off():
    table = _batch_with_bad_rows()[ResultType.BALANCE_SHEET]
    raised = []
    for screen in (True, False):
        with pytest.raises(ComponentError) as info:
            validate_table(ResultType.BALANCE_SHEET, table, MODE, strict=True, screen=screen)
        raised.append((info.value.error_code, info.value.message, info.value.details))
    assert raised[0] == raised[1]

