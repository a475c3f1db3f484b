"""The run bundle: ``{root}/{execution_mode}/results/{run_id}/`` with CSVs, summary.json and an offline HTML report.

- ``performance.csv``: per timestep NAV, PnL of the step, cumulative PnL, one column per
  attribution type (cumulative, as stored), LTV and net delta;
- ``trades.csv``: execution events that are trades or transfers, their details as columns;
- ``events.csv``: the run's execution log, then the store's own events for the run;
- ``summary.json``: total return, APY, max drawdown, Sharpe, funding PnL, max LTV and the time
  spent under risk alerts (definitions in :class:`Summary`);
- ``report.html`` and its PNGs (equity curve, stacked PnL attribution, LTV against target and
  liquidation, net delta, cumulative funding): plain HTML, images as files beside it, no scripts.

One pass over the run, window by window of timesteps (``results_store.row_groups``): each window
is pivoted to one row per timestep, appended to performance.csv, folded into the summary's running
figures and downsampled (last value per bucket) for the plots. Memory stays flat over a year.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from results_store import delta_tables
from results_store.events import event_log_path
from results_store.export import csv_ready, csv_schema, write_table_file
from results_store.query import ResultQuery, scan_results
from results_store.row_groups import ScanRange, read_ordered, run_span
from results_store.runs import code_version, latest_run
from schemas.errors import ComponentError
from schemas.identifiers import validate_run_id
from schemas.result_types import ResultType

__all__ = [
    "PLOTS",
    "PLOT_SIZE_PX",
    "RunBundle",
    "Summary",
    "bundle_dir",
    "trade_event_types",
    "write_bundle",
    "write_event_log",
]

# The plots, in the order the report shows them: file stem -> title.
PLOTS: dict[str, str] = {
    "equity_curve": "Equity curve (NAV)",
    "pnl_attribution": "PnL attribution (cumulative, stacked)",
    "ltv": "LTV against target, max and liquidation threshold",
    "net_delta": "Net delta",
    "cumulative_funding": "Cumulative funding",
}
PLOT_SIZE_PX = (1200, 500)
_DPI = 100
# Points per plotted series: a 1,200-pixel-wide plot cannot show more.
PLOT_POINTS = 2_000
# Timesteps per window of the one pass: 220k rows of the widest tables (11 rows per timestep). A
# window's reads and pivots hold the report's peak: 50,000 timesteps held ~440 MB above the imports.
WINDOW_TIMESTEPS = 20_000
SECONDS_PER_YEAR = 365.0 * 86_400
_EPOCH = pd.Timestamp(0, tz="UTC")
# Execution events that move assets: trades and transfers (deposits, supplies, borrows, stakes...).
# Fees, funding payments and airdrops are cash flows, not trades.
_TRADE_PATTERN = re.compile(r"TRADE|TRANSFER|DEPOSIT|WITHDRAW|SUPPL|BORROW|REPAY|STAKE|SWAP|BRIDGE")
_TRADE_DETAIL_COLUMNS = ("venue", "instrument", "side", "size", "price", "fee", "asset", "token", "amount")


def trade_event_types(event_types: Sequence[str]) -> list[str]:
    """The event types among ``event_types`` that trades.csv keeps."""
    return [t for t in event_types if _TRADE_PATTERN.search(t.upper())]


def bundle_dir(root: Path, execution_mode: str, run_id: str) -> Path:
    """``{root}/{execution_mode}/results/{run_id}``."""
    return Path(root) / execution_mode / "results" / validate_run_id(run_id)


@dataclass
class Summary:
    """How the strategy did, from the run's tables.

    - ``total_return``: final NAV / initial capital - 1, where the initial capital is the first
      timestep's NAV minus its cumulative PnL (the balance-based PnL is NAV minus capital);
    - ``apy``: ``(1 + total_return) ** (year / duration) - 1``, duration = last - first timestamp;
    - ``max_drawdown``: the lowest NAV / running peak - 1 (the peak starts at the initial capital), ≤ 0;
    - ``sharpe``: mean / standard deviation (ddof 1) of the step-to-step NAV returns, times
      sqrt(steps per year), with steps per year = year / mean step; risk-free rate 0;
    - ``funding_pnl``: the last cumulative ``funding_pnl`` attribution;
    - ``max_ltv``: the highest ``ltv_risk.current_ltv``;
    - ``risk_alert_timesteps``: timesteps with a risk alert: flagged at risk of liquidation
      (``liquidation_risk.at_risk``), delta risk above its threshold, or CEX margin ratio below its
      minimum; ``time_under_risk_alerts_s`` = those timesteps times the mean step.
    """

    run_id: str
    mode: str | None
    execution_mode: str
    start: str | None = None
    end: str | None = None
    timesteps: int = 0
    initial_capital: float | None = None
    final_nav: float | None = None
    total_pnl: float | None = None
    total_return: float | None = None
    apy: float | None = None
    max_drawdown: float | None = None
    sharpe: float | None = None
    funding_pnl: float | None = None
    max_ltv: float | None = None
    risk_alert_timesteps: int = 0
    risk_alert_fraction: float | None = None
    time_under_risk_alerts_s: float | None = None
    alerts_by_type: dict[str, int] = field(default_factory=dict)
    table_versions: dict[str, int] = field(default_factory=dict)
    code_version: str = ""

    def to_json(self) -> bytes:
        """Deterministic JSON: sorted keys, non-finite numbers as null."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}
        return json.dumps(clean, indent=2, sort_keys=True).encode() + b"\n"

    def to_markdown(self) -> str:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4%}"

        def num(value: float | None, digits: int = 2) -> str:
            return "n/a" if value is None else f"{value:,.{digits}f}"

        rows = [
            ("total return", pct(self.total_return)), ("APY", pct(self.apy)),
            ("max drawdown", pct(self.max_drawdown)), ("Sharpe", num(self.sharpe)),
            ("funding PnL", num(self.funding_pnl)), ("max LTV", num(self.max_ltv, 4)),
            ("time under risk alerts", f"{num(self.time_under_risk_alerts_s, 0)} s "
                                       f"({self.risk_alert_timesteps:,} timesteps, {pct(self.risk_alert_fraction)})"),
            ("final NAV", num(self.final_nav)), ("initial capital", num(self.initial_capital)),
            ("timesteps", f"{self.timesteps:,} from {self.start} to {self.end}"),
        ]
        lines = [f"# Run `{self.run_id}` — {self.mode} ({self.execution_mode})", "", "| figure | value |", "|---|---:|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        return "\n".join(lines)


@dataclass
class RunBundle:
    """What :func:`write_bundle` wrote."""

    directory: Path
    summary: Summary
    files: dict[str, Path]

    @property
    def report(self) -> Path:
        return self.files["report.html"]


# ----------------------------------------------------------------------------- the one pass

@dataclass
class _Figures:
    """The summary's running figures, folded window by window."""

    capital: float | None = None
    nav_last: float | None = None
    pnl_last: float | None = None
    peak: float = -math.inf
    drawdown: float = 0.0
    returns: int = 0
    returns_sum: float = 0.0
    returns_sq: float = 0.0
    first_us: int | None = None
    last_us: int | None = None
    steps: int = 0
    funding_last: float | None = None
    max_ltv: float | None = None
    alerts: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def fold(self, wide: pd.DataFrame, alerts: pd.DataFrame) -> None:
        if wide.empty:
            return
        micros = ((wide["timestamp"] - _EPOCH) // pd.Timedelta(microseconds=1)).to_numpy(dtype=np.int64)
        self.first_us = int(micros[0]) if self.first_us is None else self.first_us
        self.last_us = int(micros[-1])
        self.steps += len(wide)
        if "nav" in wide and wide["nav"].notna().any():
            nav = wide["nav"].to_numpy(dtype=float)
            if self.capital is None:
                self.capital = float(nav[0] - wide["cumulative_pnl"].to_numpy(dtype=float)[0])
                self.peak = self.capital
            previous = np.concatenate([[self.nav_last], nav[:-1]]) if self.nav_last is not None else nav[:-1]
            current = nav if self.nav_last is not None else nav[1:]
            step_returns = current / previous - 1.0
            self.returns += step_returns.size
            self.returns_sum += float(step_returns.sum())
            self.returns_sq += float(np.square(step_returns).sum())
            peaks = np.maximum.accumulate(np.concatenate([[self.peak], nav]))[1:]
            self.drawdown = min(self.drawdown, float((nav / peaks - 1.0).min()))
            self.peak = float(peaks[-1])
            self.nav_last = float(nav[-1])
            self.pnl_last = float(wide["cumulative_pnl"].to_numpy(dtype=float)[-1])
        if "funding_pnl" in wide:
            self.funding_last = float(wide["funding_pnl"].to_numpy(dtype=float)[-1])
        if "ltv" in wide and wide["ltv"].notna().any():
            high = float(wide["ltv"].max())
            self.max_ltv = high if self.max_ltv is None else max(self.max_ltv, high)
        if not alerts.empty:
            self.alerts += int(alerts.any(axis=1).sum())
            for name in alerts.columns:
                self.by_type[name] = self.by_type.get(name, 0) + int(alerts[name].sum())

    def summary(self, run_id: str, mode: str | None, execution_mode: str, versions: dict[str, int]) -> Summary:
        s = Summary(run_id=run_id, mode=mode, execution_mode=execution_mode, timesteps=self.steps,
                    table_versions=versions, code_version=code_version(), alerts_by_type=dict(self.by_type),
                    risk_alert_timesteps=self.alerts, funding_pnl=self.funding_last, max_ltv=self.max_ltv)
        if self.first_us is None or self.last_us is None:
            return s
        s.start = _iso(self.first_us)
        s.end = _iso(self.last_us)
        duration_s = (self.last_us - self.first_us) / 1e6
        mean_step_s = duration_s / (self.steps - 1) if self.steps > 1 else None
        s.risk_alert_fraction = self.alerts / self.steps if self.steps else None
        s.time_under_risk_alerts_s = self.alerts * mean_step_s if mean_step_s is not None else None
        if self.capital is not None and self.nav_last is not None and self.capital > 0:
            s.initial_capital, s.final_nav, s.total_pnl = self.capital, self.nav_last, self.pnl_last
            s.total_return = self.nav_last / self.capital - 1.0
            s.max_drawdown = self.drawdown
            if duration_s > 0 and s.total_return > -1:
                s.apy = (1.0 + s.total_return) ** (SECONDS_PER_YEAR / duration_s) - 1.0
            if self.returns > 1 and mean_step_s:
                mean = self.returns_sum / self.returns
                variance = (self.returns_sq - self.returns * mean * mean) / (self.returns - 1)
                if variance > 0:
                    s.sharpe = mean / math.sqrt(variance) * math.sqrt(SECONDS_PER_YEAR / mean_step_s)
        return s


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=UTC).isoformat()


def _tables_of(root: Path, execution_mode: str) -> dict[ResultType, delta_tables.TableFiles]:
    found = {}
    for rt in ResultType:
        path = delta_tables.table_path(root, execution_mode, rt.value)
        if delta_tables.table_exists(path):
            found[rt] = delta_tables.table_files(path)
    return found


def _windows(tables: dict[ResultType, delta_tables.TableFiles], run_id: str) -> Iterator[ScanRange]:
    """Timestep windows over the run's span (from pnl_attribution's statistics: every mode stores it)."""
    listed = tables.get(ResultType.PNL_ATTRIBUTION)
    if listed is None:
        raise ComponentError("RST-302", f"run {run_id!r}: no pnl_attribution table to report on")
    span = run_span(listed.runs([run_id])[0][1], ScanRange())
    if span is None:
        raise ComponentError("RST-302", f"run {run_id!r} has no rows in pnl_attribution")
    low, high, _ = span
    for start in range(low, high, WINDOW_TIMESTEPS):
        yield ScanRange(step_lo=start, step_hi=min(start + WINDOW_TIMESTEPS, high))


def _read(tables: dict[ResultType, delta_tables.TableFiles], rt: ResultType, run_id: str, window: ScanRange,
          columns: list[str], keys: Sequence[str] = ()) -> pa.Table | None:
    """The window's rows of one table; ``keys`` (series names) stay dictionary-encoded for :func:`_series`."""
    listed = tables.get(rt)
    if listed is None:
        return None
    parts = list(read_ordered(listed.runs([run_id]), listed.schema, columns=columns, scan=window,
                              dictionary_columns=keys, as_stored=True))
    if not parts:
        return None
    return pa.concat_tables(parts).unify_dictionaries().combine_chunks()


def _series(table: pa.Table, steps: np.ndarray, keys: Sequence[str], value: str) -> dict[tuple[str, ...], np.ndarray]:
    """A long table as one array per series (per distinct ``keys``), aligned on ``steps``: a pivot in numpy.

    pandas' pivot_table took ~0.4 s per 20,000-timestep window and held most of the report's memory.
    The series go into one grid in a single scatter (a mask per series and a Python list of every
    row's code cost ~1.3 of the year's ~6 s of CPU).
    """
    position = _positions(steps, np.asarray(table.column("timestep").to_numpy(), dtype=np.int64))
    values = np.asarray(table.column(value).to_numpy(zero_copy_only=False), dtype=float)
    codes = np.zeros(table.num_rows, dtype=np.int64)
    names: list[list[str]] = []
    for key in keys:
        column = table.column(key).chunk(0) if table.num_rows else pa.array([], pa.dictionary(pa.int32(), pa.string()))
        dictionary = column.dictionary.to_pylist()
        codes = codes * max(len(dictionary), 1) + np.asarray(column.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        names.append(dictionary)
    order = _first_seen(codes)  # the series in the order they first appear (the stored order)
    rank = np.zeros(int(codes.max()) + 1 if codes.size else 1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    grid = np.full((len(order), steps.size), np.nan)
    grid[rank[codes], position] = values  # one row per series and timestep (the row key); a repeat: the last row wins
    out: dict[tuple[str, ...], np.ndarray] = {}
    for row, code in enumerate(order):
        name, rest = [], code
        for dictionary in reversed(names):
            rest, index = divmod(rest, max(len(dictionary), 1))
            name.append(dictionary[index])
        out[tuple(reversed(name))] = grid[row]
    return out


def _positions(steps: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """Where each of ``timesteps`` (ascending) is in ``steps`` (ascending, distinct): an offset when
    ``steps`` has no gap and holds them all (the rule), else a binary search (which cost ~0.25 s a year)."""
    if steps.size and timesteps.size and int(steps[-1]) - int(steps[0]) + 1 == steps.size \
            and timesteps[0] >= steps[0] and timesteps[-1] <= steps[-1]:
        offsets: np.ndarray = timesteps - steps[0]
        return offsets
    return np.searchsorted(steps, timesteps)


def _first_seen(codes: np.ndarray) -> list[int]:
    """The distinct values of ``codes`` (small non-negative ints) in the order they first appear.

    Every series has a row in the first timesteps, as a rule: the head is searched first, and grown
    until it holds every distinct value.
    """
    if codes.size == 0:
        return []
    distinct = int(np.count_nonzero(np.bincount(codes)))
    head = 4_096
    while True:
        seen = dict.fromkeys(codes[:head].tolist())
        if len(seen) == distinct or head >= codes.size:
            return list(seen)
        head *= 8


def _wide(tables: dict[ResultType, delta_tables.TableFiles], run_id: str, window: ScanRange,
          attribution: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One window as (performance rows, extra plot series, alert flags), one row per timestep."""
    pnl = _read(tables, ResultType.PNL_ATTRIBUTION, run_id, window, ["timestamp", "timestep", "component", "metric",
                                                                      "value"], keys=("component", "metric"))
    if pnl is None:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    all_steps = np.asarray(pnl.column("timestep").to_numpy(), dtype=np.int64)
    steps, first = np.unique(all_steps, return_index=True)
    values = _series(pnl, steps, ("component", "metric"), "value")
    nothing = np.full(steps.size, np.nan)
    wide: dict[str, Any] = {"timestep": steps, "timestamp": pnl.column("timestamp").take(pa.array(first)).to_pandas()}
    wide["nav"] = values.get(("balance_based", "total_value"), nothing)
    wide["cumulative_pnl"] = values.get(("balance_based", "pnl_cumulative"), nothing)
    wide["pnl"] = np.concatenate([[np.nan], np.diff(wide["cumulative_pnl"])])
    if not attribution:
        attribution.extend(m for c, m in values if c == "attribution")
    for name in attribution:
        wide[name] = values.get(("attribution", name), nothing)
    extra: dict[str, Any] = {"timestep": steps}
    alerts: dict[str, Any] = {}
    risk = _read(tables, ResultType.RISK_METRICS, run_id, window, ["timestep", "metric", "value"], keys=("metric",))
    r = {k[0]: v for k, v in _series(risk, steps, ("metric",), "value").items()} if risk is not None else {}
    wide["ltv"] = r.get("current_ltv", nothing)
    for name in ("target_ltv", "max_ltv", "liquidation_threshold"):
        extra[name] = r.get(name, nothing)
    with np.errstate(invalid="ignore"):
        if "at_risk" in r:
            alerts["liquidation_risk"] = r["at_risk"] > 0.5
        if "delta_risk" in r and "threshold" in r:
            alerts["delta_risk"] = r["delta_risk"] > r["threshold"]
        if "current_ratio" in r and "min_ratio" in r:
            alerts["cex_margin"] = r["current_ratio"] < r["min_ratio"]
    delta = _read(tables, ResultType.DELTA_TRACKING, run_id, window, ["timestep", "net_delta"])
    # net_delta repeats on every asset's row of a timestep: one series, the last row's value wins.
    wide["net_delta"] = _series(delta, steps, (), "net_delta")[()] if delta is not None else nothing
    funding = _read(tables, ResultType.FUNDING_TRACKING, run_id, window, ["timestep", "venue", "cumulative"],
                    keys=("venue",))
    if funding is not None:
        for (venue,), series in _series(funding, steps, ("venue",), "cumulative").items():
            extra[f"funding:{venue}"] = series
    columns = ["timestep", "timestamp", "nav", "pnl", "cumulative_pnl", *attribution, "ltv", "net_delta"]
    performance = pd.DataFrame({c: wide[c] for c in columns})
    return performance, pd.DataFrame(extra), pd.DataFrame(alerts)


def write_bundle(root: Path, run_id: str, *, execution_mode: str = "backtest", event_log_dir: Path | None = None,
                 make_plots: bool = True) -> RunBundle:
    """Write the run's bundle (see the module docstring) and return what was written.

    ``root``: the directory the tables are under (``StoreSettings.root``); ``event_log_dir``: the
    data dir whose ``logs/events`` holds the store's events (default ``root``).
    """
    directory = bundle_dir(root, execution_mode, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    record = latest_run(root, execution_mode, run_id)
    tables = _tables_of(Path(root), execution_mode)
    files: dict[str, Path] = {}
    figures = _Figures()
    attribution: list[str] = []
    plot_parts: list[pd.DataFrame] = []
    windows = list(_windows(tables, run_id))
    first_step, last_step = windows[0].step_lo, windows[-1].step_hi
    span = max(last_step - first_step, 1)
    performance_path = directory / "performance.csv"
    partial = performance_path.with_name(performance_path.name + ".partial")
    writer: pacsv.CSVWriter | None = None
    previous_cumulative: float | None = None
    try:
        for window in windows:
            performance, extra, alerts = _wide(tables, run_id, window, attribution)
            if performance.empty:
                continue
            first_pnl = performance["cumulative_pnl"].iloc[0]
            performance.loc[performance.index[0], "pnl"] = (
                first_pnl - previous_cumulative if previous_cumulative is not None else first_pnl)
            previous_cumulative = float(performance["cumulative_pnl"].iloc[-1])
            figures.fold(performance, alerts)
            merged = performance.merge(extra, on="timestep", how="left")
            buckets = (merged["timestep"].to_numpy() - first_step) * PLOT_POINTS // span
            plot_parts.append(merged.groupby(buckets, sort=False).tail(1))
            batch = pa.Table.from_pandas(performance, preserve_index=False)
            if writer is None:
                schema = batch.schema.remove_metadata()
                writer = pacsv.CSVWriter(str(partial), csv_schema(schema),
                                         write_options=pacsv.WriteOptions(quoting_style="needed"))
            writer.write_table(csv_ready(batch.cast(schema)))
    finally:
        if writer is not None:
            writer.close()
    os.replace(partial, performance_path)
    files["performance.csv"] = performance_path
    plot_data = pd.concat(plot_parts, ignore_index=True) if plot_parts else pd.DataFrame()
    plot_data = plot_data.groupby(
        (plot_data["timestep"].to_numpy() - first_step) * PLOT_POINTS // span, sort=True).tail(1) \
        if not plot_data.empty else plot_data
    versions = {rt.value: listed.version for rt, listed in tables.items() if listed.runs([run_id])[0][1]}
    summary = figures.summary(run_id, record.get("mode") if record else None, execution_mode, versions)
    (directory / "summary.json").write_bytes(summary.to_json())
    files["summary.json"] = directory / "summary.json"
    files["trades.csv"] = _write_trades(root, execution_mode, run_id, directory / "trades.csv", tables)
    files["events.csv"] = write_event_log(root, run_id, execution_mode=execution_mode, event_log_dir=event_log_dir)
    if make_plots:
        for name, path in _plots(plot_data, attribution, directory, summary).items():
            files[name] = path
        files["report.html"] = _write_html(directory, summary, attribution, sorted(files))
    return RunBundle(directory, summary, files)


# ----------------------------------------------------------------------------- trades and events

def _write_trades(root: Path, execution_mode: str, run_id: str, path: Path,
                  tables: dict[ResultType, delta_tables.TableFiles]) -> Path:
    schema = pa.schema([("timestamp", pa.timestamp("us", "UTC")), ("timestep", pa.int64()),
                        ("event_order", pa.int64()), ("event_type", pa.string()),
                        ("event_timestamp", pa.timestamp("us", "UTC")),
                        *[(c, pa.float64() if c in ("size", "price", "fee", "amount") else pa.string())
                          for c in _TRADE_DETAIL_COLUMNS],
                        ("details", pa.string())])

    def windows() -> Iterator[pa.Table]:
        if ResultType.EXECUTION_LOG not in tables:
            return
        scan = scan_results(root, ResultQuery(result_type=ResultType.EXECUTION_LOG, run_ids=(run_id,)),
                            execution_mode=execution_mode)
        for window in scan.windows():
            kinds = trade_event_types(sorted(set(window.column("event_type").to_pylist())))
            rows = window.filter(pc.is_in(window.column("event_type"), pa.array(kinds, pa.string())))
            if rows.num_rows == 0:
                continue
            # Trades are a small share of events: their details are parsed one by one.
            details = [orjson.loads(d) for d in rows.column("details").to_pylist()]
            columns: dict[str, Any] = {c: rows.column(c) for c in
                                       ("timestamp", "timestep", "event_order", "event_type", "event_timestamp")}
            for name in _TRADE_DETAIL_COLUMNS:
                columns[name] = pa.array([d.get(name) for d in details], schema.field(name).type, from_pandas=True) \
                    if schema.field(name).type != pa.string() else \
                    pa.array([None if d.get(name) is None else str(d.get(name)) for d in details], pa.string())
            columns["details"] = rows.column("details")
            yield pa.table(columns, schema=schema)

    write_table_file(windows(), schema, "csv", path)
    return path


_EVENT_SCHEMA = pa.schema([("source", pa.string()), ("timestamp", pa.timestamp("us", "UTC")), ("timestep", pa.int64()),
                           ("event_order", pa.int64()), ("event_type", pa.string()), ("level", pa.string()),
                           ("details", pa.string())])


def write_event_log(root: Path, run_id: str, *, execution_mode: str = "backtest",
                    event_log_dir: Path | None = None) -> Path:
    """``events.csv`` of the bundle: the run's execution log (engine time), then the store's events for the run.

    The store's events are the lines of ``logs/events/results_store_events.jsonl`` (and its rotated
    days) whose data (``run_id``) or correlation id names the run.
    """
    directory = bundle_dir(root, execution_mode, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "events.csv"

    def windows() -> Iterator[pa.Table]:
        log = delta_tables.table_path(Path(root), execution_mode, ResultType.EXECUTION_LOG.value)
        if delta_tables.table_exists(log):
            scan = scan_results(root, ResultQuery(result_type=ResultType.EXECUTION_LOG, run_ids=(run_id,)),
                                execution_mode=execution_mode)
            for window in scan.windows():
                n = window.num_rows
                yield pa.table({
                    "source": pa.repeat(pa.scalar("execution_log"), n), "timestamp": window.column("event_timestamp"),
                    "timestep": window.column("timestep"), "event_order": window.column("event_order"),
                    "event_type": window.column("event_type"), "level": pa.nulls(n, pa.string()),
                    "details": window.column("details")}, schema=_EVENT_SCHEMA)
        store_events = _store_events(event_log_path(Path(event_log_dir or root)), run_id)
        if store_events:
            yield pa.Table.from_pylist(store_events, schema=_EVENT_SCHEMA)

    write_table_file(windows(), _EVENT_SCHEMA, "csv", path)
    return path


def _store_events(log: Path, run_id: str) -> list[dict[str, Any]]:
    """The store's events that name ``run_id``, oldest first, from the current log and its rotated days."""
    files = [*sorted(log.parent.glob(log.name + ".*")), log]
    found = []
    needle = run_id.encode()
    for file in files:
        if not file.is_file() or file.name.endswith(".lock"):
            continue
        with open(file, "rb") as lines:
            for line in lines:
                if needle not in line:  # most lines are other runs': skip them before parsing
                    continue
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn last line of a crashed writer
                data = event.get("data") or {}
                if data.get("run_id") != run_id and event.get("correlation_id") != run_id:
                    continue
                found.append({"source": "results_store", "timestamp": pd.Timestamp(event["timestamp"]).to_pydatetime(),
                              "timestep": data.get("last_timestep"), "event_order": None,
                              "event_type": event.get("event_type"), "level": event.get("level"),
                              "details": orjson.dumps(data).decode()})
    found.sort(key=lambda e: e["timestamp"])
    return found


# ----------------------------------------------------------------------------- plots and HTML

def _plots(data: pd.DataFrame, attribution: list[str], directory: Path, summary: Summary) -> dict[str, Path]:
    # Imported on use: matplotlib takes ~0.3 s to import, which no other command should pay.
    # The Agg canvas is used directly (no pyplot): no global figure state, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = {}
    time = pd.to_datetime(data["timestamp"], utc=True) if not data.empty else pd.Series(dtype="datetime64[us, UTC]")
    for name, title in PLOTS.items():
        figure = Figure(figsize=(PLOT_SIZE_PX[0] / _DPI, PLOT_SIZE_PX[1] / _DPI), dpi=_DPI)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.set_title(f"{title} — {summary.run_id}")
        drawn = _draw(name, axes, data, time, attribution)
        if not drawn:
            axes.text(0.5, 0.5, f"not tracked by mode {summary.mode}", ha="center", va="center",
                      transform=axes.transAxes)
        axes.grid(True, alpha=0.3)
        figure.autofmt_xdate()
        path = directory / f"{name}.png"
        # No "Software" tag: the same data gives the same bytes.
        figure.savefig(path, format="png", dpi=_DPI, metadata={"Software": None})
        written[f"{name}.png"] = path
    return written


def _draw(name: str, axes: Any, data: pd.DataFrame, time: pd.Series, attribution: list[str]) -> bool:
    def has(column: str) -> bool:
        return column in data and bool(data[column].notna().any())

    if name == "equity_curve" and has("nav"):
        axes.plot(time, data["nav"], color="tab:blue", linewidth=1.2, label="NAV")
        axes.set_ylabel("NAV")
        return True
    if name == "pnl_attribution" and attribution:
        values = data[attribution].fillna(0.0).to_numpy()
        # Gains stack upward from zero and losses downward, so neither hides the other.
        positive, negative = np.clip(values, 0, None), np.clip(values, None, 0)
        colors = [f"C{i % 10}" for i in range(len(attribution))]
        axes.stackplot(time, positive.T, labels=attribution, colors=colors, alpha=0.8)
        axes.stackplot(time, negative.T, colors=colors, alpha=0.8)
        if has("cumulative_pnl"):
            axes.plot(time, data["cumulative_pnl"], color="black", linewidth=1.0, label="balance-based PnL")
        axes.legend(loc="upper left", fontsize=8, ncol=2)
        return True
    if name == "ltv" and has("ltv"):
        axes.plot(time, data["ltv"], label="LTV", color="tab:blue")
        for column, style in (("target_ltv", "--"), ("max_ltv", ":"), ("liquidation_threshold", "-.")):
            if has(column):
                axes.plot(time, data[column], linestyle=style, label=column.replace("_", " "))
        axes.legend(loc="center right", fontsize=8)
        return True
    if name == "net_delta" and has("net_delta"):
        axes.plot(time, data["net_delta"], color="tab:purple", linewidth=1.0)
        axes.axhline(0.0, color="black", linewidth=0.5)
        return True
    if name == "cumulative_funding":
        venues = [c for c in data.columns if c.startswith("funding:") and has(c)]
        if venues:
            for column in venues:
                axes.plot(time, data[column], label=column.split(":", 1)[1], linewidth=1.0)
            axes.plot(time, data[venues].sum(axis=1), label="total", color="black", linewidth=1.4)
            axes.legend(loc="upper left", fontsize=8)
            return True
        if has("funding_pnl"):
            axes.plot(time, data["funding_pnl"], label="funding_pnl attribution", color="black")
            return True
    return False


def _write_html(directory: Path, summary: Summary, attribution: list[str], files: list[str]) -> Path:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.6g}"
        return html.escape("" if value is None else str(value))

    figures = {k: v for k, v in asdict(summary).items() if not isinstance(v, dict)}
    rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{cell(v)}</td></tr>" for k, v in figures.items())
    alerts = ", ".join(f"{html.escape(k)}: {v:,}" for k, v in summary.alerts_by_type.items()) or "none"
    images = "\n".join(
        f'<figure><img src="{name}.png" width="{PLOT_SIZE_PX[0]}" height="{PLOT_SIZE_PX[1]}" '
        f'alt="{html.escape(title)}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for name, title in PLOTS.items())
    links = " · ".join(f'<a href="{html.escape(f)}">{html.escape(f)}</a>' for f in files if not f.endswith(".png"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Run {html.escape(summary.run_id)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1250px}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}}td{{text-align:right}}figure{{margin:1.5em 0}}</style>
</head><body>
<h1>Run {html.escape(summary.run_id)} — {html.escape(str(summary.mode))} ({html.escape(summary.execution_mode)})</h1>
<p>Files: {links}</p>
<h2>Summary</h2>
<table>{rows}</table>
<p>Risk alerts by type (timesteps): {alerts}. Attribution types: {html.escape(", ".join(attribution))}.</p>
<h2>Plots</h2>
{images}
</body></html>
"""
    path = directory / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
