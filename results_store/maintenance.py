"""The raw payloads' own checksums: each stored payload hashed again against its ``payload_sha256``.

A content-level check, beside the file-level one: ``results_store.checksums`` proves each file is
the bytes written, this proves each payload is the one whose sha256 was taken when it was accepted
(a payload replaced by a faulty rewrite carries a file checksum of its own, but not the right
payload digest). Reruns run it per run before they write; the nightly audit runs it per run too.
Backups, retention and file verification are ``results_store.backup``, ``.retention`` and
``.checksums``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from results_store import delta_tables
from schemas.store_tables import RAW_SNAPSHOTS

__all__ = ["verify_checksums"]


def verify_checksums(root: Path, execution_mode: str) -> dict[str, Any]:
    """Recompute the sha256 of every raw snapshot payload and compare it with the stored one."""
    path = delta_tables.table_path(root, execution_mode, RAW_SNAPSHOTS)
    if not delta_tables.table_exists(path):
        return {"checked": 0, "mismatches": []}
    data = delta_tables.read(path, columns=["run_id", "timestep", "payload", "payload_sha256"])
    mismatches = []
    for batch in data.to_batches(max_chunksize=50_000):
        for run_id, step, payload, digest in zip(*(batch.column(i).to_pylist() for i in range(4)), strict=True):
            if hashlib.sha256(payload.encode()).hexdigest() != digest:
                mismatches.append({"run_id": run_id, "timestep": step})
    return {"checked": data.num_rows, "mismatches": mismatches}
