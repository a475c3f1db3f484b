"""A live run's tables merge their appends in turns, not all at the commit where they reach the threshold.

Every table of a run commits at every collection, so all of them reach ``merge_files`` appends at
the same commit; merging them all there held the commits behind it (bench/bench_live.py, 10/s).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa

from results_store import checksums, delta_tables
from results_store.compaction import LiveCompaction, is_append

TABLES = [f"t{i}" for i in range(6)]
MERGE_FILES = 8  # two turns: slots = merge_files // 4
COMMITS = 3 * MERGE_FILES


def _rows(step: int) -> pa.Table:
    return pa.table({"run_id": ["r1"], "timestep": pa.array([step], pa.int64()), "value": [float(step)]})


def test_tables_take_turns_to_merge_and_none_holds_many_more_appends_than_the_threshold(tmp_path: Path) -> None:
    paths = {name: tmp_path / "live" / name for name in TABLES}
    policy = LiveCompaction(paths, "r1", merge_files=MERGE_FILES)
    merged_at: list[list[str]] = []
    most_appends = 0
    for step in range(COMMITS):
        versions = {}
        for name, path in paths.items():
            version = delta_tables.append_exactly_once(path, _rows(step), run_id="r1", last_timestep=step)
            assert version is not None
            versions[name] = version
        actions = policy.after_commit(versions, None)
        merged_at.append(sorted(a["table"] for a in actions if a["step"] == "merge"))
        for path in paths.values():
            files = delta_tables.table_files(path).runs(["r1"])[0][1]
            most_appends = max(most_appends, sum(1 for f in files if is_append(f.path)))

    per_commit = [len(m) for m in merged_at]
    # Half the tables at a commit (two slots), never all six; every table merged twice or more.
    assert max(per_commit) == len(TABLES) // 2
    merges = Counter(name for m in merged_at for name in m)
    assert set(merges) == set(TABLES) and min(merges.values()) >= 2
    # A table waits at most one turn: the threshold plus one append.
    assert most_appends <= MERGE_FILES + 1
    for path in paths.values():  # nothing lost, nothing doubled
        assert sorted(delta_tables.read(path, run_id="r1").column("timestep").to_pylist()) == list(range(COMMITS))
    assert checksums.verify(tmp_path, ["live"], all_versions=True, in_flight_seconds=0).ok


def test_a_small_threshold_keeps_one_turn_every_table_merges_at_once(tmp_path: Path) -> None:
    paths = {name: tmp_path / "live" / name for name in TABLES[:3]}
    policy = LiveCompaction(paths, "r1", merge_files=3)
    merged = []
    for step in range(3):
        versions = {name: delta_tables.append_exactly_once(path, _rows(step), run_id="r1", last_timestep=step)
                    for name, path in paths.items()}
        merged.append(sorted(a["table"] for a in policy.after_commit(versions, None) if a["step"] == "merge"))
    assert merged == [[], [], sorted(paths)]
