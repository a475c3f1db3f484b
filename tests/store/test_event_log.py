"""The event log: one JSON line per event, safe when several processes write it, errors on disk at once."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from results_store.events import EventLog, event_log_path


def _write_events(data_dir: str, worker: int, count: int) -> None:
    log = EventLog(Path(data_dir), buffered=False)
    for i in range(count):
        # Long enough that interleaved buffered writes would tear lines.
        log.log_event("state_update", {"worker": worker, "i": i, "pad": "x" * 3000})
    log.close()


def test_processes_writing_one_log_keep_every_line_whole(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_events, args=(str(tmp_path), w, 200)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    lines = event_log_path(tmp_path).read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines]  # every line parses: none torn or interleaved
    seen = sorted((e["data"]["worker"], e["data"]["i"]) for e in events)
    assert seen == sorted((w, i) for w in range(4) for i in range(200))


def test_a_buffered_error_event_is_on_disk_at_once(tmp_path):
    log = EventLog(tmp_path, buffered=True)
    log.log_event("batch_committed", {"rows": 1})
    assert not event_log_path(tmp_path).exists() or event_log_path(tmp_path).read_text() == ""
    log.log_event("error", {"error_code": "RST-001"})
    on_disk = [orjson.loads(line)["event_type"] for line in event_log_path(tmp_path).read_bytes().splitlines()]
    assert on_disk == ["batch_committed", "error"]  # the error, with what led up to it
    log.close()


def test_an_event_log_leaves_no_logger_behind(tmp_path):
    before = set(logging.Logger.manager.loggerDict)
    for _ in range(5):
        EventLog(tmp_path, buffered=True).close()
    assert set(logging.Logger.manager.loggerDict) == before


def test_yesterdays_file_is_rotated_by_its_date_and_old_ones_removed(tmp_path):
    path = event_log_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"old": 1}\n')
    yesterday = datetime.now(UTC) - timedelta(days=1)
    os.utime(path, (yesterday.timestamp(), yesterday.timestamp()))
    ancient = path.with_name(f"{path.name}.{(datetime.now(UTC) - timedelta(days=40)):%Y-%m-%d}")
    ancient.write_text("{}\n")
    log = EventLog(tmp_path, buffered=False)
    log.log_event("state_update", {})
    log.close()
    rotated = path.with_name(f"{path.name}.{yesterday:%Y-%m-%d}")
    assert rotated.read_text() == '{"old": 1}\n'
    assert [orjson.loads(line)["event_type"] for line in path.read_bytes().splitlines()] == ["state_update"]
    assert not ancient.exists()  # 30 days are kept


def test_closing_on_a_full_disk_does_not_raise(tmp_path, monkeypatch):
    log = EventLog(tmp_path, buffered=True)
    log.log_event("batch_committed", {})

    def full(*_args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    started = time.monotonic()
    log.close()  # the run's own error must stay the one reported, not the event log's
    assert time.monotonic() - started < 5
    assert log.dropped == 1


def _events(data_dir):
    return [orjson.loads(line) for line in event_log_path(data_dir).read_bytes().splitlines()]


def test_the_spec_logging_surface_writes_one_format_with_levels_and_correlation_ids(tmp_path):
    from schemas.errors import ComponentError

    log = EventLog(tmp_path, buffered=False, level="INFO", correlation_id="run-7")
    log.log_component_event("state_update", "queue drained", {"queued": 0})
    log.log_performance_metric("commit_latency", 12.5, "ms", {"table": "balance_sheet"})
    log.log_warning("timestep gap of 1,000", {"timestep": 4410}, correlation_id="collect-3")
    log.log_component_event("state_update", "chatty detail", level="DEBUG")  # below BASIS_LOG_LEVEL: not written
    try:
        raise ComponentError("RST-004", "append failed for /data: No space left on device")
    except ComponentError as exc:
        log.log_error(exc, {"table": "risk_metrics"})
    try:
        raise KeyError("balance_sheet")
    except KeyError as exc:
        log.log_error(exc)
    events = _events(tmp_path)
    assert [(e["event_type"], e["level"]) for e in events] == [
        ("state_update", "INFO"), ("performance_metric", "INFO"), ("warning", "WARNING"), ("error", "ERROR"),
        ("error", "ERROR")]
    assert [e["correlation_id"] for e in events] == ["run-7", "run-7", "collect-3", "run-7", "run-7"]
    assert events[1]["data"] == {"metric": "commit_latency", "value": 12.5, "unit": "ms", "table": "balance_sheet"}
    stored, unexpected = events[3]["data"], events[4]["data"]
    assert (stored["error_code"], stored["error_severity"], stored["table"]) == ("RST-004", "HIGH", "risk_metrics")
    assert "Traceback" in stored["stack_trace"] and "No space left" in stored["stack_trace"]
    assert unexpected["error_code"] == "RST-901" and "KeyError" in unexpected["stack_trace"]
