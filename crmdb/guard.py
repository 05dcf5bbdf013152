"""crmdb_guard: the server library that refuses EXPLAIN to employees (ext/crmdb_guard)
and computes each caller's scope once per statement (its statement cache).

Row policies cannot hide what a plan shows: PostgreSQL may test a leakproof condition
(`id = 5`, `name < 'M'`) before the policies, and EXPLAIN ANALYZE then tells whether a
hidden row got that far; plain EXPLAIN estimates rows from statistics over hidden rows.
No SQL can refuse EXPLAIN, so a small C library does (a ProcessUtility hook), for every
role that has crmdb_employee's privileges. build() compiles it with PGXS against the
server's pg_config (gcc, make and the server headers are needed); enable() makes every
new session load it (session_preload_libraries and a reload: no restart).

The same library holds the statement cache (scope.c): install_statement_cache() creates
its functions in one database (sql/guard.sql), and crmdb policy apply then compiles the
row policies and crm_api views to share one call of each helper per statement
(crmdb/policies/statement_cache.py).
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from crmdb.errors import CrmdbError
from crmdb.queries import query
from crmdb.resources import resource_dir

LIBRARY = "crmdb_guard"
# PGXS would reuse the flags the server was built with, which may name warnings the
# local gcc does not know (the embedded wheel's do); PostgreSQL code needs the last two.
CFLAGS = "-O2 -Wall -Wmissing-prototypes -fno-strict-aliasing -fwrapv"


def build(pg_config: Path) -> Path:
    """Compile crmdb_guard for the server `pg_config` describes, in a new temporary
    folder; the path of the .so."""
    if not pg_config.is_file():
        raise CrmdbError(f"pg_config not found at {pg_config}")
    work = Path(tempfile.mkdtemp(prefix="crmdb-guard-"))
    build_dir = work / "build"
    shutil.copytree(resource_dir("ext") / LIBRARY, build_dir, dirs_exist_ok=True)
    result = subprocess.run(
        ["make", "-s", f"PG_CONFIG={pg_config}", f"CFLAGS={CFLAGS}"],
        cwd=build_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    library = build_dir / f"{LIBRARY}.so"
    if result.returncode != 0 or not library.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise CrmdbError(
            f"building {LIBRARY} with {pg_config} failed (needs gcc, make and the server"
            f" headers, e.g. postgresql-server-dev-NN):\n{tail}"
        )
    # The server runs as its own user: it must reach the folder and read the library.
    for path in (work, build_dir):
        path.chmod(0o755)
    library.chmod(0o644)
    return library


def enable(conn: psycopg.Connection, library: Path | str = LIBRARY) -> None:
    """Load `library` (a name in the server's $libdir, or an absolute path) in every new
    session, keeping the libraries already listed. `conn`: superuser, autocommit."""
    row = conn.execute(query("session_preload_libraries")).fetchone()
    # SHOW quotes the entries that need it ("/path/x.so"); paths hold no commas.
    listed = [name.strip().strip('"') for name in (row[0] if row else "").split(",")]
    wanted = [name for name in listed if name and Path(name).stem != LIBRARY]
    wanted.append(str(library))
    libraries = sql.SQL(", ").join(sql.Literal(name) for name in wanted)
    conn.execute(query("set_session_preload_libraries").format(libraries=libraries))
    conn.execute(query("reload_conf"))


def install_statement_cache(conn: psycopg.Connection, library: Path | str = LIBRARY) -> None:
    """Create (or replace) the statement cache's functions in conn's database
    (sql/guard.sql), bound to `library` (a name in $libdir, or an absolute path).
    `conn`: superuser. The next crmdb policy apply compiles for it."""
    conn.execute(
        query("install_statement_cache", "guard.sql").format(library=sql.Literal(str(library)))
    )


def statement_cache_installed(conn: psycopg.Connection) -> bool:
    """Whether conn's database has the statement cache's functions."""
    row = conn.execute(query("statement_cache_installed", "guard.sql")).fetchone()
    return bool(row and row[0])


def loaded(conn: psycopg.Connection) -> bool:
    """Whether this session loaded crmdb_guard."""
    row = conn.execute(query("guard_loaded")).fetchone()
    return bool(row and row[0])


def pg_config_value(pg_config: Path, flag: str) -> str:
    if not pg_config.is_file():
        raise CrmdbError(f"pg_config not found at {pg_config}")
    result = subprocess.run([str(pg_config), flag], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise CrmdbError(f"{pg_config} {flag} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def install(conn: psycopg.Connection, pg_config: Path, folder: Path | None = None) -> Path:
    """Build crmdb_guard against `pg_config`, copy it into `folder` (default: the
    server's library folder) and load it in every new session, by name from the
    library folder, else by absolute path. The server must run on this machine, with
    the major version of `pg_config`. `conn`: superuser, autocommit."""
    built = pg_config_value(pg_config, "--version").split()[-1]  # "PostgreSQL 18.1"
    server = conn.info.server_version // 10000
    if built.split(".")[0] != str(server):
        raise CrmdbError(f"{pg_config} is PostgreSQL {built}, the server is {server}")
    library = build(pg_config)
    by_name = folder is None
    folder = Path(pg_config_value(pg_config, "--pkglibdir")) if folder is None else folder
    installed = folder / library.name
    try:
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        # A new file renamed over the old one: running sessions have the old one mapped,
        # and writing into it in place would crash them.
        staged = folder / f".{library.name}.{os.getpid()}"
        shutil.copyfile(library, staged)
        staged.chmod(0o755)
        os.replace(staged, installed)
    except OSError as exc:
        raise CrmdbError(f"cannot install {library.name} into {folder}: {exc}") from None
    enable(conn, LIBRARY if by_name else installed)
    install_statement_cache(conn, LIBRARY if by_name else installed)
    return installed
