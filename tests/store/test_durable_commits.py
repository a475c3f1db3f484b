"""A commit the store reports done is on disk: it survives a power cut, not only a killed process.

A killed process leaves what it wrote in the page cache, where the next process reads it; a power
cut leaves only what reached the disk. Nothing short of cutting power shows the difference, so these
tests watch the system calls instead, with strace, below any code this project runs: a file's bytes
are fsynced before the name that makes them count (a data file before the commit that adds it, a
log entry before it is linked in as a version, a checksum entry before it is renamed into place),
and the directory holding a new name is fsynced before the store reports the write done (live
mode's write-ahead log lets go of a snapshot then).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARKER = "/results-store-test-marker"

# A first append (the table made and committed through delta-rs), then one through a table handle
# (its log entry written by the store itself); an access() of a path that does not exist marks in the
# trace where each call returned.
SCRIPT = textwrap.dedent(f"""
    import os, sys
    from pathlib import Path
    import pyarrow as pa
    from results_store import delta_tables

    path = Path(sys.argv[1])
    schema = pa.schema([("run_id", pa.string()), ("timestep", pa.int64()), ("value", pa.float64())])
    def rows(first):
        return pa.table({{"run_id": ["r1"] * 3, "timestep": [first, first + 1, first + 2],
                          "value": [1.0, 2.0, 3.0]}}, schema=schema)
    delta_tables.append_exactly_once(path, rows(0), run_id="r1", last_timestep=2)
    os.access("{MARKER}/through-delta-rs", os.F_OK)
    handle = delta_tables.open_handle(path)
    assert handle is not None and handle.direct, "the handle should append by version"
    delta_tables.append_exactly_once(path, rows(3), run_id="r1", last_timestep=5, table=handle)
    os.access("{MARKER}/by-version", os.F_OK)
""")


@dataclass(frozen=True)
class Call:
    index: int
    name: str
    text: str


def _trace(tmp_path: Path) -> tuple[Path, list[Call]]:
    strace = shutil.which("strace")
    if strace is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI: strace is not installed; these tests need it to see the store's fsyncs")
        pytest.skip("strace is not installed: it shows the store's fsyncs below Python")
    table = tmp_path / "table"
    out = tmp_path / "trace.txt"
    subprocess.run(
        [strace, "-f", "-qq", "-y", "-o", str(out), "-e",
         "trace=fsync,fdatasync,link,linkat,rename,renameat,renameat2,access,faccessat,faccessat2",
         sys.executable, "-c", SCRIPT, str(table)],
        check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    calls = []
    for index, line in enumerate(out.read_text().splitlines()):
        match = re.match(r"^(?:\d+\s+)?(\w+)\((.*)$", line)
        if match:
            calls.append(Call(index, match.group(1), match.group(2)))
    return table, calls


ACCESS = ("access", "faccessat", "faccessat2")
LINK = ("link", "linkat")


def _first(calls: list[Call], names: tuple[str, ...], *needles: str, after: int = -1) -> int:
    """Trace line of the first call of one of ``names`` whose text holds every needle, after ``after``."""
    for call in calls:
        if call.index > after and call.name in names and all(n in call.text for n in needles):
            return call.index
    raise AssertionError(f"no {'/'.join(names)}({', '.join(needles)}) after line {after} in the trace")


def _synced(calls: list[Call], path: str, *, after: int, before: int) -> bool:
    """An fsync of exactly ``path`` between the two trace lines."""
    return any(after < c.index < before and c.name == "fsync" and f"<{path}>" in c.text for c in calls)


def _log(table: Path, version: int) -> str:
    return str(table / "_delta_log" / f"{version:020d}.json")


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Call]]:
    return _trace(tmp_path_factory.mktemp("durable"))


def test_an_append_by_version_syncs_its_data_file_and_its_log_entry_before_it_links_the_entry_in(
        traced: tuple[Path, list[Call]]) -> None:
    table, calls = traced
    start = _first(calls, ACCESS, f"{MARKER}/through-delta-rs")
    link = _first(calls, LINK, _log(table, 2), after=start)
    data_files = [c for c in calls if start < c.index < link and c.name == "fsync" and ".parquet>" in c.text]
    assert data_files, "the appended data file was not fsynced before its commit was linked in"
    data_file = re.search(r"<([^>]*\.parquet)>", data_files[0].text)
    assert data_file is not None
    partition = str(Path(data_file.group(1)).parent)
    assert partition.endswith("run_id=r1")
    assert _synced(calls, partition, after=data_files[0].index, before=link), "the data file's name was not synced"

    staged = re.search(r'"([^"]*_commit_[^"]*\.json\.tmp)"', calls[[c.index for c in calls].index(link)].text)
    assert staged is not None, "the log entry is not linked in from a staged file"
    assert _synced(calls, staged.group(1), after=start, before=link), "the staged log entry was not fsynced first"


def test_an_append_by_version_syncs_the_log_directory_before_it_returns(traced: tuple[Path, list[Call]]) -> None:
    table, calls = traced
    link = _first(calls, LINK, _log(table, 2))
    returned = _first(calls, ACCESS, f"{MARKER}/by-version", after=link)
    assert _synced(calls, str(table / "_delta_log"), after=link, before=returned)


def test_a_commit_through_delta_rs_is_synced_before_the_store_reports_it(traced: tuple[Path, list[Call]]) -> None:
    table, calls = traced
    returned = _first(calls, ACCESS, f"{MARKER}/through-delta-rs")
    for version in (0, 1):  # the table made, then the first append
        assert _synced(calls, _log(table, version), after=-1, before=returned), f"version {version} not fsynced"
    last_entry_sync = max(c.index for c in calls if c.name == "fsync" and f"<{_log(table, 1)}>" in c.text)
    assert _synced(calls, str(table / "_delta_log"), after=last_entry_sync, before=returned)


def test_a_checksum_entry_is_on_disk_before_it_is_renamed_into_place(traced: tuple[Path, list[Call]]) -> None:
    table, calls = traced
    manifest = str(table / "_checksums")
    markers = sorted(c.index for c in calls if c.name in ACCESS and MARKER in c.text)
    renames = [c for c in calls if c.name.startswith("rename") and f'"{manifest}/.tmp-' in c.text]
    assert len(renames) >= 3, "one manifest entry per commit (versions 0, 1 and 2)"
    for rename in renames:
        temporary = re.search(r'"([^"]*/\.tmp-[0-9a-f]+)"', rename.text)
        assert temporary is not None
        assert _synced(calls, temporary.group(1), after=-1, before=rename.index), f"{temporary.group(1)} not fsynced"
        reported = min(m for m in markers if m > rename.index)
        assert _synced(calls, manifest, after=rename.index, before=reported), "the entry's name was not synced"

