"""The run lock: one writer per run, and a clear error instead of waiting forever."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from results_store.run_lock import RunLock
from schemas.errors import ComponentError

HOLD = """
import sys, time
from pathlib import Path
from results_store.run_lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_lock_held_by_another_process_times_out_with_a_clear_error_and_is_logged_meanwhile(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "r.lock"), "30"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = RunLock(tmp_path / "r.lock", timeout_s=0.6, log_every_s=0.2)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="results_store.run_lock"), pytest.raises(ComponentError) as caught:
            lock.acquire()
        assert 0.6 <= time.monotonic() - started < 10
        assert caught.value.error_code == "RST-301"
        assert "r.lock" in str(caught.value) and "0.6 s" in str(caught.value)
        assert any("waiting for" in r.getMessage() for r in caplog.records)
    finally:
        holder.kill()
        holder.communicate()
    lock.acquire()  # the OS dropped the dead holder's lock
    lock.release()


def test_a_second_holder_in_the_same_process_waits_for_the_first_and_times_out_if_never_freed(tmp_path):
    # Two collections of one live run in one process (two flows on one event loop) take turns.
    first = RunLock(tmp_path / "r.lock")
    first.acquire()
    first.acquire()  # idempotent for the holder itself
    with pytest.raises(ComponentError, match=r"still holds its lock after 0\.2 s"):
        RunLock(tmp_path / "r.lock", timeout_s=0.2).acquire()
    first.release()
    second = RunLock(tmp_path / "r.lock", timeout_s=0.2)
    second.acquire()
    second.release()
