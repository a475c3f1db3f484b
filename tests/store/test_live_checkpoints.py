"""A live run's tables keep a checkpoint every CHECKPOINT_INTERVAL (10) versions, whoever wrote the commits.

delta-rs checkpoints inside its own commits; the live batch writer's commits leave it to the live
policy (``LiveCompaction``), which writes it in the background, off the commits' latency.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import PostCommitHookProperties

from results_store import checksums, delta_tables
from results_store.compaction import CHECKPOINT_COST_FACTOR, CHECKPOINT_INTERVAL, LiveCompaction
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from schemas.modes import load_mode
from schemas.settings import load_settings

STEPS = CHECKPOINT_INTERVAL + 20


async def _committed(store: ResultsStore, step: int, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if store.last_committed_timestep() == step:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timestep {step} not committed within {seconds} s")


def _rows(step: int) -> pa.Table:
    return pa.table({"run_id": ["r1"], "timestep": pa.array([step], pa.int64()), "value": [float(step)]})


def _checkpoints(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path / checksums.LOG_DIR) if n.endswith(".checkpoint.parquet"))


@pytest.mark.parametrize("commits_checkpoint", [False, True])
def test_a_live_table_has_a_checkpoint_every_interval_and_only_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commits_checkpoint: bool) -> None:
    if not commits_checkpoint:  # commits that leave the checkpoint to the policy
        monkeypatch.setattr(delta_tables, "_HOOKS",
                            PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False))
    path = tmp_path / "live" / "values"
    now = [0.0]  # one commit a second: a checkpoint is due at every boundary
    policy = LiveCompaction({"values": path}, "r1", merge_files=STEPS + 1, clock=lambda: now[0],
                            checkpoint_cost_factor=0.0)
    for step in range(STEPS):
        now[0] = float(step)
        version = delta_tables.append_exactly_once(path, _rows(step), run_id="r1", last_timestep=step)
        assert version is not None
        policy.after_commit({"values": version}, None)
    policy.close()  # the policy's checkpoints are written in the background

    # Versions 0 (the table's creation) to STEPS: a boundary every CHECKPOINT_INTERVAL versions.
    boundaries = list(range(CHECKPOINT_INTERVAL - 1, STEPS + 1, CHECKPOINT_INTERVAL))
    assert len(boundaries) == 3
    assert _checkpoints(path) == [f"{v:020d}.checkpoint.parquet" for v in boundaries]
    assert policy.checkpoints == ([] if commits_checkpoint else [("values", v) for v in boundaries])
    assert delta_tables.committed_txn_version(path, "r1") == STEPS - 1
    assert checksums.verify(tmp_path, ["live"], all_versions=True, in_flight_seconds=0).ok


def test_the_commit_that_rolls_the_day_over_is_checkpointed_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta_tables, "_HOOKS", PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False))
    path = tmp_path / "live" / "values"
    policy = LiveCompaction({"values": path}, "r1", merge_files=STEPS + 1)
    midnight_us = 1_700_006_400 * 1_000_000  # 2023-11-15 00:00 UTC
    for step in range(CHECKPOINT_INTERVAL - 1):  # versions 1..9: the table's creation is version 0
        version = delta_tables.append_exactly_once(path, _rows(step), run_id="r1", last_timestep=step)
        assert version is not None
        # The commit of version 9, the checkpoint boundary, is the first of the next UTC day.
        policy.after_commit({"values": version}, midnight_us + (step - (CHECKPOINT_INTERVAL - 2)) * 60_000_000)
    policy.close()

    assert policy.day == date(2023, 11, 15)  # the roll-over was seen (the rows have no timestamps to compact)
    assert [name for name, _ in policy.checkpoints] == ["values"] and _checkpoints(path)
    assert checksums.verify(tmp_path, ["live"], all_versions=True, in_flight_seconds=0).ok


def test_a_table_the_store_makes_checkpoints_every_ten_versions(tmp_path: Path) -> None:
    """delta-rs replays each log entry since the last checkpoint on every commit: a short interval
    keeps a live commit's cost flat instead of growing for 100 versions."""
    path = tmp_path / "live" / "values"
    for step in range(25):  # versions 0..25: creation, then 25 appends
        delta_tables.append_exactly_once(path, _rows(step), run_id="r1", last_timestep=step)

    table = delta_tables.open_table(path)
    assert table is not None
    assert table.metadata().configuration["delta.checkpointInterval"] == "10"
    assert _checkpoints(path) == [f"{v:020d}.checkpoint.parquet" for v in (9, 19)]
    assert checksums.verify(tmp_path, ["live"], all_versions=True, in_flight_seconds=0).ok


async def test_a_live_store_writes_each_tables_checkpoint_in_the_background_not_inside_the_commit(tmp_path: Path) -> None:
    """Every table reaches a checkpoint boundary at the same commit: written inside it, ten checkpoints
    made every tenth commit the slowest. The live policy writes them in the background instead."""
    mode = load_mode("usdt_market_neutral")
    engine = ReferenceEngine(mode, "2024-01-01", "2024-01-02", "1min", seed=7)
    settings = load_settings(mode, data_dir=tmp_path, execution_mode="live", tune_allocators=False)
    store = ResultsStore(mode, "live", data_dir=tmp_path, run_id="cp", settings=settings)
    policy = store._live_compaction
    assert policy is not None
    policy.clock = lambda: policy.commits * 60.0  # a collection a minute, whatever the test's pace
    async with store:
        for step, (stamp, snapshot) in enumerate(itertools.islice(engine.iter_snapshots(), 2 * CHECKPOINT_INTERVAL)):
            await store.store_timestep_results(stamp, snapshot)
            await _committed(store, step)  # one commit per snapshot: versions 1, 2, ...
    assert not policy.errors
    boundaries = [CHECKPOINT_INTERVAL - 1, 2 * CHECKPOINT_INTERVAL - 1]
    tables = sorted(store.table_paths)
    for boundary in boundaries:  # each made by the policy (no commit wrote one), of the boundary version
        assert sorted(name for name, version in policy.checkpoints if version == boundary) == tables
    for name in tables:
        assert _checkpoints(store.table_paths[name]) == [f"{v:020d}.checkpoint.parquet" for v in boundaries]
    assert checksums.verify(tmp_path, ["live"], all_versions=True, in_flight_seconds=0).ok


# At 8 commits a second: the newest boundary once 2 s have passed since the last checkpoint began:
# version 9 at 1.0 s, 19 at 3.0 s (committing version 25), 39 at 5.0 s (41), 49 at 7.0 s (57).
@pytest.mark.parametrize(("seconds_per_commit", "checkpointed"), [(1.0, [9, 19, 29, 39, 49, 59]),
                                                                  (0.125, [9, 19, 39, 49])])
def test_a_table_is_checkpointed_every_ten_versions_but_no_more_often_than_every_checkpoint_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds_per_commit: float, checkpointed: list[int]) -> None:
    """A table's next checkpoint waits ``checkpoint_seconds`` (here 2 s) after its last began: the
    newest boundary is checkpointed once they have passed."""
    monkeypatch.setattr(delta_tables, "_HOOKS", PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False))
    path = tmp_path / "live" / "values"
    now = [0.0]
    policy = LiveCompaction({"values": path}, "r1", merge_files=10_000, checkpoint_seconds=2.0,
                            checkpoint_cost_factor=0.0, clock=lambda: now[0])
    for step in range(6 * CHECKPOINT_INTERVAL - 1):  # versions 1..59
        now[0] = step * seconds_per_commit
        version = delta_tables.append_exactly_once(path, _rows(step), run_id="r1", last_timestep=step)
        assert version is not None
        policy.after_commit({"values": version}, None)
    policy.close()

    assert [version for _, version in policy.checkpoints] == checkpointed
    assert _checkpoints(path) == [f"{v:020d}.checkpoint.parquet" for v in checkpointed]
    assert checksums.verify(tmp_path, ["live"], all_versions=True, in_flight_seconds=0).ok


def test_a_tables_next_checkpoint_waits_twenty_times_what_its_last_took(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However long the log (a checkpoint of a week's log at one snapshot a second lists 600,000
    files), background checkpoints take a bounded share of the time: after one that took t seconds,
    the next waits 20 t. Here the clock advances an hour a commit and the factor is a billion."""
    monkeypatch.setattr(delta_tables, "_HOOKS", PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False))
    assert CHECKPOINT_COST_FACTOR == 20.0
    path = tmp_path / "live" / "values"
    now = [0.0]
    policy = LiveCompaction({"values": path}, "r1", merge_files=10_000, checkpoint_seconds=0.0,
                            checkpoint_cost_factor=1e9, clock=lambda: now[0])
    for step in range(3 * CHECKPOINT_INTERVAL - 1):  # versions 1..29
        now[0] = step * 3600.0
        version = delta_tables.append_exactly_once(path, _rows(step), run_id="r1", last_timestep=step)
        assert version is not None
        policy.after_commit({"values": version}, None)
        policy.wait_checkpoints()  # the next commit sees when the last checkpoint ended
    policy.close()

    assert [version for _, version in policy.checkpoints] == [9]


def test_a_table_never_has_a_second_checkpoint_queued_behind_one_not_yet_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint that takes longer than the boundaries come (a long log) does not pile up work:
    boundaries that pass while the table's checkpoint is being written are not queued."""
    monkeypatch.setattr(delta_tables, "_HOOKS", PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False))
    path = tmp_path / "live" / "values"
    release = threading.Event()
    real_checkpoint = delta_tables.checkpoint

    def slow_checkpoint(where: Path, version: int | None = None) -> int | None:
        release.wait(30)  # held until the commits below are done
        return real_checkpoint(where, version)

    monkeypatch.setattr(delta_tables, "checkpoint", slow_checkpoint)
    now = [0.0]
    policy = LiveCompaction({"values": path}, "r1", merge_files=10_000, checkpoint_seconds=0.0,
                            checkpoint_cost_factor=0.0, clock=lambda: now[0])
    for step in range(3 * CHECKPOINT_INTERVAL - 1):  # versions 1..29: boundaries 9, 19 and 29
        now[0] = float(step)
        version = delta_tables.append_exactly_once(path, _rows(step), run_id="r1", last_timestep=step)
        assert version is not None
        policy.after_commit({"values": version}, None)
    release.set()
    policy.close()

    assert [version for _, version in policy.checkpoints] == [9]
