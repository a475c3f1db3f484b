"""Property: whatever mix of valid and broken snapshots an engine offers, nothing is lost and nothing is mixed.

Each example feeds 1,700-2,000 reference-engine snapshots, some broken on purpose (at least one of
every kind below, at random positions, plus 50 to 250 more), through a real backtest
``ResultsStore`` writing Delta tables, and checks against a model of what must become of each:

- the run ends without a crash, and written + quarantined + refused = offered (timesteps);
- ``raw_snapshots`` and the result tables hold exactly the snapshots expected to be written
  (no row of a quarantined or refused snapshot anywhere, every valid snapshot in every table it
  fills); contract breaks are one RST-101 quarantine row per snapshot naming the expected key
  path, rule breaks are RST-102 rows of their own timesteps only, refusals are RST-101 (a
  timestep no table holds) or RST-103 (order) raised to the engine;
- every rejection carries its code and its timestep or key path, in the tables and the event log.

Six derandomized examples (so CI runs the same ones every time) make at least 10,200 snapshots.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from results_store.events import event_log_path
from results_store.reading import read_table
from results_store.store import ResultsStore
from results_store.utc import to_utc
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.store.conftest import snapshots

MODE = load_mode("usdt_market_neutral")  # all eight result types
MAX_SNAPSHOTS = 2_000
POOL = snapshots(MODE, MAX_SNAPSHOTS)
MINUTE = pd.Timedelta(minutes=1)
FAR_FUTURE = pd.Timestamp("2262-06-01", tz="UTC")  # beyond pandas' range, as µs it still fits an int64


@dataclass
class State:
    """What the store has placed so far: the model of its order check."""

    last_step: int = -1
    last_ts: pd.Timestamp | None = None


@dataclass
class Expected:
    """What must become of one offered snapshot."""

    fate: str  # "written" | "quarantined" (RST-101, whole snapshot) | "refused"
    code: str = ""  # of a refusal
    path: str = ""  # the key path an RST-101 names
    rule_break: bool = False  # written, with RST-102 rows quarantined at its timestep
    placed: bool = True  # has a timestep in the run (not refused)
    in_range_time: bool = True


@dataclass
class Offer:
    timestamp: Any
    results: dict[str, Any] = field(repr=False)  # a failing example lists kinds and fates, not 2,000 snapshots
    step: int | None  # the timestep the store gives it (None: refused)
    kind: str = "valid"
    expected: Expected = field(default_factory=lambda: Expected("written"))


Breakage = Callable[[Offer, State], Expected]


def _event(offer: Offer) -> dict[str, Any]:
    events = offer.results["event_logger"]
    if not events:
        events.append({"order": 1, "event_type": "NOTE", "timestamp": offer.timestamp, "details": {}})
    event: dict[str, Any] = events[0]
    return event


def _quarantined(path: str) -> Expected:
    return Expected("quarantined", path=path)


def _refused(code: str) -> Expected:
    return Expected("refused", code=code, placed=False)


def _set_step(offer: Offer, step: Any) -> None:
    offer.results["timestep"] = step


def _wallet(offer: Offer) -> dict[str, Any]:
    wallet: dict[str, Any] = offer.results["position_monitor"]["wallet"]
    return wallet


# Each breakage changes one offer (its timestep is state.last_step + 1 unless it says otherwise)
# and returns what the store must make of it.
BREAKAGES: dict[str, Breakage] = {
    # still valid
    "timestep gap": lambda o, s: (_set_step(o, s.last_step + 3), Expected("written"))[1],
    "timestep left to the store": lambda o, s: (o.results.pop("timestep"), Expected("written"))[1],
    "numpy timestep": lambda o, s: (_set_step(o, np.int64(s.last_step + 1)), Expected("written"))[1],
    "naive timestamp": lambda o, s: (setattr(o, "timestamp", o.timestamp.tz_localize(None)), Expected("written"))[1],
    "ISO text timestamp": lambda o, s: (setattr(o, "timestamp", o.timestamp.isoformat()), Expected("written"))[1],
    "huge float": lambda o, s: (_wallet(o).update(aWeETH=1e300), Expected("written"))[1],
    "exact Decimal extra": lambda o, s: (o.results.update(operator={"fee": Decimal("0.25")}), Expected("written"))[1],
    # rule breaks (RST-102): rows quarantined, the snapshot written
    "NaN balance": lambda o, s: (_wallet(o).update(aWeETH=float("nan")), Expected("written", rule_break=True))[1],
    "infinite LTV": lambda o, s: (o.results["risk_monitor"]["risk_metrics"]["ltv_risk"].update(current_ltv=float("inf")),
                                  Expected("written", rule_break=True))[1],
    "unknown asset": lambda o, s: (_wallet(o).update(DOGE=1.0), Expected("written", rule_break=True))[1],
    # contract breaks (RST-101): the whole snapshot quarantined, naming the key path
    "text for a number": lambda o, s: (_wallet(o).update(aWeETH="lots"),
                                       _quarantined("position_monitor.wallet.aWeETH"))[1],
    "None for a number": lambda o, s: (o.results["exposure_monitor"]["asset_exposures"]["ETH"].update(exposure_usd=None),
                                       _quarantined("exposure_monitor.asset_exposures.ETH.exposure_usd"))[1],
    "flag of 2": lambda o, s: (o.results["pnl_calculator"]["reconciliation"].update(passed=2),
                               _quarantined("pnl_calculator.reconciliation.passed"))[1],
    "fractional event order": lambda o, s: (_event(o).update(order=1.5), _quarantined("event_logger.0.order"))[1],
    "missing key": lambda o, s: (o.results["risk_monitor"]["risk_metrics"]["ltv_risk"].pop("current_ltv"),
                                 _quarantined("risk_monitor.risk_metrics.ltv_risk.current_ltv"))[1],
    "missing component": lambda o, s: (o.results.pop("exposure_monitor"), _quarantined("exposure_monitor"))[1],
    "inexact Decimal extra": lambda o, s: (o.results.update(operator={"fee": Decimal("0.1")}),
                                           _quarantined("operator.fee"))[1],
    "integer beyond 64 bits": lambda o, s: (o.results.update(operator={"n": 2**70}), _quarantined("operator.n"))[1],
    "object in event details": lambda o, s: (_event(o)["details"].update(obj=object()),
                                             _quarantined("event_logger.0.details.obj"))[1],
    "set in component data": lambda o, s: (o.results["risk_monitor"].update(risk_alerts={"s": {1, 2}}),
                                           _quarantined("risk_monitor.risk_alerts.s"))[1],
    "timestamp past pandas": lambda o, s: (setattr(o, "timestamp", FAR_FUTURE + MINUTE * (s.last_step + 1)),
                                           Expected("quarantined", path="timestamp", in_range_time=False))[1],
    "timestamp before pandas": lambda o, s: (setattr(o, "timestamp", datetime(1600, 1, 1, tzinfo=UTC)),
                                             Expected("quarantined", path="timestamp", in_range_time=False))[1],
    "timestamp not a time": lambda o, s: (setattr(o, "timestamp", "not a time"),
                                          Expected("quarantined", path="timestamp", in_range_time=False))[1],
    "event time past pandas": lambda o, s: (_event(o).update(timestamp=FAR_FUTURE),
                                            _quarantined("event_logger.0.timestamp"))[1],
    # refused at once: a timestep no table holds (RST-101), or out of order (RST-103)
    "timestep beyond int64": lambda o, s: (_set_step(o, 2**63 + max(s.last_step, 0)), _refused("RST-101"))[1],
    "negative timestep": lambda o, s: (_set_step(o, -1), _refused("RST-101"))[1],
    "timestep as text": lambda o, s: (_set_step(o, str(s.last_step + 1)), _refused("RST-101"))[1],
    "fractional timestep": lambda o, s: (_set_step(o, s.last_step + 1.5), _refused("RST-101"))[1],
    "duplicate timestep": lambda o, s: (_set_step(o, max(s.last_step, 0)),
                                        _refused("RST-103") if s.last_step >= 0 else Expected("written"))[1],
    "backwards timestamp": lambda o, s: (setattr(o, "timestamp", s.last_ts - MINUTE if s.last_ts is not None
                                                 else o.timestamp),
                                         _refused("RST-103") if s.last_ts is not None else Expected("written"))[1],
}


def _offers(n: int, incidents: dict[int, str]) -> list[Offer]:
    """``n`` reference snapshots with the given breakages, each with its expected fate."""
    state = State()
    offers = []
    for position in range(n):
        timestamp, results = copy.deepcopy(POOL[position])
        offer = Offer(timestamp, results, None)
        _set_step(offer, state.last_step + 1)
        if position in incidents:
            offer.kind = incidents[position]
            offer.expected = BREAKAGES[offer.kind](offer, state)
        if offer.expected.placed:
            step = offer.results.get("timestep", state.last_step + 1)
            offer.step = state.last_step = int(step)
            if offer.expected.in_range_time:
                state.last_ts = to_utc(offer.timestamp)
        offers.append(offer)
    return offers


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[Offer], int]:
    n = draw(st.integers(1_700, MAX_SNAPSHOTS))
    kinds = draw(st.permutations(sorted(BREAKAGES)))  # every kind at least once ...
    positions = draw(st.lists(st.integers(0, n - 1), min_size=len(kinds), max_size=len(kinds), unique=True))
    incidents = dict(zip(positions, kinds, strict=True))
    for position, kind in draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(sorted(BREAKAGES))),
                                        min_size=50, max_size=250)):  # ... and 50 to 250 more, anywhere
        incidents.setdefault(position, kind)
    batch_size = draw(st.sampled_from([97, 500, 1_000, 20_000]))  # commits cut the run in different places
    return _offers(n, incidents), batch_size


@dataclass
class Observed:
    refused: dict[int, ComponentError]
    raw_steps: list[int]
    table_steps: dict[str, set[int]]
    quarantine: list[dict[str, Any]]
    error_events: list[dict[str, Any]]


async def _feed(root: Path, offers: list[Offer], batch_size: int) -> Observed:
    settings = load_settings(MODE, data_dir=root, backtest_batch_size=batch_size, queue_size=256)
    refused: dict[int, ComponentError] = {}
    async with ResultsStore(MODE, "backtest", data_dir=root, run_id="prop", settings=settings) as store:
        for position, offer in enumerate(offers):
            try:
                await store.store_timestep_results(offer.timestamp, offer.results)
            except ComponentError as exc:  # a refusal: the engine hears of it and carries on
                refused[position] = exc
    tables = {name: read_table(root, "backtest", name, run_id="prop")
              for name in [*MODE.results_store.result_types, "raw_snapshots", "quarantine"]}
    events = [orjson.loads(line) for line in event_log_path(root).read_text().splitlines()]
    return Observed(
        refused=refused,
        raw_steps=tables["raw_snapshots"].column("timestep").to_pylist(),
        table_steps={name: set(tables[name].column("timestep").to_pylist()) for name in MODE.results_store.result_types},
        quarantine=tables["quarantine"].to_pylist(),
        error_events=[e["data"] for e in events if e["event_type"] == "error"],
    )


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    return lambda: tmp_path_factory.mktemp("property-run")


@settings(max_examples=6, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(run=runs())
def test_every_offered_snapshot_is_written_quarantined_or_refused_and_nothing_else(
        run_dirs: Callable[[], Path], run: tuple[list[Offer], int]) -> None:
    offers, batch_size = run
    observed = asyncio.run(_feed(run_dirs(), offers, batch_size))

    written = {o.step for o in offers if o.expected.fate == "written"}
    quarantined = {o.step: o.expected.path for o in offers if o.expected.fate == "quarantined"}
    refused = {p: o.expected.code for p, o in enumerate(offers) if o.expected.fate == "refused"}
    rule_breaks = {o.step for o in offers if o.expected.rule_break}

    # Refused: exactly those, each with its code and the timestep or key path it is about.
    assert {p: e.error_code for p, e in observed.refused.items()} == refused
    for error in observed.refused.values():
        assert "timestep" in error.details or error.details.get("paths") == ["timestep"]

    # Written: exactly the expected timesteps, once each, in raw_snapshots ...
    assert sorted(observed.raw_steps) == sorted(written)
    # ... and in every table each fills: dust_tracking has a row per snapshot whatever its values;
    # no table holds a row of a quarantined or refused snapshot.
    assert observed.table_steps["dust_tracking"] == written
    for name, steps in observed.table_steps.items():
        assert steps <= written, name
        if name != "execution_log":  # events are sparse: not every snapshot has one
            assert steps >= written - rule_breaks, name

    # Quarantined whole (RST-101): one row per snapshot, at its timestep, naming the key path.
    snapshot_rows = [r for r in observed.quarantine if r["result_type"] == "snapshot"]
    assert sorted(r["timestep"] for r in snapshot_rows) == sorted(quarantined)
    for row in snapshot_rows:
        assert row["error_code"] == "RST-101" and row["column"] == quarantined[row["timestep"]], row["message"]
        assert f"timestep {row['timestep']} " in row["message"]

    # Rule breaks (RST-102): rows of exactly the snapshots that broke a rule, each naming its column.
    rule_rows = [r for r in observed.quarantine if r["result_type"] != "snapshot"]
    assert {r["timestep"] for r in rule_rows} == rule_breaks
    assert all(r["error_code"] == "RST-102" and r["column"] and r["rule"] for r in rule_rows)

    # Nothing lost: every offered timestep is accounted for exactly once.
    assert len(observed.raw_steps) + len(snapshot_rows) + len(observed.refused) == len(offers)

    # The event log says the same: an error event with a code and a timestep or key path for each.
    for event in observed.error_events:
        details = event.get("details", {})
        assert event["error_code"] and ("timestep" in details or details.get("paths") or details.get("timesteps")), event
    logged_101 = {e["details"].get("timestep") for e in observed.error_events if e["error_code"] == "RST-101"}
    assert set(quarantined) <= logged_101
