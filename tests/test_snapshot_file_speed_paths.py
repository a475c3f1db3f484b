"""Reading snapshot files fast changes nothing that is read: a line's timestamps come out as pandas reads them
(or fail with the same error), and an ingested engine file stores what the engine fed in process stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pandas as pd
import pytest

from results_store.drive import run_snapshots
from results_store.file_ingest import feed_file
from results_store.simulator.jsonl import check_jsonl, parse_line, read_jsonl, write_jsonl
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from results_store.utc import to_utc
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.store.conftest import fingerprint

SPELLINGS = [
    "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01 00:00:00+00:00",
    "2024-06-30T23:59:59.5+00:00", "2024-06-30T23:59:59.123456+00:00", "2024-06-30T23:59:59.123456789+00:00",
    "2024-06-30T23:59:59.1234567Z", "2024-06-30T23:59:59.000001Z", "2024-03-10T02:30:00+05:30",
    "2024-03-10T02:30:00-03:00", "2024-03-10T02:30:00-00:00", "2024-12-31T23:00:00-02:00", "2024-01-01",
    "2024-01-01T00:00", "2024-01-01T00:00:00+0000", "2024-01-01t00:00:00z", "20240101T000000Z",
    "1677-09-21T00:12:43.145225+00:00", "1677-09-21T00:12:43.145224+00:00", "1677-09-22T00:00:00+00:00",
    "2262-04-11T23:47:16.854775+00:00", "2262-04-11T23:47:16.854776+00:00", "2262-04-10T00:00:00+00:00",
    "2262-04-11T23:00:00-01:00", "1677-09-21T01:00:00+02:00", "2300-01-01T00:00:00+00:00",
    "1600-01-01T00:00:00+00:00", "0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00",
    "2024-02-30T00:00:00+00:00", "2024-01-01T24:00:00+00:00", "2024-01-01T23:59:60+00:00",
    "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00+23:59", "2024-01-01T00:00:00.+00:00",
    "2024-01-01T00:00:00,5+00:00", "2024-1-1T00:00:00+00:00", " 2024-01-01T00:00:00+00:00",
    "2024-01-01T00:00:00+00:00 ", "2024-01-01T00:00:00 +00:00", "not a time", "", "2024-01-01T00:00:00+00:00:00",
    "2024-01-01T00:00:00.123456+00:00:30", "２０２４-01-01T00:00:00+00:00", "2024-01-01T00:00:00UTC",
]


def _slow(text: str, path: Path) -> tuple[object, ...]:
    """What reading gave before the fast path: ``to_utc`` and the 1677-2262 check, or the error's words."""
    try:
        stamp = to_utc(text)
    except (TypeError, ValueError, OverflowError):
        return ("error", "is not an ISO-8601 timestamp the tables can hold")
    if not pd.Timestamp.min.tz_localize("UTC") <= stamp <= pd.Timestamp.max.tz_localize("UTC"):
        return ("error", "is outside what the tables hold (1677-2262)")
    return ("ok", stamp.value, stamp.unit, stamp.tzinfo, stamp.isoformat(), str(stamp))


@pytest.mark.parametrize("text", SPELLINGS)
def test_a_line_and_its_events_read_their_timestamps_exactly_as_pandas_does(text, tmp_path):
    expected = _slow(text, tmp_path)
    event = {"order": 1, "event_type": "X", "timestamp": text, "details": {}}
    line = orjson.dumps({"timestamp": text, "timestep": 3, "event_logger": [event]})
    if expected[0] == "error":
        with pytest.raises(ComponentError) as caught:
            parse_line(line, tmp_path / "f.jsonl", 7)
        assert caught.value.error_code == "RST-101" and f"{tmp_path / 'f.jsonl'}:7: timestamp" in str(caught.value)
        assert str(expected[1]) in str(caught.value), (text, str(caught.value))
        return
    stamp, record = parse_line(line, tmp_path / "f.jsonl", 7)
    for got in (stamp, record["event_logger"][0]["timestamp"]):
        assert ("ok", got.value, got.unit, got.tzinfo, got.isoformat(), str(got)) == expected, text
        assert type(got) is type(to_utc("2024-01-01"))


def test_an_ingested_engine_file_stores_exactly_what_the_engine_fed_in_process_stores(tmp_path):
    mode = load_mode("usdt_market_neutral")
    engine = ReferenceEngine(mode, "2024-01-01", "2024-01-01 06:00", "1min", seed=3)
    settings = {"backtest_batch_size": 100}
    run_snapshots(mode, engine.iter_snapshots(), data_dir=tmp_path / "engine", run_id="r",
                  settings=load_settings(mode, data_dir=tmp_path / "engine", **settings))
    path = tmp_path / "r.jsonl"
    assert write_jsonl(engine, path) == len(engine)

    async def ingest() -> None:
        store = ResultsStore(mode, "backtest", data_dir=tmp_path / "file", run_id="r",
                             settings=load_settings(mode, data_dir=tmp_path / "file", **settings))
        async with store:
            tally = await feed_file(store, path)
        assert tally.to_dict() == {"read": len(engine), "written": len(engine), "quarantined": 0, "refused": 0}

    asyncio.run(ingest())
    for table in ["raw_snapshots", "quarantine", *(t.value for t in mode.results_store.result_types)]:
        # Every row, raw payloads and their sha256 included, byte for byte.
        assert fingerprint(tmp_path / "file", "backtest", table, "r") == \
            fingerprint(tmp_path / "engine", "backtest", table, "r"), table


def test_lines_read_in_blocks_keep_their_numbers_blank_lines_and_a_last_line_without_newline(tmp_path):
    engine = ReferenceEngine(load_mode("pure_lending"), "2024-01-01", "2024-01-01 00:20", "1min")
    good = tmp_path / "good.jsonl"
    write_jsonl(engine, good)
    lines = good.read_bytes().splitlines(keepends=True)
    # Blank lines (with \r\n and spaces), CRLF line ends and a long line between the snapshots.
    mixed = [lines[0], b"\n", b"  \r\n", lines[1].replace(b"\n", b"\r\n"), b'"' + b"x" * 300_000 + b'"\n',
             *lines[2:-1], lines[-1].rstrip(b"\n")]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"".join(mixed))
    check = check_jsonl(path)
    assert check.lines == len(lines) + 1 and check.snapshots == len(lines)
    assert [b.line for b in check.bad] == [5]
    bad = []
    read = list(read_jsonl(path, on_bad_line=bad.append))
    assert [r["timestep"] for _, r in read] == list(range(len(lines)))
    assert [b.line for b in bad] == [5] and bad[0].text == ('"' + "x" * 300_000 + '"')[:10_000]
