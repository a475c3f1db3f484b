"""The flows' own logic without a Prefect server: inbox rules, ledger, reports, parameters, prefect.yaml."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

import pytest
import yaml
from prefect import Flow, Task
from prefect.states import Failed
from prefect.utilities.callables import parameter_schema

from results_store.allocators import ALLOCATOR_ENV
from results_store.drive import run_snapshots
from results_store.inbox import append_ledger, finished_files, mode_and_run, move_aside, read_ledger
from results_store.markdown import artifact_key, markdown_table
from results_store.prefect_env import configure_prefect
from results_store.rerun import lineage_report
from results_store.retention import plan_retention
from results_store.simulator.reference import ReferenceEngine
from results_store.summary import RunSummary
from schemas.errors import ComponentError
from schemas.modes import MODE_NAMES, ModeName, load_mode, modes_dir
from tasks.store import retry_if_transient

ROOT = Path(__file__).resolve().parents[1]
FLOW_MODULES = ["flows.backtest_results", "flows.backtest_inbox", "flows.live_snapshots", "flows.rerun_results",
                "flows.audit_results", "flows.backup", "flows.checksum", "flows.retention"]
TASK_MODULES = ["tasks.artifacts", "tasks.audit", "tasks.export", "tasks.inbox", "tasks.maintenance", "tasks.report",
                "tasks.rerun", "tasks.store"]


def test_the_mode_drop_down_offers_exactly_the_configured_modes():
    assert sorted(get_args(ModeName)) == sorted(path.stem for path in modes_dir().glob("*.yaml"))
    assert len(MODE_NAMES) == 7


def test_artifact_keys_are_lowercase_dashes():
    assert artifact_key("run-summary", "BT_1.2024/01") == "run-summary-bt-1-2024-01"


def test_markdown_table():
    assert markdown_table([{"a": 1, "b": None}]) == "| a | b |\n|---|---|\n| 1 |  |"
    assert markdown_table([]) == ""


# --------------------------------------------------------------------------------------------- inbox
def test_a_file_is_finished_with_a_done_marker_or_once_settled(tmp_path):
    now = time.time()
    marked, settled, fresh = (tmp_path / n for n in ("marked.jsonl", "settled.jsonl", "fresh.jsonl"))
    for path in (marked, settled, fresh):
        path.write_text("{}\n")
    (tmp_path / "marked.jsonl.done").touch()
    (tmp_path / "partial.jsonl.part").write_text("{}\n")  # a writer's temporary name: never looked at
    os.utime(settled, (now - 120, now - 120))
    os.utime(marked, (now - 1, now - 1))
    finished, waiting = finished_files(tmp_path, settle_seconds=30, now=now)
    assert [p.name for p in finished] == ["settled.jsonl", "marked.jsonl"]  # oldest first
    assert [p.name for p in waiting] == ["fresh.jsonl"]


def test_mode_and_run_id_come_from_the_name_or_the_parameter():
    assert mode_and_run(Path("eth_basis__night-1.jsonl"), None) == ("eth_basis", "night-1")
    assert mode_and_run(Path("night-1.jsonl"), "btc_basis") == ("btc_basis", "night-1")
    assert mode_and_run(Path("nomode__x.jsonl"), "btc_basis") == ("btc_basis", "nomode__x")
    with pytest.raises(ComponentError, match="RST-201"):
        mode_and_run(Path("night-1.jsonl"), None)


def test_moving_aside_never_overwrites_and_drops_the_marker(tmp_path):
    for content in ("first", "second"):
        path = tmp_path / "run.jsonl"
        path.write_text(content)
        (tmp_path / "run.jsonl.done").touch()
        move_aside(path, tmp_path / "processed")
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["run.jsonl", "run~1.jsonl"]
    assert (tmp_path / "processed" / "run~1.jsonl").read_text() == "second"
    assert not (tmp_path / "run.jsonl.done").exists()


def test_the_ledger_is_a_delta_table_of_entries_in_order(tmp_path):
    assert read_ledger(tmp_path) == []
    append_ledger(tmp_path, sha256="ab", file="a.jsonl", status="started", run_id="a", mode="btc_basis")
    append_ledger(tmp_path, sha256="ab", file="a.jsonl", status="processed", run_id="a", mode="btc_basis",
                   timesteps=3)
    entries = read_ledger(tmp_path)
    assert [(e["file"], e["status"], e["timesteps"]) for e in entries] == [("a.jsonl", "started", None),
                                                                          ("a.jsonl", "processed", 3)]
    assert (tmp_path / "backtest" / "inbox_ledger" / "_delta_log").is_dir()


# --------------------------------------------------------------------------------------------- retries
def test_only_transient_storage_errors_are_retried():
    def failed(exc: BaseException) -> bool:
        return retry_if_transient(None, None, Failed(data=exc))  # type: ignore[arg-type]

    assert failed(ComponentError("RST-001", "disk hiccup"))
    assert failed(ComponentError("RST-003", "slow write"))
    assert not failed(ComponentError("RST-101", "bad line"))
    assert not failed(ComponentError("RST-301", "run conflict"))
    assert not failed(ValueError("bug"))


# --------------------------------------------------------------------------------------------- reports
def _summary(run_id: str, parent: str | None = None) -> RunSummary:
    return RunSummary(run_id=run_id, mode="btc_basis", execution_mode="backtest", timesteps_received=10,
                      rows={"balance_sheet": 100}, table_paths={"balance_sheet": "/x"}, parent_run_id=parent)


def test_the_lineage_report_shows_versions_before_and_after():
    record = {"table_versions": {"before": {"balance_sheet": 3}, "after": {"balance_sheet": 5}}, "parent_run_id": None}
    report = lineage_report("r1", _summary("r1"), {"mode": "btc_basis", "config_hash": "f" * 64}, record,
                            {"result_types": ["balance_sheet"]})
    assert "| balance_sheet | 3 | 5 | 100 |" in report
    assert "new versions of the same run" in report and "result_types=['balance_sheet']" in report

    child = lineage_report("r1", _summary("r2", "r1"), None, {"table_versions": {"balance_sheet": 6},
                                                            "parent_run_id": "r1"}, {}, {"balance_sheet": 5})
    # A new run: "version before" is the table's version before the rerun wrote, never blank.
    assert "a new run; parent `r1`" in child and "| balance_sheet | 5 | 6 | 100 |" in child
    assert "`r1` → `r2`" in child


def test_retention_reads_the_registry_and_the_tables(tmp_path):
    mode = load_mode("pure_lending")
    engine = ReferenceEngine(mode, "2024-01-01", "2024-01-01 06:00", "1h")
    run_snapshots(mode, engine.iter_snapshots(), data_dir=tmp_path, run_id="r1")

    assert plan_retention(tmp_path, "backtest").removals == []
    later = datetime.now(UTC) + timedelta(days=366)  # pure_lending keeps runs 365 days
    plan = plan_retention(tmp_path, "backtest", now=later)
    assert [r.run_id for r in plan.removals] == ["r1"]
    assert plan.removals[0].rows["raw_snapshots"] == 6
    assert (tmp_path / "backtest" / "raw_snapshots").is_dir()  # a plan deletes nothing
    assert plan_retention(tmp_path, "backtest", retention_days=1, now=datetime.now(UTC) + timedelta(days=2)).removals


# --------------------------------------------------------------------------------------------- Prefect set-up
def test_flows_hold_one_flow_per_file_and_tasks_hold_every_task():
    found_flows = {p.stem for p in (ROOT / "flows").glob("*.py") if p.stem != "__init__"}
    assert {m.split(".")[1] for m in FLOW_MODULES} == found_flows
    assert {m.split(".")[1] for m in TASK_MODULES} == {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    for name in FLOW_MODULES:
        defined = [v for v in vars(importlib.import_module(name)).values()
                   if isinstance(v, Flow | Task) and v.fn.__module__ == name]
        assert [type(v) for v in defined] == [Flow], f"{name} must define exactly one flow and no task"
    for name in TASK_MODULES:
        defined = [v for v in vars(importlib.import_module(name)).values()
                   if isinstance(v, Flow | Task) and v.fn.__module__ == name]
        assert defined and all(isinstance(v, Task) and not isinstance(v, Flow) for v in defined), name


def test_every_flow_and_task_has_a_docstring_and_every_parameter_a_description():
    for name in FLOW_MODULES + TASK_MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if isinstance(value, Flow | Task):
                assert value.fn.__doc__, f"{name}.{attr} has no docstring (it shows in the UI)"
            if isinstance(value, Flow):
                schema = parameter_schema(value.fn).model_dump()
                missing = [p for p, spec in schema["properties"].items() if not spec.get("description")]
                assert not missing, f"{name}.{attr}: parameters without a description in the Run form: {missing}"


def test_prefect_yaml_deploys_every_flow_on_the_process_pool():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = spec["deployments"]
    entrypoints = {d["entrypoint"] for d in deployments}
    flows = set()
    for name in FLOW_MODULES:
        module = importlib.import_module(name)
        flows |= {f"{name.replace('.', '/')}.py:{attr}" for attr, v in vars(module).items()
                  if isinstance(v, Flow) and v.fn.__module__ == name}  # defined here, not imported
    assert entrypoints == flows
    assert all(d["work_pool"]["name"] == "results-store-pool" and d["description"] for d in deployments)
    by_entry = {d["entrypoint"].split(":")[1]: d for d in deployments}
    assert by_entry["live_snapshots"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    # The live feed is switched on by a person, not by `deploy --all`.
    assert by_entry["live_snapshots"]["schedules"] == [{"cron": "* * * * *", "timezone": "UTC", "active": False}]
    assert by_entry["backtest_inbox"]["schedules"][0]["interval"] == 300
    assert "schedules" not in by_entry["rerun_results"]
    nightly = [by_entry[n]["schedules"][0]["cron"] for n in ("checksum", "backup", "audit_results", "retention")]
    assert len(set(nightly)) == 4  # staggered
    assert spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $PWD }}"
    # Flow-run processes start with the store's allocator settings (glibc reads them only at start).
    for deployment in deployments:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert {k: env[k] for k in ALLOCATOR_ENV} == ALLOCATOR_ENV


def test_configure_prefect_sets_offline_defaults_before_prefect_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    code = (
        f"from results_store.prefect_env import configure_prefect; configure_prefect({str(tmp_path)!r})\n"
        "from prefect.settings import get_current_settings as s\n"
        "c = s(); print(c.home, c.server.analytics_enabled, c.server.ephemeral.enabled, c.api.url)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == [str(tmp_path / ".prefect"), "False", "True", "None"]


def test_configure_prefect_refuses_to_run_after_prefect_is_imported(monkeypatch):
    monkeypatch.delenv("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", raising=False)
    with pytest.raises(RuntimeError, match="PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT"):
        configure_prefect()
