"""The rerun form: a set of result types without the four every mode stores is refused before any
work (RST-201, one line); an in-place rerun that would empty tables says so, and does it only when
asked; its report names what it emptied, and has no blank or 'None' cells."""

from __future__ import annotations

import pytest

from results_store.drive import run_snapshots
from results_store.reading import read_table
from results_store.rerun import check_result_types, lineage_report, rederive_run, table_versions
from results_store.runs import latest_run
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.store.conftest import snapshots

MODE = load_mode("usdt_market_neutral")
LEAN = {"result_types": ["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log", "leverage_tracking"]}


def _backtest(root, run_id="src", steps=12):
    run_snapshots(MODE, snapshots(MODE, steps), data_dir=root, run_id=run_id, settings=load_settings(MODE, data_dir=root))


def test_result_types_without_the_four_every_mode_stores_are_refused_in_one_line():
    with pytest.raises(ComponentError) as caught:
        check_result_types(["balance_sheet", "dust_tracking"])
    error = caught.value
    assert error.error_code == "RST-201" and "\n" not in str(error)
    assert "pnl_attribution" in str(error) and "risk_metrics" in str(error) and "execution_log" in str(error)
    check_result_types(["balance_sheet", "pnl_attribution", "risk_metrics", "execution_log"])  # enough
    check_result_types(None)  # the run's own


def test_an_in_place_rerun_that_would_empty_tables_is_refused_unless_asked(tmp_path):
    _backtest(tmp_path)
    dust = read_table(tmp_path, "backtest", "dust_tracking", run_id="src").num_rows
    assert dust
    with pytest.raises(ComponentError) as caught:
        rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="src", overrides=LEAN)
    assert caught.value.error_code == "RST-201"
    assert "dust_tracking" in str(caught.value) and "funding_tracking" in str(caught.value)
    assert read_table(tmp_path, "backtest", "dust_tracking", run_id="src").num_rows == dust  # untouched

    summary = rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="src", overrides=LEAN,
                           empty_dropped_tables=True)
    assert read_table(tmp_path, "backtest", "dust_tracking", run_id="src").num_rows == 0
    record = latest_run(tmp_path, "backtest", "src")
    report = lineage_report("src", summary, record, record, LEAN)
    assert "emptied" in report and "dust_tracking" in report
    assert "None" not in summary.to_markdown()  # data files are counted, not left unknown


def test_a_rerun_into_a_new_run_reports_each_tables_version_before(tmp_path):
    _backtest(tmp_path)
    source = latest_run(tmp_path, "backtest", "src")
    before = table_versions(tmp_path, "backtest")
    summary = rederive_run(data_dir=tmp_path, execution_mode="backtest", run_id="src", new_run_id="child")
    record = latest_run(tmp_path, "backtest", "child")
    report = lineage_report("src", summary, source, record, {}, versions_before=before)
    balance = next(line for line in report.splitlines() if line.startswith("| balance_sheet |"))
    cells = [c.strip() for c in balance.strip("|").split("|")]
    assert cells[1] == str(before["balance_sheet"]), balance  # version before: the table's, not blank
    assert "None" not in report
