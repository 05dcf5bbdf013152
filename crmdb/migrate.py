"""Schema migrations with yoyo (postgresql+psycopg backend).

yoyo connects with the same libpq parameters as crmdb.db (passed as URI arguments),
so socket directories, sslmode and the rest behave the same everywhere.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import DatabaseURI
from yoyo.migrations import MigrationList

from crmdb.db import Target, connect, server_error
from crmdb.errors import CrmdbError
from crmdb.queries import query
from crmdb.resources import resource_dir

MIGRATION_TABLE = "_yoyo_migration"


@dataclass(frozen=True)
class MigrationState:
    id: str
    applied_at: datetime | None


def _migrations() -> MigrationList:
    return read_migrations(str(resource_dir("migrations")))


@contextmanager
def _backend(target: Target) -> Iterator[PostgresqlPsycopgBackend]:
    connect(target).close()  # one clear error line if the server is unreachable
    uri = DatabaseURI(
        scheme="postgresql+psycopg",
        username=None,
        password=None,
        hostname=None,
        port=None,
        database=None,
        args=target.params(),
    )
    backend = PostgresqlPsycopgBackend(uri, MIGRATION_TABLE)
    try:
        backend.init_database()
        with backend.lock():
            yield backend
    except psycopg.Error as exc:
        raise CrmdbError(f"migration failed, nothing was changed: {server_error(exc)}") from None
    finally:
        backend.connection.close()


def apply(target: Target) -> list[str]:
    """Apply every pending migration, each in its own transaction; return their ids."""
    with _backend(target) as backend:
        pending = backend.to_apply(_migrations())
        backend.apply_migrations(pending)
        return [m.id for m in pending]


def rollback(target: Target, count: int | None = 1) -> list[str]:
    """Roll back the newest `count` applied migrations (all with None); return their ids."""
    with _backend(target) as backend:
        to_rollback = backend.to_rollback(_migrations())
        if count is not None:
            to_rollback = to_rollback[:count]
        backend.rollback_migrations(to_rollback)
        return [m.id for m in to_rollback]


def status(target: Target) -> list[MigrationState]:
    """Every known migration with when it was applied (None if pending)."""
    with connect(target) as conn:
        try:
            rows = conn.execute(query("applied_migrations")).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []
    applied = {migration_id: at for migration_id, at in rows}
    return [MigrationState(m.id, applied.get(m.id)) for m in _migrations()]
