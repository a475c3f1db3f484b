"""Fixtures for the store tests: small engine runs and table fingerprints."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from results_store import delta_tables
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import ModeConfig, load_mode


@pytest.fixture
def mn_mode() -> ModeConfig:
    return load_mode("usdt_market_neutral")


def snapshots(mode: ModeConfig, steps: int, seed: int = 7) -> list[tuple[Any, dict[str, Any]]]:
    engine = ReferenceEngine(mode, "2024-01-01", "2024-03-01", "1min", seed=seed)
    return list(engine.iter_snapshots(0, steps))


def fingerprint(root: Path, execution_mode: str, table: str, run_id: str) -> tuple[int, str]:
    """(row count, sha256 of the rows sorted canonically) of one run's partition."""
    path = delta_tables.table_path(root, execution_mode, table)
    data = delta_tables.read(path, run_id=run_id)
    drop = [c for c in ("quarantined_at",) if c in data.column_names]
    data = data.drop_columns(drop)
    keys = [(c, "ascending") for c in data.column_names]
    data = data.sort_by(keys)
    digest = hashlib.sha256()
    for column in data.columns:
        digest.update(repr(column.to_pylist()).encode())
    return data.num_rows, digest.hexdigest()
