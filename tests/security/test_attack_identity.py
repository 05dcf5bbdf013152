"""Identity spoofing: acting as, or asking on behalf of, another employee.

Identity is current_user (crm.current_employee_id()); nothing a client sets may change
it. Direct logins must not reach a colleague's role; a gateway session that the app
hands to an employee must fail closed when its role is reset or a switch fails.
"""

import json

import psycopg
import pytest
from attack_org import ATTACKERS, VISIBLE, column, refused, rows
from psycopg import errors, sql

from crmdb.db import as_role

pytestmark = pytest.mark.attack("identity spoofing")

CURRENT_ID = "SELECT crm.current_employee_id()"
REACHING = ("rep_a", "mkt", "mgr_hn", "away")  # the gateway may act as them; not `gone`
VICTIMS = ("boss", "gone")  # a director who sees much, and a departed employee
HELPERS = {
    "employee_id_for": ("SELECT crm_private.employee_id_for(%s)", None),
    "subordinate_ids": ("SELECT crm_private.subordinate_ids(%s)", []),
    "org_unit_ids": ("SELECT crm_private.org_unit_ids(%s, true)", []),
    "project_ids": ("SELECT crm_private.project_ids(%s, 'director')", []),
    "has_template": ("SELECT crm_private.has_template(%s, 'director')", False),
    "shared_customer_ids": ("SELECT crm_private.shared_customer_ids(%s, false)", []),
}
VARIABLES = (
    "crm.employee_id",
    "crmdb.employee",
    "app.current_user",
    "request.jwt.claims",
    "application_name",
)


def me(attacker) -> int | None:
    """Who the attacker is: their id, NULL for the departed."""
    return None if attacker.key == "gone" else attacker.me


def identity(conn: psycopg.Connection) -> object:
    return column(conn, CURRENT_ID)[0]


def set_role(role: str, *, local: bool = False) -> sql.Composed:
    return sql.SQL("SET LOCAL ROLE {}" if local else "SET ROLE {}").format(sql.Identifier(role))


# Direct login ------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["boss", "gone", "crmdb_owner", "crmdb_employee"])
def test_set_role(attacker, victim):
    role = attacker.org.role(victim) if victim in ("boss", "gone") else victim
    conn = attacker.conn
    if victim == attacker.key:
        pytest.skip("a role may always SET ROLE to itself")
    # Expect permission denied: employees are members of no other employee's role, and
    # (PostgreSQL 16+) hold crmdb_employee WITH SET FALSE. On 15 SET ROLE crmdb_employee
    # works, and leaves no identity and no table privilege.
    if not refused(conn, set_role(role)):
        assert victim == "crmdb_employee"
        assert identity(conn) is None
        assert column(conn, "SELECT id FROM crm.customers") == []
    else:
        assert identity(conn) == me(attacker)


@pytest.mark.parametrize("template", ["director", "admin", "sales_rep"])
def test_set_role_to_template_role(attacker, template):
    conn = attacker.conn
    # Expect permission denied (16+: templates are granted WITH SET FALSE), or on 15,
    # for a template the attacker holds, a role bound to no employee: nothing visible
    if not refused(conn, set_role(f"crmdb_tpl_{template}")):
        assert column(conn, CURRENT_ID) in ([], [None])  # no schema USAGE, or no one
        assert column(conn, "SELECT id FROM crm.customers") == []


def test_set_session_authorization(attacker):
    query = sql.SQL("SET SESSION AUTHORIZATION {}").format(
        sql.Identifier(attacker.org.role("boss"))
    )
    # Expect permission denied: only superusers may
    assert refused(attacker.conn, query)


def test_set_config_role(attacker):
    query = "SELECT set_config('role', %s, false)"
    # Expect permission denied: set_config('role') is SET ROLE, with the same check
    assert refused(attacker.conn, query, (attacker.org.role("boss"),))
    assert identity(attacker.conn) == me(attacker)


@pytest.mark.parametrize("variable", VARIABLES)
def test_set_config_any_variable(attacker, variable):
    conn, org = attacker.conn, attacker.org
    before = set(column(conn, "SELECT id FROM crm.customers"))
    claims = json.dumps({"role": org.role("boss")})
    for value in (str(org.emp("boss")), org.role("boss"), claims):
        rows(conn, "SELECT set_config(%s, %s, false)", (variable, value))
        # Expect the same identity and the same rows: no setting is ever trusted
        assert identity(conn) == me(attacker)
        assert set(column(conn, "SELECT id FROM crm.customers")) == before


@pytest.mark.parametrize("victim", VICTIMS)
@pytest.mark.parametrize("helper", sorted(HELPERS))
def test_helper_with_colleague_name(attacker, helper, victim):
    query, nothing = HELPERS[helper]
    found = column(attacker.conn, query, (attacker.org.role(victim),))
    # Expect NULL / empty / false: helpers answer only for roles the session may act as
    assert found == [nothing]


@pytest.mark.parametrize("victim", VICTIMS)
def test_access_paths_with_colleague_name(attacker, victim):
    if victim == attacker.key:
        pytest.skip("one's own access paths may be explained")
    query = "SELECT * FROM crm_private.access_paths(%s, 'customers', %s)"
    # Expect permission denied: explain access only for roles the session may act as
    assert refused(attacker.conn, query, (attacker.org.role(victim), attacker.org.id("c5")))


def test_departed_session_has_no_identity(attack_org):
    with attack_org.db.connect_as(attack_org.role("gone")) as conn:
        # Expect NULL and nothing visible: a session that outlived the departure is no one
        assert identity(conn) is None
        assert column(conn, "SELECT id FROM crm.customers") == []
        assert (
            column(
                conn,
                "SELECT * FROM crm.explain_access('customers', %s)",
                (attack_org.id("x_gone"),),
            )
            == []
        )


@pytest.mark.parametrize("setting", ["role", "session_authorization"])
def test_alter_own_role_settings_then_log_in(attack_org, setting):
    role, boss = attack_org.role("rep_a"), attack_org.role("boss")
    statement = sql.SQL("ALTER ROLE {} SET {} = {}").format(
        sql.Identifier(role), sql.Identifier(setting), sql.Literal(boss)
    )
    try:
        with attack_org.db.connect_as(role) as conn:
            rows(conn, statement)  # an employee may set their own role's defaults
        with attack_org.db.connect_as(role) as conn:
            # Expect rep_a still: the setting is checked (or ignored) at login
            assert conn.execute("SELECT current_user, session_user").fetchone() == (role, role)
            assert identity(conn) == attack_org.emp("rep_a")
    finally:
        with attack_org.db.connect() as su:
            su.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(sql.Identifier(role)))


# Through a gateway ---------------------------------------------------------------------


def reaches_nothing(conn: psycopg.Connection) -> bool:
    """The gateway's own rights: not even USAGE on crm."""
    try:
        with conn.transaction():
            conn.execute(CURRENT_ID)
    except errors.InsufficientPrivilege as exc:
        return "schema crm" in str(exc)
    return False


@pytest.mark.parametrize("key", REACHING)
def test_gateway_reset_role(attack_org, gw, key):
    with as_role(gw, attack_org.role(key)):
        gw.execute("RESET ROLE")
        # Expect permission denied for schema crm: the gateway itself holds nothing
        assert reaches_nothing(gw)


@pytest.mark.parametrize("key", REACHING)
def test_gateway_set_role_none(attack_org, gw, key):
    with as_role(gw, attack_org.role(key)):
        gw.execute("SET ROLE NONE")
        assert reaches_nothing(gw)


@pytest.mark.parametrize("key", REACHING)
def test_gateway_failed_set_role_aborts_transaction(attack_org, gw, key):
    with pytest.raises(errors.InFailedSqlTransaction), as_role(gw, attack_org.role(key)):
        with pytest.raises(errors.InsufficientPrivilege):
            gw.execute(set_role(attack_org.role("gone"), local=True))
        # Expect no query to run after the failed switch: the transaction is aborted
        gw.execute("SELECT id FROM crm.customers")
    assert reaches_nothing(gw)


@pytest.mark.parametrize("target", ["gone", "crmdb_owner", "crmdb_tpl_admin"])
def test_gateway_failed_set_role_then_queries(attack_org, gw, target):
    role = attack_org.role(target) if target == "gone" else target
    # Expect permission denied (the departed were revoked from every gateway; 16+: an
    # employee's group roles are granted WITH SET FALSE; on 15 SET ROLE reaches a
    # template through an employee who holds it, a role with no identity and no USAGE
    # on crm) ...
    assert refused(gw, set_role(role)) or target == "crmdb_tpl_admin"
    # ... and the session still reaching nothing: it fails closed
    assert reaches_nothing(gw)


@pytest.mark.parametrize("key", REACHING)
def test_gateway_prepared_statement_reused_by_next_employee(attack_org, gw, key):
    statement = "SELECT id FROM crm.customers WHERE id > $1"
    gw.execute(set_role(attack_org.role("mkt")))
    gw.execute(f"PREPARE probe (bigint) AS {statement}")
    before = {r[0] for r in gw.execute("EXECUTE probe (0)")}
    gw.execute(set_role(attack_org.role(key)))
    after = {r[0] for r in gw.execute("EXECUTE probe (0)")}
    # Expect the next employee's rows, not those of whoever prepared it: PostgreSQL
    # re-plans a statement under row-level security when the role changes
    assert attack_org.customer_keys(after) == VISIBLE[key]
    assert before >= after


@pytest.mark.parametrize("key", REACHING)
def test_gateway_driver_prepared_statement_reused(attack_org, gw, key):
    query = "SELECT id FROM crm.customers WHERE id > %s"
    with as_role(gw, attack_org.role("mkt")):
        for _ in range(3):
            gw.execute(query, (0,), prepare=True)
    with as_role(gw, attack_org.role(key)):
        found = {r[0] for r in gw.execute(query, (0,), prepare=True)}
    assert attack_org.customer_keys(found) == VISIBLE[key]


@pytest.mark.parametrize("key", REACHING)
def test_gateway_cursor_does_not_outlive_transaction(attack_org, gw, key):
    with as_role(gw, attack_org.role("mkt")):
        gw.execute("DECLARE probe CURSOR FOR SELECT id FROM crm.customers")
    # Expect the cursor gone with mkt's transaction: the next employee cannot fetch
    with pytest.raises(errors.InvalidCursorName), as_role(gw, attack_org.role(key)):
        gw.execute("FETCH ALL FROM probe")


@pytest.mark.parametrize("key", REACHING)
def test_gateway_hold_cursor_closed_by_session_reset(attack_org, gw, key):
    with as_role(gw, attack_org.role("mkt")):
        gw.execute("DECLARE probe CURSOR WITH HOLD FOR SELECT id FROM crm.customers")
    # A WITH HOLD cursor outlives the transaction: gateways reset the session between
    # employees (DISCARD ALL, PgBouncer's server_reset_query), which closes it
    gw.execute("DISCARD ALL")
    with pytest.raises(errors.InvalidCursorName), as_role(gw, attack_org.role(key)):
        gw.execute("FETCH ALL FROM probe")


@pytest.mark.residual("SQL passed through a gateway may switch employee")
@pytest.mark.parametrize("key", ATTACKERS[:1])
def test_gateway_sql_can_switch_to_colleague(attack_org, gw, key):
    # PostgreSQL checks SET ROLE against the session's login (the gateway, a member of
    # every active employee), not against the current role: SQL an app passes through
    # unfiltered can act as anyone the gateway may. README: gateways must not pass raw
    # SQL (or use the set_user extension, which blocks SET ROLE after the switch).
    with as_role(gw, attack_org.role(key)):
        gw.execute(set_role(attack_org.role("boss"), local=True))
        assert identity(gw) == attack_org.emp("boss")
