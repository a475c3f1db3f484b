"""File checksums: the sha256 of every data file and Delta log file, recorded when it is written.

Where they live: each table keeps a **checksum manifest** beside its Delta log, in
``{table}/_checksums/``. Every commit the store makes gets one small JSON entry there, named after
the commit's version (``00000000000000000042.json``), written right after the commit by
``results_store.delta_tables``. It records:

- the commit's log file (``_delta_log/…42.json``) and, when that commit made one, its checkpoint,
  each with size and sha256;
- the data files the commit added (appends, compactions, overwrites, registry records), with size,
  sha256 and run;
- the files it removed (with Delta's ``dataChange`` flag and deletion time: what vacuum needs), and
  the runs it touched.

Why a manifest and not the add actions' ``tags``: a log file cannot carry its own checksum, delta-rs
writes files (overwrites, deletes, registry appends) whose add actions we cannot tag, and a log
that is itself damaged could then no longer vouch for anything. The manifest is read without
delta-rs, so verification and restore work on a table whose log is broken.

Each entry is immutable and carries a ``digest`` of its own content, so a damaged entry is named
too. Vacuum and log clean-up write ``forget`` entries for files they delete on purpose; retention
rolls a table's entries into one ``rollup`` entry now and then (see :func:`rollup`). The manifest's
rule is therefore simple: **every file it lists and has not forgotten must be on disk with that
size and sha256**. ``_delta_log/_last_checkpoint`` is the one mutable file: it is not hashed, only
checked to name a checkpoint that exists (Delta readers do without it; restore removes a bad one).

Verification (:func:`verify`) compares the disk with the manifests of every table of an execution
mode, hashing files in 1 MiB chunks on a few threads (hashlib releases the GIL), and reports every
missing, truncated, corrupt or untracked file with its table, runs and the versions it affects.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import orjson

from results_store import durable_files
from schemas.errors import ComponentError

__all__ = [
    "CHUNK_BYTES",
    "IN_FLIGHT_SECONDS",
    "LOG_DIR",
    "LOG_RETENTION",
    "MANIFEST_DIR",
    "FileEntry",
    "Manifest",
    "Problem",
    "TableReport",
    "VerifyReport",
    "added_paths",
    "adopt",
    "commit_marker",
    "expired_log_files",
    "file_sha256",
    "find_commit",
    "forget",
    "iter_expected",
    "list_tables",
    "load_latest_version",
    "load_manifest",
    "record_commit",
    "record_files",
    "rollup",
    "verify",
    "verify_markdown",
    "verify_table",
]

MANIFEST_DIR = "_checksums"
LOG_DIR = "_delta_log"
LAST_CHECKPOINT = "_last_checkpoint"
# Read and hashed in chunks of this size: large enough that hashlib runs outside the GIL at full
# speed, small enough that verifying a 1 GB file holds 1 MiB.
CHUNK_BYTES = 1 << 20
# A commit's manifest entry is written a few milliseconds after the commit. Files younger than this
# that no entry names yet are "in flight", not "untracked" (another process is between the two).
IN_FLIGHT_SECONDS = 600.0
# delta-rs removes log files older than the table's logRetentionDuration once a later checkpoint
# covers them; retention sets it to the time-travel window (7 days, ``results_store.retention``). A
# recorded log file gone under those conditions expired.
LOG_RETENTION = timedelta(days=7)
# The key in a commit's commitInfo that names the commit, so its writer finds its version even
# when other writers committed in between.
COMMIT_MARKER_KEY = "results_store_commit"

FileKind = Literal["data", "log", "checkpoint"]
ProblemKind = Literal["missing", "truncated", "corrupt", "untracked", "manifest"]
_VERSION_JSON = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(?:\.\d+\.\d+)?\.parquet$")


def commit_marker() -> str:
    """A fresh id to put in a commit's metadata under ``COMMIT_MARKER_KEY``."""
    return uuid.uuid4().hex


def file_sha256(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in ``CHUNK_BYTES`` chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        # Most files hashed are a commit's few kilobytes (every live commit hashes one per table):
        # a buffer of their size, not a zeroed MiB each.
        buffer = bytearray(min(CHUNK_BYTES, os.fstat(handle.fileno()).st_size + 1))
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
            size += count
    return size, digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    """One file the manifest vouches for, relative to its table's directory."""

    path: str
    kind: FileKind
    size: int
    sha256: str
    version: int
    run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size, "sha256": self.sha256,
                "version": self.version, "run_id": self.run_id}

    @staticmethod
    def from_json(data: dict[str, Any]) -> FileEntry:
        return FileEntry(str(data["path"]), data["kind"], int(data["size"]), str(data["sha256"]),
                         int(data["version"]), data.get("run_id"))


@dataclass(frozen=True)
class Tombstone:
    """A data file a commit removed: vacuum deletes it once no version within reach needs it."""

    path: str
    version: int
    data_change: bool
    deletion_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "version": self.version, "data_change": self.data_change,
                "deletion_ms": self.deletion_ms}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Tombstone:
        return Tombstone(str(data["path"]), int(data["version"]), bool(data["data_change"]), int(data["deletion_ms"]))


@dataclass
class Manifest:
    """A table's checksum manifest, every entry merged: what must be on disk, and what commits did."""

    table_dir: Path
    files: dict[str, FileEntry] = field(default_factory=dict)
    removed: dict[str, Tombstone] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)
    runs_by_version: dict[int, list[str]] = field(default_factory=dict)
    commit_ms: dict[int, int] = field(default_factory=dict)
    entry_names: list[str] = field(default_factory=list)
    # Entries that do not parse or whose digest does not match their content: (name, why).
    damaged: list[tuple[str, str]] = field(default_factory=list)

    @property
    def versions(self) -> set[int]:
        """Versions whose commit has an entry."""
        return set(self.commit_ms)

    @property
    def latest_version(self) -> int:
        return max(self.commit_ms, default=-1)

    def expected(self) -> dict[str, FileEntry]:
        """Every file that must be on disk."""
        return {p: e for p, e in self.files.items() if p not in self.forgotten}

    def current_data(self) -> dict[str, FileEntry]:
        """Data files of the latest version (added and not removed)."""
        return {p: e for p, e in self.expected().items() if e.kind == "data" and p not in self.removed}

    def run_files(self, run_id: str) -> dict[str, FileEntry]:
        """The current data files of one run."""
        return {p: e for p, e in self.current_data().items() if e.run_id == run_id}

    def checkpoints(self) -> list[int]:
        return sorted(e.version for e in self.expected().values() if e.kind == "checkpoint")


# ------------------------------------------------------------------------------------------- entries
def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _write_entry(table_dir: Path, name: str, body: dict[str, Any]) -> Path:
    """Write one manifest entry atomically (a reader never sees half of it, nor after a power cut an
    empty one: it is on disk before it is renamed into place)."""
    directory = table_dir / MANIFEST_DIR
    content = {**body, "format": 1}
    content["digest"] = _digest(content)
    data = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    target = directory / name
    temporary = directory / f".tmp-{uuid.uuid4().hex}"
    try:
        try:
            durable_files.write_synced(temporary, data)
        except FileNotFoundError:  # the table's first entry: the directory is made once, not checked per commit
            directory.mkdir(parents=True, exist_ok=True)
            durable_files.write_synced(temporary, data)
        os.replace(temporary, target)
        durable_files.sync_dir(directory)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def _read_entry(path: Path) -> dict[str, Any]:
    """An entry's content; raises ValueError if it does not parse or its digest does not match."""
    try:
        content = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"does not parse: {exc}") from None
    if not isinstance(content, dict) or "digest" not in content:
        raise ValueError("has no digest")
    stated = content.pop("digest")
    if _digest(content) != stated:
        raise ValueError("its content does not match its digest")
    return content


def load_manifest(table_dir: Path) -> Manifest:
    """Every entry of a table's manifest, merged (rollups first, then what they do not cover)."""
    manifest = Manifest(Path(table_dir))
    directory = manifest.table_dir / MANIFEST_DIR
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return manifest
    entries: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            entries[name] = _read_entry(directory / name)
        except (OSError, ValueError) as exc:
            manifest.damaged.append((name, str(exc)))
    covered: set[str] = set()
    for content in entries.values():
        if content.get("kind") == "rollup":
            covered.update(content.get("covers", []))
    for name, content in entries.items():
        if name in covered:
            continue
        manifest.entry_names.append(name)
        _merge(manifest, content)
    return manifest


def _merge(manifest: Manifest, content: dict[str, Any]) -> None:
    for item in content.get("files", []):
        entry = FileEntry.from_json(item)
        manifest.files[entry.path] = entry
    for item in content.get("removed", []):
        tomb = Tombstone.from_json(item)
        manifest.removed[tomb.path] = tomb
    manifest.forgotten.update(content.get("forgotten", []))
    kind = content.get("kind")
    if kind == "commit":
        version = int(content["version"])
        manifest.commit_ms[version] = int(content.get("timestamp_ms") or 0)
        manifest.runs_by_version[version] = list(content.get("runs", []))
    elif kind == "rollup":
        for key, value in content.get("commit_ms", {}).items():
            manifest.commit_ms[int(key)] = int(value)
        for key, value in content.get("runs_by_version", {}).items():
            manifest.runs_by_version[int(key)] = list(value)


# ------------------------------------------------------------------------------------------- recording
def _log_name(version: int) -> str:
    return f"{LOG_DIR}/{version:020d}.json"


def _local(table_dir: Path, log_path: str) -> str:
    """A Delta log path (a relative URI, percent-encoded) as the file's path on disk, relative to the table."""
    if (table_dir / log_path).exists():
        return log_path
    return unquote(log_path)


def _hash_added(table_dir: Path, log_path: str, skip_missing: bool) -> tuple[str, int, str] | None:
    """(path on disk relative to the table, size, sha256) of an added file (as ``_local`` finds it);
    None if it is gone and ``skip_missing``. Hashed where it is first looked for: no ``stat`` before."""
    for local in dict.fromkeys((log_path, unquote(log_path))):
        try:
            size, digest = file_sha256(table_dir / local)
        except FileNotFoundError:
            continue
        return local, size, digest
    if skip_missing:
        return None
    raise FileNotFoundError(errno.ENOENT, "an added file is missing", str(table_dir / unquote(log_path)))


def _parse_log(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(commitInfo, adds, removes) of one commit file."""
    info: dict[str, Any] = {}
    adds: list[dict[str, Any]] = []
    removes: list[dict[str, Any]] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        action = orjson.loads(line)
        if "commitInfo" in action:
            info = action["commitInfo"]
        elif "add" in action:
            adds.append(action["add"])
        elif "remove" in action:
            removes.append(action["remove"])
    return info, adds, removes


def added_paths(log_bytes: bytes) -> list[str]:
    """The paths of the files one commit file adds, as its log spells them."""
    return [str(add["path"]) for add in _parse_log(log_bytes)[1]]


def find_commit(table_dir: Path, after_version: int, marker: str) -> tuple[int, bytes]:
    """The version (and log bytes) of the commit whose commitInfo carries ``marker``: the first
    log file after ``after_version`` that names it. Other writers may have committed in between."""
    needle = f'"{COMMIT_MARKER_KEY}":"{marker}"'.encode()
    version = after_version + 1
    log = Path(table_dir) / LOG_DIR
    while True:
        try:
            data = (log / f"{version:020d}.json").read_bytes()
        except FileNotFoundError:
            raise ComponentError("RST-901", f"{table_dir}: the commit marked {marker} is not in the log after "
                                 f"version {after_version}", details={"path": str(table_dir)}) from None
        if needle in data:
            return version, data
        version += 1


def record_commit(table_dir: Path, version: int, log_bytes: bytes | None = None, *, adopted: bool = False,
                  skip_missing: bool = False) -> Path:
    """Write the manifest entry of commit ``version``: its log file, checkpoint, added and removed files.

    ``adopted``: recorded after the fact (``checksum adopt``), not by the writer: the hashes vouch
    for the bytes as they were found then, which the entry says. ``skip_missing``: added files that
    are gone (vacuumed since) are left out instead of failing.
    """
    table_dir = Path(table_dir)
    log_path = _log_name(version)
    if log_bytes is None:
        log_bytes = (table_dir / log_path).read_bytes()
    info, adds, removes = _parse_log(log_bytes)
    files = [FileEntry(log_path, "log", len(log_bytes), hashlib.sha256(log_bytes).hexdigest(), version)]
    checkpoint = table_dir / LOG_DIR / f"{version:020d}.checkpoint.parquet"
    if checkpoint.exists():
        size, digest = file_sha256(checkpoint)
        files.append(FileEntry(f"{LOG_DIR}/{checkpoint.name}", "checkpoint", size, digest, version))
    runs: set[str] = set()
    for add in adds:
        run = (add.get("partitionValues") or {}).get("run_id")
        hashed = _hash_added(table_dir, str(add["path"]), skip_missing)
        if hashed is None:
            continue
        local, size, digest = hashed
        files.append(FileEntry(local, "data", size, digest, version, run))
        if run is not None:
            runs.add(str(run))
    removed = []
    for remove in removes:
        run = (remove.get("partitionValues") or {}).get("run_id")
        if run is not None:
            runs.add(str(run))
        removed.append(Tombstone(_local(table_dir, str(remove["path"])), version, bool(remove.get("dataChange", True)),
                                 int(remove.get("deletionTimestamp") or info.get("timestamp") or 0)).to_json())
    body = {"kind": "commit", "version": version, "timestamp_ms": int(info.get("timestamp") or 0),
            "operation": info.get("operation"), "runs": sorted(runs), "files": [f.to_json() for f in files],
            "removed": removed, "adopted": adopted, "recorded_at": datetime.now(UTC).isoformat()}
    return _write_entry(table_dir, f"{version:020d}.json", body)


def record_files(table_dir: Path, paths: Sequence[str], *, kind: FileKind, version: int) -> Path | None:
    """Record files written outside a commit (a checkpoint made on demand)."""
    table_dir = Path(table_dir)
    files = []
    for rel in paths:
        size, digest = file_sha256(table_dir / rel)
        files.append(FileEntry(rel, kind, size, digest, version).to_json())
    if not files:
        return None
    return _write_entry(table_dir, f"{version:020d}.files-{uuid.uuid4().hex[:8]}.json",
                        {"kind": "files", "files": files, "recorded_at": datetime.now(UTC).isoformat()})


def forget(table_dir: Path, paths: Iterable[str], *, reason: str) -> Path | None:
    """Record that ``paths`` were deleted on purpose (vacuum, expired log files): no longer expected."""
    gone = sorted(set(paths))
    if not gone:
        return None
    latest = load_latest_version(Path(table_dir))
    return _write_entry(Path(table_dir), f"{latest:020d}.forget-{uuid.uuid4().hex[:8]}.json",
                        {"kind": "forget", "forgotten": gone, "reason": reason,
                         "recorded_at": datetime.now(UTC).isoformat()})


def load_latest_version(table_dir: Path) -> int:
    """The newest version in the Delta log directory (by file name), -1 when there is none."""
    try:
        names = os.listdir(Path(table_dir) / LOG_DIR)
    except FileNotFoundError:
        return -1
    versions = [int(m.group(1)) for n in names if (m := _VERSION_JSON.match(n))]
    return max(versions, default=-1)


def rollup(table_dir: Path) -> int:
    """Merge a table's manifest entries into one (a live table gains one per minute); returns the
    entries it replaced. Forgotten files are dropped from it. Written before the entries it covers
    are deleted, and it names them, so a crash in between leaves a manifest that reads the same."""
    manifest = load_manifest(Path(table_dir))
    if len(manifest.entry_names) < 2 or manifest.damaged:
        return 0  # a damaged entry must stay for verify to report (and restore to replace)
    expected = manifest.expected()
    body = {
        "kind": "rollup",
        "covers": manifest.entry_names,
        "files": [e.to_json() for e in expected.values()],
        "removed": [t.to_json() for p, t in manifest.removed.items() if p in expected],
        "commit_ms": {str(k): v for k, v in manifest.commit_ms.items()},
        "runs_by_version": {str(k): v for k, v in manifest.runs_by_version.items()},
        "recorded_at": datetime.now(UTC).isoformat(),
    }
    _write_entry(Path(table_dir), f"{manifest.latest_version:020d}.rollup-{uuid.uuid4().hex[:8]}.json", body)
    directory = Path(table_dir) / MANIFEST_DIR
    for name in manifest.entry_names:
        (directory / name).unlink(missing_ok=True)
    return len(manifest.entry_names)


def adopt(table_dir: Path, *, in_flight_seconds: float = IN_FLIGHT_SECONDS) -> list[int]:
    """Record the commits that have no manifest entry (tables written before checksums were kept,
    or a writer stopped between its commit and its entry); returns their versions.

    Each data file is first read whole as Parquet, with page checksums verified where it has them,
    so a file that is already damaged is not blessed: it raises RST-005 naming it.
    """
    import pyarrow.parquet as pq  # only here: the rest of this module reads bytes, not Parquet

    table_dir = Path(table_dir)
    manifest = load_manifest(table_dir)
    adopted = []
    now = time.time()
    log = table_dir / LOG_DIR
    for name in sorted(os.listdir(log)) if log.is_dir() else []:
        match = _VERSION_JSON.match(name)
        if not match or int(match.group(1)) in manifest.versions:
            continue
        if now - (log / name).stat().st_mtime < in_flight_seconds:
            continue
        version = int(match.group(1))
        data = (log / name).read_bytes()
        try:
            _, adds, _ = _parse_log(data)
        except orjson.JSONDecodeError as exc:
            raise ComponentError("RST-005", f"{table_dir.name}: log entry {name} does not parse ({exc}); restore it "
                                 "from a backup instead of adopting it", details={"path": str(log / name)}) from None
        for add in adds:
            file = table_dir / _local(table_dir, str(add["path"]))
            if not file.exists():
                continue  # vacuumed long ago: the entry records only what is there
            try:
                pq.ParquetFile(file, page_checksum_verification=True).read()
            except Exception as exc:
                raise ComponentError("RST-005", f"{table_dir.name}: data file {add['path']} of version {version} cannot "
                                     f"be read ({type(exc).__name__}: {exc}); restore it from a backup instead of "
                                     "adopting it", details={"path": str(file)}) from exc
        record_commit(table_dir, version, data, adopted=True, skip_missing=True)
        adopted.append(version)
    return adopted


# ------------------------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class Problem:
    """One file that is not as the manifest says."""

    execution_mode: str
    table: str
    path: str
    kind: str
    problem: ProblemKind
    runs: tuple[str, ...]
    versions: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"execution_mode": self.execution_mode, "table": self.table, "path": self.path, "kind": self.kind,
                "problem": self.problem, "runs": list(self.runs), "versions": self.versions, "detail": self.detail}

    def line(self) -> str:
        runs = f" runs {', '.join(self.runs)}" if self.runs else ""
        return (f"{self.problem}: {self.execution_mode}/{self.table}/{self.path} ({self.kind};{runs}; "
                f"versions {self.versions}): {self.detail}")


@dataclass
class TableReport:
    """What verifying one table found."""

    execution_mode: str
    table: str
    files: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # files no version refers to: vacuum removes them
    expired: list[str] = field(default_factory=list)  # log files delta-rs cleaned up, as it may
    in_flight: list[str] = field(default_factory=list)  # too new to judge (a commit between log and entry)


@dataclass
class VerifyReport:
    """What verifying one or more execution modes found; ``ok`` when no file is wrong."""

    tables: list[TableReport] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def problems(self) -> list[Problem]:
        return [p for t in self.tables for p in t.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def files(self) -> int:
        return sum(t.files for t in self.tables)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def error(self) -> ComponentError:
        """RST-005 naming every damaged file (the first 20 in the message, all in the details)."""
        problems = self.problems
        shown = "; ".join(p.line() for p in problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        return ComponentError("RST-005", f"{len(problems)} stored files are not as their checksums say: {shown}{more}",
                              details={"problems": [p.to_json() for p in problems]})

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "files": self.files, "bytes": self.bytes, "elapsed_s": round(self.elapsed_s, 3),
            "mb_per_s": round(self.mb_per_s, 1), "problems": [p.to_json() for p in self.problems],
            "tables": [{"execution_mode": t.execution_mode, "table": t.table, "files": t.files, "bytes": t.bytes,
                        "problems": len(t.problems), "orphans": t.orphans, "expired": len(t.expired),
                        "in_flight": len(t.in_flight)} for t in self.tables],
        }


def list_tables(root: Path, execution_mode: str) -> list[str]:
    """The Delta tables of one execution mode: every directory under it with a ``_delta_log``."""
    base = Path(root) / execution_mode
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if (d / LOG_DIR).is_dir() or (d / MANIFEST_DIR).is_dir())


def _disk_files(table_dir: Path) -> dict[str, os.stat_result]:
    """Every file under the table directory except the manifest's own, by path relative to it."""
    found: dict[str, os.stat_result] = {}
    stack = [table_dir]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if directory == table_dir and entry.name == MANIFEST_DIR:
                    continue
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                found[os.path.relpath(entry.path, table_dir)] = entry.stat()
    return found


def _span(first: int, last: int | None, latest: int) -> str:
    end = latest if last is None else last
    if end <= first:
        return f"{first}"
    return f"{first}-{end}"


def verify_table(root: Path, execution_mode: str, table: str, *, run_id: str | None = None,
                 all_versions: bool = False, in_flight_seconds: float = IN_FLIGHT_SECONDS,
                 hash_pool: ThreadPoolExecutor | None = None) -> TableReport:
    """Compare one table's files on disk with its manifest (see :func:`verify`)."""
    table_dir = Path(root) / execution_mode / table
    report = TableReport(execution_mode, table)
    manifest = load_manifest(table_dir)
    disk = _disk_files(table_dir)
    now = time.time()
    latest = max(manifest.latest_version, load_latest_version(table_dir))
    checkpoints = manifest.checkpoints()

    def problem(path: str, kind: str, what: ProblemKind, runs: Iterable[str], versions: str, detail: str) -> None:
        report.problems.append(Problem(execution_mode, table, path, kind, what, tuple(sorted(set(runs))), versions, detail))

    for name, why in manifest.damaged:
        problem(f"{MANIFEST_DIR}/{name}", "manifest", "manifest", (), "?", f"manifest entry {why}")

    def log_span(version: int) -> str:
        later = [c for c in checkpoints if c > version]
        return _span(version, (later[0] - 1) if later else None, latest)

    to_hash: list[tuple[FileEntry, str, tuple[str, ...]]] = []
    for path, entry in manifest.expected().items():
        if entry.kind == "data":
            if run_id is not None and entry.run_id != run_id:
                continue
            tomb = manifest.removed.get(path)
            if tomb is not None and not all_versions:
                continue
            runs: tuple[str, ...] = (entry.run_id,) if entry.run_id else ()
            versions = _span(entry.version, tomb.version - 1 if tomb else None, latest)
        else:
            runs = tuple(manifest.runs_by_version.get(entry.version, ()))
            if run_id is not None and entry.kind == "log" and run_id not in runs:
                continue
            versions = log_span(entry.version) if entry.kind == "log" else _span(entry.version, None, latest)
        stat = disk.get(path)
        if stat is None:
            if entry.kind == "log" and _expired(entry, manifest, checkpoints, now):
                report.expired.append(path)
                continue
            problem(path, entry.kind, "missing", runs, versions, f"recorded {entry.size:,} bytes, not on disk")
        elif stat.st_size < entry.size:
            problem(path, entry.kind, "truncated", runs, versions, f"{stat.st_size:,} bytes on disk, {entry.size:,} recorded")
        else:
            to_hash.append((entry, versions, runs))

    def check(item: tuple[FileEntry, str, tuple[str, ...]]) -> tuple[tuple[FileEntry, str, tuple[str, ...]], int, str]:
        try:
            size, digest = file_sha256(table_dir / item[0].path)
        except FileNotFoundError:  # gone since the listing (a vacuum running beside us): judged below
            return item, -1, ""
        return item, size, digest

    pool = hash_pool or ThreadPoolExecutor(max_workers=_hash_threads())
    try:
        for (entry, versions, runs), size, digest in pool.map(check, to_hash):
            if size < 0:
                if entry.path not in load_manifest(table_dir).forgotten:
                    problem(entry.path, entry.kind, "missing", runs, versions, f"recorded {entry.size:,} bytes, not on disk")
                continue
            report.files += 1
            report.bytes += size
            if size != entry.size or digest != entry.sha256:
                problem(entry.path, entry.kind, "corrupt", runs, versions,
                        f"sha256 {digest[:12]}… != recorded {entry.sha256[:12]}… ({size:,} bytes, {entry.size:,} recorded)")
    finally:
        if hash_pool is None:
            pool.shutdown()

    _untracked(table_dir, manifest, disk, report, problem, run_id, now, in_flight_seconds, latest)
    return report


def expired_log_files(table_dir: Path) -> list[str]:
    """Recorded log files delta-rs has removed past the log retention (no hashing: a listing and the manifest)."""
    manifest = load_manifest(Path(table_dir))
    checkpoints = manifest.checkpoints()
    disk = set(_disk_files(Path(table_dir)))
    now = time.time()
    return sorted(path for path, entry in manifest.expected().items()
                  if entry.kind == "log" and path not in disk and _expired(entry, manifest, checkpoints, now))


def _expired(entry: FileEntry, manifest: Manifest, checkpoints: list[int], now: float) -> bool:
    """A log file that delta-rs may delete: older than the log retention and before a checkpoint."""
    if not any(c >= entry.version for c in checkpoints):
        return False
    committed = manifest.commit_ms.get(entry.version, 0) / 1000
    return bool(committed) and now - committed > LOG_RETENTION.total_seconds()


def _untracked(table_dir: Path, manifest: Manifest, disk: dict[str, os.stat_result], report: TableReport,
               problem: Callable[..., None], run_id: str | None, now: float, in_flight_seconds: float,
               latest: int) -> None:
    """Files on disk no entry names: untracked when a version refers to them, orphans otherwise."""
    known = set(manifest.files) | manifest.forgotten
    unknown = {p: s for p, s in disk.items() if p not in known}
    if not unknown:
        _check_last_checkpoint(table_dir, disk, manifest, problem)
        return
    referenced: dict[str, int] = {}
    for path in sorted(unknown):
        match = _VERSION_JSON.match(Path(path).name) if path.startswith(LOG_DIR + os.sep) else None
        if match is None:
            continue
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            for add in _parse_log((table_dir / path).read_bytes())[1]:
                referenced[_local(table_dir, str(add["path"]))] = int(match.group(1))
    for path, stat in sorted(unknown.items()):
        if Path(path).name == LAST_CHECKPOINT and Path(path).parent.name == LOG_DIR:
            continue
        young = now - stat.st_mtime < in_flight_seconds
        in_log = path.startswith(LOG_DIR + os.sep)
        log_match = (_VERSION_JSON.match(Path(path).name) or _CHECKPOINT.match(Path(path).name)) if in_log else None
        if in_log and log_match:
            if young:
                report.in_flight.append(path)
                continue
            version = int(log_match.group(1))
            kind = "checkpoint" if "checkpoint" in path else "log"
            problem(path, kind, "untracked", (), _span(version, None, latest),
                    "no checksum recorded (run `results-store checksum adopt` once it is known good, or restore it)")
            continue
        run = _run_of(path)
        if run_id is not None and run != run_id:
            continue
        if path in referenced and not young:
            problem(path, "data", "untracked", (run,) if run else (), _span(referenced[path], None, latest),
                    f"version {referenced[path]} refers to it but no checksum is recorded")
        elif path in referenced or young:
            report.in_flight.append(path)
        else:
            report.orphans.append(path)
    _check_last_checkpoint(table_dir, disk, manifest, problem)


def _check_last_checkpoint(table_dir: Path, disk: dict[str, os.stat_result], manifest: Manifest,
                           problem: Callable[..., None]) -> None:
    """``_last_checkpoint`` is a hint, rewritten at each checkpoint: it must name a checkpoint on disk."""
    rel = f"{LOG_DIR}/{LAST_CHECKPOINT}"
    if rel not in disk:
        return
    try:
        version = int(orjson.loads((table_dir / rel).read_bytes())["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem(rel, "log", "corrupt", (), "all", f"does not parse ({type(exc).__name__}); restore removes it")
        return
    if f"{LOG_DIR}/{version:020d}.checkpoint.parquet" not in disk:
        problem(rel, "log", "corrupt", (), f"{version}", f"names checkpoint {version}, which is not on disk; restore removes it")


def _run_of(path: str) -> str | None:
    head = path.split(os.sep, 1)[0]
    if head.startswith("run_id="):
        return unquote(head.removeprefix("run_id="))
    return None


def _hash_threads() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def verify(root: Path, execution_modes: Sequence[str] = ("backtest", "live"), *, table: str | None = None,
           run_id: str | None = None, all_versions: bool = False,
           in_flight_seconds: float = IN_FLIGHT_SECONDS) -> VerifyReport:
    """Verify every table (or ``table``) of each execution mode against its checksum manifest.

    Checks every recorded log file and checkpoint, and the data files of the latest version (with
    ``all_versions``, also the data files older versions still refer to until vacuum removes them).
    ``run_id`` limits data files to that run's partition and log files to the commits that touched
    it. Files are hashed in ``CHUNK_BYTES`` chunks on a few threads.
    """
    started = time.perf_counter()
    report = VerifyReport()
    with ThreadPoolExecutor(max_workers=_hash_threads(), thread_name_prefix="results-store-verify") as pool:
        for mode in execution_modes:
            names = list_tables(root, mode)
            if table is not None:
                names = [n for n in names if n == table]
            for name in names:
                report.tables.append(verify_table(root, mode, name, run_id=run_id, all_versions=all_versions,
                                                  in_flight_seconds=in_flight_seconds, hash_pool=pool))
    report.elapsed_s = time.perf_counter() - started
    return report


def iter_expected(root: Path, execution_mode: str) -> Iterator[tuple[str, Manifest]]:
    """(table, manifest) for every table of an execution mode."""
    for name in list_tables(root, execution_mode):
        yield name, load_manifest(Path(root) / execution_mode / name)


def verify_markdown(reports: dict[str, dict[str, Any]]) -> str:
    """Markdown of verification reports (``VerifyReport.to_json()`` per execution mode): every damaged file named."""
    from results_store.markdown import markdown_table

    problems = [p for r in reports.values() for p in r["problems"]]
    verdict = "**FAILED**: stored files are damaged or missing" if problems else "passed"
    lines = [f"# File checksums: {verdict}", ""]
    for mode, report in reports.items():
        lines.append(f"- {mode}: {report['files']:,} files, {report['bytes'] / 1e6:,.1f} MB hashed at "
                     f"{report['mb_per_s']:,.0f} MB/s; {len(report['problems'])} problems")
    if problems:
        lines += ["", "## What is wrong", "",
                  markdown_table([{"mode": p["execution_mode"], "table": p["table"], "problem": p["problem"],
                                   "file": f"`{p['path']}`", "kind": p["kind"], "runs": ", ".join(p["runs"]),
                                   "versions": p["versions"], "detail": p["detail"]} for p in problems[:200]]),
                  "", "Restore them from a backup: `results-store restore` (then it verifies again)."]
    orphans = [(mode, t["table"], o) for mode, r in reports.items() for t in r["tables"] for o in t["orphans"]]
    if orphans:
        lines += ["", f"{len(orphans)} files no version refers to (writes that never committed; vacuum removes them)."]
    lines += ["", "## Tables", "", markdown_table([
        {"mode": t["execution_mode"], "table": t["table"], "files": t["files"], "MB": f"{t['bytes'] / 1e6:,.2f}",
         "problems": t["problems"]} for r in reports.values() for t in r["tables"]]) or "no tables"]
    return "\n".join(lines)
