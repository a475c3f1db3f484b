"""The run bundle: the files a person opens after a run, and figures that match the tables computed another way."""

from __future__ import annotations

import asyncio
import json
import math
import struct
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from typer.testing import CliRunner

from results_store.cli.main import app
from results_store.drive import run_snapshots
from results_store.reading import read_table
from results_store.report import PLOT_SIZE_PX, PLOTS, RunBundle, trade_event_types, write_bundle
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from schemas.modes import load_mode

YEAR_S = 365 * 86_400
# Timesteps given risk alerts by hand: the reference engine's runs have none.
DELTA_ALERTS = range(10, 15)
MARGIN_ALERTS = range(13, 20)


def snapshots_with_alerts(mode: str, start: str, end: str, freq: str) -> list[tuple[datetime, dict[str, Any]]]:
    out = []
    for i, (ts, results) in enumerate(ReferenceEngine(load_mode(mode), start, end, freq, seed=11).iter_snapshots()):
        risk = results["risk_monitor"]["risk_metrics"]
        if i in DELTA_ALERTS:
            risk["delta_risk"]["delta_risk"] = risk["delta_risk"]["threshold"] * 3
        if i in MARGIN_ALERTS:
            risk["cex_margin_ratio"]["current_ratio"] = risk["cex_margin_ratio"]["min_ratio"] / 2
        out.append((ts, results))
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunBundle]:
    """The bundle of a 3-day, 15-minute usdt_market_neutral run with risk alerts on timesteps 10-19."""
    root = tmp_path_factory.mktemp("report")
    mode = load_mode("usdt_market_neutral")
    run_snapshots(mode, snapshots_with_alerts("usdt_market_neutral", "2024-05-01", "2024-05-04", "15min"),
                  data_dir=root, run_id="rep")
    return root, write_bundle(root, "rep")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_bundle_holds_every_file_in_the_runs_results_directory(bundle: tuple[Path, RunBundle]) -> None:
    root, written = bundle
    assert written.directory == root / "backtest" / "results" / "rep"
    expected = {"performance.csv", "trades.csv", "events.csv", "summary.json", "report.html",
                *(f"{name}.png" for name in PLOTS)}
    assert {p.name for p in written.directory.iterdir()} == expected


def test_the_report_opens_offline_and_shows_every_plot_at_its_size(bundle: tuple[Path, RunBundle]) -> None:
    _, written = bundle
    page = written.report.read_text()
    for name in PLOTS:
        assert f'src="{name}.png"' in page, name
        png = written.directory / f"{name}.png"
        assert png.stat().st_size > 10_000, name  # a drawn plot, not an empty canvas
        assert png_size(png) == PLOT_SIZE_PX, name
    # Nothing to fetch: no scripts, no remote stylesheets or images.
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_summary_figures_match_the_tables_computed_independently(bundle: tuple[Path, RunBundle]) -> None:
    root, written = bundle
    summary = json.loads((written.directory / "summary.json").read_text())
    pnl = read_table(root, "backtest", "pnl_attribution", run_id="rep").to_pandas()
    risk = read_table(root, "backtest", "risk_metrics", run_id="rep").to_pandas()

    nav = pnl[pnl.metric == "total_value"].set_index("timestep").value
    cumulative = pnl[pnl.metric == "pnl_cumulative"].set_index("timestep").value
    times = pnl.drop_duplicates("timestep").set_index("timestep").timestamp
    capital = nav.iloc[0] - cumulative.iloc[0]
    total_return = nav.iloc[-1] / capital - 1
    duration = (times.iloc[-1] - times.iloc[0]).total_seconds()
    step = duration / (len(times) - 1)
    returns = nav.pct_change().dropna()
    peaks = pd.concat([pd.Series([capital]), nav.reset_index(drop=True)]).cummax().iloc[1:].to_numpy()
    metric = risk.pivot_table(index="timestep", columns="metric", values="value")
    alerts = (metric.at_risk > 0.5) | (metric.delta_risk > metric.threshold) | (metric.current_ratio < metric.min_ratio)

    assert summary["timesteps"] == len(times) == 288
    assert summary["initial_capital"] == pytest.approx(capital)
    assert summary["total_return"] == pytest.approx(total_return, rel=1e-9)
    assert summary["apy"] == pytest.approx((1 + total_return) ** (YEAR_S / duration) - 1, rel=1e-9)
    assert summary["max_drawdown"] == pytest.approx((nav.to_numpy() / peaks - 1).min(), rel=1e-9)
    assert summary["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(YEAR_S / step), rel=1e-6)
    funding = pnl[pnl.metric == "funding_pnl"].value
    assert summary["funding_pnl"] == pytest.approx(funding.iloc[-1])
    assert summary["max_ltv"] == pytest.approx(metric.current_ltv.max())
    assert summary["risk_alert_timesteps"] == alerts.sum() == len(set(DELTA_ALERTS) | set(MARGIN_ALERTS))
    assert summary["time_under_risk_alerts_s"] == pytest.approx(alerts.sum() * step)
    assert summary["alerts_by_type"] == {"liquidation_risk": 0, "delta_risk": len(DELTA_ALERTS),
                                         "cex_margin": len(MARGIN_ALERTS)}


def test_performance_csv_has_one_row_per_timestep_with_nav_pnl_attribution_ltv_and_delta(
        bundle: tuple[Path, RunBundle]) -> None:
    root, written = bundle
    performance = pacsv.read_csv(written.directory / "performance.csv").to_pandas()
    attribution = load_mode("usdt_market_neutral").results_store.pnl_attribution_types
    assert list(performance.columns[:5]) == ["timestep", "timestamp", "nav", "pnl", "cumulative_pnl"]
    assert set(attribution) <= set(performance.columns) and list(performance.columns[-2:]) == ["ltv", "net_delta"]
    assert performance.timestep.tolist() == list(range(288))
    # Per-step PnL adds up to the cumulative PnL.
    assert performance.pnl.cumsum().tolist() == pytest.approx(performance.cumulative_pnl.tolist(), rel=1e-9, abs=1e-6)
    delta = read_table(root, "backtest", "delta_tracking", run_id="rep").to_pandas()
    assert performance.net_delta.tolist() == delta.groupby("timestep").net_delta.last().tolist()


def test_trades_and_events_csv(bundle: tuple[Path, RunBundle]) -> None:
    root, written = bundle
    log = read_table(root, "backtest", "execution_log", run_id="rep").to_pandas()
    trades = pacsv.read_csv(written.directory / "trades.csv").to_pandas()
    kinds = trade_event_types(sorted(set(log.event_type)))
    assert "TRADE_EXECUTED" in kinds and "FUNDING_PAYMENT" not in kinds and "GAS_FEE_PAID" not in kinds
    assert len(trades) == log.event_type.isin(kinds).sum() > 0
    assert {"venue", "instrument", "side", "size", "price", "fee"} <= set(trades.columns)
    events = pacsv.read_csv(written.directory / "events.csv").to_pandas()
    assert (events.source == "execution_log").sum() == len(log)
    store = events[events.source == "results_store"]
    assert {"component_initialization", "batch_committed", "run_finalized"} <= set(store.event_type)
    # Each names the run in its data, or (state_update, the store's counters) through its correlation id.
    assert (store.details.str.contains('"rep"') | (store.event_type == "state_update")).all()


def test_the_cli_writes_the_bundle_and_prints_the_summary(bundle: tuple[Path, RunBundle]) -> None:
    root, _ = bundle
    result = CliRunner().invoke(app, ["report", "rep", "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert "total return" in result.output and "report.html" in result.output


def test_the_stores_named_methods_map_to_the_bundle_and_exports(tmp_path: Path) -> None:
    mode = load_mode("pure_lending")
    snapshots = list(ReferenceEngine(mode, "2024-06-01", "2024-06-01 12:00", "1h", seed=1).iter_snapshots())

    async def run() -> tuple[Path, Path, dict[str, Any]]:
        store = ResultsStore(mode, "backtest", data_dir=tmp_path, run_id="named")
        async with store:
            for ts, results in snapshots:
                await store.save_timestep_result(ts, results)
        return await store.save_final_result(), await store.save_event_log(), \
            await store.export_results("parquet", tmp_path / "out")

    directory, events, manifest = asyncio.run(run())
    assert (directory / "report.html").exists() and events == directory / "events.csv"
    assert manifest["tables"]["balance_sheet"]["rows"] > 0 and (tmp_path / "out" / "manifest.json").exists()
    # pure_lending tracks no delta or funding: those plots still exist, saying so.
    assert png_size(directory / "net_delta.png") == PLOT_SIZE_PX
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["timesteps"] == 12 and summary["funding_pnl"] is None  # lending earns no funding
    assert datetime.fromisoformat(summary["end"]) - datetime.fromisoformat(summary["start"]) == timedelta(hours=11)


def test_the_pivot_puts_each_series_at_its_timesteps_whenever_it_first_appears_and_across_gaps() -> None:
    """performance.csv's columns come from a pivot of the long tables (one row per timestep and series): a
    series that starts late (a venue added mid-run, past the first rows) keeps its place after the others
    and NaN before it starts; a table with timesteps the window does not have, or a window with gaps in its
    timesteps, still puts every value at its own timestep."""
    from results_store.report import _series

    def long_table(rows: list[tuple[int, str, float]]) -> pa.Table:
        return pa.table({"timestep": pa.array([r[0] for r in rows], pa.int64()),
                         "venue": pa.array([r[1] for r in rows]).dictionary_encode(),
                         "value": pa.array([r[2] for r in rows], pa.float64())})

    steps = np.arange(100, 3_100, dtype=np.int64)
    rows = [(int(t), venue, float(t) + offset) for t in steps for venue, offset in (("binance", 0.1), ("bybit", 0.2))]
    rows += [(int(t), "okx", float(t) + 0.3) for t in steps[2_500:]]  # okx starts after 5,000 rows
    rows.sort(key=lambda r: r[0])
    expected = long_table(rows).to_pandas().pivot_table(index="timestep", columns="venue", values="value")
    pivot = _series(long_table(rows), steps, ("venue",), "value")
    assert list(pivot) == [("binance",), ("bybit",), ("okx",)]  # the order they first appear in
    for (venue,), series in pivot.items():
        assert np.array_equal(series, expected[venue].reindex(steps).to_numpy(), equal_nan=True), venue
    assert np.isnan(pivot[("okx",)][:2_500]).all()

    gappy = np.array([5, 6, 9, 10, 20], dtype=np.int64)  # the window's timesteps, with gaps
    pivot = _series(long_table([(6, "binance", 1.0), (9, "binance", 2.0), (20, "binance", 3.0)]), gappy, ("venue",), "value")
    assert np.array_equal(pivot[("binance",)], [np.nan, 1.0, 2.0, np.nan, 3.0], equal_nan=True)
