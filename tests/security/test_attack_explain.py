"""EXPLAIN: the plan of a query tells what row-level security hides.

PostgreSQL may test a leakproof condition (`id = N`, `phone < 'x'`) before the row
policies; EXPLAIN ANALYZE shows whether a row got past it (a policy's sub-plan ran or
never did), so a SQL login could bisect any field of any row, and plain EXPLAIN shows
estimates drawn from statistics over hidden rows. crmdb_guard (ext/crmdb_guard, loaded
in every session) refuses EXPLAIN to every role with crmdb_employee's privileges. These
attempts need it loaded; on a server where it is not, they skip, saying why.
"""

import psycopg
import pytest
from attack_org import ATTACKERS, refused, rows
from psycopg import errors, sql

from crmdb.db import as_role
from crmdb.testing.scratch import TEST_PASSWORD

pytestmark = [pytest.mark.attack("side channels"), pytest.mark.usefixtures("crmdb_guard")]

TARGET_QUERY = "SELECT id FROM crm.customers WHERE id = {id} AND full_name < 'M'"
FORMS = {
    "plain": "EXPLAIN {q}",
    "analyze": "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) {q}",
    "generic plan": "EXPLAIN (GENERIC_PLAN) SELECT id FROM crm.customers WHERE id = $1",
    "json": "EXPLAIN (FORMAT JSON, VERBOSE) {q}",
    "in a DO block": "DO $$ BEGIN EXECUTE 'EXPLAIN ANALYZE {q2}'; END $$",
}


def explain_form(form: str, target: int) -> str:
    query = TARGET_QUERY.format(id=target)
    return FORMS[form].format(q=query, q2=query.replace("'", "''"))


@pytest.mark.parametrize("form", sorted(FORMS))
def test_explain_refused(attacker, form):
    if form == "generic plan" and attacker.conn.info.server_version < 160000:
        pytest.skip("EXPLAIN (GENERIC_PLAN) is PostgreSQL 16+")
    # Expect insufficient_privilege, whatever the form, for every employee
    assert refused(attacker.conn, explain_form(form, attacker.target))


def test_explain_execute_of_a_prepared_statement_refused(attacker):
    rows(attacker.conn, "PREPARE probe AS " + TARGET_QUERY.format(id=attacker.target))
    assert refused(attacker.conn, "EXPLAIN (ANALYZE) EXECUTE probe")


def test_explain_in_own_function_refused(attacker):
    rows(
        attacker.conn,
        "CREATE FUNCTION pg_temp.plan(q text) RETURNS SETOF text LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN QUERY EXECUTE 'EXPLAIN ANALYZE ' || q; END $$",
    )
    query = TARGET_QUERY.format(id=attacker.target)
    assert refused(attacker.conn, "SELECT * FROM pg_temp.plan(%s)", (query,))


@pytest.mark.parametrize(
    "statement",
    [
        "SET session_preload_libraries = ''",
        "SET crmdb_guard.version = '0'",
        "LOAD 'auto_explain'",
    ],
    ids=["unload", "marker", "auto_explain"],
)
def test_guard_cannot_be_turned_off(attacker, statement):
    # Expect a refusal (privilege, or a read-only setting), and the guard still on
    with pytest.raises(psycopg.Error), attacker.conn.transaction():
        attacker.conn.execute(statement)
    assert refused(attacker.conn, explain_form("analyze", attacker.target))


# Through a gateway, and who keeps EXPLAIN ---------------------------------------------


@pytest.mark.parametrize("key", [k for k in ATTACKERS if k != "gone"])
def test_explain_after_set_role_through_a_gateway_refused(attack_org, gw, key):
    with as_role(gw, attack_org.role(key)):
        assert refused(gw, explain_form("analyze", attack_org.id("c3")))


def test_dba_and_worker_keep_explain(attack_org):
    worker = attack_org.db.role("explain_worker")
    with attack_org.db.connect() as conn:
        conn.execute(
            sql.SQL(
                "CREATE ROLE {} LOGIN PASSWORD {}; GRANT crmdb_owner, crmdb_worker TO {}"
            ).format(sql.Identifier(worker), sql.Literal(TEST_PASSWORD), sql.Identifier(worker))
        )
        assert rows(conn, explain_form("analyze", attack_org.id("c3")))
        # A superuser's session may look at an employee's plan
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(attack_org.role("rep_a"))))
        assert rows(conn, explain_form("plain", attack_org.id("c3")))
        conn.execute("RESET ROLE")
    # The worker holds every employee role NOINHERIT: not an employee's privileges
    with attack_org.db.connect_as(worker) as conn:
        assert rows(conn, explain_form("analyze", attack_org.id("c3")))
        with pytest.raises(errors.InsufficientPrivilege, match="crmdb employees"):
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(attack_org.role("rep_a"))))
            conn.execute(explain_form("plain", attack_org.id("c3")))
