"""A real engine feeds the live flow through a JSON Lines file it appends to while collections run."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from results_store import delta_tables
from results_store.drive import collect_pending
from results_store.live_sources import REFERENCE_SOURCE, JsonlLiveSource, load_live_source
from results_store.simulator.live_source import ReferenceLiveSource
from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.settings import load_settings

MODE = "pure_lending"
STEPS = 240

# A live engine: one line per minute of engine time, each written in two parts with a flush between,
# so a collection regularly meets a half-written last line.
APPENDER = """
import sys, time
from pathlib import Path
import orjson
from results_store.json_policy import dumps
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import load_mode
path, steps = Path(sys.argv[1]), int(sys.argv[2])
engine = ReferenceEngine(load_mode("pure_lending"), "2024-01-01", "2024-01-02", "1min")
with path.open("ab", buffering=0) as out:
    for ts, results in engine.iter_snapshots(0, steps):
        line = dumps({"timestamp": ts, **results}, option=orjson.OPT_APPEND_NEWLINE)
        out.write(line[: len(line) // 2])
        time.sleep(0.002)
        out.write(line[len(line) // 2 :])
"""


async def _collect(tmp_path, source, now):
    config = load_mode(MODE)
    settings = load_settings(config, data_dir=tmp_path / "data", execution_mode="live")
    store = ResultsStore(config, "live", data_dir=tmp_path / "data", run_id="live-file", settings=settings)
    async with store:
        _, _, fed = await collect_pending(store, source, now)
    return fed


def test_every_appended_snapshot_is_stored_once_in_order_while_the_engine_writes(tmp_path):
    feed = tmp_path / "engine" / "live.jsonl"
    feed.parent.mkdir()
    feed.touch()
    engine = subprocess.Popen([sys.executable, "-c", APPENDER, str(feed), str(STEPS)])
    source = JsonlLiveSource(feed)
    collections = fed_total = 0
    clock = datetime(2024, 1, 2, tzinfo=UTC)  # our clock: every line written so far is due
    try:
        while True:
            running = engine.poll() is None
            fed = asyncio.run(_collect(tmp_path, source, clock))
            fed_total += fed
            collections += 1
            assert not source.bad_lines  # a half-written last line is waited for, never quarantined
            if not running:
                break
    finally:
        engine.kill()
        engine.wait()
    assert engine.returncode == 0
    raw = delta_tables.read(delta_tables.table_path(tmp_path / "data", "live", "raw_snapshots"), run_id="live-file")
    steps = raw.column("timestep").to_pylist()
    assert sorted(steps) == list(range(STEPS)) and fed_total == STEPS  # each once
    assert collections > 2  # collections really ran while the engine was writing


def test_a_collection_takes_only_lines_up_to_now(tmp_path):
    feed = tmp_path / "live.jsonl"
    subprocess.run([sys.executable, "-c", APPENDER, str(feed), "30"], check=True)
    source = JsonlLiveSource(feed)
    assert asyncio.run(_collect(tmp_path, source, datetime(2024, 1, 1, 0, 9, tzinfo=UTC))) == 10
    assert asyncio.run(_collect(tmp_path, source, datetime(2024, 1, 1, 0, 9, tzinfo=UTC))) == 0
    assert asyncio.run(_collect(tmp_path, source, datetime(2024, 1, 2, tzinfo=UTC))) == 20


def test_a_flow_names_its_source_by_import_path_and_json_arguments(tmp_path):
    config = load_mode(MODE)
    built = load_live_source("results_store.live_sources:JsonlLiveSource", '{"path": "%s"}' % (tmp_path / "x.jsonl"),
                             config)
    assert isinstance(built, JsonlLiveSource) and built.path == tmp_path / "x.jsonl"
    reference = load_live_source(REFERENCE_SOURCE, {"anchor": "2024-01-01", "freq": "1min"}, config)
    assert isinstance(reference, ReferenceLiveSource)
    for bad in ("no_colon", "results_store.nothing:Here", "results_store.live_sources:JsonlLiveSource"):
        with pytest.raises(ComponentError) as caught:
            load_live_source(bad, {"wrong": 1} if ":" in bad else None, config)
        assert caught.value.error_code == "RST-201"
