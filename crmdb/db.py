"""The one way crmdb reaches PostgreSQL.

A Target is where to connect: --dsn, else CRMDB_DSN, else DATABASE_URL, else the
embedded server (started or reused on demand). connect() turns driver errors into
one-line CrmdbErrors that never show a password.
"""

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from crmdb.errors import CrmdbError
from crmdb.queries import query

ENV_VARS = ("CRMDB_DSN", "DATABASE_URL")
EMBEDDED_DBNAME = "crmdb"


@dataclass(frozen=True)
class Target:
    """A database to connect to, and where that choice came from."""

    conninfo: str
    source: str  # "--dsn", "CRMDB_DSN", "DATABASE_URL" or "embedded"
    embedded_dir: Path | None = None

    def params(self) -> dict[str, str]:
        return {k: str(v) for k, v in conninfo_to_dict(self.conninfo).items()}

    def describe(self) -> str:
        """host, database and user, without the password."""
        p = self.params()
        host = p.get("host") or os.environ.get("PGHOST") or "local socket"
        port = p.get("port") or os.environ.get("PGPORT") or "5432"
        dbname = p.get("dbname") or os.environ.get("PGDATABASE") or p.get("user") or "(default)"
        user = p.get("user") or os.environ.get("PGUSER") or "(default)"
        where = f"host={host} port={port} dbname={dbname} user={user}"
        if self.embedded_dir is not None:
            where += f" (embedded PostgreSQL, data in {self.embedded_dir})"
        return where

    def with_params(self, **params: str) -> "Target":
        """The same target with some connection parameters replaced."""
        return Target(make_conninfo(self.conninfo, **params), self.source, self.embedded_dir)


def parse_dsn(dsn: str, source: str) -> str:
    """Validate a DSN (URI or key=value) and return it; CrmdbError names the source."""
    if "://" in dsn and not dsn.startswith(("postgresql://", "postgres://")):
        scheme = dsn.split("://", 1)[0]
        raise CrmdbError(
            f"invalid DSN in {source}: scheme {scheme!r} is not supported; "
            "use postgresql://user@host:port/dbname or 'host=... dbname=...'"
        )
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise CrmdbError(f"invalid DSN in {source}: {_first_line(exc)}") from None
    return dsn


def resolve_target(dsn: str | None, env: Mapping[str, str] = os.environ) -> Target:
    """--dsn, else CRMDB_DSN, else DATABASE_URL, else the embedded server."""
    if dsn:
        return Target(parse_dsn(dsn, "--dsn"), "--dsn")
    for var in ENV_VARS:
        if env.get(var):
            return Target(parse_dsn(env[var], var), var)
    from crmdb.servers.embedded import default_embedded_target

    return default_embedded_target()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    line = lines[0] if lines else exc.__class__.__name__
    return line.removeprefix("connection is bad: ")


def connect(target: Target, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a connection; unreachable servers and refused logins become CrmdbError."""
    try:
        return psycopg.connect(target.conninfo, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise CrmdbError(
            f"cannot connect to {target.describe()} (from {target.source}): {_first_line(exc)}"
        ) from None


def server_error(exc: psycopg.Error) -> CrmdbError:
    """A database error as one line: the server's message and, if any, its detail."""
    diag = exc.diag
    message = diag.message_primary or _first_line(exc)
    # "Failing row contains (...)" would print a whole row, sensitive fields included.
    if diag.message_detail and not diag.message_detail.startswith("Failing row contains"):
        message += f" ({diag.message_detail})"
    return CrmdbError(message)


@contextmanager
def as_role(conn: psycopg.Connection, role: str) -> Iterator[psycopg.Connection]:
    """Run a transaction as `role` with SET LOCAL ROLE, as a gateway/pooler would.

    The role is reset when the transaction ends, whatever happens inside.
    """
    with conn.transaction():
        conn.execute(query("set_local_role").format(role=sql.Identifier(role)))
        yield conn
