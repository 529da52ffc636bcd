"""The pre-Alembic migrator, kept only to bring its databases up to the baseline.

Before revision ``0001`` the schema was migrated by an ordered list of steps, each recorded by
number in ``schema_version``. A database it made may stop at any step; the steps it lacks run
here (as they did then, except that missing tables come from the frozen baseline, not the
moving models), then the table goes and Alembic takes over from the baseline.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, text

from hutch.store.migrations._baseline import baseline_metadata

Step = Callable[[Connection], None]


def _create_missing_tables(conn: Connection) -> None:
    baseline_metadata().create_all(conn, checkfirst=True)


def _add_columns(table: str, columns: dict[str, str]) -> Step:
    """A step adding ``columns`` (name → SQL type) that ``table`` lacks (a database made after
    the column joined the models has it from its first step)."""

    def step(conn: Connection) -> None:
        have = {col["name"] for col in inspect(conn).get_columns(table)}
        for name, sql_type in columns.items():
            if name not in have:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))

    return step


#: Step ``n`` of the old list is ``STEPS[n - 1]``.
STEPS: list[Step] = [
    _create_missing_tables,
    _add_columns("sandboxes", {"stopped_at": "TIMESTAMP", "delete_after_stop_seconds": "INTEGER"}),
    _add_columns(
        "workspaces",
        {"max_sandboxes": "INTEGER", "max_cpu_millis": "INTEGER", "max_memory_bytes": "BIGINT"},
    ),
    # Rows made before the network mode were loopback-only.
    _add_columns("templates", {"network": "VARCHAR(16) NOT NULL DEFAULT 'none'"}),
    _add_columns("sandboxes", {"network": "VARCHAR(16) NOT NULL DEFAULT 'none'"}),
    _create_missing_tables,
    _add_columns(
        "sandboxes",
        {
            "snapshot_id": "VARCHAR(64)",
            "run_config": "TEXT",
            "labels": "TEXT",
            "fs_capacity_bytes": "BIGINT",
        },
    ),
    # Rows made before non-persistent sandboxes kept their files.
    _add_columns("sandboxes", {"persistent": "BOOLEAN NOT NULL DEFAULT TRUE"}),
]


def is_legacy(conn: Connection) -> bool:
    """The database was made by the old migrator and Alembic has not taken it over."""
    tables = set(inspect(conn).get_table_names())
    return "schema_version" in tables and "alembic_version" not in tables


def bring_to_baseline(conn: Connection) -> None:
    """Run the old steps ``conn``'s database lacks, then drop their bookkeeping."""
    done = {v for (v,) in conn.execute(text("SELECT version FROM schema_version"))}
    for number, step in enumerate(STEPS, start=1):
        if number not in done:
            step(conn)
    conn.execute(text("DROP TABLE schema_version"))
