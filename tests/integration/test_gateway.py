"""Gateways: NOINHERIT login roles that hold nothing and may SET ROLE to employees.

Probes log in AS the gateway. `gw` (a mixed-case role) and `org` are shared by the
module and never changed; tests that add or depart employees use `fresh_org`.
"""

from collections.abc import Iterator

import psycopg
import pytest
from org_fixture import Org, build_org, shared_org
from psycopg import errors, sql

from crmdb.db import as_role

CURRENT_ID = "SELECT crm.current_employee_id()"


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[Org]:
    for shared in shared_org(scratch):
        shared.add_gateway("Gateway")
        with shared.db.connect() as conn:
            # A role that exists but is no employee and was never granted to the gateway
            conn.execute(
                sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(shared.db.role("outsider")))
            )
        yield shared


@pytest.fixture(scope="module")
def gw(org) -> str:
    return org.db.role("Gateway")


@pytest.fixture(scope="module")
def superuser(org) -> str:
    with org.db.connect() as admin:
        return str(one(admin, "SELECT current_user"))


@pytest.fixture
def fresh_org(db) -> Org:
    """The standard org and a gateway in this test's own database: free to change."""
    org = build_org(db)
    org.add_gateway("Gateway")
    return org


def one(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def set_role(conn: psycopg.Connection, role: str, *, local: bool = False) -> None:
    stmt = "SET LOCAL ROLE {}" if local else "SET ROLE {}"
    conn.execute(sql.SQL(stmt).format(sql.Identifier(role)))


def assert_reaches_nothing(conn: psycopg.Connection) -> None:
    """The gateway's own privileges: not even USAGE on the crm schemas."""
    with pytest.raises(errors.InsufficientPrivilege, match="schema crm"):
        conn.execute(CURRENT_ID)
    with pytest.raises(errors.InsufficientPrivilege, match="schema crm"):
        conn.execute("SELECT count(*) FROM crm.customers")
    with pytest.raises(errors.InsufficientPrivilege, match="schema crm_private"):
        conn.execute("SELECT crm_private.employee_id_for(current_user)")


# The gateway on its own ---------------------------------------------------------


def test_gateway_alone_reaches_nothing(org, gw):
    with org.db.connect_as(gw) as conn:
        # Expect permission denied for schema crm: the gateway holds nothing itself
        assert_reaches_nothing(conn)


def test_gateway_role_is_noinherit_and_unprivileged(org, gw):
    with org.db.connect() as admin:
        row = admin.execute(
            "SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb,"
            " rolbypassrls, rolreplication FROM pg_roles WHERE rolname = %s",
            (gw,),
        ).fetchone()
    # Expect LOGIN NOINHERIT and no other attribute
    assert row == (True, False, False, False, False, False, False)


def test_gateway_inherits_no_schema_usage(org, gw):
    with org.db.connect() as admin:
        # Expect false: it holds every employee role, but NOINHERIT keeps their rights out
        assert one(admin, "SELECT has_schema_privilege(%s, 'crm', 'USAGE')", (gw,)) is False
        assert one(admin, "SELECT pg_has_role(%s, 'crmdb_employee', 'USAGE')", (gw,)) is False


def test_gateway_owns_and_is_granted_no_objects(org, gw):
    with org.db.connect() as admin:
        deps = admin.execute(
            "SELECT classid::regclass::text, objid, deptype FROM pg_shdepend"
            " WHERE refclassid = 'pg_authid'::regclass"
            " AND refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)",
            (gw,),
        ).fetchall()
    # Expect no owned object ('o') and no privilege on any object ('a')
    assert deps == []


def test_gateway_is_recorded(org, gw):
    with org.db.connect() as admin:
        # Expect the gateway in crm_private.gateways, so later employees are granted to it
        assert (
            one(admin, "SELECT count(*) FROM crm_private.gateways WHERE role_name = %s", (gw,)) == 1
        )


def test_gateway_holds_every_employee_role(org, gw):
    with org.db.connect() as admin:
        held = {
            r[0]
            for r in admin.execute(
                "SELECT e.role_name FROM crm.employees AS e"
                " WHERE pg_has_role(%s, e.role_name, 'MEMBER')",
                (gw,),
            )
        }
    # Expect all three employees
    assert held == {org.role("boss"), org.role("Rep_A"), org.role("rep_b")}


# SET ROLE ---------------------------------------------------------------------------


def test_set_role_gives_employee_identity(org, gw):
    with org.db.connect_as(gw) as conn:
        for name in ("boss", "Rep_A", "rep_b"):
            set_role(conn, org.role(name))
            # Expect that employee's id while acting as them
            assert one(conn, CURRENT_ID) == org.id(name)
            assert conn.execute("SELECT current_user, session_user").fetchone() == (
                org.role(name),
                gw,
            )


def test_reset_role_goes_back_to_nothing(org, gw):
    with org.db.connect_as(gw) as conn:
        set_role(conn, org.role("Rep_A"))
        assert one(conn, CURRENT_ID) == org.id("Rep_A")
        conn.execute("RESET ROLE")
        # Expect permission denied again after RESET ROLE
        assert_reaches_nothing(conn)


def test_set_local_role_ends_with_transaction(org, gw):
    with org.db.connect_as(gw, autocommit=False) as conn:
        with as_role(conn, org.role("Rep_A")):
            # Expect Rep_A's id inside crmdb.db.as_role
            assert one(conn, CURRENT_ID) == org.id("Rep_A")
        conn.autocommit = True
        # Expect nothing once the transaction has committed
        assert_reaches_nothing(conn)


def test_failed_set_role_to_non_employee_keeps_nothing(org, gw):
    with org.db.connect_as(gw) as conn:
        # Expect permission denied: the outsider role was never granted to the gateway
        with pytest.raises(errors.InsufficientPrivilege, match="set role"):
            set_role(conn, org.db.role("outsider"))
        # Expect still nothing afterwards (fail closed)
        assert_reaches_nothing(conn)


def test_failed_set_role_to_owner_or_superuser_keeps_nothing(org, gw, superuser):
    with org.db.connect_as(gw) as conn:
        for role in ("crmdb_owner", superuser):
            # Expect permission denied: only employee roles are granted to the gateway
            with pytest.raises(errors.InsufficientPrivilege):
                set_role(conn, role)
        assert_reaches_nothing(conn)


def test_set_role_to_group_role_gives_no_identity(org, gw):
    # The gateway holds the employee roles, and they hold crmdb_employee, so SET ROLE
    # crmdb_employee works through the chain (unless the grant has SET FALSE, PG 16+).
    with org.db.connect_as(gw) as conn:
        try:
            conn.execute("SET ROLE crmdb_employee")
        except errors.InsufficientPrivilege:
            return
        # Expect NULL: the group role is bound to no employee
        assert one(conn, CURRENT_ID) is None
        # Expect permission denied, not rows: crmdb_employee holds no table privileges
        with pytest.raises(errors.InsufficientPrivilege, match="customers"):
            conn.execute("SELECT count(*) FROM crm.customers")


def test_failed_set_local_role_aborts_the_transaction(org, gw):
    with org.db.connect_as(gw, autocommit=False) as conn:
        # Expect the failed SET LOCAL ROLE to abort the transaction ...
        with pytest.raises(errors.InsufficientPrivilege):
            set_role(conn, org.db.role("outsider"), local=True)
        # ... so nothing more runs in it (fail closed) ...
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        conn.autocommit = True
        # ... and after ROLLBACK the gateway is back to nothing
        assert_reaches_nothing(conn)


def test_failed_set_role_after_a_good_one_keeps_the_previous_role(org, gw):
    # PostgreSQL keeps the old setting when SET fails. A gateway that SET ROLEs at
    # session level must RESET ROLE (or use SET LOCAL ROLE in a transaction, as
    # crmdb.db.as_role does) before switching employee, or an error leaves it acting
    # as the previous one.
    with org.db.connect_as(gw) as conn:
        set_role(conn, org.role("Rep_A"))
        with pytest.raises(errors.InsufficientPrivilege):
            set_role(conn, org.db.role("outsider"))
        # Expect Rep_A still: the failed SET ROLE did not change the role
        assert one(conn, CURRENT_ID) == org.id("Rep_A")


def test_acting_employee_can_switch_to_any_other_employee(org, gw):
    # Design note: membership is the gateway's (session_user's), so SQL sent through a
    # gateway session can always switch employee. Gateways must not pass raw SQL.
    with org.db.connect_as(gw) as conn:
        set_role(conn, org.role("Rep_A"))
        # Expect rep_b's id from employee_id_for: this session may act as rep_b
        assert one(conn, "SELECT crm_private.employee_id_for(%s)", (org.role("rep_b"),)) == org.id(
            "rep_b"
        )
        set_role(conn, org.role("rep_b"))
        # Expect rep_b's id after switching
        assert one(conn, CURRENT_ID) == org.id("rep_b")


def test_set_session_authorization_is_refused(org, gw, superuser):
    with org.db.connect_as(gw) as conn:
        for role in (org.role("Rep_A"), superuser):
            # Expect permission denied: only superusers may SET SESSION AUTHORIZATION
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(role)))
        # Expect the session to still be the gateway, reaching nothing
        assert one(conn, "SELECT session_user") == gw
        assert_reaches_nothing(conn)


# Employees joining and leaving ------------------------------------------------------


def test_employee_added_after_gateway_is_reachable(fresh_org):
    fresh_org.add_employee("Late_C", "team-a", "boss", login=False)
    with fresh_org.db.connect_as(fresh_org.db.role("Gateway")) as conn:
        set_role(conn, fresh_org.role("Late_C"))
        # Expect Late_C's id: add_employee granted the new role to the gateway
        assert one(conn, CURRENT_ID) == fresh_org.id("Late_C")


def test_departed_employee_is_not_reachable(fresh_org):
    fresh_org.set_status("rep_b", "departed")
    with fresh_org.db.connect_as(fresh_org.db.role("Gateway")) as conn:
        # Expect permission denied: departing revoked rep_b from the gateway
        with pytest.raises(errors.InsufficientPrivilege, match="set role"):
            set_role(conn, fresh_org.role("rep_b"))
        # Expect still nothing afterwards (fail closed)
        assert_reaches_nothing(conn)
        set_role(conn, fresh_org.role("Rep_A"))
        # Expect colleagues to stay reachable
        assert one(conn, CURRENT_ID) == fresh_org.id("Rep_A")


def test_employee_departing_mid_session_loses_identity(fresh_org):
    with fresh_org.db.connect_as(fresh_org.db.role("Gateway")) as conn:
        set_role(conn, fresh_org.role("rep_b"))
        assert one(conn, CURRENT_ID) == fresh_org.id("rep_b")
        fresh_org.set_status("rep_b", "departed")
        # Expect NULL at the next statement, though the session still has rep_b set
        assert one(conn, CURRENT_ID) is None
        assert one(conn, "SELECT current_user") == fresh_org.role("rep_b")


def test_on_leave_employee_stays_reachable(fresh_org):
    fresh_org.set_status("rep_b", "on_leave")
    with fresh_org.db.connect_as(fresh_org.db.role("Gateway")) as conn:
        set_role(conn, fresh_org.role("rep_b"))
        # Expect rep_b's id: on_leave keeps access
        assert one(conn, CURRENT_ID) == fresh_org.id("rep_b")


def test_gateway_added_later_skips_departed_employees(fresh_org):
    fresh_org.set_status("rep_b", "departed")
    late = fresh_org.add_gateway("late_gw")
    with fresh_org.db.connect_as(late) as conn:
        # Expect permission denied: add_gateway grants active and on_leave staff only
        with pytest.raises(errors.InsufficientPrivilege):
            set_role(conn, fresh_org.role("rep_b"))
        set_role(conn, fresh_org.role("Rep_A"))
        # Expect Rep_A reachable through the new gateway
        assert one(conn, CURRENT_ID) == fresh_org.id("Rep_A")
