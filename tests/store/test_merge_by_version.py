"""A live run's merges replace the files its writer appended, by version, never listing the log.

Every 32 appends per table the live policy merges a run's appended files into one
(``compaction.LiveCompaction``). Through delta-rs a merge opened the table and listed its files
(each lists and replays the log) and committed through it (which lists it twice more): 25-30 ms of a
merge's ~40 at a few hundred versions, inside the commit task at 10 snapshots/s. The writer's handle
knows the files it appended, so ``delta_tables.merge_appends`` rewrites those and links the
replacement in as the next version, the way appends go (``results_store.delta_log``). What it must
never do: bring back rows another commit removed first (a delete, a rerun in place, a compaction).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet
import pytest
from deltalake import DeltaTable

from results_store import checksums, compaction, delta_tables
from results_store.batch_writer import BatchWriter
from tests.store.test_commit_log_reads import _commit, _writer, watching

SCHEMA = pa.schema([("run_id", pa.string()), ("timestep", pa.int64()), ("value", pa.float64())])


def _rows(run_id: str, step: int) -> pa.Table:
    return pa.table({"run_id": [run_id], "timestep": [step], "value": [step * 1.5]}, schema=SCHEMA)


def _append(path: Path, handle: delta_tables.TableHandle | None, run_id: str, step: int) -> None:
    delta_tables.append_exactly_once(path, _rows(run_id, step), run_id=run_id, last_timestep=step, table=handle)


def _entry(path: Path, version: int) -> list[dict[str, object]]:
    data = (path / "_delta_log" / f"{version:020d}.json").read_bytes()
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def _run_rows(path: Path, run_id: str) -> list[int]:
    """The run's timesteps, sorted (a scan's file order is not the log's)."""
    table = DeltaTable(str(path)).to_pyarrow_table()
    return sorted(table.filter(pa.compute.equal(table["run_id"], run_id))["timestep"].to_pylist())


def _verified(path: Path) -> bool:
    """Every file of the table matches the checksum manifest (``path`` is ``{root}/{mode}/{table}``)."""
    report = checksums.verify_table(path.parent.parent, path.parent.name, path.name)
    assert not report.problems, report.problems
    return True


def _table_with_handle(path: Path, run_id: str, steps: int) -> delta_tables.TableHandle:
    _append(path, None, run_id, 0)  # the table made through delta-rs: not one of the handle's appends
    handle = delta_tables.open_handle(path)
    assert handle is not None and handle.direct
    for step in range(1, steps + 1):
        _append(path, handle, run_id, step)
    return handle


def test_a_merge_replaces_the_handles_appends_in_one_version_without_listing_the_log(tmp_path: Path) -> None:
    path = tmp_path / "live" / "t"
    handle = _table_with_handle(path, "r", 6)
    before = handle.version
    appended = [a["path"] for a in handle.unmerged]
    assert len(appended) == 6

    with watching(path / "_delta_log") as reads:
        merged = delta_tables.merge_appends(path, handle, "r", min_files=6)

    assert merged is not None and merged["numFilesRemoved"] == 6 and merged["numFilesAdded"] == 1
    assert merged["version"] == before + 1 and merged["rows"] == 6
    assert reads.listings == 0
    entry = _entry(path, before + 1)
    adds = [a["add"] for a in entry if "add" in a]
    removes = [a["remove"] for a in entry if "remove" in a]
    assert [r["path"] for r in removes] == appended
    assert len(adds) == 1 and Path(str(adds[0]["path"])).name.startswith(delta_tables.MERGED_PREFIX)
    assert not any(a["dataChange"] for a in [*adds, *removes]), "a merge moves rows, it changes no data"
    assert not any("txn" in a for a in entry), "a merge is no run's progress"
    # Readers see the same rows, now in two files (the first append and the merge) ...
    assert _run_rows(path, "r") == list(range(7))
    assert len(DeltaTable(str(path)).file_uris()) == 2
    # ... and the merged file holds them in the order the run wrote them (statistics keep pruning).
    merged_file = path / str(adds[0]["path"])
    assert pa.parquet.read_table(merged_file)["timestep"].to_pylist() == list(range(1, 7))
    assert _verified(path)
    assert handle.unmerged == []
    # The handle goes on appending by version after its own merge.
    _append(path, handle, "r", 7)
    assert _run_rows(path, "r") == list(range(8)) and handle.version == before + 2


def test_too_few_appends_or_no_handle_appending_by_version_leave_the_merge_to_delta_rs(tmp_path: Path) -> None:
    path = tmp_path / "live" / "t"
    handle = _table_with_handle(path, "r", 3)
    assert delta_tables.merge_appends(path, handle, "r", min_files=4) is None
    assert delta_tables.merge_appends(path, None, "r", min_files=2) is None
    assert len(DeltaTable(str(path)).file_uris()) == 4


def test_appends_of_other_writers_in_between_do_not_stop_a_merge(tmp_path: Path) -> None:
    path = tmp_path / "live" / "t"
    handle = _table_with_handle(path, "r", 4)
    other = delta_tables.open_handle(path)
    _append(path, other, "other", 1)
    _append(path, None, "other", 2)  # and one through delta-rs

    merged = delta_tables.merge_appends(path, handle, "r", min_files=4)

    assert merged is not None and merged["numFilesRemoved"] == 4
    assert _run_rows(path, "r") == list(range(5))
    assert _run_rows(path, "other") == [1, 2]
    assert _verified(path)


def test_a_merge_never_brings_back_rows_another_commit_removed_first(tmp_path: Path) -> None:
    path = tmp_path / "live" / "t"
    handle = _table_with_handle(path, "r", 4)
    delta_tables.delete_rows(path, "timestep = 2")  # another writer: rewrites the file holding step 2 without it

    assert delta_tables.merge_appends(path, handle, "r", min_files=4) is None

    assert _run_rows(path, "r") == [0, 1, 3, 4]
    assert not list(path.rglob(f"{delta_tables.MERGED_PREFIX}-*")), "the refused merge's file is left on disk"
    assert handle.unmerged == []
    assert _verified(path)


@pytest.mark.parametrize("merge_files", [4])
def test_the_live_policy_merges_through_the_writers_handle(tmp_path: Path, merge_files: int) -> None:
    writer, raw = _writer(tmp_path, "day-1")
    path = writer.table_paths[next(iter(writer.table_paths))]
    policy = compaction.LiveCompaction(writer.table_paths, "day-1", merge_files=merge_files)
    policy.handles = writer.handle
    try:
        for step in range(12):
            versions = {name: v for name, v in _versions(writer, raw, step).items() if v is not None}
            policy.after_commit(versions, None)
        policy.close()
    finally:
        writer.close()

    merges = [entry for entry in (_entry(path, v) for v in range(DeltaTable(str(path)).version() + 1))
              if any("remove" in action for action in entry)]
    engines = [next(a["commitInfo"] for a in entry if "commitInfo" in a)["engineInfo"] for entry in merges]
    # The first merge takes the append that made the table too, which the handle did not write: it
    # goes through delta-rs, which lists the run's files. The later ones go by version: the store
    # wrote those entries (delta-rs' engineInfo names delta-rs).
    assert len(engines) == 3 and engines[0].startswith("delta-rs"), engines
    assert engines[1:] == ["results-store", "results-store"], engines
    assert _run_rows(path, "day-1") == list(range(12))
    assert _verified(path)


def _versions(writer: BatchWriter, raw: pa.Table, step: int) -> dict[str, int | None]:
    version = _commit(writer, raw, step)
    return dict.fromkeys(writer.table_paths, version)
