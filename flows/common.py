"""What the flows share: typed parameter vocabularies, the data dir, and artifact publishing."""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from results_store import delta_tables
from results_store.summary import RunSummary

__all__ = [
    "ExecutionModeName",
    "artifact_key",
    "publish_markdown",
    "publish_run_summary",
    "quarantined_by_table",
    "resolve_data_dir",
]

# A Literal rather than str, so a deployment's Run form offers a drop-down.
ExecutionModeName = Literal["backtest", "live"]


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The flow's data dir: the parameter, else BASIS_DATA_DIR, else ./data."""
    return Path(data_dir or os.environ.get("BASIS_DATA_DIR") or "data")


def artifact_key(*parts: str) -> str:
    """An artifact key from free text: Prefect allows lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def quarantined_by_table(summary: RunSummary) -> dict[str, int]:
    """Quarantined rows of the summary's run per result table (``snapshot`` for whole snapshots)."""
    path = summary.table_paths.get("quarantine")
    if not path or not delta_tables.table_exists(Path(path)):
        return {}
    # Only the one column: a badly broken run can quarantine millions of rows with their payloads.
    column = delta_tables.read(Path(path), run_id=summary.run_id, columns=["result_type"]).column("result_type")
    return dict(Counter(column.to_pylist()))


@task(name="publish-run-summary", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def publish_run_summary(summary: RunSummary) -> dict[str, int]:
    """Publish the run summary (markdown) and rows, commits and quarantined rows per table (table)."""
    quarantined = await asyncio.to_thread(quarantined_by_table, summary)
    await acreate_markdown_artifact(summary.to_markdown(), key=artifact_key("run-summary", summary.run_id),
                                    description=f"{summary.mode} {summary.execution_mode} run {summary.run_id}")
    rows = [{**row, "quarantined": quarantined.get(row["table"], 0)} for row in summary.table_rows()
            if row["table"] != "quarantine"]
    rows.append({"table": "quarantine (all tables)", "rows": summary.rows.get("quarantine", 0),
                 "commits": summary.commits.get("quarantine", 0),
                 "version": summary.table_versions.get("quarantine"), "data_files": None,
                 "quarantined": summary.quarantined})
    await acreate_table_artifact(rows, key=artifact_key("run-tables", summary.run_id),
                                 description=f"rows, commits, versions and quarantined rows per table of {summary.run_id}")
    return quarantined


@task(name="publish-report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def publish_markdown(markdown: str, key: str, description: str = "") -> None:
    """Publish a markdown report as an artifact."""
    await acreate_markdown_artifact(markdown, key=artifact_key(key), description=description or None)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A list of same-keyed dicts as a GitHub markdown table (empty string for no rows)."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
