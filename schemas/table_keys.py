"""What identifies a row of each result table, beside ``run_id`` and ``timestep``.

A result table is long: one row per (timestep, entity). The entity columns below name the series a
row belongs to (a balance of one instrument at one venue, one PnL metric...). Downsampling groups
rows by them, and database exports index them.
"""

from __future__ import annotations

from schemas.result_types import ResultType

__all__ = ["ENTITY_COLUMNS", "ORDER_COLUMNS", "row_key"]

ENTITY_COLUMNS: dict[ResultType, tuple[str, ...]] = {
    ResultType.BALANCE_SHEET: ("venue", "account_type", "asset", "instrument"),
    ResultType.PNL_ATTRIBUTION: ("component", "metric"),
    ResultType.RISK_METRICS: ("risk_group", "metric"),
    ResultType.EXECUTION_LOG: ("event_order",),
    ResultType.DELTA_TRACKING: ("asset",),
    ResultType.LEVERAGE_TRACKING: (),
    ResultType.FUNDING_TRACKING: ("venue",),
    ResultType.DUST_TRACKING: ("token",),
}

# The order rows are stored and returned in within a run: by timestep, events by their order.
ORDER_COLUMNS: dict[ResultType, tuple[str, ...]] = {
    rt: ("timestep", "event_order") if rt is ResultType.EXECUTION_LOG else ("timestep",) for rt in ResultType
}


def row_key(result_type: ResultType | str) -> tuple[str, ...]:
    """The columns that identify one row: run, timestep and the entity columns."""
    return ("run_id", "timestep", *ENTITY_COLUMNS[ResultType(result_type)])
