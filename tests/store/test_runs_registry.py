"""The runs registry: append-only history, a run's current state read from its own partition."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from results_store import delta_tables
from results_store.runs import REGISTRY_FILES_BEFORE_COMPACTION, append_run_record, latest_run, read_runs, runs_path


def _record(root: Path, run_id: str, status: str, rows: int) -> None:
    append_run_record(root, "live", run_id=run_id, mode="pure_lending", status=status, config_json={"k": "v"},
                      config_hash="abc", started_at=datetime(2024, 1, 1, tzinfo=UTC),
                      row_counts={"balance_sheet": rows}, note=f"{rows} rows")


def test_the_latest_record_of_a_run_is_its_state_and_every_record_is_kept(tmp_path: Path) -> None:
    _record(tmp_path, "other", "finished", 7)
    for minute in range(REGISTRY_FILES_BEFORE_COMPACTION + 8):  # one live collection per minute
        _record(tmp_path, "live-1", "finished", minute)

    state = latest_run(tmp_path, "live", "live-1")
    assert state is not None and state["row_counts"] == {"balance_sheet": REGISTRY_FILES_BEFORE_COMPACTION + 7}
    other = latest_run(tmp_path, "live", "other")
    assert other is not None and other["row_counts"] == {"balance_sheet": 7}
    assert latest_run(tmp_path, "live", "never-seen") is None

    history = read_runs(tmp_path, "live", history=True)
    assert len(history) == REGISTRY_FILES_BEFORE_COMPACTION + 9
    assert list(read_runs(tmp_path, "live")["run_id"]) == ["live-1", "other"]


def test_a_run_that_records_every_minute_does_not_pile_up_files(tmp_path: Path) -> None:
    for minute in range(3 * REGISTRY_FILES_BEFORE_COMPACTION):
        _record(tmp_path, "live-1", "finished", minute)
    files = delta_tables.data_files(runs_path(tmp_path, "live"), run_id="live-1")
    assert len(files) < REGISTRY_FILES_BEFORE_COMPACTION
