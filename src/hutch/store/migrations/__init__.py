"""Schema migrations (Alembic), shipped in the package and run by ``Database.migrate``.

Revisions live in ``versions/``; ``0001`` is the frozen baseline. A database made by the
pre-Alembic migrator (a ``schema_version`` table, no ``alembic_version``) is first brought to
the baseline by its old steps, then stamped, then upgraded like any other. Callers hold the
migration lock (see ``hutch.store._db``): this module only runs on the connection it is given.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from hutch.store.migrations import _legacy

BASELINE = "0001"
_SCRIPTS = Path(__file__).parent


def _config(conn: Connection | None = None) -> Config:
    # No alembic.ini: the script directory is this package, the connection the caller's.
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = conn
    return config


def head() -> str:
    """The newest revision (what a migrated database records)."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def upgrade(conn: Connection) -> None:
    """Bring ``conn``'s database to the newest revision (a fresh one from nothing)."""
    config = _config(conn)
    if _legacy.is_legacy(conn):
        _legacy.bring_to_baseline(conn)
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")
