"""Tasks for a run's report: write its bundle (files), publish it (Prefect artifacts)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import task
from prefect.artifacts import acreate_link_artifact, acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from results_store.markdown import artifact_key
from results_store.report import RunBundle, write_bundle

__all__ = ["publish_report", "write_run_report"]


# No retries: the bundle is computed from committed tables, so a failure here fails the same way again.
@task(name="write-run-report", cache_policy=NO_CACHE)
async def write_run_report(root: Path, run_id: str, *, execution_mode: str = "backtest",
                           event_log_dir: Path | None = None) -> RunBundle:
    """Write the run's bundle: performance, trades and events CSVs, summary.json, report.html and its plots."""
    return await asyncio.to_thread(write_bundle, root, run_id, execution_mode=execution_mode,
                                   event_log_dir=event_log_dir)


# Artifact writes are API calls: retried, as a dropped connection to the server is transient.
@task(name="publish-run-report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def publish_report(bundle: RunBundle) -> None:
    """Publish the run's summary (markdown) and a link to its report.html."""
    run_id = bundle.summary.run_id
    await acreate_markdown_artifact(bundle.summary.to_markdown(), key=artifact_key("run-performance", run_id),
                                    description=f"how run {run_id} did: returns, drawdown, Sharpe, funding, LTV, alerts")
    # The report is a file beside the tables: the link opens it on the machine that holds the data dir.
    await acreate_link_artifact(bundle.report.absolute().as_uri(), link_text=f"report.html of {run_id}",
                                key=artifact_key("run-report", run_id),
                                description=f"offline HTML report with plots, in {bundle.directory}")
