"""Backup and restore of the stored tables, verified against the checksum manifests.

A backup is a copy of every file the tables' checksum manifests vouch for (data files, Delta log
entries, checkpoints) plus the manifests themselves, laid out as in the data dir
(``{target}/{execution_mode}/{table}/…``), on any filesystem ``pyarrow.fs`` opens: a local
directory (by default ``{data_dir}-backup``, beside the data dir), or S3-compatible object storage
(``s3://bucket/prefix?endpoint_override=…``).

- **Incremental**: every file the store writes is immutable and named once, so a file the last
  complete backup holds with the same sha256 is not copied again. A backup with nothing new reads
  two manifests and writes one.
- **Verified**: each file is hashed while it is copied and must match the sha256 its table's
  manifest recorded when it was written (a file damaged on disk is never copied over a good
  copy); each copy is then read back from the target and hashed again.
- **Complete or not at all**: the backup's own manifest, ``{target}/_backups/{execution_mode}/{id}.json``,
  lists every file with size and sha256 and is written last. A backup that stopped half way has
  no manifest, so it is never taken for complete (restore and retention only trust complete ones),
  and its copied files are reused by the next backup once they hash right.

The WAL, the run locks, run bundles and the event log are not backed up: the first two only matter
to a process that is running, the others are derived or kept for 30 days.

Restore brings back what verification finds missing, truncated or corrupt (:func:`restore`), or,
into an empty data dir, everything (the disaster case); then it verifies. Each backup and restore
is recorded in the lifecycle log (``results_store.lifecycle``).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.fs as pafs

from results_store import checksums, lifecycle
from results_store.checksums import CHUNK_BYTES, LOG_DIR, MANIFEST_DIR
from results_store.error_map import storage_errors
from schemas.errors import ComponentError

__all__ = [
    "BACKUP_URI_ENV",
    "BackupManifest",
    "BackupResult",
    "RestoreResult",
    "backed_up_runs",
    "backup",
    "backup_markdown",
    "default_backup_uri",
    "holds",
    "latest_backup",
    "list_backups",
    "resolve_backup_uri",
    "restore",
]

BACKUP_URI_ENV = "RESULTS_STORE_BACKUP_URI"
BACKUPS_DIR = "_backups"
_VERSION_ENTRY = re.compile(r"^(\d{20})\.json$")


def default_backup_uri(data_dir: Path) -> str:
    """``{data_dir}-backup``: a directory beside the data dir."""
    resolved = Path(data_dir).resolve()
    return str(resolved.parent / f"{resolved.name}-backup")


def resolve_backup_uri(data_dir: Path, uri: str | None = None) -> str:
    """The backup location: ``uri``, else ``$RESULTS_STORE_BACKUP_URI``, else :func:`default_backup_uri`."""
    return uri or os.environ.get(BACKUP_URI_ENV) or default_backup_uri(data_dir)


class _Target:
    """A backup location: a pyarrow filesystem and the base path in it."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        spec = uri if "://" in uri else str(Path(uri).resolve())
        with storage_errors("open the backup location", uri):
            self.fs, self.base = pafs.FileSystem.from_uri(spec)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.base.rstrip('/')}/{rel}"

    def size(self, rel: str) -> int | None:
        info = self.fs.get_file_info(self.path(rel))
        return int(info.size) if info.type == pafs.FileType.File and info.size is not None else None

    def hash(self, rel: str) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with self.fs.open_input_stream(self.path(rel)) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def put(self, rel: str, source: Path, expected_sha: str) -> tuple[int, str]:
        """Copy a local file here, hashing it on the way; (size, sha256) of what was read.

        What does not hash to ``expected_sha`` (a file damaged on disk) never takes the place of a copy:
        a local copy is written under a temporary name and moved only once it hashes right; an object
        is deleted again (object stores show an object only once it is whole).
        """
        digest = hashlib.sha256()
        size = 0
        final = self.path(rel)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        # Object stores make an object visible only once it is whole; a local file goes through a temporary name.
        written = f"{final}.tmp-{uuid.uuid4().hex[:8]}" if self.local else final
        try:
            with open(source, "rb") as handle, self.fs.open_output_stream(written) as out:
                while chunk := handle.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if digest.hexdigest() != expected_sha:
                raise ComponentError("RST-005", f"sha256 {digest.hexdigest()[:12]}… of the file on disk != recorded "
                                     f"{expected_sha[:12]}…: the source is damaged (restore it); not backed up",
                                     details={"path": str(source)})
            if self.local:
                self.fs.move(written, final)
        except BaseException:
            if self.fs.get_file_info(written).type == pafs.FileType.File:
                self.fs.delete_file(written)
            raise
        return size, digest.hexdigest()

    def get(self, rel: str, dest: Path) -> tuple[int, str]:
        """Copy a file from here to the local ``dest``; (size, sha256) of what was written."""
        digest = hashlib.sha256()
        size = 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(self.path(rel)) as stream, open(dest, "wb") as out:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def write_bytes(self, rel: str, data: bytes) -> None:
        final = self.path(rel)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        written = f"{final}.tmp-{uuid.uuid4().hex[:8]}" if self.local else final
        with self.fs.open_output_stream(written) as out:
            out.write(data)
        if self.local:
            self.fs.move(written, final)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return bytes(stream.read())

    def sizes(self, rel: str) -> dict[str, int]:
        """Every file under ``rel`` with its size, in one listing (one request on object storage)."""
        selector = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=True)
        base = self.base.rstrip("/") + "/"
        return {info.path.removeprefix(base): int(info.size or 0) for info in self.fs.get_file_info(selector)
                if info.type == pafs.FileType.File}

    def list(self, rel: str) -> list[str]:
        selector = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File)


@dataclass
class BackupManifest:
    """What one complete backup of one execution mode holds: every file with size and sha256."""

    backup_id: str
    execution_mode: str
    created_at: str
    source: str
    files: dict[str, dict[str, Any]]
    tables: dict[str, int]
    copied_files: int = 0
    copied_bytes: int = 0

    @property
    def size(self) -> int:
        """Bytes of every file the backup holds."""
        return sum(int(f["size"]) for f in self.files.values())

    def to_bytes(self) -> bytes:
        body = {"format": 1, "complete": True, "backup_id": self.backup_id, "execution_mode": self.execution_mode,
                "created_at": self.created_at, "source": self.source, "files": self.files, "tables": self.tables,
                "copied_files": self.copied_files, "copied_bytes": self.copied_bytes}
        body["digest"] = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    @staticmethod
    def from_bytes(data: bytes) -> BackupManifest:
        body = orjson.loads(data)
        stated = body.pop("digest", None)
        if stated != hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest():
            raise ValueError("the backup manifest does not match its digest")
        if not body.get("complete"):
            raise ValueError("the backup is not complete")
        return BackupManifest(body["backup_id"], body["execution_mode"], body["created_at"], body["source"],
                              body["files"], {k: int(v) for k, v in body["tables"].items()},
                              int(body.get("copied_files", 0)), int(body.get("copied_bytes", 0)))


def list_backups(uri: str, execution_mode: str) -> list[BackupManifest]:
    """The complete backups of an execution mode at ``uri``, oldest first (damaged manifests are skipped)."""
    target = _Target(uri)
    found = []
    with storage_errors("list backups", uri):
        for name in target.list(f"{BACKUPS_DIR}/{execution_mode}"):
            if not name.endswith(".json"):
                continue
            try:
                found.append(BackupManifest.from_bytes(target.read_bytes(f"{BACKUPS_DIR}/{execution_mode}/{name}")))
            except ValueError:
                continue
    return sorted(found, key=lambda m: m.backup_id)


def latest_backup(uri: str, execution_mode: str) -> BackupManifest | None:
    """The newest complete backup of an execution mode at ``uri``, if any."""
    backups = list_backups(uri, execution_mode)
    return backups[-1] if backups else None


@dataclass
class BackupResult:
    """One backup of one execution mode: what was copied, what could not be, and its manifest."""

    backup_id: str
    execution_mode: str
    location: str
    files: int = 0
    bytes: int = 0
    copied_files: int = 0
    copied_bytes: int = 0
    reused_files: int = 0
    copied: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def error(self) -> ComponentError:
        code = "RST-005" if any("sha256" in f or "manifest" in f for f in self.failures) else "RST-001"
        shown = "; ".join(self.failures[:20])
        return ComponentError(code, f"backup {self.backup_id} of the {self.execution_mode} tables to {self.location} is "
                              f"incomplete ({len(self.failures)} files not backed up): {shown}",
                              details={"failures": self.failures})

    def to_json(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "execution_mode": self.execution_mode, "location": self.location,
                "ok": self.ok, "files": self.files, "bytes": self.bytes, "copied_files": self.copied_files,
                "copied_bytes": self.copied_bytes, "reused_files": self.reused_files, "failures": self.failures,
                "tables": self.tables, "elapsed_s": round(self.elapsed_s, 3)}


def _manifest_entries(table_dir: Path) -> list[str]:
    """The checksum manifest's own entry files (immutable, self-digested), relative to the table."""
    try:
        names = os.listdir(table_dir / MANIFEST_DIR)
    except FileNotFoundError:
        return []
    return sorted(f"{MANIFEST_DIR}/{n}" for n in names if n.endswith(".json") and not n.startswith("."))


def _gaps(table_dir: Path, manifest: checksums.Manifest) -> list[int]:
    """Log entries on disk, up to the newest recorded version, that have no manifest entry (a table
    written before checksums were kept, or a commit whose entry was never written): a backup without
    them could not be read back. Newer ones are commits in flight, for the next backup."""
    try:
        names = os.listdir(table_dir / LOG_DIR)
    except FileNotFoundError:
        return []
    on_disk = {int(m.group(1)) for n in names if (m := _VERSION_ENTRY.match(n))}
    return sorted(v for v in on_disk if v <= manifest.latest_version and v not in manifest.versions) or \
        (sorted(on_disk) if not manifest.versions else [])


def backup(root: Path, execution_mode: str, uri: str, *, verify_copies: bool = True,
           record: bool = True) -> BackupResult:
    """Back up every table of ``execution_mode`` under ``root`` to ``uri`` (see the module docstring)."""
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    backup_id = f"{started_at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:6]}"
    target = _Target(uri)
    result = BackupResult(backup_id, execution_mode, uri)
    previous = latest_backup(uri, execution_mode)
    # A file the last complete backup holds is skipped only if the target still has it at that size:
    # a copy lost since is copied again (one listing, not a request per file).
    present = target.sizes(execution_mode) if previous is not None else {}
    known = {rel: entry for rel, entry in (previous.files if previous is not None else {}).items()
             if present.get(rel) == int(entry["size"])}
    files: dict[str, dict[str, Any]] = {}
    mode_dir = Path(root) / execution_mode
    for table in checksums.list_tables(root, execution_mode):
        table_dir = mode_dir / table
        manifest = checksums.load_manifest(table_dir)
        for name, why in manifest.damaged:
            result.failures.append(f"{table}/{MANIFEST_DIR}/{name}: manifest entry {why}")
        missing = _gaps(table_dir, manifest)
        if missing:
            result.failures.append(f"{table}: versions {missing[:10]} have no checksum entry (run "
                                   "`results-store checksum adopt` once verified, or restore them)")
        result.tables[table] = manifest.latest_version
        wanted: list[tuple[str, str, str]] = [
            (path, entry.sha256, entry.kind) for path, entry in manifest.expected().items()]
        # The manifest's own entries vouch for themselves (their digest, checked as they were loaded):
        # hashed here, they are a few KB each.
        damaged = {f"{MANIFEST_DIR}/{name}" for name, _ in manifest.damaged}
        wanted += [(path, checksums.file_sha256(table_dir / path)[1], "manifest")
                   for path in _manifest_entries(table_dir) if path not in damaged]
        for path, sha, kind in wanted:
            rel = f"{execution_mode}/{table}/{path}"
            source = table_dir / path
            if rel in known and known[rel]["sha256"] == sha and source.exists():
                files[rel] = known[rel]
                continue
            try:
                entry = _copy_one(target, rel, source, sha, kind, verify_copies, result)
            except FileNotFoundError:
                if kind == "data" and path in checksums.load_manifest(table_dir).forgotten:
                    continue  # vacuumed while the backup ran
                result.failures.append(f"{rel}: not on disk")
                continue
            except ComponentError as exc:
                result.failures.append(f"{rel}: {exc.message}")
                continue
            if entry is not None:
                files[rel] = {**entry, "table": table, "run_id": _run_of(manifest, path)}
    result.files = len(files)
    result.bytes = sum(int(f["size"]) for f in files.values())
    if result.ok:
        manifest_out = BackupManifest(backup_id, execution_mode, started_at.isoformat(), str(Path(root).resolve()),
                                      files, result.tables, result.copied_files, result.copied_bytes)
        with storage_errors("write the backup manifest", uri):
            target.write_bytes(f"{BACKUPS_DIR}/{execution_mode}/{backup_id}.json", manifest_out.to_bytes())
    result.elapsed_s = time.perf_counter() - started
    if record:
        lifecycle.append(root, lifecycle.LifecycleEntry(
            "backup", execution_mode, status="ok" if result.ok else "failed", files=result.copied_files,
            bytes=result.copied_bytes, location=uri, started_at=started_at, record_id=f"backup-{backup_id}",
            detail={"backup_id": backup_id, "files_in_backup": result.files, "bytes_in_backup": result.bytes,
                    "reused_files": result.reused_files, "tables": result.tables, "failures": result.failures[:100]}))
    return result


def _run_of(manifest: checksums.Manifest, path: str) -> str | None:
    entry = manifest.files.get(path)
    return entry.run_id if entry is not None else None


def _copy_one(target: _Target, rel: str, source: Path, sha: str, kind: str, verify_copies: bool,
              result: BackupResult) -> dict[str, Any] | None:
    """Copy one file (unless the target already holds it intact); its backup-manifest entry."""
    with storage_errors(f"back up {rel}", source):
        size = source.stat().st_size
        if target.size(rel) == size and target.hash(rel) == (size, sha):
            result.reused_files += 1  # left by a backup that did not complete, and intact
            return {"size": size, "sha256": sha, "kind": kind}
        copied_size, copied_sha = target.put(rel, source, sha)
        if verify_copies and target.hash(rel) != (copied_size, copied_sha):
            raise ComponentError("RST-005", "the copy read back does not hash as the file copied",
                                 details={"path": rel})
    result.copied_files += 1
    result.copied_bytes += copied_size
    result.copied.append(rel)
    return {"size": copied_size, "sha256": copied_sha, "kind": kind}


# ------------------------------------------------------------------------------------------- restore
@dataclass
class RestoreResult:
    """One restore of one execution mode: what came back, what could not, and the verification after."""

    execution_mode: str
    location: str
    backup_id: str | None
    full: bool = False
    restored: list[str] = field(default_factory=list)
    bytes: int = 0
    removed: list[str] = field(default_factory=list)
    unrestorable: list[str] = field(default_factory=list)
    verify: checksums.VerifyReport | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.unrestorable and (self.verify is None or self.verify.ok)

    def to_json(self) -> dict[str, Any]:
        return {"execution_mode": self.execution_mode, "location": self.location, "backup_id": self.backup_id,
                "full": self.full, "ok": self.ok, "restored": self.restored, "bytes": self.bytes,
                "removed": self.removed, "unrestorable": self.unrestorable,
                "problems_after": [p.to_json() for p in self.verify.problems] if self.verify else [],
                "elapsed_s": round(self.elapsed_s, 3)}


def restore(root: Path, execution_mode: str, uri: str, *, table: str | None = None, run_id: str | None = None,
            backup_id: str | None = None, in_flight_seconds: float = checksums.IN_FLIGHT_SECONDS,
            record: bool = True) -> RestoreResult:
    """Bring back from the backup at ``uri`` what ``execution_mode``'s tables are missing or have damaged.

    Into a data dir that has no table of the execution mode (the disaster case), every file of the
    backup comes back (``table`` still limits it). Otherwise verification (every version's files)
    decides: missing, truncated or corrupt files, damaged manifest entries and the entries of
    untracked commits are copied back from the newest complete backup (or ``backup_id``), each
    checked against the backup's sha256 before it replaces anything; a ``_last_checkpoint`` naming
    no checkpoint is removed (Delta readers find the newest checkpoint without it). Then it verifies.
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    manifests = list_backups(uri, execution_mode)
    chosen = next((m for m in manifests if m.backup_id == backup_id), None) if backup_id else \
        (manifests[-1] if manifests else None)
    if chosen is None:
        raise ComponentError("RST-302", f"no complete backup{f' {backup_id}' if backup_id else ''} of the {execution_mode} "
                             f"tables at {uri}", details={"location": uri})
    target = _Target(uri)
    result = RestoreResult(execution_mode, uri, chosen.backup_id)
    mode_dir = Path(root) / execution_mode
    present = checksums.list_tables(root, execution_mode)
    if not present or (table is not None and table not in present):
        result.full = True
        for rel in sorted(chosen.files):
            if table is not None and rel.split("/", 2)[1] != table:
                continue
            _fetch(target, chosen, rel, Path(root) / rel, result)
    else:
        # Restoring a manifest entry can reveal more (files it vouches for), so look again after each round.
        for _ in range(3):
            report = checksums.verify(root, [execution_mode], table=table, run_id=run_id, all_versions=True,
                                      in_flight_seconds=in_flight_seconds)
            wanted = list(_wanted(report, mode_dir, result))
            if not wanted:
                break
            for rel in wanted:
                if rel in chosen.files:
                    _fetch(target, chosen, rel, Path(root) / rel, result)
                elif rel not in result.unrestorable:
                    result.unrestorable.append(rel)
            if result.unrestorable:
                break
    result.verify = checksums.verify(root, [execution_mode], table=table, run_id=run_id, all_versions=True,
                                     in_flight_seconds=in_flight_seconds)
    result.elapsed_s = time.perf_counter() - started
    if record:
        lifecycle.append(root, lifecycle.LifecycleEntry(
            "restore", execution_mode, status="ok" if result.ok else "failed", files=len(result.restored),
            bytes=result.bytes, location=uri, started_at=started_at, run_id=run_id,
            detail={"backup_id": chosen.backup_id, "full": result.full, "table": table, "restored": result.restored[:200],
                    "removed": result.removed, "unrestorable": result.unrestorable[:100],
                    "problems_after": [p.line() for p in result.verify.problems[:100]]}))
    return result


def _wanted(report: checksums.VerifyReport, mode_dir: Path, result: RestoreResult) -> Iterator[str]:
    """The backup paths that would repair what ``report`` found."""
    mode = mode_dir.name
    for problem in report.problems:
        table_dir = mode_dir / problem.table
        if problem.path == f"{LOG_DIR}/{checksums.LAST_CHECKPOINT}":
            (table_dir / problem.path).unlink(missing_ok=True)
            result.removed.append(f"{mode}/{problem.table}/{problem.path}")
            continue
        if problem.problem == "untracked":
            # The commit's manifest entry is what is missing: bring it back if the backup has one.
            version = problem.versions.split("-", 1)[0]
            if version.isdigit():
                yield f"{mode}/{problem.table}/{MANIFEST_DIR}/{int(version):020d}.json"
            continue
        yield f"{mode}/{problem.table}/{problem.path}"


def _fetch(target: _Target, chosen: BackupManifest, rel: str, dest: Path, result: RestoreResult) -> None:
    """Copy one file back, checking it against the backup's sha256 before it replaces anything."""
    entry = chosen.files[rel]
    with storage_errors(f"restore {rel}", dest):
        staging = dest.with_name(f".{dest.name}.staged-{uuid.uuid4().hex[:8]}")
        try:
            size, digest = target.get(rel, staging)
            if digest != entry["sha256"] or size != int(entry["size"]):
                result.unrestorable.append(f"{rel} (the backup's copy is damaged too: sha256 {digest[:12]}…)")
                return
            os.replace(staging, dest)
        finally:
            staging.unlink(missing_ok=True)
    result.restored.append(rel)
    result.bytes += size


def backed_up_runs(manifest: BackupManifest) -> dict[str, set[str]]:
    """Data file paths per run that a backup holds (``{execution_mode}/{table}/{path}``)."""
    held: dict[str, set[str]] = {}
    for rel, entry in manifest.files.items():
        if entry.get("kind") == "data" and entry.get("run_id"):
            held.setdefault(str(entry["run_id"]), set()).add(rel)
    return held


def holds(manifest: BackupManifest, execution_mode: str, table: str, files: Sequence[tuple[str, str]]) -> bool:
    """Whether the backup holds every (path, sha256) of ``table``'s ``files``."""
    for path, sha in files:
        entry = manifest.files.get(f"{execution_mode}/{table}/{path}")
        if entry is None or entry["sha256"] != sha:
            return False
    return True


def backup_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Markdown of backups (``BackupResult.to_json()`` per execution mode), naming every file not backed up."""
    from results_store.markdown import markdown_table

    failed = {m: r for m, r in results.items() if not r["ok"]}
    lines = [f"# Backup: {'**FAILED**' if failed else 'complete'}", ""]
    for mode, r in results.items():
        lines.append(f"- {mode} → `{r['location']}` (backup `{r['backup_id']}`): {r['copied_files']:,} files copied "
                     f"({r['copied_bytes'] / 1e6:,.1f} MB), {r['files']:,} files ({r['bytes'] / 1e6:,.1f} MB) in the "
                     f"backup, {r['elapsed_s']:.1f} s" + ("" if r["ok"] else " — **no manifest written: incomplete**"))
    for mode, r in failed.items():
        lines += ["", f"## Not backed up ({mode})", "", *[f"- {f}" for f in r["failures"][:200]]]
    lines += ["", "## Tables", "", markdown_table([{"mode": m, "table": t, "version": v} for m, r in results.items()
                                                    for t, v in sorted(r["tables"].items())]) or "no tables"]
    return "\n".join(lines)
