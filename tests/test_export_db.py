"""Database exports: SQLite by default, PostgreSQL given a URL; tables keyed and indexed; a re-export never doubles rows.

PostgreSQL: the URL comes from RESULTS_STORE_TEST_PG_URL (``.ci/run`` sets it on machines with the
server). Without it the PostgreSQL tests skip, saying why; under CI=true a URL that does not answer
fails them instead, so a CI machine that lost its server cannot pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as postgresql
import adbc_driver_sqlite.dbapi as sqlite
import pytest

from results_store.drive import run_snapshots
from results_store.export import export_run
from results_store.query import retrieve_results
from results_store.simulator.reference import ReferenceEngine
from schemas.modes import load_mode

PG_URL = os.environ.get("RESULTS_STORE_TEST_PG_URL")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two eth_leveraged runs of one day at 30 minutes (leverage_tracking has a boolean column)."""
    root = tmp_path_factory.mktemp("export-db")
    mode = load_mode("eth_leveraged")
    for run_id, seed in (("e1", 1), ("e2", 2)):
        run_snapshots(mode, ReferenceEngine(mode, "2024-04-01", "2024-04-02", "30min", seed=seed).iter_snapshots(),
                      data_dir=root, run_id=run_id)
    return root


def count(cursor: Any, table: str, run_id: str, placeholder: str) -> int:
    cursor.execute(f'SELECT COUNT(*) FROM {table} WHERE "run_id" = {placeholder}', parameters=(run_id,))
    rows: int = cursor.fetchone()[0]
    return rows


def test_sqlite_is_the_default_and_a_re_export_replaces_the_runs_rows(root: Path, tmp_path: Path) -> None:
    export_run(root, "e1", "db", tmp_path)
    export_run(root, "e2", "db", tmp_path)
    manifest = export_run(root, "e1", "db", tmp_path)  # again: e1's rows replaced, e2's untouched
    assert manifest["database"]["driver"] == "sqlite"
    with sqlite.connect(str(tmp_path / "results.sqlite")) as connection, connection.cursor() as cursor:
        for table, entry in manifest["tables"].items():
            stored = retrieve_results(root, {"result_type": table, "run_id": "e1", "output": "arrow"})
            assert count(cursor, table, "e1", "?") == entry["rows"] == stored.num_rows > 0, table
            assert count(cursor, table, "e2", "?") > 0, table
        cursor.execute('SELECT "amount", "timestep" FROM "balance_sheet" WHERE "run_id" = ? ORDER BY "timestep"',
                       parameters=("e1",))
        amounts = cursor.fetch_arrow_table()
        stored = retrieve_results(root, {"result_type": "balance_sheet", "run_id": "e1", "output": "arrow"})
        assert sorted(amounts.column("amount").to_pylist()) == sorted(stored.column("amount").to_pylist())
        # The row key is the primary key, and (run_id, timestamp) has an index of its own.
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'balance_sheet'")
        indexes = {row[0] for row in cursor.fetchall()}
        assert "balance_sheet_run_time" in indexes and any(name.startswith("sqlite_autoindex") for name in indexes)


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """A PostgreSQL URL and a fresh schema in it, dropped afterwards."""
    if not PG_URL:
        pytest.skip("RESULTS_STORE_TEST_PG_URL is not set (.ci/run sets it on machines with a PostgreSQL server)")
    try:
        connection = postgresql.connect(PG_URL)
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: PostgreSQL at {PG_URL} does not answer: {exc}")
        pytest.skip(f"PostgreSQL at {PG_URL} does not answer: {exc}")
    schema = f"rs_test_{uuid.uuid4().hex[:10]}"
    try:
        yield PG_URL, schema
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        connection.commit()
        connection.close()


def test_postgresql_gets_typed_keyed_tables_and_no_doubling_on_re_export(root: Path, tmp_path: Path,
                                                                           pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    for _ in range(2):
        manifest = export_run(root, "e1", "db", tmp_path, db_url=url, db_schema=schema)
    export_run(root, "e2", "db", tmp_path, db_url=url, db_schema=schema, tables=["leverage_tracking"])
    assert manifest["database"]["driver"] == "postgresql"
    with postgresql.connect(url) as connection, connection.cursor() as cursor:
        for table, entry in manifest["tables"].items():
            assert count(cursor, f'"{schema}"."{table}"', "e1", "$1") == entry["rows"] > 0, table
        assert count(cursor, f'"{schema}"."leverage_tracking"', "e2", "$1") == 48
        # Native types come back as the store's Arrow types.
        cursor.execute(f'SELECT * FROM "{schema}"."leverage_tracking" WHERE "run_id" = $1 ORDER BY "timestep"',
                       parameters=("e1",))
        back = cursor.fetch_arrow_table()
        stored = retrieve_results(root, {"result_type": "leverage_tracking", "run_id": "e1", "output": "arrow"})
        assert [(f.name, f.type) for f in back.schema] == [(f.name, f.type) for f in stored.schema]
        assert back.cast(stored.schema).equals(stored)
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'balance_sheet'",
                       parameters=(schema,))
        definitions = " ".join(row[0] for row in cursor.fetchall())
        assert "PRIMARY KEY" in definitions.upper() or "pkey" in definitions
        assert "(run_id, timestep, venue, account_type, asset, instrument)" in definitions
        assert '(run_id, "timestamp")' in definitions


def test_a_failed_export_leaves_the_previous_rows(root: Path, tmp_path: Path) -> None:
    export_run(root, "e1", "db", tmp_path)
    path = tmp_path / "results.sqlite"
    with sqlite.connect(str(path)) as connection, connection.cursor() as cursor:
        # A column the export does not write, NOT NULL: the re-export's insert fails midway.
        cursor.execute('ALTER TABLE "dust_tracking" ADD COLUMN "extra" TEXT NOT NULL DEFAULT \'x\'')
        cursor.execute('CREATE TRIGGER refuse BEFORE INSERT ON "dust_tracking" BEGIN SELECT RAISE(ABORT, \'no\'); END')
        connection.commit()
    with pytest.raises(Exception, match="no"):
        export_run(root, "e1", "db", tmp_path)
    with sqlite.connect(str(path)) as connection, connection.cursor() as cursor:
        # One transaction: the tables exported before the failing one still hold e1's rows, once.
        stored = retrieve_results(root, {"result_type": "balance_sheet", "run_id": "e1", "output": "arrow"})
        assert count(cursor, "balance_sheet", "e1", "?") == stored.num_rows
        tokens = load_mode("eth_leveraged").results_store.dust_tracking_tokens
        assert count(cursor, "dust_tracking", "e1", "?") == 48 * len(tokens)
