"""A null in a column the tables declare non-nullable is a schema finding of the audit, never a crash.

The store cannot write such a row (delta-rs enforces the Delta schema's ``nullable: false``), but
another writer can: an older version, a tool that rewrites files, a hand repair. The audit is what a
user runs on data like that, so it must name the table, the column, the rule and the timesteps, and
fail the run.

The damage is a commit of its own, made the way such a writer makes it: the run's partition of a
table is replaced by one Parquet file written with pyarrow (nulls included) through a Delta
transaction, and the commit is recorded in the table's checksum manifest as the store records its
own. The Delta log, the files' sizes and the manifest all agree, so what the audit reports is the
nulls alone (and what the rows that hold them can no longer vouch for).
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from deltalake.transaction import AddAction
from typer.testing import CliRunner

from results_store import checksums, delta_tables
from results_store.audit import RunAudit, audit_run
from results_store.audit_checks import Finding
from results_store.cli.main import app
from results_store.drive import run_snapshots
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import load_mode
from schemas.store_tables import QUARANTINE, RAW_SNAPSHOTS

MN = "usdt_market_neutral"
RULE = "'not_nullable'"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean usdt_market_neutral run of a day at 5 minutes (288 timesteps)."""
    root = tmp_path_factory.mktemp("nulls")
    mode = load_mode(MN)
    engine = ReferenceEngine(mode, "2024-01-01", "2024-01-02", "5min", seed=3)
    run_snapshots(mode, engine.iter_snapshots(), data_dir=root, run_id=MN)
    return root


@pytest.fixture
def data(stored: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(stored, tmp_path / "data"))


def _with_nulls(table: pa.Table, column: str, mask: np.ndarray) -> pa.Table:
    """``table`` with ``column`` null on the rows of ``mask`` (the field made nullable to hold them)."""
    old = table.column(column).combine_chunks()
    nulled = pc.if_else(pa.array(mask), pa.nulls(len(mask), old.type), old)
    field = table.schema.field(column).with_nullable(True)
    return table.set_column(table.schema.get_field_index(column), field, nulled)


def store_nulls(root: Path, table: str, column: str, steps: list[int], *, every: bool = False) -> int:
    """Replace the run's partition of ``table`` by one Parquet file with ``column`` null at ``steps``.

    The first row of each of those timesteps (each of its rows with ``every``) is nulled. Committed
    with a Delta transaction and recorded in the checksum manifest, so log, sizes and checksums agree
    with the file. Returns the number of rows nulled.
    """
    path = delta_tables.table_path(root, "backtest", table)
    # The files as they are (through Delta, a file that already holds a null would not read).
    rows = pa.concat_tables([pq.read_table(f.path) for f in delta_tables.table_files(path).runs([MN])[0][1]],
                            promote_options="permissive").sort_by("timestep")
    at = np.isin(rows.column("timestep").to_numpy(), steps)
    if not every:
        first = np.zeros(rows.num_rows, dtype=bool)
        first[[int(np.flatnonzero(at & (rows.column("timestep").to_numpy() == s))[0]) for s in steps]] = True
        at = first
    rows = _with_nulls(rows, column, at)
    relative = f"{delta_tables.PARTITION_COLUMN}={MN}/part-00000-{uuid.uuid4()}-c000.zstd.parquet"
    pq.write_table(rows, path / relative, compression="zstd")
    size = (path / relative).stat().st_size
    delta = DeltaTable(str(path))
    delta.create_write_transaction(
        [AddAction(relative, size, {delta_tables.PARTITION_COLUMN: MN}, int(time.time() * 1000), True,
                   orjson.dumps({"numRecords": rows.num_rows}).decode())],
        mode="overwrite", schema=delta.schema(), partition_by=[delta_tables.PARTITION_COLUMN],
        partition_filters=[(delta_tables.PARTITION_COLUMN, "=", MN)])
    checksums.record_commit(path, checksums.load_latest_version(path))
    return int(at.sum())


def failed(audit: RunAudit) -> dict[str, list[str]]:
    return {name: [f.message for f in check.findings if f.status == "fail"]
            for name, check in audit.checks.items() if check.status == "fail"}


def null_finding(audit: RunAudit, table: str, column: str) -> Finding:
    found = [f for f in audit.checks["schema"].findings
             if f.table == table and f.status == "fail" and f"column {column} " in f.message and RULE in f.message]
    assert found, f"no schema finding of the nulls in {table}.{column}: {failed(audit)}"
    return found[0]


def test_the_damage_is_committed_and_recorded_so_only_the_nulls_are_wrong(data: Path) -> None:
    store_nulls(data, "balance_sheet", "amount", [50])
    path = delta_tables.table_path(data, "backtest", "balance_sheet")
    [entry] = delta_tables.table_files(path).runs([MN])[0][1]

    assert pq.read_table(entry.path).column("amount").null_count == 1
    assert Path(entry.path).stat().st_size == entry.size_bytes
    assert checksums.verify_table(data, "backtest", "balance_sheet", run_id=MN).problems == []


# ------------------------------------------------------------------------------ a null is a schema finding
@pytest.mark.parametrize(("table", "column", "steps"), [
    pytest.param("balance_sheet", "amount", [50, 51], id="balance_sheet.amount (float)"),
    pytest.param("risk_metrics", "metric", [60], id="risk_metrics.metric (a name, dictionary-encoded)"),
    pytest.param("pnl_attribution", "value", [70, 200], id="pnl_attribution.value (float)"),
    pytest.param("leverage_tracking", "at_risk", [80], id="leverage_tracking.at_risk (bool)"),
    pytest.param("execution_log", "details", [], id="execution_log.details (free text)"),
    pytest.param("execution_log", "event_order", [], id="execution_log.event_order (int)"),
    pytest.param("delta_tracking", "timestamp", [90], id="delta_tracking.timestamp"),
    pytest.param("funding_tracking", "venue", [96], id="funding_tracking.venue (a key column)"),
])
def test_a_null_in_a_non_nullable_column_fails_the_schema_check_naming_table_column_rule_and_timesteps(
        data: Path, table: str, column: str, steps: list[int]) -> None:
    if not steps:  # execution_log has rows only where events happened: its first two event timesteps
        path = delta_tables.table_path(data, "backtest", table)
        steps = sorted(set(delta_tables.read(path, run_id=MN).column("timestep").to_pylist()))[:2]
    nulled = store_nulls(data, table, column, steps)

    audit = audit_run(data, "backtest", MN)

    # The nulls alone: the log, sizes and checksums agree (integrity), every stored row is counted
    # (registry), and the rows with nulls are not reported again by coverage or the reconciliations.
    assert audit.status == "fail" and audit.failed_checks == ["schema"], failed(audit)
    finding = null_finding(audit, table, column)
    assert finding.message.startswith(f"{table}: column {column} breaks rule {RULE}")
    assert {(f.first_timestep, f.last_timestep) for f in audit.checks["schema"].findings} == \
        ({(steps[0], steps[-1])} if steps[-1] - steps[0] == len(steps) - 1 else {(s, s) for s in steps})
    assert nulled == len(steps) and audit.checks["schema"].failing == len(steps)


def test_a_float_null_is_named_as_a_null_not_as_a_non_finite_number(data: Path) -> None:
    store_nulls(data, "balance_sheet", "amount", [50, 51])

    audit = audit_run(data, "backtest", MN)

    finding = null_finding(audit, "balance_sheet", "amount")
    assert finding.message.startswith("balance_sheet: column amount breaks rule 'not_nullable'")
    assert (finding.first_timestep, finding.last_timestep) == (50, 51)
    assert not any("finite" in m for m in failed(audit)["schema"])


def test_nulls_are_found_the_same_window_by_window(data: Path) -> None:
    # 25-timestep windows: 50 starts a window, 51 is in it, 200 is in another.
    store_nulls(data, "balance_sheet", "amount", [50, 51, 200], every=True)

    whole, windowed = audit_run(data, "backtest", MN), audit_run(data, "backtest", MN, window=25)

    assert whole.failed_checks == windowed.failed_checks == ["schema"], failed(windowed)
    assert [f.message for f in whole.checks["schema"].findings] == [f.message for f in windowed.checks["schema"].findings]
    assert [(f.first_timestep, f.last_timestep, f.message) for f in whole.checks["schema"].findings] == [
        (50, 51, "balance_sheet: column amount breaks rule 'not_nullable' (a null in a column declared non-nullable) "
                 "at timesteps 50-51"),
        (200, 200, "balance_sheet: column amount breaks rule 'not_nullable' (a null in a column declared non-nullable) "
                   "at timestep 200"),
        (50, 200, "balance_sheet: 27 rows in all break it"),  # 9 rows per timestep
    ]


def test_a_null_timestep_is_reported_with_its_row_count_not_lost(data: Path) -> None:
    store_nulls(data, "balance_sheet", "timestep", [120, 121])

    audit = audit_run(data, "backtest", MN)

    assert audit.status == "fail" and "schema" in audit.failed_checks, failed(audit)
    finding = null_finding(audit, "balance_sheet", "timestep")
    assert finding.first_timestep is None and finding.message == (
        "balance_sheet: column timestep breaks rule 'not_nullable' (a null in a column declared non-nullable) in 2 rows, "
        "which no timestep places")
    assert audit.checks["registry"].status == "pass", failed(audit)  # counted, though no window could place them
    # Where they belong nobody knows: the balance sheet at 120 and 121 lacks them.
    assert set(audit.failed_checks) <= {"schema", "reconciliation.delta"}


def test_a_raw_snapshots_table_whose_every_timestep_is_null_is_reported(data: Path) -> None:
    store_nulls(data, RAW_SNAPSHOTS, "timestep", list(range(288)), every=True)

    audit = audit_run(data, "backtest", MN)

    assert null_finding(audit, RAW_SNAPSHOTS, "timestep").message.endswith("in 288 rows, which no timestep places")
    assert "raw_snapshots: none of the run's rows has a timestep" in failed(audit)["completeness.coverage"]
    assert audit.checks["registry"].status == "pass", failed(audit)


@pytest.mark.parametrize("column", ["timestamp", "payload", "payload_sha256"])
def test_a_null_in_raw_snapshots_is_a_schema_finding(data: Path, column: str) -> None:
    store_nulls(data, RAW_SNAPSHOTS, column, [42])

    audit = audit_run(data, "backtest", MN)

    # A raw snapshot without its timestamp still counts for gaps and coverage, and is compared with no time.
    assert audit.status == "fail" and audit.failed_checks == ["schema"], failed(audit)
    finding = null_finding(audit, RAW_SNAPSHOTS, column)
    assert (finding.first_timestep, finding.last_timestep) == (42, 42)


def test_a_raw_snapshot_without_payload_or_digest_names_both(data: Path) -> None:
    store_nulls(data, RAW_SNAPSHOTS, "payload", [42])
    store_nulls(data, RAW_SNAPSHOTS, "payload_sha256", [42, 43])

    audit = audit_run(data, "backtest", MN)

    assert audit.failed_checks == ["schema"], failed(audit)  # nothing to hash or compare: not an integrity finding
    assert (null_finding(audit, RAW_SNAPSHOTS, "payload").first_timestep,
            null_finding(audit, RAW_SNAPSHOTS, "payload").last_timestep) == (42, 42)
    assert (null_finding(audit, RAW_SNAPSHOTS, "payload_sha256").first_timestep,
            null_finding(audit, RAW_SNAPSHOTS, "payload_sha256").last_timestep) == (42, 43)


@pytest.mark.parametrize("column", ["timestep", "result_type", "rule", "error_code"])
def test_a_null_in_the_quarantine_is_a_schema_finding(tmp_path: Path, column: str) -> None:
    mode = load_mode("pure_lending")
    snapshots = list(ReferenceEngine(mode, "2024-01-01", "2024-01-01 04:00", "5min", seed=1).iter_snapshots())
    del snapshots[10][1]["pnl_calculator"]["balance_based"]  # the whole snapshot is quarantined (RST-101)
    run_snapshots(mode, snapshots, data_dir=tmp_path, run_id=MN)
    store_nulls(tmp_path, QUARANTINE, column, [10])

    audit = audit_run(tmp_path, "backtest", MN)

    finding = null_finding(audit, QUARANTINE, column)
    assert (finding.first_timestep, finding.last_timestep) == ((None, None) if column == "timestep" else (10, 10))
    # The row no longer says what was quarantined: timestep 10's gap is unexplained.
    assert set(audit.failed_checks) == {"schema", "completeness.gaps"}, failed(audit)
    assert failed(audit)["completeness.gaps"] == ["raw_snapshots: missing at timestep 10"]


# ------------------------------------------------------------------------------ and the CLI says so
def test_the_cli_exits_1_naming_the_null_finding_not_with_a_traceback(data: Path) -> None:
    store_nulls(data, "balance_sheet", "amount", [50, 51])
    runner = CliRunner()

    text = runner.invoke(app, ["audit", MN, "--data-dir", str(data)])
    assert text.exit_code == 1, text.output
    assert text.exception is None or isinstance(text.exception, SystemExit), repr(text.exception)
    assert "Traceback" not in text.output and "ValueError" not in text.output
    assert f"schema: balance_sheet: column amount breaks rule {RULE}" in text.output
    assert "at timesteps 50-51" in text.output

    json = runner.invoke(app, ["audit", MN, "--json", "--data-dir", str(data)])
    assert json.exit_code == 1, json.output
    [report] = orjson.loads(json.stdout)
    assert report["status"] == "fail" and "schema" in report["failed_checks"]
    [first] = [f for f in report["checks"]["schema"]["findings"] if f["table"] == "balance_sheet"]
    assert (first["first_timestep"], first["last_timestep"]) == (50, 51) and RULE in first["message"]
    history = runner.invoke(app, ["audits", MN, "--json", "--data-dir", str(data)])
    assert {r["status"] for r in orjson.loads(history.stdout) if r["check"] == "schema"} == {"fail"}
