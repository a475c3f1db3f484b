"""The audit on real stored runs: clean runs of every mode pass, and each injected defect is found and named.

Runs are stored with the reference engine through the store (one UTC day at 5 minutes: 288
timesteps, two funding payments, hourly hedges); defects are written into the stored tables
with the library (``delta_tables.overwrite_run``) or into the files on disk, then audited.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import jinja2
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from prefect.events.schemas.automations import AutomationCore
from typer.testing import CliRunner

from results_store import delta_tables
from results_store.audit import (
    CHECKS,
    audit_run,
    failure_payload,
    read_audits,
    record_audits,
    select_runs,
    write_report,
)
from results_store.audit_checks import delta_legs
from results_store.cli.main import app
from results_store.drive import run_snapshots
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import MODE_NAMES, config_hash, load_mode
from schemas.result_types import ResultType
from schemas.tables import TABLE_KEYS, TABLE_MODELS
from tasks.audit import AUDIT_FAILED_EVENT

ROOT = Path(__file__).resolve().parents[1]
STEPS = 288  # one day at 5 minutes
MN = "usdt_market_neutral"
ALWAYS = {"schema", "completeness.gaps", "completeness.order", "completeness.coverage", "uniqueness",
          "reconciliation.pnl", "integrity", "registry"}
HEDGED = {"btc_basis", "eth_basis", "usdt_market_neutral_no_leverage", MN}
LEVERED = {"eth_leveraged", MN}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean backtest run per mode, each run id its mode's name."""
    root = tmp_path_factory.mktemp("clean")
    for name in MODE_NAMES:
        mode = load_mode(name)
        engine = ReferenceEngine(mode, "2024-01-01", "2024-01-02", "5min", seed=3)
        run_snapshots(mode, engine.iter_snapshots(), data_dir=root, run_id=name)
    return root


@pytest.fixture
def data(clean: Path, tmp_path: Path) -> Path:
    """A copy of the clean runs to damage."""
    return Path(shutil.copytree(clean, tmp_path / "data"))


def rewrite(root: Path, table: str, run_id: str, change: Callable[[pa.Table], pa.Table]) -> None:
    """Replace a run's partition of a stored table with ``change(rows)``, through the library."""
    path = delta_tables.table_path(root, "backtest", table)
    rows = change(delta_tables.read(path, run_id=run_id))
    delta_tables.overwrite_run(path, rows, run_id=run_id, last_timestep=int(pc.max(rows["timestep"]).as_py()))


def set_where(table: pa.Table, column: str, mask: np.ndarray, value: Callable[[np.ndarray], np.ndarray]) -> pa.Table:
    """``table`` with ``column`` replaced by ``value(old)`` on the rows of ``mask``."""
    old = table.column(column)
    values = old.cast(pa.int64()).to_numpy().copy() if pa.types.is_timestamp(old.type) else old.to_numpy().copy()
    values[mask] = value(values[mask])
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values).cast(old.type))


def rows_where(table: pa.Table, **equal: object) -> np.ndarray:
    mask = np.ones(table.num_rows, dtype=bool)
    for column, value in equal.items():
        mask &= np.asarray(table.column(column).to_pylist(), dtype=object) == value
    return mask


def failures(audit: object) -> dict[str, list[str]]:
    """Failed checks and their finding messages."""
    return {name: [f.message for f in check.findings if f.status == "fail"]
            for name, check in audit.checks.items() if check.status == "fail"}  # type: ignore[attr-defined]


def duplicate_a_risk_row(t: pa.Table) -> pa.Table:
    """risk_metrics with its cex_margin_ratio/current_ratio row of timestep 100 written twice."""
    return pa.concat_tables([t, t.filter(pa.array(rows_where(t, timestep=100, metric="current_ratio")))])


def finding_of(audit: object, check: str, table: str, status: str) -> object:
    found = [f for f in audit.checks[check].findings if f.table == table and f.status == status]  # type: ignore[attr-defined]
    assert found, f"no {status} {check} finding on {table}: {failures(audit)}"
    return found[0]


def finding(audit: object, check: str, table: str) -> object:
    return finding_of(audit, check, table, "fail")


# -------------------------------------------------------------------------------- clean runs pass
@pytest.mark.parametrize("name", MODE_NAMES)
def test_a_clean_reference_run_of_every_mode_passes_every_check(clean: Path, name: str) -> None:
    audit = audit_run(clean, "backtest", name)

    assert audit.status == "pass", failures(audit)
    # Only the hedged modes trade (spot and perps); the others move tokens on-chain.
    applicable = ALWAYS | ({"reconciliation.funding", "reconciliation.delta", "reconciliation.trades"}
                           if name in HEDGED else set()) \
        | ({"reconciliation.ltv_alerts"} if name in LEVERED else set())
    assert {c for c, r in audit.checks.items() if r.status == "pass" and r.rows_checked} >= applicable
    assert audit.checks["reconciliation.pnl"].rows_checked == STEPS
    assert audit.rows["raw_snapshots"] == STEPS
    assert audit.checks["drift"].status == "skip"  # no live run of the mode to compare with
    assert list(audit.checks) == list(CHECKS)


def test_windows_of_a_few_timesteps_give_the_same_audit_as_one_window(clean: Path) -> None:
    whole = audit_run(clean, "backtest", MN)
    windowed = audit_run(clean, "backtest", MN, window=25)

    assert windowed.status == "pass", failures(windowed)
    assert {c: r.rows_checked for c, r in windowed.checks.items()} == {c: r.rows_checked for c, r in whole.checks.items()}


def test_a_real_ltv_breach_with_its_alert_passes(tmp_path: Path) -> None:
    # Seed 0 at 15 minutes: the weETH rate dips and the LTV crosses max_ltv at timestep 3161.
    mode = load_mode("eth_leveraged")
    engine = ReferenceEngine(mode, "2024-01-01", "2024-03-01", "15min", seed=0)
    run_snapshots(mode, engine.iter_snapshots(3100, 3200), data_dir=tmp_path, run_id="dip")

    audit = audit_run(tmp_path, "backtest", "dip")

    assert audit.status == "pass", failures(audit)
    assert audit.checks["reconciliation.ltv_alerts"].note.startswith("1 timesteps at or over max_ltv")


# -------------------------------------------------------------------------------- each defect is found
def test_a_duplicated_row_fails_uniqueness_naming_table_timestep_and_key(data: Path) -> None:
    rewrite(data, "risk_metrics", MN, duplicate_a_risk_row)

    audit = audit_run(data, "backtest", MN)

    assert set(failures(audit)) == {"uniqueness", "registry"}  # the registry recorded one row fewer
    dup = finding(audit, "uniqueness", "risk_metrics")
    assert (dup.first_timestep, dup.last_timestep) == (100, 100)
    assert dup.message == ("risk_metrics: 2 rows share the key (run_id, timestep, risk_group, metric) at timestep 100 "
                           "(risk_group/metric = cex_margin_ratio/current_ratio)")


def test_a_missing_timestep_fails_completeness(data: Path) -> None:
    for table in ["raw_snapshots", *load_mode(MN).results_store.result_types]:
        rewrite(data, str(table), MN, lambda t: t.filter(pc.not_equal(t["timestep"], 150)))

    audit = audit_run(data, "backtest", MN)

    assert set(failures(audit)) == {"completeness.gaps", "registry"}
    assert finding(audit, "completeness.gaps", "raw_snapshots").message == "raw_snapshots: missing at timestep 150"


def test_a_table_missing_a_timestep_fails_coverage(data: Path) -> None:
    rewrite(data, "balance_sheet", MN, lambda t: t.filter(pc.not_equal(t["timestep"], 150)))

    audit = audit_run(data, "backtest", MN)

    assert set(failures(audit)) == {"completeness.coverage", "registry"}
    assert finding(audit, "completeness.coverage", "balance_sheet").message == \
        "balance_sheet: no rows at timestep 150, which raw_snapshots has"


def test_a_timestamp_going_backwards_fails_order(data: Path) -> None:
    ten_minutes = 600_000_000
    rewrite(data, "balance_sheet", MN,
            lambda t: set_where(t, "timestamp", rows_where(t, timestep=120), lambda ts: ts - ten_minutes))

    audit = audit_run(data, "backtest", MN)

    assert set(failures(audit)) == {"completeness.order", "completeness.coverage"}
    back = finding(audit, "completeness.order", "balance_sheet")
    assert back.message == ("balance_sheet: timestamp 2024-01-01T09:50:00.000000 is before the previous timestep's "
                            "2024-01-01T09:55:00.000000 at timestep 120")
    assert "differs from raw_snapshots' 2024-01-01T10:00:00.000000" in finding(audit, "completeness.coverage",
                                                                             "balance_sheet").message


def test_an_attribution_component_off_by_one_percent_fails_pnl_reconciliation(data: Path) -> None:
    rewrite(data, "pnl_attribution", MN, lambda t: set_where(
        t, "value", rows_where(t, metric="transaction_costs") & (t["timestep"].to_numpy() >= 100), lambda v: v * 1.01))

    audit = audit_run(data, "backtest", MN)

    assert set(failures(audit)) == {"reconciliation.pnl"}
    cumulative = finding(audit, "reconciliation.pnl", "pnl_attribution")
    assert (cumulative.first_timestep, cumulative.last_timestep) == (100, STEPS - 1)
    assert cumulative.message.startswith("pnl_attribution: sum of components ")
    assert "!= balance-based PnL " in cumulative.message and "at timesteps 100-287 (tol 1;" in cumulative.message
    gap = cumulative.values["attr"] - cumulative.values["pnl"]
    assert gap == pytest.approx(cumulative.values["gap"]) and abs(gap) > 1.0
    steps = [f.message for f in audit.checks["reconciliation.pnl"].findings]
    assert any(m.startswith("pnl_attribution: change in sum of components") and m.endswith("at timestep 100 (tol 0.01)")
               for m in steps)


def test_funding_that_does_not_match_fails_funding_reconciliation(data: Path) -> None:
    funding = delta_tables.read(delta_tables.table_path(data, "backtest", "funding_tracking"), run_id=MN)
    paid = rows_where(funding, venue="binance") & (funding["payment"].to_numpy() != 0)
    step = int(funding["timestep"].to_numpy()[paid][0])
    rewrite(data, "funding_tracking", MN, lambda t: set_where(
        t, "payment", rows_where(t, venue="binance", timestep=step), lambda v: v * 1.5))

    audit = audit_run(data, "backtest", MN)

    assert set(failures(audit)) == {"reconciliation.funding"}
    messages = failures(audit)["reconciliation.funding"]
    assert any(m.startswith("funding_tracking: payments over venues") and f"at timestep {step}" in m for m in messages)
    assert any(m.startswith("funding_tracking: binance: cumulative moved by") for m in messages)
    assert any(m.startswith("execution_log: FUNDING_PAYMENT of") for m in messages)


def test_an_ltv_breach_without_an_alert_fails(data: Path) -> None:
    lev = "eth_leveraged"
    rewrite(data, "risk_metrics", lev, lambda t: set_where(
        t, "value", rows_where(t, timestep=200, metric="current_ltv"), lambda v: np.full_like(v, 0.915)))
    rewrite(data, "leverage_tracking", lev, lambda t: set_where(
        t, "current_ltv", rows_where(t, timestep=200), lambda v: np.full_like(v, 0.915)))

    audit = audit_run(data, "backtest", lev)

    assert set(failures(audit)) == {"reconciliation.ltv_alerts"}
    assert finding(audit, "reconciliation.ltv_alerts", "risk_metrics").message == (
        "risk_metrics: LTV 0.9150 >= max_ltv 0.9100 with no matching risk alert (liquidation_risk.at_risk is 0 and "
        "risk_alerts has no LTV alert) at timestep 200")


def test_an_orphan_trade_event_fails_the_trade_check(data: Path) -> None:
    def orphan(t: pa.Table) -> pa.Table:
        at = pa.scalar(1_704_067_200_000_000 + 7 * 300_000_000, pa.timestamp("us", tz="UTC"))  # timestep 7, 00:35
        details = orjson.dumps({"venue": "binance", "instrument": "ETHUSDT-PERP", "side": "sell", "size": 1.0}).decode()
        row = pa.table({"run_id": [MN], "timestamp": [at], "timestep": [7], "event_order": [99],
                        "event_type": ["TRADE_EXECUTED"], "event_timestamp": [at], "details": [details]}, schema=t.schema)
        return pa.concat_tables([t, row])
    rewrite(data, "execution_log", MN, orphan)

    audit = audit_run(data, "backtest", MN)

    assert set(failures(audit)) == {"reconciliation.trades", "registry"}
    assert finding(audit, "reconciliation.trades", "execution_log").message == (
        "execution_log: TRADE_EXECUTED (binance ETHUSDT-PERP sell 1.0) has no matching balance change at binance "
        "at timestep 7")


def test_a_byte_flipped_in_a_result_file_fails_the_audit(data: Path) -> None:
    # The corruption the lifecycle issue reports: "USDT" became "TSDT" in a balance_sheet file.
    path = delta_tables.table_path(data, "backtest", "balance_sheet")
    file = path / delta_tables.data_files(path, run_id=MN)[0]
    raw = bytearray(file.read_bytes())
    at = raw.find(b"USDT")
    if at >= 0:
        raw[at:at + 4] = b"TSDT"
    else:  # a codec that leaves no literal: damage the middle of the file instead
        raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    file.write_bytes(bytes(raw))

    audit = audit_run(data, "backtest", MN)

    # The file's recorded sha256 no longer matches; where the flip still decodes, the values break the schema too.
    assert set(failures(audit)) in ({"integrity"}, {"integrity", "schema"})
    corrupt = finding(audit, "integrity", "balance_sheet")
    assert corrupt.message.startswith("balance_sheet: data file ") and " is corrupt " in corrupt.message


def test_a_raw_payload_that_no_longer_matches_its_sha256_fails_integrity(data: Path) -> None:
    def tamper(t: pa.Table) -> pa.Table:
        payloads = t["payload"].to_pylist()
        i = int(np.flatnonzero(t["timestep"].to_numpy() == 42)[0])
        payloads[i] = payloads[i].replace('"USDT"', '"TSDT"', 1)
        return t.set_column(t.schema.get_field_index("payload"), "payload", pa.array(payloads))
    rewrite(data, "raw_snapshots", MN, tamper)

    audit = audit_run(data, "backtest", MN)

    assert set(failures(audit)) == {"integrity"}
    bad = finding(audit, "integrity", "raw_snapshots")
    assert (bad.first_timestep, bad.message.split(" != ")[0].split(" sha256 ")[0]) == (42, "raw_snapshots: payload")


def test_a_truncated_data_file_fails_integrity(data: Path) -> None:
    path = delta_tables.table_path(data, "backtest", "balance_sheet")
    file = path / delta_tables.data_files(path, run_id=MN)[0]
    file.write_bytes(file.read_bytes()[:-100])

    audit = audit_run(data, "backtest", MN)

    assert set(failures(audit)) == {"integrity"}
    messages = failures(audit)["integrity"]
    assert any("balance_sheet: data file" in m and "but the Delta log records" in m for m in messages)
    assert any(m.startswith("balance_sheet: data cannot be read") for m in messages)


def test_a_defect_on_a_window_edge_is_found_by_the_carried_over_checks(data: Path) -> None:
    # Timestep 128 starts a window of 32: its change is measured against the previous window's last timestep.
    rewrite(data, "pnl_attribution", MN, lambda t: set_where(
        t, "value", rows_where(t, timestep=128, metric="transaction_costs"), lambda v: v * 1.01))

    audit = audit_run(data, "backtest", MN, window=32)

    steps = {(f.first_timestep, f.last_timestep) for f in audit.checks["reconciliation.pnl"].findings
             if "change in sum" in f.message}
    assert steps == {(128, 129)}  # 128 against 127 (the previous window's), 129 against 128


def test_quarantined_rows_are_reported_as_warnings_and_explain_their_gaps(tmp_path: Path) -> None:
    mode = load_mode("pure_lending")
    snapshots = list(ReferenceEngine(mode, "2024-01-01", "2024-01-01 04:00", "5min", seed=1).iter_snapshots())
    del snapshots[10][1]["pnl_calculator"]["balance_based"]  # breaks the contract: the whole snapshot (RST-101)
    snapshots[20][1]["position_monitor"]["wallet"]["USDT"] = -1.0  # breaks a rule: that balance row (RST-102)
    run_snapshots(mode, snapshots, data_dir=tmp_path, run_id="q")

    audit = audit_run(tmp_path, "backtest", "q")

    assert audit.status == "warn", failures(audit)
    quarantine = {f.message for f in audit.checks["completeness.quarantine"].findings}
    assert quarantine == {"snapshot: 1 rows quarantined by rule 'snapshot_contract' (RST-101)",
                          "balance_sheet: 1 rows quarantined by rule 'non_negative_balance' (RST-102)"}
    gap = finding_of(audit, "completeness.gaps", "raw_snapshots", "warn")
    assert gap.message == "raw_snapshots: missing at timestep 10: the snapshots were quarantined (RST-101)"


# -------------------------------------------------------------------------------- reports, history, selection
def test_the_report_goes_to_the_runs_results_folder_as_markdown_and_json(data: Path) -> None:
    rewrite(data, "risk_metrics", MN, duplicate_a_risk_row)
    audit = audit_run(data, "backtest", MN)

    paths = write_report(data, audit)

    folder = data / "backtest" / "results" / MN
    assert paths == {"markdown": str(folder / "audit.md"), "json": str(folder / "audit.json")}
    markdown = (folder / "audit.md").read_text()
    assert markdown.startswith(f"# Audit of run `{MN}`: FAILED") and "**failed checks: uniqueness, registry**" in markdown
    assert "| uniqueness | **FAIL** |" in markdown and "2 rows share the key" in markdown
    report = orjson.loads((folder / "audit.json").read_bytes())
    assert report["status"] == "fail" and report["failed_checks"] == ["uniqueness", "registry"]
    assert report["checks"]["uniqueness"]["findings"][0]["first_timestep"] == 100


def test_audits_are_recorded_and_the_nightly_rule_picks_runs_finished_since_their_last_audit(data: Path) -> None:
    due = select_runs(data, "backtest")
    assert sorted(due) == sorted(MODE_NAMES)

    record_audits(data, [audit_run(data, "backtest", "pure_lending")])

    assert "pure_lending" not in select_runs(data, "backtest")
    history = read_audits(data, "backtest", run_id="pure_lending")
    assert list(history["check"]) == list(CHECKS) and set(history["status"]) <= {"pass", "skip"}
    assert select_runs(data, "backtest", run_ids=["pure_lending", "nope"]) == ["pure_lending"]
    assert select_runs(data, "backtest", all_runs=True) == due


def test_the_nightly_rule_audits_the_live_runs_of_the_previous_day(tmp_path: Path) -> None:
    mode = load_mode("btc_basis")
    engine = ReferenceEngine(mode, "2024-01-01", "2024-01-01 06:00", "5min", seed=1)
    run_snapshots(mode, engine.iter_snapshots(), data_dir=tmp_path, run_id="live-day", execution_mode="live")
    today = delta_tables.read(delta_tables.table_path(tmp_path, "live", "runs"))["recorded_at"][0].as_py()

    assert select_runs(tmp_path, "live", now=today.replace(hour=23) + np.timedelta64(1, "h")) == ["live-day"]
    assert select_runs(tmp_path, "live", now=today) == []  # yesterday nothing ran


def test_a_live_run_is_compared_with_the_newest_backtest_of_its_mode(clean: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(clean, tmp_path / "data"))
    mode = load_mode(MN)
    engine = ReferenceEngine(mode, "2024-02-01", "2024-02-02", "5min", seed=9)
    run_snapshots(mode, engine.iter_snapshots(), data_dir=root, run_id="live-mn", execution_mode="live")

    audit = audit_run(root, "live", "live-mn")

    drift = audit.checks["drift"]
    assert drift.status in {"pass", "warn"} and drift.note.startswith(f"against backtest run {MN}: ")
    assert "net_delta KS" in drift.note and "funding_rate_paid" not in drift.note  # 6 payments: too few to compare


# -------------------------------------------------------------------------------- declarations, CLI, automation
def test_every_table_declares_a_key_of_its_own_columns() -> None:
    for rtype, model in TABLE_MODELS.items():
        columns = list(model.to_schema().columns)
        assert set(TABLE_KEYS[rtype]) <= set(columns) and TABLE_KEYS[rtype][:2] == ("run_id", "timestep"), rtype
    assert set(TABLE_KEYS) == set(ResultType)


def test_audit_tolerances_have_defaults_and_stay_out_of_the_run_identity() -> None:
    mode = load_mode(MN)
    looser = mode.model_copy(update={"component_config": {"results_store": mode.results_store.model_copy(
        update={"audit": mode.results_store.audit.model_copy(update={"ltv_alert_threshold": "liquidation_threshold"})})}})
    assert mode.results_store.audit.tolerances.pnl_cumulative == 1e-6
    assert config_hash(looser) == config_hash(mode)


def test_delta_legs_follow_the_strategy() -> None:
    legs = delta_legs(load_mode(MN), "ETH")
    assert (legs.direct, legs.wrapped, legs.collateral, legs.debt) == (
        {"ETH", "WETH"}, {"weETH", "aWeETH"}, {"aWeETH"}, {"variableDebtWETH"})
    assert delta_legs(load_mode("btc_basis"), "BTC").wrapped == frozenset()


def test_the_cli_exits_1_on_a_failed_audit_and_prints_json(data: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "btc_basis", "--data-dir", str(data)])
    assert ok.exit_code == 0, ok.output
    assert "btc_basis" in ok.output and "pass" in ok.output

    rewrite(data, "risk_metrics", MN, duplicate_a_risk_row)
    failed = runner.invoke(app, ["audit", MN, "--json", "--data-dir", str(data)])
    assert failed.exit_code == 1
    [report] = orjson.loads(failed.stdout)
    assert report["run_id"] == MN and report["failed_checks"] == ["uniqueness", "registry"]

    unknown = runner.invoke(app, ["audit", "nope", "--data-dir", str(data)])
    assert unknown.exit_code == 2 and "no backtest or live run named nope" in unknown.output
    history = runner.invoke(app, ["audits", MN, "--json", "--data-dir", str(data)])
    assert {r["status"] for r in orjson.loads(history.stdout) if r["check"] == "uniqueness"} == {"fail"}


def test_the_automation_turns_the_failure_event_into_a_notification(data: Path) -> None:
    text = (ROOT / "automations" / "audit-failed.yaml").read_text()
    automation = AutomationCore.model_validate(yaml.safe_load(
        text.replace("${AUDIT_NOTIFICATION_BLOCK_ID}", str(uuid.uuid4()))))
    assert automation.trigger.expect == {AUDIT_FAILED_EVENT}  # type: ignore[union-attr]
    [action] = automation.actions
    assert action.type == "send-notification"

    rewrite(data, "risk_metrics", MN, duplicate_a_risk_row)
    audit = audit_run(data, "backtest", MN)
    event = {"payload": failure_payload(audit)}
    body = jinja2.Environment().from_string(action.body).render(event=event)  # type: ignore[union-attr]
    assert f"run {MN} ({MN})" in body and "uniqueness, registry" in body and "2 rows share the key" in body
