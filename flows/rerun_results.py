"""rerun-results: re-derive a run's result tables from its raw snapshots with new parameters.

Meant for the Prefect UI: the deployment's Run button shows these parameters as a form. With
``new_run_id`` it writes a new run whose parent is the source run. Without, it replaces the
run's own partitions in new table versions; the previous versions stay readable by time travel
and the runs registry records the versions before and after. The same rerun twice gives the same
tables.

What is refused, at once and terminally (the rules are in :mod:`results_store.rerun`): a run another
process is writing, or one that is not finished (RST-301: resume it first); in place, a live run
whose day is not over (RST-301: rerun it as a new run meanwhile); a run whose raw snapshots no
longer match their sha256 (RST-005: nothing is written).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from results_store.rerun import check_result_types, lineage_report, table_versions
from results_store.runs import latest_run
from schemas.identifiers import validate_run_id
from schemas.modes import ExecutionMode
from schemas.result_types import ResultType
from schemas.settings import load_settings, resolve_data_dir
from tasks.artifacts import publish_markdown, publish_run_summary
from tasks.rerun import rederive

__all__ = ["rerun_results"]


def _run_name() -> str:
    params = flow_run.parameters
    target = params.get("new_run_id")
    return f"rerun-{params['run_id']}" + (f"-as-{target}" if target else "")


@flow(name="rerun-results", flow_run_name=_run_name, log_prints=True)
async def rerun_results(
    run_id: str,
    new_run_id: str | None = None,
    result_types: list[ResultType] | None = None,
    balance_sheet_assets: list[str] | None = None,
    pnl_attribution_types: list[str] | None = None,
    delta_tracking_assets: list[str] | None = None,
    funding_tracking_venues: list[str] | None = None,
    dust_tracking_tokens: list[str] | None = None,
    leverage_tracking: bool | None = None,
    strict: bool = False,
    execution_mode: ExecutionMode | None = None,
    data_dir: str | None = None,
    empty_dropped_tables: bool = False,
) -> dict[str, Any]:
    """Re-derive a run's result tables from its raw snapshots: new versions or a new run, never a silent overwrite.

    Args:
        run_id: the run to re-derive.
        new_run_id: write a new run (its parent_run_id is run_id) instead of new versions of run_id's tables.
        result_types: result types to derive; must include balance_sheet, pnl_attribution, risk_metrics and
            execution_log (every mode stores them). Default: the run's own.
        balance_sheet_assets: assets balance-sheet rows may name. Default: the run's own.
        pnl_attribution_types: PnL attribution types. Default: the run's own.
        delta_tracking_assets: delta-tracking assets. Default: the run's own.
        funding_tracking_venues: funding venues. Default: the run's own.
        dust_tracking_tokens: dust tokens. Default: the run's own.
        leverage_tracking: store leverage tracking. Default: follows result_types.
        strict: fail on the first invalid row instead of quarantining it.
        execution_mode: backtest or live runs. Default: BASIS_EXECUTION_MODE (of the worker), else backtest.
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
        empty_dropped_tables: in place, allow result_types that leave out a table holding the run's rows:
            its rows are removed in a new version (listed in the report). Off: such a rerun is refused.
    """
    logger = get_run_logger()
    # Before any work, both ids: a bad new_run_id used to fail only once the rerun was under way.
    validate_run_id(run_id)
    if new_run_id is not None:
        validate_run_id(new_run_id)
    check_result_types(result_types)
    execution_mode = execution_mode or load_settings().execution_mode
    root = resolve_data_dir(data_dir)
    requested: dict[str, Any] = {
        "result_types": [ResultType(t).value for t in result_types] if result_types is not None else None,
        "balance_sheet_assets": balance_sheet_assets, "pnl_attribution_types": pnl_attribution_types,
        "delta_tracking_assets": delta_tracking_assets, "funding_tracking_venues": funding_tracking_venues,
        "dust_tracking_tokens": dust_tracking_tokens, "leverage_tracking": leverage_tracking,
    }
    overrides = {k: v for k, v in requested.items() if v is not None}
    source = await asyncio.to_thread(latest_run, root, execution_mode, run_id)
    # A new run's registry record keeps only its versions after: the report's "before" comes from here.
    before = await asyncio.to_thread(table_versions, root, execution_mode)
    summary = await rederive(run_id, execution_mode=execution_mode, data_dir=str(root), overrides=overrides,
                             new_run_id=new_run_id, strict=strict, empty_dropped_tables=empty_dropped_tables)
    record = await asyncio.to_thread(latest_run, root, execution_mode, summary.run_id)
    await publish_run_summary(summary)
    await publish_markdown(lineage_report(run_id, summary, source, record, overrides, before),
                           f"rerun-{summary.run_id}",
                           f"versions before/after and lineage of the rerun of {run_id}")
    logger.info("rerun of %s written as %s (overrides: %s)", run_id, summary.run_id, overrides or "none")
    return summary.to_dict()
