"""Tasks that publish reports as Prefect artifacts (their one side effect)."""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from results_store.markdown import artifact_key
from results_store.reading import quarantined_by_table
from results_store.summary import RunSummary
from schemas.store_tables import QUARANTINE

__all__ = ["publish_markdown", "publish_run_summary"]


# Artifact writes are API calls: retried, as a dropped connection to the server is transient.
@task(name="publish-run-summary", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def publish_run_summary(summary: RunSummary) -> dict[str, int]:
    """Publish the run summary (markdown) and rows, commits and quarantined rows per table (table)."""
    quarantined = await asyncio.to_thread(quarantined_by_table, summary)
    await acreate_markdown_artifact(summary.to_markdown(), key=artifact_key("run-summary", summary.run_id),
                                    description=f"{summary.mode} {summary.execution_mode} run {summary.run_id}")
    rows = [{**row, "quarantined": quarantined.get(row["table"], 0)} for row in summary.table_rows()
            if row["table"] != QUARANTINE]
    rows.append({"table": "quarantine (all tables)", "rows": summary.rows.get(QUARANTINE, 0),
                 "commits": summary.commits.get(QUARANTINE, 0),
                 "version": summary.table_versions.get(QUARANTINE), "data_files": None,
                 "quarantined": summary.quarantined})
    await acreate_table_artifact(rows, key=artifact_key("run-tables", summary.run_id),
                                 description=f"rows, commits, versions and quarantined rows per table of {summary.run_id}")
    return quarantined


@task(name="publish-report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def publish_markdown(markdown: str, key: str, description: str = "") -> None:
    """Publish a markdown report as an artifact."""
    await acreate_markdown_artifact(markdown, key=artifact_key(key), description=description or None)
