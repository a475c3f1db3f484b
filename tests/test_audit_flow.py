"""The audit-results flow under the session's Prefect harness: a failed audit ends the flow run Failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

import tasks.audit
from flows.audit_results import audit_results
from results_store import delta_tables
from results_store.audit import AuditFailed, read_audits
from results_store.drive import run_snapshots_async
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import load_mode

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def _latest_artifact(key: str) -> Any:
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created or 0)[-1]


async def _store(root: Path, run_id: str) -> None:
    mode = load_mode("btc_basis")
    engine = ReferenceEngine(mode, "2024-01-01", "2024-01-01 12:00", "5min", seed=2)
    await run_snapshots_async(mode, engine.iter_snapshots(), data_dir=root, run_id=run_id)


def _break_funding(root: Path, run_id: str) -> None:
    path = delta_tables.table_path(root, "backtest", "funding_tracking")
    rows = delta_tables.read(path, run_id=run_id)
    payment = rows["payment"].to_numpy().copy()
    payment[np.flatnonzero(payment != 0)[0]] += 100.0
    rows = rows.set_column(rows.schema.get_field_index("payment"), "payment", pa.array(payment))
    delta_tables.overwrite_run(path, rows, run_id=run_id, last_timestep=int(pc.max(rows["timestep"]).as_py()))


async def test_a_failed_audit_ends_the_flow_run_failed_with_its_report_artifacts_and_event(tmp_path, monkeypatch):
    await _store(tmp_path, "good")
    await _store(tmp_path, "bad")
    _break_funding(tmp_path, "bad")
    emitted: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.audit, "emit_event", lambda **kwargs: emitted.append(kwargs))

    state = await audit_results(execution_modes=["backtest"], data_dir=str(tmp_path), return_state=True)

    assert state.is_failed()
    with pytest.raises(AuditFailed, match=r"bad: reconciliation\.funding"):
        await state.result()
    summary = (await _latest_artifact("audit-backtest")).data
    assert summary.startswith("# Audit of backtest runs: 1 of 2 failed")
    assert "| bad | btc_basis | backtest | **FAIL** | reconciliation.funding |" in summary
    findings = orjson.loads((await _latest_artifact("audit-findings-backtest")).data)
    assert {(f["run_id"], f["check"], f["table"]) for f in findings} >= {("bad", "reconciliation.funding", "funding_tracking")}
    [event] = emitted
    assert event["event"] == "results-store.audit.failed"
    assert event["resource"]["prefect.resource.id"] == "results-store.run.backtest.bad"
    assert event["payload"]["run_id"] == "bad" and event["payload"]["failed_checks"] == ["reconciliation.funding"]
    assert (tmp_path / "backtest" / "results" / "bad" / "audit.md").exists()
    history = read_audits(tmp_path, "backtest")
    assert set(history["run_id"]) == {"good", "bad"} and len(set(history["audit_id"])) == 1


async def test_the_nightly_run_audits_what_is_due_and_completes_when_everything_passes(tmp_path):
    await _store(tmp_path, "fresh")

    first = await audit_results(data_dir=str(tmp_path))
    again = await audit_results(data_dir=str(tmp_path))

    assert first["runs"] == {"fresh": "pass"}
    assert again["runs"] == {}  # audited since it finished: nothing due
    assert "nothing to audit" in (await _latest_artifact("audit-backtest-live")).data
