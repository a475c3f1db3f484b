"""The audit's schema screen and its other shortcuts change nothing the audit finds, only what it costs.

- The screen (``audit_checks._SchemaScreen``) vouches for a window only when pandera passes it:
  generated tables of every result type, bent (NaN/inf, nulls, values outside the mode's lists,
  empty strings, negative balances, LTVs outside [0, 1], unset clocks, copied, dropped or swapped
  rows), names dictionary-encoded as the audit reads them or not; whenever it says "pass",
  pandera passes the same table. It says "pass" for reference-engine output of every mode.
- The audit of a stored run with schema violations (and of a clean one) is the same with the
  screen on as with every window sent to pandera.
- Rows not in timestep order (the stream's and the coverage check's general paths) are audited
  like the same rows in order; a stored digest in upper case passes, as ``bytes.fromhex`` let it.

The generated examples are derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

import copy
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandera.errors
import pandera.pandas as pdr
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from results_store import audit_checks, delta_tables
from results_store.audit import audit_run
from results_store.audit_checks import _SchemaScreen, _Window
from results_store.drive import run_snapshots
from results_store.flatten import SnapshotItem, flatten_batch
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import MODE_NAMES, load_mode
from schemas.result_types import ResultType
from schemas.tables import arrow_schema, mode_schema
from tests.store.conftest import snapshots

MN = "usdt_market_neutral"  # all eight result types
MODE = load_mode(MN)


def _tables(mode_name: str, steps: int) -> dict[ResultType, pa.Table]:
    mode = load_mode(mode_name)
    items = [SnapshotItem(i, ts, r) for i, (ts, r) in enumerate(snapshots(mode, steps))]
    result = flatten_batch(items, mode, "run-screen")
    assert result.rejected == []
    return result.tables


BASE = _tables(MN, 3)  # timesteps 0-2: every table has rows; execution_log its opening events
T0 = BASE[ResultType.BALANCE_SHEET].column("timestamp")[0].as_py()


def _as_read(table: pa.Table) -> pa.Table:
    """The table as the audit reads it: names dictionary-encoded (Parquet's encoding), free text not."""
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) and field.name not in ("details",):
            table = table.set_column(i, field.name, pc.dictionary_encode(table.column(field.name)))
    return table


def _screen_passes(rtype: ResultType, table: pa.Table, mode_name: str = MN) -> bool:
    return _SchemaScreen(mode_schema(rtype, load_mode(mode_name))).passes(table, _Window(table, 0))


def _pandera_passes(rtype: ResultType, table: pa.Table, mode_name: str = MN) -> bool:
    """pandera's verdict on the table (names as plain strings), as validate_table asks it."""
    plain = table.cast(pa.schema([f.with_nullable(True) for f in arrow_schema(rtype)]))
    try:
        mode_schema(rtype, load_mode(mode_name)).validate(plain.to_pandas(), lazy=True)
    except pandera.errors.SchemaErrors:
        return False
    return True


# ---- useful: reference-engine output passes in every mode -----------------------------------------------

@pytest.mark.parametrize("mode_name", MODE_NAMES)
def test_the_screen_passes_every_table_of_reference_engine_output_in_every_mode(mode_name: str) -> None:
    for rtype, table in _tables(mode_name, 60).items():
        assert _SchemaScreen(mode_schema(rtype, load_mode(mode_name))).screen is not None, rtype
        assert _screen_passes(rtype, _as_read(table), mode_name), rtype
        assert _screen_passes(rtype, table, mode_name), rtype  # names as plain strings too
        assert _pandera_passes(rtype, table, mode_name), rtype


# ---- sound: "pass" only where pandera passes ---------------------------------------------------------

NAN, INF = float("nan"), float("inf")
FLOATS = [NAN, INF, -INF, -1.0, -0.01, -0.0, 0.0, 0.5, 0.9, 0.95, 1.0, 1.2, 3.0, 1e300, None]
INTS = [-1, 0, 1, 2, 3, 7, 2**53 + 1, None]
STRINGS = ["", "DOGE", " wallet", "wallet", "cex", "perp", "binance", "okx", "ETH", "USDT", "weETH", "EIGEN",
           "ltv_risk", "liquidation_risk", "delta_risk", "current_ltv", "max_ltv", "liquidation_threshold",
           "at_risk", "attribution", "balance_based", "funding_pnl", "alpha_magic", "TRADE_EXECUTED", "é", None]
TIMESTAMPS = [datetime(1970, 1, 1, tzinfo=UTC), T0, T0 + timedelta(days=6), T0 + timedelta(days=8),
              T0 - timedelta(days=8), None]
BOOLS = [True, False, None]


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
            present = sorted({repr(r[field.name]): r[field.name] for r in rows}.items())
            rows[i][field.name] = draw(st.sampled_from([*_values_for(field.type), *(v for _, v in present)]))
        elif kind == "copy_row":
            rows.insert(draw(st.integers(0, len(rows))), dict(rows[i]))
        elif kind == "drop_row":
            rows.pop(i)
        else:
            j = draw(st.integers(0, len(rows) - 1))
            rows[i], rows[j] = rows[j], rows[i]
    table = pa.Table.from_pylist(rows, schema=pa.schema([f.with_nullable(True) for f in schema]))
    return _as_read(table) if draw(st.booleans()) else table


@pytest.mark.parametrize("rtype", list(ResultType), ids=[t.value for t in ResultType])
@settings(max_examples=40, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_whenever_the_screen_says_pass_pandera_passes_the_same_table(rtype: ResultType, data: st.DataObject) -> None:
    table = data.draw(bent_tables(rtype))
    if _screen_passes(rtype, table):
        assert _pandera_passes(rtype, table), table.to_pylist()


BREAKS: list[tuple[ResultType, str, Any]] = [
    (ResultType.DUST_TRACKING, "amount", -2.0),
    (ResultType.DUST_TRACKING, "token", "PEPE"),
    (ResultType.LEVERAGE_TRACKING, "current_ltv", 1.3),
    (ResultType.LEVERAGE_TRACKING, "health_factor", 0.0),
    (ResultType.BALANCE_SHEET, "amount", NAN),
    (ResultType.BALANCE_SHEET, "amount", INF),
    (ResultType.BALANCE_SHEET, "amount", -1.0),  # row 0 is a wallet balance
    (ResultType.BALANCE_SHEET, "venue", "ftx"),
    (ResultType.BALANCE_SHEET, "account_type", "TSDT"),
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


@pytest.mark.parametrize(("rtype", "column", "value"), BREAKS, ids=[f"{t.value}.{c}={v!r}" for t, c, v in BREAKS])
def test_a_broken_rule_makes_the_screen_unsure_and_pandera_rejects_it(rtype: ResultType, column: str, value: Any) -> None:
    rows = BASE[rtype].to_pylist()
    rows[0][column] = value
    table = pa.Table.from_pylist(rows, schema=pa.schema([f.with_nullable(True) for f in BASE[rtype].schema]))
    assert not _screen_passes(rtype, table)
    assert not _screen_passes(rtype, _as_read(table))
    assert not _pandera_passes(rtype, table)


def test_an_unused_dictionary_value_that_breaks_a_rule_does_not_fail_the_screen() -> None:
    # Unified dictionaries can hold names no row of the window uses: only the names in use are judged.
    table = _as_read(BASE[ResultType.DUST_TRACKING])
    token = table.column("token").combine_chunks()
    wider = pa.DictionaryArray.from_arrays(token.indices, pa.concat_arrays([token.dictionary, pa.array(["PEPE"])]))
    table = table.set_column(table.schema.get_field_index("token"), "token", wider)
    assert _screen_passes(ResultType.DUST_TRACKING, table)


def test_a_check_the_screen_does_not_know_leaves_the_table_to_pandera() -> None:
    schema = mode_schema(ResultType.DUST_TRACKING, MODE)
    impostor = pdr.Check(lambda s: s < 2.0, name="greater_than_or_equal_to", statistics={"min_value": 0})
    bent = schema.update_columns({"amount": {"checks": [*schema.columns["amount"].checks, impostor]}})
    no_rule = copy.copy(schema)
    no_rule.checks = [*schema.checks, pdr.Check(lambda df: df["amount"] < 1e6, name="not_too_much")]
    table = _as_read(BASE[ResultType.DUST_TRACKING])
    for unknown in (bent, no_rule):
        screen = _SchemaScreen(unknown)
        assert screen.screen is None
        assert not screen.passes(table, _Window(table, 0))


def test_a_string_check_on_the_whole_column_is_run_on_every_row_not_on_the_distinct_names() -> None:
    # Three timesteps repeat each token: its distinct names are unique, its rows are not.
    unique = mode_schema(ResultType.DUST_TRACKING, MODE).update_columns({"token": {"unique": True}})
    table = _as_read(BASE[ResultType.DUST_TRACKING])
    screen = _SchemaScreen(unique)
    assert screen.screen is not None and "token" not in screen.per_value
    assert not screen.passes(table, _Window(table, 0))
    with pytest.raises(pandera.errors.SchemaErrors):
        unique.validate(table.cast(arrow_schema(ResultType.DUST_TRACKING)).to_pandas(), lazy=True)


# ---- invisible: the audit finds the same with the screen as without ------------------------------------

@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean usdt_market_neutral run of a day at 5 minutes (288 timesteps)."""
    root = tmp_path_factory.mktemp("screened")
    engine = ReferenceEngine(MODE, "2024-01-01", "2024-01-02", "5min", seed=3)
    run_snapshots(MODE, engine.iter_snapshots(), data_dir=root, run_id=MN)
    return root


def _rewrite(root: Path, table: str, change: Any) -> None:
    path = delta_tables.table_path(root, "backtest", table)
    rows = change(delta_tables.read(path, run_id=MN))
    delta_tables.overwrite_run(path, rows, run_id=MN, last_timestep=int(pc.max(rows["timestep"]).as_py()))


def _set(table: pa.Table, column: str, mask: np.ndarray, value: Any) -> pa.Table:
    old = table.column(column)
    if pa.types.is_string(old.type) or pa.types.is_dictionary(old.type):
        values = np.asarray(old.to_pylist(), dtype=object)
        values[mask] = value
        return table.set_column(table.schema.get_field_index(column), column, pa.array(values.tolist(), pa.string()))
    values = old.to_numpy().copy()
    values[mask] = value
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values).cast(old.type))


def _where(table: pa.Table, **equal: Any) -> np.ndarray:
    mask = np.ones(table.num_rows, dtype=bool)
    for column, value in equal.items():
        mask &= np.asarray(table.column(column).to_pylist(), dtype=object) == value
    return mask


def _audited(root: Path, **kwargs: Any) -> dict[str, Any]:
    report = audit_run(root, "backtest", MN, **kwargs).to_dict()
    for key in ("audit_id", "audited_at", "elapsed_s"):
        report.pop(key)
    return report


def _without_screen(monkeypatch: pytest.MonkeyPatch, root: Path, **kwargs: Any) -> dict[str, Any]:
    with monkeypatch.context() as patched:
        patched.setattr(audit_checks._SchemaScreen, "passes", lambda self, table, window: False)
        return _audited(root, **kwargs)


def test_the_audit_of_a_run_with_schema_violations_is_the_same_with_the_screen_as_with_pandera_alone(
        stored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(shutil.copytree(stored, tmp_path / "data"))
    _rewrite(root, "balance_sheet", lambda t: _set(t, "amount", _where(t, timestep=50, account_type="wallet"), -3.0))
    _rewrite(root, "pnl_attribution", lambda t: _set(t, "value", _where(t, timestep=60, metric="transaction_costs"), NAN))
    _rewrite(root, "risk_metrics", lambda t: _set(t, "value", _where(t, timestep=80, metric="max_ltv"), 1.7))
    _rewrite(root, "dust_tracking", lambda t: _set(t, "token", _where(t, timestep=90), "PEPE"))
    _rewrite(root, "execution_log", lambda t: _set(t, "event_timestamp", np.arange(t.num_rows) == 3, 0))

    screened = _audited(root)
    assert screened == _without_screen(monkeypatch, root)
    assert screened["checks"]["schema"]["status"] == "fail"
    broken = {f["table"] for f in screened["checks"]["schema"]["findings"]}
    assert broken == {"balance_sheet", "pnl_attribution", "risk_metrics", "dust_tracking", "execution_log"}
    # And window by window (the screen judges each window on its own).
    assert _audited(root, window=25) == _without_screen(monkeypatch, root, window=25)


def test_a_clean_run_is_audited_the_same_with_the_screen_as_with_pandera_alone(
        stored: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    screened = _audited(stored, window=100)
    assert screened["status"] == "pass"
    assert screened == _without_screen(monkeypatch, stored, window=100)


# ---- the stream's and the coverage check's general paths ---------------------------------------------

def test_rows_out_of_timestep_order_are_audited_as_the_same_rows_in_order(stored: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(stored, tmp_path / "data"))
    rng = np.random.default_rng(0)
    for table in ("balance_sheet", "risk_metrics", "funding_tracking"):
        _rewrite(root, table, lambda t: t.take(pa.array(rng.permutation(t.num_rows))))

    for window in (32_768, 25):
        shuffled, ordered = _audited(root, window=window), _audited(stored, window=window)
        assert shuffled["status"] == ordered["status"] == "pass"
        assert {c: r["rows_checked"] for c, r in shuffled["checks"].items()} == \
            {c: r["rows_checked"] for c, r in ordered["checks"].items()}


def test_a_stored_digest_in_upper_case_still_matches_its_payload(stored: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(stored, tmp_path / "data"))

    def upper(t: pa.Table) -> pa.Table:
        digests = t["payload_sha256"].to_pylist()
        digests[5] = digests[5].upper()
        return t.set_column(t.schema.get_field_index("payload_sha256"), "payload_sha256", pa.array(digests))
    _rewrite(root, "raw_snapshots", upper)

    assert _audited(root)["checks"]["integrity"]["status"] == "pass"
