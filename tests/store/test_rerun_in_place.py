"""An in-place rerun streams the re-derived rows into new files of the run's partition and replaces the
partition in one commit per table (``delta_tables.replace_run_files``): the old files removed and the
run's watermark recorded in that same commit, the old rows still there by time travel, the files laid
out as the store lays them out (one per batch of timesteps), other runs' partitions untouched; a
failure part-way leaves every table whole, and the next rerun completes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from results_store import checksums, delta_tables, rerun
from results_store.drive import run_snapshots
from results_store.rerun import rederive_run
from results_store.runs import latest_run
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from schemas.store_tables import QUARANTINE, QUARANTINE_SCHEMA
from tests.store.conftest import fingerprint, snapshots
from tests.store.faults import disk_full

MODE = load_mode("usdt_market_neutral")
NAMES = [*(t.value for t in MODE.results_store.result_types), QUARANTINE]  # what an in-place rerun rewrites
BATCH = 40
SCHEMA = pa.schema([("run_id", pa.string()), ("timestep", pa.int64()), ("value", pa.float64())])


def _backtest(root: Path, run_id: str, steps: int) -> None:
    run_snapshots(MODE, snapshots(MODE, steps), data_dir=root, run_id=run_id,
                  settings=load_settings(MODE, data_dir=root, backtest_batch_size=BATCH))


def _path(root: Path, name: str) -> Path:
    return delta_tables.table_path(root, "backtest", name)


def _versions(root: Path) -> dict[str, int | None]:
    return {n: delta_tables.version(_path(root, n)) for n in NAMES}


def _files(root: Path, name: str, run_id: str, version: int | None = None) -> set[str]:
    return {f.log_path for f in delta_tables.table_files(_path(root, name), version=version).runs([run_id])[0][1]}


def _on_disk(root: Path, name: str, run_id: str) -> set[str]:
    return {f"run_id={run_id}/{p.name}" for p in (_path(root, name) / f"run_id={run_id}").glob("*.parquet")}


def _log(root: Path, name: str, version: int) -> list[dict[str, Any]]:
    text = (_path(root, name) / "_delta_log" / f"{version:020d}.json").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _state(root: Path) -> dict[str, dict[str, Any]]:
    return {run: {n: fingerprint(root, "backtest", n, run) for n in NAMES} for run in ("A", "B")}


@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs A (120 timesteps) and B (80) in the same tables; reruns write files of BATCH timesteps, in chunks of 15."""
    _backtest(tmp_path, "A", 120)
    _backtest(tmp_path, "B", 80)
    monkeypatch.setenv("RESULTS_STORE_BACKTEST_BATCH_SIZE", str(BATCH))
    monkeypatch.setattr(rerun, "RERUN_CHUNK", 15)
    return tmp_path


def test_an_in_place_rerun_replaces_the_runs_files_in_one_commit_per_table_and_leaves_other_runs_alone(two_runs):
    root = two_runs
    before = _versions(root)
    state = _state(root)
    old_a = {n: _files(root, n, "A") for n in NAMES}
    old_b = {n: _files(root, n, "B") for n in NAMES}

    rederive_run(data_dir=root, execution_mode="backtest", run_id="A")

    after = _versions(root)
    record = latest_run(root, "backtest", "A")
    assert record is not None and record["status"] == "finished" and record["note"].startswith("rerun in place")
    assert record["table_versions"]["after"] == after
    for name in NAMES:
        path = _path(root, name)
        assert after[name] == before[name] + 1, name  # one commit per table
        # That commit removed every old file of A (a data change) and added A's new files; nothing of B.
        actions = _log(root, name, after[name])
        removed = {a["remove"]["path"] for a in actions if "remove" in a}
        added = {a["add"]["path"] for a in actions if "add" in a}
        assert removed == old_a[name], name
        assert all(a["remove"]["dataChange"] for a in actions if "remove" in a), name
        assert added == _files(root, name, "A") and not added & old_a[name], name
        txns = [(a["txn"]["appId"], a["txn"]["version"]) for a in actions if "txn" in a]
        assert txns == [(delta_tables.run_app_id("A"), 119)], name  # the run's watermark, in the same commit
        assert delta_tables.committed_txn_version(path, "A") == 119
        # The re-derived rows only (the same config: the same rows), each once; the old ones by time travel.
        assert fingerprint(root, "backtest", name, "A") == state["A"][name], name
        old = delta_tables.read(path, run_id="A", version=before[name])
        assert old.num_rows == state["A"][name][0], name
        # B's partition: the same files, the same rows.
        assert _files(root, name, "B") == old_b[name], name
        assert fingerprint(root, "backtest", name, "B") == state["B"][name], name
    # Laid out as the store writes a run: a file per BATCH timesteps (that have rows), in timestep order.
    for name in [n for n in NAMES if n != QUARANTINE]:
        files = delta_tables.table_files(_path(root, name)).runs(["A"])[0][1]
        batches = [(f.min_timestep // BATCH, f.max_timestep // BATCH) for f in files]
        assert all(lo == hi for lo, hi in batches) and len({lo for lo, _ in batches}) == len(batches), (name, batches)
        if name == "balance_sheet":  # rows at every timestep
            assert batches == [(0, 0), (1, 1), (2, 2)]
    # Every commit recorded in the checksum manifest, every file as written.
    report = checksums.verify(root, ("backtest",))
    assert report.ok, report.to_json()


class FailingReplace:
    """Stands in for ``delta_tables.replace_run_files``: raises ``error`` on call number ``nth`` (1-based),
    commits for real otherwise."""

    def __init__(self, error: Any, nth: int) -> None:
        self.error, self.nth, self.calls = error, nth, 0
        self.tables: list[str] = []
        self._real = delta_tables.replace_run_files

    def __call__(self, path: Path, files: Any, **kwargs: Any) -> int:
        self.calls += 1
        self.tables.append(path.name)
        if self.calls == self.nth:
            raise self.error()
        return self._real(path, files, **kwargs)


def test_a_failed_commit_of_the_second_table_leaves_every_table_whole_and_a_second_rerun_completes(
        two_runs, monkeypatch):
    root = two_runs
    before = _versions(root)
    state = _state(root)
    record_before = latest_run(root, "backtest", "A")
    old_b = {n: _files(root, n, "B") for n in NAMES}
    failing = FailingReplace(disk_full, nth=2)
    monkeypatch.setattr(delta_tables, "replace_run_files", failing)

    with pytest.raises(ComponentError) as caught:
        rederive_run(data_dir=root, execution_mode="backtest", run_id="A")
    assert caught.value.error_code == "RST-004" and not caught.value.transient
    first, second, *rest = NAMES
    assert failing.tables == [first, second]  # the tables after the failure were never committed
    # The first table has its new version, the others none; every table holds each of A's rows once.
    assert _versions(root) == {**before, first: before[first] + 1}
    assert _state(root) == state
    # Files written for the tables never committed are deleted; those handed to the failed commit stay
    # unreferenced (the fault came before the commit could tell: vacuum removes them).
    for name in rest:
        assert _on_disk(root, name, "A") == _files(root, name, "A"), name
    assert _files(root, second, "A") == _files(root, second, "A", before[second])
    # The run record is the backtest's: the rerun is not recorded.
    assert latest_run(root, "backtest", "A") == record_before

    monkeypatch.setattr(delta_tables, "replace_run_files", failing._real)
    rederive_run(data_dir=root, execution_mode="backtest", run_id="A")
    assert _versions(root) == {n: before[n] + (2 if n == first else 1) for n in NAMES}
    assert _state(root) == state  # nothing doubled, nothing lost, B untouched
    assert {n: _files(root, n, "B") for n in NAMES} == old_b
    record = latest_run(root, "backtest", "A")
    assert record is not None and record["note"].startswith("rerun in place")


def test_an_in_place_rerun_keeps_the_contract_rejections_in_the_new_quarantine_files(two_runs):
    root = two_runs
    path = _path(root, QUARANTINE)
    rejection = pa.table({
        "run_id": ["A"], "timestep": [200], "timestamp": pa.array([0], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "result_type": [rerun.CONTRACT_REJECTION], "rule": ["contract"], "column": [""], "error_code": ["RST-101"],
        "message": ["broke the contract"], "payload": ["{}"],
        "quarantined_at": pa.array([0], pa.int64()).cast(pa.timestamp("us", "UTC")),
    }).cast(QUARANTINE_SCHEMA)
    # As the store commits a rejected last snapshot: every table's watermark moves to it, raw_snapshots' too.
    delta_tables.append_exactly_once(path, rejection, run_id="A", last_timestep=200)
    delta_tables.commit_run_files(_path(root, "raw_snapshots"), [], run_id="A", last_timestep=200, schema=SCHEMA)
    rows = fingerprint(root, "backtest", QUARANTINE, "A")
    rederive_run(data_dir=root, execution_mode="backtest", run_id="A")
    assert fingerprint(root, "backtest", QUARANTINE, "A") == rows
    # The watermark stays past the last raw snapshot: the rejected timestep is not fed again by a resume.
    assert all(delta_tables.committed_txn_version(_path(root, n), "A") == 200 for n in NAMES)


# ----------------------------------------------------------------------------- replace_run_files itself
def _written(path: Path, run_id: str, steps: range) -> list[delta_tables.FileAction]:
    file = delta_tables.open_run_file(path, run_id, SCHEMA)
    file.write(pa.table({"run_id": [run_id] * len(steps), "timestep": list(steps), "value": [1.0] * len(steps)},
                        schema=SCHEMA))
    return [delta_tables.close_run_file(file)]


def test_replace_run_files_creates_a_missing_table_and_empties_a_partition_given_no_files(tmp_path):
    path = tmp_path / "t"
    created = delta_tables.replace_run_files(path, _written(path, "r", range(5)), run_id="r", last_timestep=4,
                                             schema=SCHEMA)
    assert delta_tables.read(path, run_id="r").num_rows == 5 and delta_tables.committed_txn_version(path, "r") == 4
    emptied = delta_tables.replace_run_files(path, [], run_id="r", last_timestep=9, schema=SCHEMA)
    assert emptied == created + 1
    assert delta_tables.count_rows(path, run_id="r") == 0 and delta_tables.committed_txn_version(path, "r") == 9
    assert delta_tables.read(path, run_id="r", version=created).num_rows == 5


def test_replace_run_files_deletes_its_files_only_when_the_commit_certainly_did_not_happen(tmp_path, monkeypatch):
    path = tmp_path / "t"
    # A run id that needs percent-encoding: its files are removed by the path the log spells.
    run = "r 1/x"
    first = delta_tables.replace_run_files(path, _written(path, run, range(5)), run_id=run, last_timestep=4,
                                           schema=SCHEMA)
    real = delta_tables.DeltaTable.create_write_transaction

    def refused(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(delta_tables.DeltaTable, "create_write_transaction", refused)
    adds = _written(path, run, range(10))
    with pytest.raises(ComponentError):
        delta_tables.replace_run_files(path, adds, run_id=run, last_timestep=9, schema=SCHEMA)
    assert delta_tables.version(path) == first
    assert not any((path / a.path).exists() for a in adds)  # not committed: gone

    def landed_then_failed(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        raise OSError(5, "Input/output error")  # e.g. the checkpoint after the commit

    monkeypatch.setattr(delta_tables.DeltaTable, "create_write_transaction", landed_then_failed)
    adds = _written(path, run, range(10))
    with pytest.raises(ComponentError):
        delta_tables.replace_run_files(path, adds, run_id=run, last_timestep=9, schema=SCHEMA)
    assert delta_tables.version(path) == first + 1
    assert all((path / a.path).exists() for a in adds)  # committed: kept
    monkeypatch.setattr(delta_tables.DeltaTable, "create_write_transaction", real)
    assert delta_tables.read(path, run_id=run).column("timestep").to_pylist() == list(range(10))
    # And the partition's files, percent-encoded in the log, are removed by the next replacement.
    delta_tables.replace_run_files(path, _written(path, run, range(3)), run_id=run, last_timestep=9, schema=SCHEMA)
    assert delta_tables.read(path, run_id=run).column("timestep").to_pylist() == list(range(3))
