"""Data-health tasks: each reads the stored tables through the library and returns what it found.

Reads only, so a retry is always safe; retried for transient storage errors (a file briefly
locked or a slow mount), which is what these scheduled jobs meet.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from results_store import maintenance

__all__ = ["plan_backup", "plan_retention", "verify_payload_checksums"]


@task(name="plan-retention", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
async def plan_retention(root: Path, execution_mode: str, retention_days: int | None) -> dict[str, Any]:
    """List run partitions older than their retention window (dry run)."""
    return await asyncio.to_thread(maintenance.retention_plan, root, execution_mode, retention_days)


@task(name="verify-checksums", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
async def verify_payload_checksums(root: Path, execution_mode: str) -> dict[str, Any]:
    """Recompute the sha256 of every raw snapshot payload and compare it with the stored one."""
    return await asyncio.to_thread(maintenance.verify_checksums, root, execution_mode)


@task(name="plan-backup", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
async def plan_backup(root: Path, execution_mode: str) -> dict[str, Any]:
    """Every table's current version and size: what a backup would copy."""
    return await asyncio.to_thread(maintenance.backup_plan, root, execution_mode)
