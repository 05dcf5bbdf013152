"""Identity: crm.current_employee_id() is the employee bound to current_user, nothing else.

Probes connect AS the employee (direct login) or SET ROLE from a superuser session,
and check both what the role may learn and what it must not. `org` is shared by the
module and never changed; tests that change an employee's status use `fresh_org`.
"""

import contextlib
import time
from collections.abc import Iterator

import psycopg
import pytest
from org_fixture import Org, build_org, shared_org
from psycopg import errors, sql

from crmdb.db import as_role

CURRENT_ID = "SELECT crm.current_employee_id()"
ID_FOR = "SELECT crm_private.employee_id_for(%s)"


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[Org]:
    yield from shared_org(scratch)


@pytest.fixture
def fresh_org(db) -> Org:
    """The standard org in this test's own database: free to change."""
    return build_org(db)


@pytest.fixture
def rep_a(org) -> str:
    """Mixed-case role name: quoting bugs show up here."""
    return org.role("Rep_A")


@pytest.fixture
def rep_b(org) -> str:
    return org.role("rep_b")


def one(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def set_role(conn: psycopg.Connection, role: str, *, local: bool = False) -> None:
    stmt = "SET LOCAL ROLE {}" if local else "SET ROLE {}"
    conn.execute(sql.SQL(stmt).format(sql.Identifier(role)))


# Direct login -------------------------------------------------------------------


def test_direct_login_identity_is_own_id(org, rep_a):
    with org.connect_as("Rep_A") as conn:
        # Expect Rep_A's id: the login role is bound to Rep_A
        assert one(conn, CURRENT_ID) == org.id("Rep_A")
        assert one(conn, "SELECT current_user") == rep_a


def test_direct_login_other_employee_sees_own_id_not_rep_a(org):
    with org.connect_as("rep_b") as conn:
        # Expect rep_b's id, not Rep_A's
        assert one(conn, CURRENT_ID) == org.id("rep_b")
        assert org.id("rep_b") != org.id("Rep_A")


def test_superuser_has_no_identity(org):
    with org.db.connect() as conn:
        # Expect NULL: the superuser is not an employee
        assert one(conn, CURRENT_ID) is None


def test_employee_id_for_own_role(org, rep_a):
    with org.connect_as("Rep_A") as conn:
        # Expect Rep_A's id: a session may ask about the role it is
        assert one(conn, ID_FOR, (rep_a,)) == org.id("Rep_A")


def test_employee_id_for_colleague_is_null(org, rep_b):
    with org.connect_as("Rep_A") as conn:
        # Expect NULL: Rep_A cannot learn rep_b's id by passing rep_b's role name
        assert one(conn, ID_FOR, (rep_b,)) is None
        # Expect NULL: nor their manager's
        assert one(conn, ID_FOR, (org.role("boss"),)) is None


def test_employee_id_for_unknown_role_is_null(org):
    with org.connect_as("Rep_A") as conn:
        # Expect NULL (not an error): no employee is bound to this name
        assert one(conn, ID_FOR, (org.role("nobody"),)) is None


def test_custom_gucs_do_not_change_identity(org):
    with org.connect_as("Rep_A") as conn:
        conn.execute("SELECT set_config('crmdb.employee', %s, false)", (str(org.id("rep_b")),))
        conn.execute("SELECT set_config('crmdb.employee_id', %s, false)", (str(org.id("rep_b")),))
        conn.execute("SELECT set_config('app.user_id', %s, false)", (str(org.id("boss")),))
        conn.execute("SELECT set_config('request.jwt.claim.sub', %s, false)", (org.role("boss"),))
        # Expect Rep_A's id still: identity is current_user, never a settable GUC
        assert one(conn, CURRENT_ID) == org.id("Rep_A")


def test_employee_cannot_set_role_to_colleague(org, rep_b):
    with org.connect_as("Rep_A") as conn:
        # Expect permission denied: Rep_A is not a member of rep_b
        with pytest.raises(errors.InsufficientPrivilege):
            set_role(conn, rep_b)
        # Expect permission denied through set_config('role') as well
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT set_config('role', %s, false)", (rep_b,))
        # Expect Rep_A's id: the failed attempts changed nothing
        assert one(conn, CURRENT_ID) == org.id("Rep_A")


def test_employee_cannot_set_role_to_owner(org):
    # Expect permission denied: crmdb_owner is never granted to an employee
    with org.connect_as("Rep_A") as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SET ROLE crmdb_owner")


def test_set_role_to_group_role_has_no_identity(org):
    with org.connect_as("Rep_A") as conn:
        if org.db.cluster.version_num >= 160000:
            # Expect a refusal on 16+: the membership is granted WITH SET FALSE
            with pytest.raises(
                psycopg.errors.InsufficientPrivilege,
                match='permission denied to set role "crmdb_employee"',
            ):
                conn.execute("SET ROLE crmdb_employee")
            return
        # On 15 members may SET ROLE to the group ...
        conn.execute("SET ROLE crmdb_employee")
        # ... Expect NULL: the group role is bound to no employee
        assert one(conn, CURRENT_ID) is None


# SET ROLE from a privileged session -------------------------------------------


def test_set_role_gives_identity_and_reset_removes_it(org, rep_a):
    with org.db.connect() as conn:
        set_role(conn, rep_a)
        # Expect Rep_A's id after SET ROLE
        assert one(conn, CURRENT_ID) == org.id("Rep_A")
        conn.execute("RESET ROLE")
        # Expect NULL after RESET ROLE: back to the superuser
        assert one(conn, CURRENT_ID) is None


def test_set_local_role_reverts_after_commit(org, rep_b):
    with org.db.connect(autocommit=False) as conn:
        with conn.transaction():
            set_role(conn, rep_b, local=True)
            # Expect rep_b's id inside the transaction
            assert one(conn, CURRENT_ID) == org.id("rep_b")
        # Expect NULL after COMMIT: SET LOCAL ended with the transaction
        assert one(conn, CURRENT_ID) is None
        conn.rollback()


def test_as_role_helper_scopes_identity_to_the_transaction(org, rep_a):
    with org.db.connect(autocommit=False) as conn:
        with as_role(conn, rep_a):
            # Expect Rep_A's id inside crmdb.db.as_role (quoting of a mixed-case name)
            assert one(conn, CURRENT_ID) == org.id("Rep_A")
        # Expect NULL once the as_role transaction has ended
        assert one(conn, CURRENT_ID) is None
        conn.rollback()


def test_set_local_role_reverts_after_rollback(org, rep_a):
    with org.db.connect(autocommit=False) as conn:
        set_role(conn, rep_a, local=True)
        assert one(conn, CURRENT_ID) == org.id("Rep_A")
        conn.rollback()
        # Expect NULL after ROLLBACK
        assert one(conn, CURRENT_ID) is None
        conn.rollback()


# Status -------------------------------------------------------------------------


def test_on_leave_employee_keeps_identity(fresh_org):
    fresh_org.set_status("rep_b", "on_leave")
    with fresh_org.connect_as("rep_b") as conn:
        # Expect rep_b's id: on_leave keeps access
        assert one(conn, CURRENT_ID) == fresh_org.id("rep_b")


def test_departed_employee_cannot_log_in(fresh_org):
    fresh_org.set_status("rep_b", "departed")
    # Expect the connection to be refused: departed roles are NOLOGIN
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        fresh_org.connect_as("rep_b")


def test_departed_employee_has_no_identity_under_set_role(db, fresh_org):
    fresh_org.set_status("rep_b", "departed")
    with db.connect() as conn:
        set_role(conn, fresh_org.role("rep_b"))
        # Expect NULL: departed staff have no identity even where SET ROLE still works
        assert one(conn, CURRENT_ID) is None
        assert one(conn, "SELECT current_user") == fresh_org.role("rep_b")


def test_departing_ends_open_sessions(db, fresh_org):
    conn = fresh_org.connect_as("rep_b")
    pid = one(conn, "SELECT pg_backend_pid()")
    fresh_org.set_status("rep_b", "departed")
    with db.connect() as admin:
        # Expect the session to survive the uncommitted-then-committed status change
        # alone: ending sessions is a separate step, after commit
        assert one(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 1
        other = db.connect()  # a colleague's session must not be touched
        assert one(admin, "SELECT crm_admin.end_sessions(%s)", (fresh_org.role("rep_b"),)) == 1
        deadline = time.monotonic() + 10
        while one(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)):
            assert time.monotonic() < deadline, "the departed employee's session is still open"
            time.sleep(0.05)
    # Expect the open session to be gone, and only that one
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    assert one(other, "SELECT 1") == 1
    other.close()


def test_departed_status_does_not_affect_colleagues(fresh_org):
    fresh_org.set_status("rep_b", "departed")
    with fresh_org.connect_as("Rep_A") as conn:
        # Expect Rep_A's id: only rep_b lost their identity
        assert one(conn, CURRENT_ID) == fresh_org.id("Rep_A")


# No privileges yet ---------------------------------------------------------------


def test_employee_cannot_read_customers(org):
    project = org.add_project("identity-probe")
    org.add_customer(project, "Owned by Rep_A", owner="Rep_A")
    # Expect permission denied, not rows: no template grants anything yet,
    # not even the customer Rep_A owns
    with (
        org.connect_as("Rep_A") as conn,
        pytest.raises(errors.InsufficientPrivilege, match="customers"),
    ):
        conn.execute("SELECT * FROM crm.customers").fetchall()


def test_employee_has_no_table_privileges_anywhere(org, rep_a):
    with org.db.connect() as admin:
        tables = [
            r[0]
            for r in admin.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                " WHERE schemaname IN ('crm', 'crm_private', 'crm_admin') ORDER BY 1"
            )
        ]
        granted = admin.execute(
            "SELECT t FROM unnest(%s::text[]) AS t"
            " WHERE has_table_privilege(%s, t, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')",
            (tables, rep_a),
        ).fetchall()
    # Expect no privilege on any crm table (catalog view of the same fact), but for
    # crm.notifications and crm.exports: every employee reads their own (fixed policies
    # crmdb_employee_own)
    assert "crm.customers" in tables and "crm_private.manager_tree" in tables
    assert granted == [("crm.exports",), ("crm.notifications",)]
    with org.connect_as("Rep_A") as conn:
        leaked = {}
        for table in tables:
            with contextlib.suppress(errors.InsufficientPrivilege):
                leaked[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    # Expect every SELECT to be refused (no table answers, not even with 0 rows), but
    # the notifications and exports, which answer with Rep_A's own: none
    assert leaked == {"crm.exports": (0,), "crm.notifications": (0,)}


def test_employee_cannot_execute_admin_api(org):
    with org.connect_as("Rep_A") as conn:
        # Expect permission denied: crm_admin is for DBAs and the CLI
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT crm_admin.set_employee_status(current_user, 'on_leave')")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT crm_admin.add_employee('x', 'X', 'x@example.test', 'sales')")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT crm_admin.add_gateway('x')")


def test_employee_cannot_call_private_helpers(org):
    with org.connect_as("Rep_A") as conn:
        # Expect permission denied: only the two identity functions are granted
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT crm_private.acting_role()")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT crm_private.employee_by_role(current_user)")


def test_employee_cannot_write_change_log(org, rep_a):
    with org.connect_as("Rep_A") as conn:
        # Expect permission denied: the audit trail is written by triggers only
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,"
                " actor_role) VALUES ('customers', 1, 'INSERT', '{}', %s)",
                (rep_a,),
            )
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM crm.change_log")
    with org.db.connect() as admin:
        # Expect no forged row from Rep_A
        assert (
            one(admin, "SELECT count(*) FROM crm.change_log WHERE actor_role = %s", (rep_a,)) == 0
        )
