"""retrieve_results(query): what a quant asks of a run's tables — a time range, some columns, a past version,
a downsampled series — answered exactly, without reading more of the run than the answer needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from results_store import delta_tables
from results_store.drive import run_snapshots
from results_store.query import retrieve_results, scan_results
from results_store.reading import read_table, table_version
from results_store.rerun import rederive_run
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from schemas.tables import arrow_schema

START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs of usdt_market_neutral: 'q1' (3 days of 15-minute steps, committed in 3 batches) and 'q2' (1 day)."""
    root = tmp_path_factory.mktemp("query")
    mode = load_mode("usdt_market_neutral")
    settings = load_settings(mode, data_dir=root, backtest_batch_size=150)
    run_snapshots(mode, ReferenceEngine(mode, "2024-01-01", "2024-01-04", "15min", seed=3).iter_snapshots(),
                  data_dir=root, run_id="q1", settings=settings)
    run_snapshots(mode, ReferenceEngine(mode, "2024-01-01", "2024-01-02", "15min", seed=4).iter_snapshots(),
                  data_dir=root, run_id="q2", settings=settings)
    return root


def _whole(root: Path, table: str, run_id: str, version: int | None = None) -> pd.DataFrame:
    """The run's rows through the other read path (deltalake's pyarrow dataset, sorted after the read)."""
    return read_table(root, "backtest", table, run_id=run_id, version=version).to_pandas()


def test_a_time_range_returns_exactly_its_rows_in_timestep_order(root: Path) -> None:
    got = retrieve_results(root, {"result_type": "balance_sheet", "run_id": "q1",
                                  "start": "2024-01-02T06:00:00Z", "end": "2024-01-02T12:00:00Z"})
    whole = _whole(root, "balance_sheet", "q1")
    expected = whole[(whole.timestamp >= pd.Timestamp("2024-01-02T06:00Z"))
                     & (whole.timestamp < pd.Timestamp("2024-01-02T12:00Z"))].reset_index(drop=True)
    assert len(got) == len(expected) == 24 * 9  # 6 hours of 15-minute steps, 9 balances each
    pd.testing.assert_frame_equal(got, expected)


def test_columns_filters_and_arrow_output_keep_the_tables_types(root: Path) -> None:
    got = retrieve_results(root, {"result_type": "risk_metrics", "run_ids": ["q2", "q1"],
                                  "columns": ["run_id", "timestamp", "value"],
                                  "where": {"metric": "current_ltv"}, "output": "arrow"})
    schema = arrow_schema("risk_metrics")
    assert got.schema == pa.schema([schema.field("run_id"), schema.field("timestamp"), schema.field("value")])
    # Runs come in the order asked for, each in timestep order.
    runs = got.column("run_id").to_pylist()
    assert runs == ["q2"] * 96 + ["q1"] * 288
    whole = _whole(root, "risk_metrics", "q1")
    assert got.slice(96).column("value").to_pylist() == whole[whole.metric == "current_ltv"].value.tolist()


def test_one_day_reads_that_days_row_groups_not_the_run(root: Path) -> None:
    path = delta_tables.table_path(root, "backtest", "pnl_attribution")
    # Small row groups, so that a run this small has many: the layout a year gets with 16k-row groups.
    delta_tables.compact_run_sorted(path, "q1", row_group_rows=256, force=True)
    scan = scan_results(root, {"result_type": "pnl_attribution", "run_id": "q1",
                               "start": "2024-01-02", "end": "2024-01-03"})
    day = pa.concat_tables(list(scan.windows()))
    run_bytes = sum(f.size_bytes for f in scan.table.runs(["q1"])[0][1])
    assert day.num_rows == 96 * 11
    assert scan.stats.bytes_read < 0.45 * run_bytes, (scan.stats, run_bytes)
    whole = _whole(root, "pnl_attribution", "q1")
    assert day.column("value").to_pylist() == whole[whole.timestamp.dt.day == 2].value.tolist()


def test_points_gives_n_points_per_series_each_the_last_value_of_its_bucket(root: Path) -> None:
    got = retrieve_results(root, {"result_type": "funding_tracking", "run_id": "q1", "points": 10})
    whole = _whole(root, "funding_tracking", "q1")
    # Independently: 10 equal buckets over the run's span, the last row of each bucket per venue.
    low, high = whole.timestamp.min(), whole.timestamp.max()
    span_us = (high - low) // pd.Timedelta(microseconds=1) + 1
    whole["bucket"] = ((whole.timestamp - low) // pd.Timedelta(microseconds=1)) * 10 // span_us
    expected = whole.groupby(["bucket", "venue"], sort=False).tail(1).sort_values("timestep", kind="stable")
    assert got.groupby("venue").size().tolist() == [10, 10, 10]
    pd.testing.assert_frame_equal(got, expected.drop(columns="bucket").reset_index(drop=True))


def test_every_with_mean_averages_floats_per_bucket_and_keeps_the_last_row_otherwise(root: Path) -> None:
    got = retrieve_results(root, {"result_type": "leverage_tracking", "run_id": "q1", "every": "1D", "how": "mean"})
    whole = _whole(root, "leverage_tracking", "q1")
    day = whole.timestamp.dt.floor("1D")
    assert len(got) == 3
    assert got.current_ltv.tolist() == pytest.approx(whole.groupby(day).current_ltv.mean().tolist(), rel=1e-12)
    assert got.timestep.tolist() == whole.groupby(day).timestep.last().tolist()
    assert got.at_risk.tolist() == whole.groupby(day).at_risk.last().tolist()


def test_time_travel_returns_the_older_version_after_a_rerun(root: Path) -> None:
    before = table_version(root, "backtest", "dust_tracking")
    moment = datetime.now(UTC)
    # Re-derived in place with one dust token: the others' rows leave the run's partition (to quarantine).
    rederive_run(data_dir=root, execution_mode="backtest", run_id="q2", overrides={"dust_tracking_tokens": ["EIGEN"]})
    assert table_version(root, "backtest", "dust_tracking") == (before or 0) + 1
    now = retrieve_results(root, {"result_type": "dust_tracking", "run_id": "q2"})
    then = retrieve_results(root, {"result_type": "dust_tracking", "run_id": "q2", "version": before})
    then_by_time = retrieve_results(root, {"result_type": "dust_tracking", "run_id": "q2", "as_of": moment})
    assert set(now.token) == {"EIGEN"} and len(now) == 96
    assert set(then.token) == {"EIGEN", "ETHFI", "KING"} and len(then) == 3 * 96
    pd.testing.assert_frame_equal(then, then_by_time)
    pd.testing.assert_frame_equal(then, _whole(root, "dust_tracking", "q2", version=before))


def test_a_run_layout_interleaved_by_optimize_still_reads_in_order_and_sorts_on_compaction(root: Path) -> None:
    path = delta_tables.table_path(root, "backtest", "balance_sheet")
    version = table_version(root, "backtest", "balance_sheet")
    expected = retrieve_results(root, {"result_type": "balance_sheet", "run_id": "q1", "output": "arrow"})
    assert delta_tables.compact_run_sorted(path, "q1", row_group_rows=500, force=True)["numFilesAdded"] == 1
    after = retrieve_results(root, {"result_type": "balance_sheet", "run_id": "q1", "output": "arrow"})
    assert after.equals(expected)
    # The old layout stays readable: compaction changes files, not data.
    assert retrieve_results(root, {"result_type": "balance_sheet", "run_id": "q1", "version": version,
                                   "output": "arrow"}).equals(expected)
    # A sorted run is left alone.
    assert delta_tables.compact_run_sorted(path, "q1")["numFilesAdded"] == 0


@pytest.mark.parametrize(("query", "message"), [
    ({"result_type": "balance_sheet", "columns": ["nope"]}, "no column 'nope'"),
    ({"result_type": "balance_sheet", "version": 1, "as_of": "2024-01-01"}, "version or as_of"),
    ({"result_type": "execution_log", "points": 5}, "events, not a time series"),
    ({"result_type": "balance_sheet", "every": "1 fortnight"}, "fixed frequency"),
    ({"result_type": "no_such_table"}, "result_type must be one of"),
    ({"result_type": "balance_sheet", "start": "2024-01-02", "end": "2024-01-01"}, "must be after start"),
])
def test_a_malformed_query_is_rst201_saying_what_is_wrong(root: Path, query: dict[str, object], message: str) -> None:
    with pytest.raises(ComponentError) as caught:
        retrieve_results(root, query)
    assert caught.value.error_code == "RST-201" and message in str(caught.value)


def test_a_table_that_does_not_exist_is_rst302(tmp_path: Path) -> None:
    with pytest.raises(ComponentError) as caught:
        retrieve_results(tmp_path, {"result_type": "balance_sheet"})
    assert caught.value.error_code == "RST-302"


def test_limit_stops_reading_early_and_an_empty_range_is_an_empty_frame_with_the_schema(root: Path) -> None:
    assert len(retrieve_results(root, {"result_type": "execution_log", "run_id": "q1", "limit": 3})) == 3
    empty = retrieve_results(root, {"result_type": "delta_tracking", "run_id": "q1",
                                    "start": START + timedelta(days=30), "output": "arrow"})
    assert empty.num_rows == 0 and empty.schema == arrow_schema("delta_tracking")
