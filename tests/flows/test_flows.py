"""Each flow under one Prefect test harness, with its effects on real Delta tables in tmp_path."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from typer.testing import CliRunner

from flows.audit_results import audit_results
from flows.backtest_inbox import backtest_inbox
from flows.backtest_results import backtest_results
from flows.backup import backup
from flows.checksum import checksum
from flows.live_snapshots import live_snapshots
from flows.rerun_results import rerun_results
from flows.retention import retention
from results_store.cli.main import app
from results_store.inbox import InboxFilesFailed, read_ledger
from results_store.reading import read_table, table_version
from results_store.runs import latest_run
from results_store.simulator.jsonl import write_jsonl
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.result_types import ResultType

# Prefect's leaked keep-alive sockets are filtered for the whole suite in pyproject.toml.
pytestmark = pytest.mark.usefixtures("prefect_harness")


async def _artifacts(*keys: str) -> dict[str, Any]:
    """The latest artifact per key."""
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))))
    latest: dict[str, Any] = {}
    for artifact in sorted(found, key=lambda a: a.created or 0):
        latest[str(artifact.key)] = artifact
    return latest


async def _task_run_names(flow_run_id: UUID | None) -> list[str]:
    assert flow_run_id is not None
    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(r.name.rsplit("-", 1)[0] for r in runs)


def _record(data_dir: Path, run_id: str, execution_mode: str = "backtest") -> dict[str, Any]:
    record = latest_run(data_dir, execution_mode, run_id)
    assert record is not None, f"no run {run_id} in the registry"
    return record


def _version(data_dir: Path, table: str) -> int:
    version = table_version(data_dir, "backtest", table)
    assert version is not None, f"no table {table}"
    return version


def _snapshot_file(path: Path, mode: str = "eth_basis", steps: int = 48, seed: int = 3) -> Path:
    engine = ReferenceEngine(load_mode(mode), "2024-01-01", "2024-01-03", "1h", seed=seed)
    write_jsonl(engine.iter_snapshots(0, steps), path)
    return path


def _age(path: Path, seconds: float = 3600) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


async def test_backtest_results_writes_the_tables_and_publishes_the_summary(tmp_path):
    state = await backtest_results(mode="btc_basis", run_id="bt-1", start="2024-01-01", end="2024-01-02",
                                   freq="15min", data_dir=str(tmp_path), return_state=True)
    summary = await state.aresult()
    assert summary["timesteps_received"] == 96 and summary["status"] == "finished"
    assert summary["rows"]["funding_tracking"] == 96 * 3  # three funding venues
    assert summary["rows"]["raw_snapshots"] == 96 and summary["quarantined"] == 0
    assert read_table(tmp_path, "backtest", "delta_tracking", run_id="bt-1").num_rows == 96
    assert not (tmp_path / "backtest" / "leverage_tracking").exists()  # not a btc_basis table
    assert _record(tmp_path, "bt-1")["status"] == "finished"

    artifacts = await _artifacts("run-summary-bt-1", "run-tables-bt-1")
    assert "96" in artifacts["run-summary-bt-1"].data
    table = artifacts["run-tables-bt-1"].data
    assert '"table": "funding_tracking"' in table and '"quarantined"' in table and '"commits"' in table
    # Prefect's overhead stays per run, not per timestep: four task runs (store, summary, report), whatever the length.
    assert await _task_run_names(state.state_details.flow_run_id) == [
        "publish-run-report", "publish-run-summary", "store-snapshots", "write-run-report"]

    again = await backtest_results(mode="btc_basis", run_id="bt-1", start="2024-01-01", end="2024-01-02",
                                   freq="15min", data_dir=str(tmp_path))
    assert again["timesteps_skipped"] == 96  # the same run_id resumes: everything is committed already
    assert read_table(tmp_path, "backtest", "raw_snapshots", run_id="bt-1").num_rows == 96


async def test_a_snapshot_file_with_a_bad_line_quarantines_it_and_writes_every_good_line(tmp_path):
    path = _snapshot_file(tmp_path / "in.jsonl", steps=5)
    path.write_bytes(path.read_bytes() + b"{broken\n")
    summary = await backtest_results(mode="eth_basis", run_id="ok", snapshot_file=str(path), data_dir=str(tmp_path))
    assert summary["status"] == "finished"
    assert summary["file_lines"] == {"read": 6, "written": 5, "quarantined": 1, "refused": 0}
    assert read_table(tmp_path, "backtest", "raw_snapshots", run_id="ok").num_rows == 5
    [row] = [r for r in read_table(tmp_path, "backtest", "quarantine", run_id="ok").to_pylist()
             if r["rule"] == "unparseable_line"]
    assert row["column"] == "line 6" and row["payload"] == "{broken" and "in.jsonl:6" in row["message"]


async def test_a_corrupt_snapshot_file_with_strict_file_fails_the_run_without_retrying(tmp_path):
    path = _snapshot_file(tmp_path / "in.jsonl", steps=5)
    path.write_bytes(path.read_bytes() + b"{broken\n")
    state = await backtest_results(mode="eth_basis", run_id="bad", snapshot_file=str(path), data_dir=str(tmp_path),
                                   strict_file=True, return_state=True)
    assert state.is_failed()
    assert "RST-101" in str(state.message) and "in.jsonl:6" in str(state.message)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    store_run = next(r for r in runs if r.name.startswith("store-snapshots"))
    assert store_run.run_count == 1  # bad input is terminal: no retry


async def test_inbox_ingests_each_finished_file_once_and_leaves_the_rest(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    done = _snapshot_file(inbox / "eth_basis__night-1.jsonl")
    done.with_name(done.name + ".done").touch()
    plain = _snapshot_file(inbox / "plain-run.jsonl", mode="btc_basis", steps=12)  # mode from the parameter
    _age(plain)
    half = inbox / "eth_basis__half.jsonl"
    half.write_bytes(done.read_bytes()[: len(done.read_bytes()) // 2])  # still being written: fresh mtime
    corrupt = inbox / "eth_basis__broken.jsonl"
    corrupt.write_bytes(done.read_bytes()[:2000] + b"\n{not json\n")
    _age(corrupt)

    state = await backtest_inbox(mode="btc_basis", data_dir=str(tmp_path), settle_seconds=60, return_state=True)

    assert state.is_failed() and "eth_basis__broken.jsonl" in str(state.message)  # a failed file shows in the UI
    processed = sorted(p.name for p in (inbox / "processed").iterdir())
    assert processed == ["eth_basis__night-1.jsonl", "plain-run.jsonl"]
    assert sorted(p.name for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")) == [
        "eth_basis__half.jsonl"]  # left alone
    reason = (inbox / "failed" / "eth_basis__broken.jsonl.reason.txt").read_text()
    assert reason.startswith("RST-101") and "eth_basis__broken.jsonl:" in reason
    assert latest_run(tmp_path, "backtest", "broken") is None  # nothing written for the corrupt file
    assert read_table(tmp_path, "backtest", "raw_snapshots", run_id="night-1").num_rows == 48
    assert _record(tmp_path, "plain-run")["mode"] == "btc_basis"
    assert not (inbox / "eth_basis__night-1.jsonl.done").exists()
    assert "| eth_basis__half.jsonl | waiting |" in (await _artifacts("inbox-scan"))["inbox-scan"].data

    # The same content again, renamed: skipped, nothing stored twice.
    renamed = inbox / "eth_basis__night-1-again.jsonl"
    renamed.write_bytes((inbox / "processed" / "eth_basis__night-1.jsonl").read_bytes())
    _age(renamed)
    outcome = await backtest_inbox(data_dir=str(tmp_path), settle_seconds=60)
    assert outcome["skipped"] == ["eth_basis__night-1-again.jsonl"] and outcome["processed"] == []
    assert outcome["waiting"] == ["eth_basis__half.jsonl"]
    assert latest_run(tmp_path, "backtest", "night-1-again") is None
    assert read_table(tmp_path, "backtest", "raw_snapshots", run_id="night-1").num_rows == 48
    statuses = sorted((e["file"], e["status"]) for e in read_ledger(tmp_path))
    assert ("eth_basis__night-1.jsonl", "processed") in statuses
    assert ("eth_basis__broken.jsonl", "failed") in statuses

    # Other content under a run_id that is taken would be skipped by the store: refused instead.
    clash = _snapshot_file(inbox / "eth_basis__night-1.jsonl", seed=99)
    _age(clash)
    with pytest.raises(InboxFilesFailed, match="RST-301"):
        await backtest_inbox(data_dir=str(tmp_path), settle_seconds=60)
    assert (inbox / "failed" / "eth_basis__night-1.jsonl").exists()
    assert read_table(tmp_path, "backtest", "raw_snapshots", run_id="night-1").num_rows == 48


async def test_live_runs_on_a_schedule_give_contiguous_timesteps(tmp_path):
    anchor = datetime(2024, 5, 1, tzinfo=UTC)
    written = []
    for now in (anchor + timedelta(minutes=9, seconds=30), anchor + timedelta(minutes=10, seconds=5),
                anchor + timedelta(minutes=21)):
        summary = await live_snapshots(mode="usdt_market_neutral", run_id="live-a", anchor=anchor, now=now,
                                       data_dir=str(tmp_path))
        written.append(summary["timesteps_received"])
    assert written == [10, 1, 11]
    raw = read_table(tmp_path, "live", "raw_snapshots", run_id="live-a")
    assert raw.column("timestep").to_pylist() == list(range(22))
    assert _record(tmp_path, "live-a", "live")["status"] == "finished"


async def test_two_live_runs_started_together_write_nothing_twice(tmp_path):
    anchor = datetime(2024, 5, 1, tzinfo=UTC)

    def collect() -> Coroutine[Any, Any, dict[str, Any]]:
        return live_snapshots(mode="usdt_market_neutral", run_id="live-b", anchor=anchor,
                              now=anchor + timedelta(hours=1), data_dir=str(tmp_path))

    first, second = await asyncio.gather(collect(), collect())
    assert sorted([first["timesteps_received"], second["timesteps_received"]]) == [0, 61]
    raw = read_table(tmp_path, "live", "raw_snapshots", run_id="live-b")
    assert raw.column("timestep").to_pylist() == list(range(61))
    balance = read_table(tmp_path, "live", "balance_sheet", run_id="live-b").to_pylist()
    keys = [(r["timestep"], r["venue"], r["account_type"], r["instrument"]) for r in balance]
    assert len(keys) == len(set(keys))


async def test_rerun_with_other_result_types_makes_new_versions_and_keeps_the_old_readable(tmp_path):
    await backtest_results(mode="usdt_market_neutral", run_id="src", start="2024-01-01", end="2024-01-01 06:00",
                           freq="5min", data_dir=str(tmp_path))
    balance_before = _version(tmp_path, "balance_sheet")
    dust_before = _version(tmp_path, "dust_tracking")
    old_dust = read_table(tmp_path, "backtest", "dust_tracking", run_id="src").num_rows
    assert old_dust == 72 * 3

    lean = [ResultType(t) for t in ("balance_sheet", "pnl_attribution", "risk_metrics", "execution_log",
                                    "leverage_tracking")]
    # In place, fewer result types would empty dust_tracking and funding_tracking: refused unless asked.
    refused = await rerun_results(run_id="src", result_types=lean, data_dir=str(tmp_path), return_state=True)
    assert refused.is_failed() and "RST-201" in str(refused.message) and "dust_tracking" in str(refused.message)
    assert _version(tmp_path, "dust_tracking") == dust_before
    first = await rerun_results(run_id="src", result_types=lean, data_dir=str(tmp_path), empty_dropped_tables=True)
    emptied = (await _artifacts("rerun-src"))["rerun-src"].data.split("emptied (")[1].splitlines()[0]
    assert "dust_tracking" in emptied and "funding_tracking" in emptied
    second = await rerun_results(run_id="src", result_types=lean, data_dir=str(tmp_path), empty_dropped_tables=True)

    assert _version(tmp_path, "balance_sheet") > balance_before
    assert first["rows"] == second["rows"]  # idempotent: the same rows, not doubled
    assert read_table(tmp_path, "backtest", "balance_sheet", run_id="src").num_rows == first["rows"]["balance_sheet"]
    assert read_table(tmp_path, "backtest", "dust_tracking", run_id="src").num_rows == 0
    assert read_table(tmp_path, "backtest", "dust_tracking", run_id="src", version=dust_before).num_rows == old_dust
    versions = _record(tmp_path, "src")["table_versions"]
    assert versions["after"]["balance_sheet"] > versions["before"]["balance_sheet"]
    report = (await _artifacts("rerun-src"))["rerun-src"].data
    assert "| balance_sheet |" in report and "version before" in report
    assert "removed in a new version): none" in report  # the second rerun had nothing left to empty
    assert "None" not in report and "None" not in (await _artifacts("run-summary-src"))["run-summary-src"].data

    # The four every mode stores are required: refused before any work, in one line.
    state = await rerun_results(run_id="src", result_types=[ResultType("balance_sheet")], data_dir=str(tmp_path),
                                return_state=True)
    assert state.is_failed() and "RST-201" in str(state.message) and "execution_log" in str(state.message)

    child = await rerun_results(run_id="src", new_run_id="src-child", result_types=lean, data_dir=str(tmp_path))
    assert _record(tmp_path, "src-child")["parent_run_id"] == "src"
    assert child["rows"]["balance_sheet"] == first["rows"]["balance_sheet"]
    child_report = (await _artifacts("rerun-src-child"))["rerun-src-child"].data
    assert "parent `src`" in child_report
    balance = next(line for line in child_report.splitlines() if line.startswith("| balance_sheet |"))
    assert balance.split("|")[2].strip() not in ("", "None", "—")  # the table's version before the rerun


async def test_the_nightly_lifecycle_flows_verify_back_up_and_keep_what_is_recent(tmp_path):
    await backtest_results(mode="pure_lending", run_id="m", start="2024-01-01", end="2024-01-02", freq="1h",
                           data_dir=str(tmp_path))
    verified = await checksum(data_dir=str(tmp_path))
    assert verified["backtest"]["ok"] and verified["backtest"]["files"] > 0 and verified["live"]["files"] == 0

    copied = await backup(data_dir=str(tmp_path))
    assert copied["backtest"]["ok"] and copied["backtest"]["copied_files"] == copied["backtest"]["files"]
    assert (tmp_path.parent / f"{tmp_path.name}-backup" / "_backups" / "backtest").is_dir()

    audit = await audit_results(execution_modes=["backtest"], data_dir=str(tmp_path))
    assert audit["runs"] == {"m": "pass"}

    kept = await retention(data_dir=str(tmp_path))
    assert kept["backtest"]["removals"] == [] and not kept["backtest"]["dry_run"]

    reports = await _artifacts("checksum", "backup", "retention")
    assert "File checksums: passed" in reports["checksum"].data and "Backup: complete" in reports["backup"].data
    assert "1 passed" in (await _artifacts("audit-backtest"))["audit-backtest"].data

    # A damaged file fails the checksum run, named in its artifact, after the artifact is published.
    damaged = next((tmp_path / "backtest" / "pnl_attribution").glob("run_id=m/*.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:-8])
    with pytest.raises(ComponentError) as failed:
        await checksum(data_dir=str(tmp_path))
    assert failed.value.error_code == "RST-005" and damaged.name in str(failed.value)
    report = (await _artifacts("checksum"))["checksum"].data
    assert "**FAILED**" in report and damaged.name in report and "truncated" in report

    # A damaged file the backup does not hold yet is not copied: the backup run fails, naming it.
    await backtest_results(mode="pure_lending", run_id="m2", start="2024-02-01", end="2024-02-02", freq="1h",
                           data_dir=str(tmp_path))
    fresh = next((tmp_path / "backtest" / "raw_snapshots").glob("run_id=m2/*.parquet"))
    fresh.write_bytes(fresh.read_bytes()[:-1] + b"?")
    with pytest.raises(ComponentError) as incomplete:
        await backup(execution_modes=["backtest"], data_dir=str(tmp_path))
    assert incomplete.value.error_code == "RST-005" and fresh.name in str(incomplete.value)
    report = (await _artifacts("backup"))["backup"].data
    assert "Backup: **FAILED**" in report and fresh.name in report and "no manifest written" in report


def test_cli_backtest_and_rerun_print_the_run_summary(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["backtest", "--mode", "pure_lending", "--start", "2024-01-01", "--end", "2024-01-01 12:00",
                                 "--freq", "1h", "--run-id", "cli-1", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "run cli-1" in result.output and "balance_sheet" in result.output and "quarantined rows: 0" in result.output
    assert read_table(tmp_path, "backtest", "raw_snapshots", run_id="cli-1").num_rows == 12

    result = runner.invoke(app, ["rerun", "cli-1", "--new-run-id", "cli-2", "--result-types",
                                 "balance_sheet,pnl_attribution,risk_metrics,execution_log", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "parent run: cli-1" in result.output

    result = runner.invoke(app, ["rerun", "no-such-run", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "RST-302" in result.output

    # Without the four types every mode stores: one RST-201 line, exit 2, before any work.
    result = runner.invoke(app, ["rerun", "cli-1", "--result-types", "balance_sheet", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "RST-201" in result.output and "missing pnl_attribution" in result.output
    assert "Traceback" not in result.output and "validation error" not in result.output


def test_cli_ingest_of_a_file_with_one_bad_line_of_each_kind_accounts_for_every_line(tmp_path):
    from tests.test_snapshot_files import _file_with_one_line_of_each_kind

    path, good_lines, expected = _file_with_one_line_of_each_kind(tmp_path)
    data = tmp_path / "data"
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(path), "--mode", "pure_lending", "--run-id", "mixed",
                                 "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    unparseable = sorted(line for line, e in expected.items() if e[1] == "RST-101")
    read = good_lines + len(expected)
    refused = len(expected) - len(unparseable)
    assert (f"file lines: {read} read = {good_lines} written + {len(unparseable)} quarantined + "
            f"{refused} refused") in " ".join(result.output.split())
    quarantined = {r["column"]: r for r in read_table(data, "backtest", "quarantine", run_id="mixed").to_pylist()
                   if r["rule"] == "unparseable_line"}
    assert sorted(quarantined) == sorted(f"line {n}" for n in unparseable)
    assert read_table(data, "backtest", "raw_snapshots", run_id="mixed").num_rows == good_lines

    # --strict: all or nothing, every bad line named, nothing written, exit 2 (bad input).
    result = runner.invoke(app, ["ingest", str(path), "--mode", "pure_lending", "--run-id", "strict",
                                 "--strict", "--data-dir", str(data)])
    assert result.exit_code == 2 and "RST-101" in result.output, result.output
    assert read_table(data, "backtest", "raw_snapshots", run_id="strict").num_rows == 0
