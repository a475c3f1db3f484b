"""The live write-ahead log: durable entries, torn tails, segment release, and a backlog read once."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import orjson
import pytest

import results_store.wal as wal_module
from results_store.wal import WriteAheadLog


def _fill(wal: WriteAheadLog, steps: range) -> None:
    for step in steps:
        wal.append(step, 1_700_000_000_000_000 + step, {"timestep": step, "note": "prêt"})


class _CountingLoads:
    """orjson with a counter on ``loads``: how many WAL lines were parsed."""

    JSONDecodeError = orjson.JSONDecodeError
    dumps = staticmethod(orjson.dumps)
    OPT_SERIALIZE_NUMPY = orjson.OPT_SERIALIZE_NUMPY

    def __init__(self) -> None:
        self.calls = 0

    def loads(self, raw: bytes) -> object:
        self.calls += 1
        return orjson.loads(raw)


def test_draining_a_backlog_in_chunks_parses_each_line_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog(tmp_path)
    _fill(wal, range(1_000))
    counting = _CountingLoads()
    monkeypatch.setattr(wal_module, "orjson", counting)

    drained: list[int] = []
    after = -1
    while chunk := list(islice(wal.entries(after), 100)):  # what the store's spill reader does
        drained.extend(e.timestep for e in chunk)
        after = chunk[-1].timestep

    assert drained == list(range(1_000))
    assert counting.calls == 1_000


def test_a_torn_last_line_is_not_an_entry_until_it_is_complete(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    _fill(wal, range(3))
    wal.seal()
    segment = wal.segments()[-1]
    line = orjson.dumps({"t": 3, "ts": 1, "r": {"timestep": 3}}) + b"\n"
    with segment.open("ab") as handle:
        handle.write(line[:10])
    assert [e.timestep for e in wal.entries(1)] == [2]
    with segment.open("ab") as handle:
        handle.write(line[10:])
    assert [e.timestep for e in wal.entries(1)] == [2, 3]
    assert wal.entries(-1).__next__().results == {"timestep": 0, "note": "prêt"}


def test_only_segments_committed_to_their_last_entry_are_released(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    _fill(wal, range(5))
    wal.seal()
    _fill(wal, range(5, 10))
    wal.seal()
    assert wal.release_through(7) == 1  # the second segment still holds 8 and 9
    assert [e.timestep for e in wal.entries(-1)] == [5, 6, 7, 8, 9]
    assert wal.release_through(9) == 1
    assert wal.segments() == [] and wal.pending_count() == 0


def test_a_restarted_log_replays_what_a_previous_process_left(tmp_path: Path) -> None:
    first = WriteAheadLog(tmp_path)
    _fill(first, range(4))
    first.close()
    again = WriteAheadLog(tmp_path)
    assert [e.timestep for e in again.entries(1)] == [2, 3]
    assert again.release_through(3) == 1
