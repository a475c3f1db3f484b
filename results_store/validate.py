"""Validate a result table against its mode's pandera schema; split valid rows from quarantine.

Validation is lazy (every failure at once) and vectorised: the table goes to pandas once, pandera
checks whole columns, and the failure cases pandera returns are turned into

- the valid rows: ``table.filter(mask)`` on the original Arrow table (no pandas round trip);
- quarantine rows: one per (bad row, failed rule), with the row itself as JSON;
- one RST-102 :class:`ComponentError` per (column, rule), naming the table, the column, the rule
  and the offending timesteps.

Only the failing rows are ever touched one by one.

pandera's fixed cost (a few ms per table and call) would dominate a live commit of a few small
tables, so a fast screen on the Arrow table (:mod:`results_store.validate_screen`, derived from the
same schema) goes first: when it vouches that every row passes every rule, the table is valid
without pandas or pandera; otherwise pandera judges it as above.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
import pandera.errors
import pandera.pandas as pdr
import pyarrow as pa

from results_store.flatten import Rejected, record_json, to_micros
from results_store.json_policy import tagged_default as json_tagged_default
from results_store.validate_screen import screen_passes
from schemas.errors import ComponentError
from schemas.modes import ModeConfig
from schemas.result_types import ResultType
from schemas.snapshot import TIMESTAMP_MAX_US, TIMESTAMP_MIN_US
from schemas.store_tables import QUARANTINE_SCHEMA
from schemas.tables import ROW_RULE_COLUMNS, mode_schema

__all__ = ["Validated", "quarantine_rejected", "validate_table"]

_MAX_STEPS_IN_MESSAGE = 10
_ROW_LEVEL = "*"
_UTC_MICROS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True, slots=True)
class Validated:
    """The outcome of validating one table: rows to write, rows to quarantine, and why."""

    valid: pa.Table
    quarantine: pa.Table
    errors: list[ComponentError] = field(default_factory=list)




def _steps_text(steps: Sequence[int]) -> str:
    shown = ", ".join(str(s) for s in steps[:_MAX_STEPS_IN_MESSAGE])
    more = len(steps) - _MAX_STEPS_IN_MESSAGE
    return shown + (f" +{more} more" if more > 0 else "")


def _rule_text(rule: str, description: str) -> str:
    return f"'{rule}'" + (f" ({description})" if description and description != rule else "")


def validate_table(result_type: ResultType | str, table: pa.Table, mode: ModeConfig, *,
                   strict: bool = False, screen: bool = True) -> Validated:
    """Check ``table`` with ``mode_schema(result_type, mode)``; invalid rows go to quarantine.

    With ``strict`` the first violation is raised instead (RST-102, with the row count of every
    violated (column, rule) in ``details["violations"]``). A table whose columns do not match the
    result type's schema cannot be judged row by row and always raises RST-102. ``screen=False``
    skips the fast screen (pandera judges every table; the outcome is the same, only slower).
    """
    rtype = ResultType(result_type)
    if table.num_rows == 0:
        return Validated(table, QUARANTINE_SCHEMA.empty_table())
    schema = mode_schema(rtype, mode)
    if screen and screen_passes(schema, table):
        return Validated(table, QUARANTINE_SCHEMA.empty_table())
    frame = table.to_pandas()
    try:
        schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = _failure_rows(rtype, schema, exc.failure_cases, frame.columns)
    else:
        return Validated(table, QUARANTINE_SCHEMA.empty_table())
    timesteps = frame["timestep"].to_numpy()
    errors = _errors(rtype, cases, timesteps)
    if strict:
        first = errors[0]
        violations = {f"{e.details['column']}:{e.details['rule']}": e.details["rows"] for e in errors}
        raise ComponentError("RST-102", first.message, details={**first.details, "violations": violations})
    bad = np.zeros(table.num_rows, dtype=bool)
    bad[cases["index"].to_numpy()] = True
    return Validated(table.filter(pa.array(~bad)), _quarantine_rows(rtype, table, cases, timesteps), errors)


def _failure_rows(rtype: ResultType, schema: pdr.DataFrameSchema, failures: pd.DataFrame,
                  columns: pd.Index) -> pd.DataFrame:
    """pandera's failure cases as one row per (row index, rule, column) with the rule's name and text."""
    # pandera names a check by its error text when it has one, else by "name(arguments)".
    by_text: dict[str, tuple[str, str]] = {}
    for check in [*schema.checks, *(c for col in schema.columns.values() for c in col.checks)]:
        if check.error:
            by_text[str(check.error)] = (str(check.name), str(check.error))
    texts = failures["check"].astype(str)
    names = {t: by_text.get(t, (t.split("(", 1)[0], t)) for t in texts.unique()}
    cases = failures.assign(rule=texts.map(lambda t: names[t][0]), description=texts.map(lambda t: names[t][1]))
    unplaced = cases[cases["index"].isna()]
    if len(unplaced):
        # Schema-level failures (a missing, extra or mistyped column) are about the table, not a row.
        problems = "; ".join(sorted({f"{c}: {d} (got {f})" for c, d, f in
                                     zip(unplaced["column"], unplaced["description"], unplaced["failure_case"],
                                         strict=True)}))
        raise ComponentError("RST-102", f"{rtype.value}: the table does not have its result type's schema: {problems}",
                             details={"table": rtype.value})
    cases = cases.astype({"index": np.int64})
    row_level = cases["schema_context"].eq("DataFrameSchema").to_numpy()
    if row_level.any():
        # A dataframe check is reported once per column of each failing row: keep one, under the
        # column the rule is about when that is a column of this table, else "*".
        about = {rule: ROW_RULE_COLUMNS.get(rule, _ROW_LEVEL) for rule in cases["rule"].unique()}
        about = {rule: column if column in columns else _ROW_LEVEL for rule, column in about.items()}
        placed = cases["column"].to_numpy(dtype=object, copy=True)
        placed[row_level] = cases["rule"].map(about).to_numpy(dtype=object)[row_level]
        cases = cases.assign(column=placed)
    return cases.drop_duplicates(["index", "rule", "column"]).sort_values(["index", "rule"], kind="stable")


def _errors(rtype: ResultType, cases: pd.DataFrame, timesteps: np.ndarray) -> list[ComponentError]:
    errors = []
    for (column, rule, description), group in cases.groupby(["column", "rule", "description"], sort=True):
        steps = np.unique(timesteps[group["index"].to_numpy()]).tolist()
        errors.append(ComponentError(
            "RST-102",
            f"{rtype.value}.{column}: rule {_rule_text(rule, description)} failed at timestep(s) {_steps_text(steps)}",
            details={"table": rtype.value, "column": column, "rule": rule, "timesteps": steps[:1000],
                     "rows": len(group)},
        ))
    return errors


def _quarantine_rows(rtype: ResultType, table: pa.Table, cases: pd.DataFrame, timesteps: np.ndarray) -> pa.Table:
    index = cases["index"].to_numpy()
    take = pa.array(index)
    # The row as JSON, once per bad row even when it broke several rules.
    unique_rows, inverse = np.unique(index, return_inverse=True)
    records = table.take(pa.array(unique_rows)).to_pylist()
    payload_of = [orjson.dumps(r, default=json_tagged_default, option=orjson.OPT_SORT_KEYS).decode() for r in records]
    payloads = [payload_of[i] for i in inverse]
    messages = [
        f"{rtype.value}.{column}: rule {_rule_text(rule, description)} failed at timestep {step}"
        + ("" if column == _ROW_LEVEL or schema_context == "DataFrameSchema" else f" (value {case!r})")
        for column, rule, description, step, case, schema_context in zip(
            cases["column"], cases["rule"], cases["description"], timesteps[index], cases["failure_case"],
            cases["schema_context"], strict=True)
    ]
    n = len(index)
    return pa.Table.from_arrays([
        table.column("run_id").take(take),
        table.column("timestep").take(take),
        table.column("timestamp").take(take),
        pa.repeat(pa.scalar(rtype.value, pa.string()), n),
        pa.array(cases["rule"].astype(object).tolist(), pa.string()),
        pa.array(cases["column"].astype(object).tolist(), pa.string()),
        pa.repeat(pa.scalar("RST-102", pa.string()), n),
        pa.array(messages, pa.string()),
        pa.array(payloads, pa.string()),
        pa.repeat(pa.scalar(to_micros(datetime.now(UTC)), _UTC_MICROS), n),
    ], schema=QUARANTINE_SCHEMA)


def quarantine_rejected(rejected: Sequence[Rejected], run_id: str) -> pa.Table:
    """Quarantine rows for whole snapshots that broke the contract (RST-101), one per snapshot.

    ``result_type`` is "snapshot", ``rule`` "snapshot_contract", ``column`` the first failing key
    path and ``payload`` the whole snapshot as JSON (values with no JSON form tagged). A timestep
    no int64 holds is recorded as -1 and a timestamp the tables cannot hold as the epoch: the
    message keeps both as given.
    """
    if not rejected:
        return QUARANTINE_SCHEMA.empty_table()
    n = len(rejected)
    return pa.Table.from_arrays([
        pa.repeat(pa.scalar(run_id, pa.string()), n),
        pa.array([_storable_step(r.timestep) for r in rejected], pa.int64()),
        pa.array([_storable_micros(r.timestamp) for r in rejected], pa.int64()).cast(_UTC_MICROS),
        pa.repeat(pa.scalar("snapshot", pa.string()), n),
        pa.repeat(pa.scalar("snapshot_contract", pa.string()), n),
        pa.array([str((r.error.details.get("paths") or ["(snapshot)"])[0] or "(snapshot)") for r in rejected],
                 pa.string()),
        pa.array([r.error.error_code for r in rejected], pa.string()),
        pa.array([r.error.message for r in rejected], pa.string()),
        pa.array([record_json(r.payload).decode() for r in rejected], pa.string()),
        pa.repeat(pa.scalar(to_micros(datetime.now(UTC)), _UTC_MICROS), n),
    ], schema=QUARANTINE_SCHEMA)


def _storable_step(step: object) -> int:
    if isinstance(step, numbers.Integral) and not isinstance(step, bool) and -(2**63) <= int(step) < 2**63:
        return int(step)
    return -1


def _storable_micros(stamp: object) -> int:
    try:
        micros = to_micros(stamp)
    except (TypeError, ValueError):
        return 0
    return micros if TIMESTAMP_MIN_US <= micros <= TIMESTAMP_MAX_US else 0
