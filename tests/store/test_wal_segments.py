"""The WAL's segments: opened off the engine's path, shared by many batches, rolled over when full.

An acknowledgement is one write and one fsync into a segment that is already open: the store
opens the next segment when it starts and, before a commit, when the open one is full. Deleting a
segment per batch made every acknowledgement after a commit create a file and fsync the directory.
And the write overwrites zeros written ahead of it, so the fsync has no new size or block to journal.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

import results_store.wal as wal_module
from results_store.live import wal_directory
from results_store.store import ResultsStore
from results_store.wal import ZEROS_AHEAD, WriteAheadLog
from schemas.modes import ModeConfig
from tests.store.conftest import snapshots


def _fill(wal: WriteAheadLog, steps: range) -> None:
    for step in steps:
        wal.append(step, 1_700_000_000_000_000 + step, {"timestep": step})


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("seg-*.wal"))


def test_a_rolled_segment_is_open_before_the_first_append_and_named_after_what_it_can_hold(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    assert wal.roll(after=41)
    assert _names(tmp_path) == ["seg-000000000042.wal"]
    _fill(wal, range(42, 45))
    assert not wal.roll()  # room left: appends go on into the same segment
    assert _names(tmp_path) == ["seg-000000000042.wal"]
    assert [e.timestep for e in wal.entries(-1)] == [42, 43, 44]


def test_a_full_segment_rolls_over_and_goes_once_committed_while_the_open_one_stays(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=100)  # an entry is ~50 bytes: full after two
    wal.roll()
    _fill(wal, range(3))
    assert wal.roll()  # full: sealed, and the next one opened after the newest timestep
    assert _names(tmp_path) == ["seg-000000000000.wal", "seg-000000000003.wal"]
    _fill(wal, range(3, 5))
    assert wal.release_through(1) == 0  # the sealed segment still holds 2
    assert wal.release_through(4) == 1  # the sealed one goes; the open one stays, all committed
    assert _names(tmp_path) == ["seg-000000000003.wal"]
    _fill(wal, range(5, 6))
    assert [e.timestep for e in wal.entries(4)] == [5]


def test_closing_keeps_the_open_segment_unless_all_of_it_is_committed(tmp_path: Path) -> None:
    first = WriteAheadLog(tmp_path)
    first.roll()
    _fill(first, range(4))
    first.release_through(2)
    first.close()  # 3 is not committed: the segment stays for the next process
    again = WriteAheadLog(tmp_path)
    assert [e.timestep for e in again.entries(2)] == [3]
    assert again.roll(after=2)
    assert _names(tmp_path) == ["seg-000000000000.wal", "seg-000000000004.wal"]  # after every entry read
    _fill(again, range(4, 6))
    assert again.release_through(5) == 1
    again.close()  # all of it committed: nothing is left
    assert _names(tmp_path) == []


def test_an_unused_rolled_segment_is_removed_at_close(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.roll()
    wal.close()
    assert _names(tmp_path) == []


async def test_a_live_run_acknowledges_into_one_open_segment_across_its_commits(
        tmp_path: Path, mn_mode: ModeConfig) -> None:
    store = ResultsStore(mn_mode, "live", data_dir=tmp_path, run_id="one-segment")
    wal = wal_directory(store.root, "one-segment")
    async with store:
        opened = _names(wal)
        assert len(opened) == 1, "the first segment is open before the first acknowledgement"
        for timestamp, results in snapshots(mn_mode, 4):
            await store.store_timestep_results(timestamp, results)
            deadline = time.monotonic() + 60
            while store.last_committed_timestep() != results["timestep"]:
                assert time.monotonic() < deadline, "the snapshot was never committed"
                await asyncio.sleep(0.01)
            assert _names(wal) == opened, "a commit neither deletes the open segment nor makes the next ack open one"
    assert _names(wal) == [], "stopped with everything committed: the WAL is empty"


def test_appends_overwrite_the_zeros_written_ahead_and_a_restart_reads_up_to_them(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.roll()
    [segment] = wal.segments()
    written = segment.stat().st_size
    assert written >= ZEROS_AHEAD and segment.read_bytes() == bytes(written)
    _fill(wal, range(3))
    assert segment.stat().st_size == written, "an append does not grow the file"
    assert [e.timestep for e in WriteAheadLog(tmp_path).entries(-1)] == [0, 1, 2]


def test_a_torn_line_before_the_zeros_was_never_acknowledged(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.roll()
    _fill(wal, range(2))
    [segment] = wal.segments()
    end = segment.read_bytes().index(0)
    line = orjson.dumps({"t": 2, "ts": 1, "r": {"timestep": 2}}) + b"\n"
    with segment.open("r+b") as handle:  # a crash part-way through the third append
        handle.seek(end)
        handle.write(line[:10])
    assert [e.timestep for e in WriteAheadLog(tmp_path).entries(-1)] == [0, 1]


def test_rolling_tops_the_zeros_up_once_the_appends_have_used_most_of_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal_module, "ZEROS_AHEAD", 200)
    wal = WriteAheadLog(tmp_path)
    wal.roll()
    [segment] = wal.segments()
    assert segment.stat().st_size == 200
    _fill(wal, range(2))  # ~100 bytes: half the zeros are left
    assert not wal.roll() and segment.stat().st_size == 200
    _fill(wal, range(2, 4))  # ~200 bytes: none left
    assert not wal.roll()
    data = segment.read_bytes()
    assert len(data) > 200 and data.index(0) == len(data) - 200, "200 bytes of zeros ahead again"
    _fill(wal, range(4, 6))
    assert [e.timestep for e in WriteAheadLog(tmp_path).entries(-1)] == list(range(6))
