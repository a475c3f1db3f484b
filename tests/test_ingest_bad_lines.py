"""Ingesting a snapshot file: every bad line is reported and quarantined or refused, no good line is lost,
and written + quarantined + refused = lines read, exactly once across resumes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from results_store.file_ingest import LineAccounting, feed_file
from results_store.reading import read_table
from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings
from tests.test_snapshot_files import _file_with_one_line_of_each_kind

MODE = load_mode("pure_lending")


def _ingest(root: Path, path: Path, run_id: str = "mixed", *, strict: bool = False,
            batch_size: int | None = None) -> LineAccounting:
    async def go() -> LineAccounting:
        settings = load_settings(MODE, data_dir=root, execution_mode="backtest", backtest_batch_size=batch_size)
        store = ResultsStore(MODE, "backtest", data_dir=root, run_id=run_id, settings=settings)
        async with store:
            return await feed_file(store, path, strict=strict)
    return asyncio.run(go())


def test_each_kind_of_bad_line_is_quarantined_or_refused_and_every_good_line_is_written(tmp_path):
    path, good_lines, expected = _file_with_one_line_of_each_kind(tmp_path)
    tally = _ingest(tmp_path / "data", path)

    assert tally.read == good_lines + len(expected)
    assert tally.written + tally.quarantined + tally.refused == tally.read
    unparseable = {line for line, (_, code, _, _) in expected.items() if code == "RST-101"}
    assert tally.quarantined == len(unparseable)
    assert tally.refused == len(expected) - len(unparseable)
    assert tally.written == good_lines
    # Every bad line, each with its own outcome: its code and file:line.
    assert {b.line: b.error.error_code for b in tally.bad} == {line: e[1] for line, e in expected.items()}
    assert all(f"{path}:{b.line}:" in str(b.error) for b in tally.bad)

    raw = read_table(tmp_path / "data", "backtest", "raw_snapshots", run_id="mixed")
    assert raw.num_rows == good_lines
    rows = [r for r in read_table(tmp_path / "data", "backtest", "quarantine", run_id="mixed").to_pylist()
            if r["rule"] == "unparseable_line"]
    by_line = {r["column"]: r for r in rows}
    assert sorted(by_line) == sorted(f"line {n}" for n in unparseable)  # each once
    for n in unparseable:
        row = by_line[f"line {n}"]
        kind, _code, words, text = expected[n]
        assert row["error_code"] == "RST-101" and f"{path}:{n}:" in row["message"] and words in row["message"], kind
        assert row["payload"] == text[:10_000], kind  # the raw text, to fix the line from
        assert row["result_type"] == "snapshot"


def test_a_resume_quarantines_no_bad_line_twice(tmp_path):
    path, _, expected = _file_with_one_line_of_each_kind(tmp_path)
    # Small batches, so the bad lines are spread over several commits; then the whole file again.
    _ingest(tmp_path / "data", path, batch_size=5)
    again = _ingest(tmp_path / "data", path, batch_size=5)
    assert again.written + again.quarantined + again.refused == again.read
    rows = [r for r in read_table(tmp_path / "data", "backtest", "quarantine", run_id="mixed").to_pylist()
            if r["rule"] == "unparseable_line"]
    assert len(rows) == len({r["column"] for r in rows}) == sum(1 for e in expected.values() if e[1] == "RST-101")


def test_strict_refuses_the_file_naming_every_bad_line_before_anything_is_written(tmp_path):
    path, _, expected = _file_with_one_line_of_each_kind(tmp_path)
    with pytest.raises(ComponentError) as caught:
        _ingest(tmp_path / "data", path, strict=True)
    assert caught.value.error_code == "RST-101"
    assert caught.value.details["bad_lines"] == sorted(expected)
    raw = tmp_path / "data" / "backtest" / "raw_snapshots"
    assert not raw.exists() or read_table(tmp_path / "data", "backtest", "raw_snapshots", run_id="mixed").num_rows == 0
