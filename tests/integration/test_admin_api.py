"""The admin API (crm_admin.*): happy paths, clear errors, and failures that change nothing.

The module shares one database (the standard org, a gateway and project p1 with the
marketing solution only). Each test runs as the superuser inside a transaction that
is rolled back at the end (CREATE ROLE is transactional too), so tests cannot see
each other's changes. Error probes run in a savepoint so the test can go on.
"""

from collections.abc import Iterator

import psycopg
import pytest
from org_fixture import ADD_EMPLOYEE, Org, shared_org
from psycopg import errors, sql

from crmdb.testing.scratch import TEST_PASSWORD


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[Org]:
    for shared in shared_org(scratch):
        shared.add_gateway("Gw")
        shared.add_project("p1", ("marketing",))
        yield shared


@pytest.fixture
def conn(org) -> Iterator[psycopg.Connection]:
    """A superuser transaction, rolled back after the test."""
    with org.db.connect(autocommit=False) as c:
        c.execute("SELECT 1")  # open the transaction: conn.transaction() is a savepoint
        yield c
        c.rollback()


def one(conn: psycopg.Connection, query: str, params: object = None) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def refused(
    conn: psycopg.Connection, exc: type[Exception], match: str, query: str, params: object = None
) -> None:
    """Run `query` in a savepoint and expect it to fail with `exc` matching `match`."""
    with pytest.raises(exc, match=match), conn.transaction():
        conn.execute(query, params)


def add_employee(
    conn: psycopg.Connection,
    role: str,
    *,
    unit: str = "team-a",
    manager: str | None = None,
    email: str | None = None,
    login: bool = False,
) -> int:
    return int(
        one(
            conn,
            ADD_EMPLOYEE,
            {  # type: ignore[arg-type]
                "role": role,
                "name": "New Hire",
                "email": email or f"{role}@example.test",
                "unit": unit,
                "manager": manager,
                "login": login,
                "pw": TEST_PASSWORD if login else None,
            },
        )
    )


def add_employee_sql(role: str, unit: str = "team-a", manager: str | None = None) -> tuple:
    return ADD_EMPLOYEE, {
        "role": role,
        "name": "New Hire",
        "email": f"{role}@example.test",
        "unit": unit,
        "manager": manager,
        "login": False,
        "pw": None,
    }


def role_exists(conn: psycopg.Connection, role: str) -> bool:
    return bool(one(conn, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (role,)))


def create_role(conn: psycopg.Connection, role: str, options: str = "") -> None:
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN " + options).format(sql.Identifier(role)))


# add_org_unit ------------------------------------------------------------------------


def test_add_org_unit(conn):
    unit_id = one(
        conn, "SELECT crm_admin.add_org_unit('team-c', 'Team C', 'team', 'sales', 'Europe/Berlin')"
    )
    row = conn.execute(
        "SELECT u.code, u.name, u.kind::text, p.code, u.timezone FROM crm.org_units AS u"
        " JOIN crm.org_units AS p ON p.id = u.parent_id WHERE u.id = %s",
        (unit_id,),
    ).fetchone()
    # Expect the unit under sales, with its time zone
    assert row == ("team-c", "Team C", "team", "sales", "Europe/Berlin")
    ancestors = conn.execute(
        "SELECT u.code, t.depth FROM crm_private.org_unit_tree AS t"
        " JOIN crm.org_units AS u ON u.id = t.ancestor_id"
        " WHERE t.descendant_id = %s ORDER BY t.depth",
        (unit_id,),
    ).fetchall()
    # Expect the closure to list itself, sales and hq
    assert ancestors == [("team-c", 0), ("sales", 1), ("hq", 2)]


def test_add_org_unit_default_time_zone(conn):
    unit_id = one(conn, "SELECT crm_admin.add_org_unit('branch-x', 'Branch X', 'branch', 'hq')")
    # Expect Asia/Ho_Chi_Minh by default
    assert (
        one(conn, "SELECT timezone FROM crm.org_units WHERE id = %s", (unit_id,))
        == "Asia/Ho_Chi_Minh"
    )


def test_add_org_unit_unknown_parent(conn):
    # Expect 'unknown org unit "nowhere"'
    refused(
        conn,
        errors.NoDataFound,
        'unknown org unit "nowhere"',
        "SELECT crm_admin.add_org_unit('team-c', 'Team C', 'team', 'nowhere')",
    )
    # Expect no unit added
    assert one(conn, "SELECT count(*) FROM crm.org_units WHERE code = 'team-c'") == 0


def test_add_org_unit_unknown_time_zone(conn):
    # Expect the time zone to be refused by name
    refused(
        conn,
        errors.InvalidParameterValue,
        'time zone "Mars/Olympus_Mons" not recognized',
        "SELECT crm_admin.add_org_unit('team-c', 'Team C', 'team', 'sales', 'Mars/Olympus_Mons')",
    )
    assert one(conn, "SELECT count(*) FROM crm.org_units WHERE code = 'team-c'") == 0


def test_add_org_unit_duplicate_code(conn):
    # Expect a unique violation on the code
    refused(
        conn,
        errors.UniqueViolation,
        "org_units_code_key",
        "SELECT crm_admin.add_org_unit('team-a', 'Again', 'team', 'sales')",
    )


def test_add_org_unit_bad_code(conn):
    # Expect the code's pattern check to refuse upper case and spaces
    refused(
        conn,
        errors.CheckViolation,
        "org_units_code_check",
        "SELECT crm_admin.add_org_unit('Team C', 'Team C', 'team', 'sales')",
    )


# add_employee ------------------------------------------------------------------------


def test_add_employee_creates_role_and_row(org, conn):
    role = org.db.role("New_Hire")
    emp_id = add_employee(conn, role, manager=org.role("Rep_A"))
    row = conn.execute(
        "SELECT r.rolcanlogin, r.rolinherit, pg_has_role(r.oid, 'crmdb_employee', 'MEMBER'),"
        " e.status::text, u.code, m.role_name"
        " FROM crm.employees AS e JOIN pg_roles AS r ON r.rolname = e.role_name"
        " JOIN crm.org_units AS u ON u.id = e.org_unit_id"
        " JOIN crm.employees AS m ON m.id = e.manager_id WHERE e.id = %s",
        (emp_id,),
    ).fetchone()
    # Expect a NOLOGIN INHERIT role in crmdb_employee, active, in team-a under Rep_A
    assert row == (False, True, True, "active", "team-a", org.role("Rep_A"))
    managers = conn.execute(
        "SELECT m.role_name, t.depth FROM crm_private.manager_tree AS t"
        " JOIN crm.employees AS m ON m.id = t.manager_id"
        " WHERE t.employee_id = %s ORDER BY t.depth",
        (emp_id,),
    ).fetchall()
    # Expect the manager closure: self, Rep_A, boss
    assert managers == [(role, 0), (org.role("Rep_A"), 1), (org.role("boss"), 2)]


def test_add_employee_with_login(org, conn):
    role = org.db.role("new_login")
    add_employee(conn, role, login=True)
    # Expect LOGIN and a password
    assert conn.execute(
        "SELECT rolcanlogin, rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s", (role,)
    ).fetchone() == (True, True)


def test_add_employee_is_granted_to_gateways(org, conn):
    role = org.db.role("new_hire")
    add_employee(conn, role)
    # Expect the existing gateway to hold the new role (it may SET ROLE to it)
    assert one(conn, "SELECT pg_has_role(%s, %s, 'MEMBER')", (org.db.role("Gw"), role)) is True


def test_add_employee_adopts_plain_existing_role(org, conn):
    role = org.db.role("Existing")
    create_role(conn, role)
    emp_id = add_employee(conn, role)
    # Expect the existing role to be adopted: bound and put in crmdb_employee
    assert one(conn, "SELECT role_name FROM crm.employees WHERE id = %s", (emp_id,)) == role
    assert one(conn, "SELECT pg_has_role(%s, 'crmdb_employee', 'MEMBER')", (role,)) is True


def test_add_employee_unknown_org_unit(org, conn):
    role = org.db.role("new_hire")
    # Expect 'unknown org unit "nowhere"'
    refused(
        conn,
        errors.NoDataFound,
        'unknown org unit "nowhere"',
        *add_employee_sql(role, unit="nowhere"),
    )
    # Expect the role created earlier in the call to be gone with it
    assert not role_exists(conn, role)


def test_add_employee_unknown_manager(org, conn):
    ghost = org.db.role("ghost")
    # Expect 'unknown employee "<ghost>"'
    refused(
        conn,
        errors.NoDataFound,
        f'unknown employee "{ghost}"',
        *add_employee_sql(org.db.role("new_hire"), manager=ghost),
    )


def test_failed_add_employee_changes_nothing(org):
    role = org.db.role("Half_Hired")
    with org.db.connect() as admin:
        before = one(admin, "SELECT count(*) FROM crm.change_log")
        # Expect the whole transaction to fail on the unknown manager ...
        with pytest.raises(errors.NoDataFound, match="unknown employee"), admin.transaction():
            admin.execute(*add_employee_sql(role, manager=org.db.role("ghost")))
    with org.db.connect() as check:
        # ... and to leave no role, no grant to the gateway, no employee, no audit row
        assert not role_exists(check, role)
        assert one(check, "SELECT count(*) FROM crm.employees WHERE role_name = %s", (role,)) == 0
        assert one(check, "SELECT count(*) FROM crm.change_log") == before


@pytest.mark.parametrize("name", ["pg_x", "crmdb_x", "crmdb_owner", "public", "none"])
def test_add_employee_reserved_role_name(conn, name):
    # Expect 'employee role name "<name>" is reserved'
    refused(
        conn,
        errors.ReservedName,
        f'employee role name "{name}" is reserved',
        *add_employee_sql(name),
    )


def test_add_employee_empty_role_name(conn):
    # Expect 'employee role name is empty'
    refused(
        conn, errors.InvalidParameterValue, "employee role name is empty", *add_employee_sql("")
    )


@pytest.mark.parametrize("attribute", ["SUPERUSER", "CREATEROLE", "BYPASSRLS", "REPLICATION"])
def test_add_employee_refuses_privileged_existing_role(org, conn, attribute):
    role = org.db.role(f"Priv_{attribute.lower()}")
    create_role(conn, role, attribute)
    # Expect the role to be refused: it could step around row-level security
    refused(
        conn,
        errors.InvalidParameterValue,
        f'role "{role}" exists and has, or is a member of a role with, SUPERUSER',
        *add_employee_sql(role),
    )
    # Expect no employee bound to it and no grant of crmdb_employee
    assert one(conn, "SELECT count(*) FROM crm.employees WHERE role_name = %s", (role,)) == 0
    assert (
        one(
            conn,
            "SELECT count(*) FROM pg_auth_members AS m"
            " JOIN pg_roles AS r ON r.oid = m.member"
            " WHERE r.rolname = %s AND m.roleid = 'crmdb_employee'::regrole",
            (role,),
        )
        == 0
    )


@pytest.mark.parametrize("group", ["crmdb_owner", "superuser_group"])
def test_add_employee_refuses_role_that_can_become_privileged(org, conn, group):
    if group == "superuser_group":
        group = org.db.role("su_group")
        create_role(conn, group, "SUPERUSER")
    role = org.db.role("Dba_Like")
    create_role(conn, role)
    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role)))
    # Expect a refusal: a member of crmdb_owner (or of a superuser role) is not
    # filtered by the templates' policies
    refused(conn, errors.InvalidParameterValue, f'role "{role}"', *add_employee_sql(role))


def test_add_employee_refuses_gateway_role(org, conn):
    gw = org.db.role("Gw")
    # Expect 'role "<gw>" is a gateway, not an employee'
    refused(
        conn,
        errors.InvalidParameterValue,
        f'role "{gw}" is a gateway, not an employee',
        *add_employee_sql(gw),
    )


def test_add_employee_duplicate(org, conn):
    rep_a = org.role("Rep_A")
    # Expect 'employee "<Rep_A>" already exists'
    refused(
        conn, errors.UniqueViolation, f'employee "{rep_a}" already exists', *add_employee_sql(rep_a)
    )


def test_add_employee_duplicate_email(org, conn):
    role = org.db.role("twin")
    # Expect a unique violation on the email (already used by Rep_A)
    with pytest.raises(errors.UniqueViolation, match="employees_email_key"), conn.transaction():
        add_employee(conn, role, email="Rep_A@example.test")
    assert not role_exists(conn, role)


# move_employee ----------------------------------------------------------------------


def test_move_employee_to_new_manager_and_unit(org, conn):
    conn.execute(
        "SELECT crm_admin.move_employee(%s, %s, 'team-a')", (org.role("rep_b"), org.role("Rep_A"))
    )
    # Expect rep_b under Rep_A, in team-a
    assert conn.execute(
        "SELECT m.role_name, u.code FROM crm.employees AS e"
        " JOIN crm.employees AS m ON m.id = e.manager_id"
        " JOIN crm.org_units AS u ON u.id = e.org_unit_id WHERE e.role_name = %s",
        (org.role("rep_b"),),
    ).fetchone() == (org.role("Rep_A"), "team-a")


def test_move_employee_clear_manager(org, conn):
    conn.execute(
        "SELECT crm_admin.move_employee(%s, p_clear_manager => true)", (org.role("Rep_A"),)
    )
    # Expect no manager, and only the self row left in the closure
    assert (
        one(conn, "SELECT manager_id FROM crm.employees WHERE role_name = %s", (org.role("Rep_A"),))
        is None
    )
    assert (
        one(
            conn,
            "SELECT count(*) FROM crm_private.manager_tree WHERE employee_id = %s",
            (org.id("Rep_A"),),
        )
        == 1
    )


def test_move_employee_only_unit_keeps_manager(org, conn):
    conn.execute("SELECT crm_admin.move_employee(%s, p_org_unit => 'team-b')", (org.role("Rep_A"),))
    # Expect team-b and still under boss
    assert conn.execute(
        "SELECT e.manager_id, u.code FROM crm.employees AS e"
        " JOIN crm.org_units AS u ON u.id = e.org_unit_id WHERE e.role_name = %s",
        (org.role("Rep_A"),),
    ).fetchone() == (org.id("boss"), "team-b")


def test_move_employee_manager_and_clear(org, conn):
    # Expect 'give a new manager or clear the manager, not both'
    refused(
        conn,
        errors.InvalidParameterValue,
        "not both",
        "SELECT crm_admin.move_employee(%s, %s, p_clear_manager => true)",
        (org.role("Rep_A"), org.role("boss")),
    )


def test_move_employee_unknown_employee(org, conn):
    ghost = org.db.role("ghost")
    # Expect 'unknown employee "<ghost>"'
    refused(
        conn,
        errors.NoDataFound,
        f'unknown employee "{ghost}"',
        "SELECT crm_admin.move_employee(%s, p_org_unit => 'team-a')",
        (ghost,),
    )


def test_move_employee_unknown_manager(org, conn):
    ghost = org.db.role("ghost")
    # Expect 'unknown employee "<ghost>"' for the manager
    refused(
        conn,
        errors.NoDataFound,
        f'unknown employee "{ghost}"',
        "SELECT crm_admin.move_employee(%s, %s)",
        (org.role("Rep_A"), ghost),
    )


def test_move_employee_unknown_org_unit(org, conn):
    # Expect 'unknown org unit "nowhere"'
    refused(
        conn,
        errors.NoDataFound,
        'unknown org unit "nowhere"',
        "SELECT crm_admin.move_employee(%s, p_org_unit => 'nowhere')",
        (org.role("Rep_A"),),
    )


# set_employee_status -------------------------------------------------------------------


def status(conn: psycopg.Connection, role: str) -> tuple:
    row = conn.execute(
        "SELECT e.status::text, e.departed_at IS NOT NULL, r.rolcanlogin"
        " FROM crm.employees AS e JOIN pg_roles AS r ON r.rolname = e.role_name"
        " WHERE e.role_name = %s",
        (role,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_set_status_on_leave_and_back(org, conn):
    rep_b = org.role("rep_b")
    conn.execute("SELECT crm_admin.set_employee_status(%s, 'on_leave')", (rep_b,))
    # Expect on_leave, login kept
    assert status(conn, rep_b) == ("on_leave", False, True)
    conn.execute("SELECT crm_admin.set_employee_status(%s, 'active')", (rep_b,))
    # Expect active again
    assert status(conn, rep_b) == ("active", False, True)


def test_set_status_departed_closes_login_and_gateway(org, conn):
    rep_b = org.role("rep_b")
    conn.execute("SELECT crm_admin.set_employee_status(%s, 'departed')", (rep_b,))
    # Expect departed with departed_at set and NOLOGIN
    assert status(conn, rep_b) == ("departed", True, False)
    # Expect the gateway to no longer hold rep_b
    assert one(conn, "SELECT pg_has_role(%s, %s, 'MEMBER')", (org.db.role("Gw"), rep_b)) is False


@pytest.mark.parametrize("new_status", ["active", "on_leave"])
def test_departed_employee_cannot_return(org, conn, new_status):
    rep_b = org.role("rep_b")
    conn.execute("SELECT crm_admin.set_employee_status(%s, 'departed')", (rep_b,))
    # Expect 'employee "<rep_b>" has departed; add them again under a new role to rehire'
    refused(
        conn,
        errors.InvalidParameterValue,
        f'employee "{rep_b}" has departed; add them again',
        "SELECT crm_admin.set_employee_status(%s, %s)",
        (rep_b, new_status),
    )
    # Expect still departed and NOLOGIN
    assert status(conn, rep_b) == ("departed", True, False)


def test_set_status_departed_twice_is_a_no_op(org, conn):
    rep_b = org.role("rep_b")
    conn.execute("SELECT crm_admin.set_employee_status(%s, 'departed')", (rep_b,))
    departed_at = one(conn, "SELECT departed_at FROM crm.employees WHERE role_name = %s", (rep_b,))
    conn.execute("SELECT crm_admin.set_employee_status(%s, 'departed')", (rep_b,))
    # Expect the same departed_at
    assert (
        one(conn, "SELECT departed_at FROM crm.employees WHERE role_name = %s", (rep_b,))
        == departed_at
    )


def test_set_status_unknown_employee(org, conn):
    ghost = org.db.role("ghost")
    # Expect 'unknown employee "<ghost>"'
    refused(
        conn,
        errors.NoDataFound,
        f'unknown employee "{ghost}"',
        "SELECT crm_admin.set_employee_status(%s, 'on_leave')",
        (ghost,),
    )


def test_failed_departure_changes_nothing(org):
    rep_b = org.role("rep_b")
    # Expect the departure to be undone with its failing transaction ...
    with org.db.connect() as admin, pytest.raises(errors.DivisionByZero), admin.transaction():
        admin.execute("SELECT crm_admin.set_employee_status(%s, 'departed')", (rep_b,))
        admin.execute("SELECT 1 / 0")
    with org.db.connect() as check:
        # ... leaving rep_b active, able to log in and held by the gateway
        assert status(check, rep_b) == ("active", False, True)
        assert (
            one(check, "SELECT pg_has_role(%s, %s, 'MEMBER')", (org.db.role("Gw"), rep_b)) is True
        )


# add_gateway --------------------------------------------------------------------------


def test_add_gateway(org, conn):
    gw = org.db.role("Gw_Two")
    conn.execute("SELECT crm_admin.add_gateway(%s, %s)", (gw, TEST_PASSWORD))
    # Expect LOGIN NOINHERIT, recorded, holding all three employees
    assert conn.execute(
        "SELECT rolcanlogin, rolinherit FROM pg_roles WHERE rolname = %s", (gw,)
    ).fetchone() == (True, False)
    assert one(conn, "SELECT count(*) FROM crm_private.gateways WHERE role_name = %s", (gw,)) == 1
    assert (
        one(
            conn,
            "SELECT count(*) FROM crm.employees WHERE pg_has_role(%s, role_name, 'MEMBER')",
            (gw,),
        )
        == 3
    )


def test_add_gateway_duplicate(org, conn):
    gw = org.db.role("Gw")
    # Expect 'role "<gw>" already exists; a gateway must be a new role'
    refused(
        conn,
        errors.DuplicateObject,
        f'role "{gw}" already exists; a gateway must be a new',
        "SELECT crm_admin.add_gateway(%s)",
        (gw,),
    )


def test_add_gateway_over_employee_role(org, conn):
    rep_a = org.role("Rep_A")
    # Expect the same refusal for an employee's role
    refused(
        conn,
        errors.DuplicateObject,
        f'role "{rep_a}" already exists',
        "SELECT crm_admin.add_gateway(%s)",
        (rep_a,),
    )
    # Expect Rep_A untouched (still INHERIT, not recorded as a gateway)
    assert one(conn, "SELECT rolinherit FROM pg_roles WHERE rolname = %s", (rep_a,)) is True


@pytest.mark.parametrize("name", ["pg_gw", "crmdb_gw"])
def test_add_gateway_reserved_name(conn, name):
    # Expect 'gateway role name "<name>" is reserved'
    refused(
        conn,
        errors.ReservedName,
        f'gateway role name "{name}" is reserved',
        "SELECT crm_admin.add_gateway(%s)",
        (name,),
    )


# add_project and add_project_member -------------------------------------------------


def test_add_project(conn):
    project_id = one(
        conn, "SELECT crm_admin.add_project('p2', 'P2', '{sales,marketing,sales}'::crm.solution[])"
    )
    solutions = [
        r[0]
        for r in conn.execute(
            "SELECT solution::text FROM crm.project_solutions WHERE project_id = %s ORDER BY 1",
            (project_id,),
        )
    ]
    # Expect the solutions once each
    assert solutions == ["marketing", "sales"]


def test_add_project_duplicate_code(conn):
    # Expect a unique violation on the code
    refused(
        conn,
        errors.UniqueViolation,
        "projects_code_key",
        "SELECT crm_admin.add_project('p1', 'Again', '{sales}')",
    )


def test_add_project_member(org, conn):
    conn.execute(
        "SELECT crm_admin.add_project_member('p1', %s, 'marketing', 'marketer')",
        (org.role("Rep_A"),),
    )
    # Expect Rep_A in p1/marketing under the marketer template
    assert conn.execute(
        "SELECT m.employee_id, m.solution::text, m.template FROM crm.project_members AS m"
        " JOIN crm.projects AS p ON p.id = m.project_id WHERE p.code = 'p1'"
    ).fetchall() == [(org.id("Rep_A"), "marketing", "marketer")]


def test_add_project_member_again_replaces_template(org, conn):
    for template in ("marketer", "marketing_lead"):
        conn.execute(
            "SELECT crm_admin.add_project_member('p1', %s, 'marketing', %s)",
            (org.role("Rep_A"), template),
        )
    # Expect one membership, with the latest template
    assert conn.execute("SELECT template FROM crm.project_members").fetchall() == [
        ("marketing_lead",)
    ]


def test_add_project_member_solution_not_in_project(org, conn):
    # Expect 'project "p1" has no sales solution'
    refused(
        conn,
        errors.NoDataFound,
        'project "p1" has no sales solution',
        "SELECT crm_admin.add_project_member('p1', %s, 'sales', 'sales_rep')",
        (org.role("Rep_A"),),
    )
    assert one(conn, "SELECT count(*) FROM crm.project_members") == 0


def test_add_project_member_unknown_project(org, conn):
    # Expect 'unknown project "nope"'
    refused(
        conn,
        errors.NoDataFound,
        'unknown project "nope"',
        "SELECT crm_admin.add_project_member('nope', %s, 'sales', 'sales_rep')",
        (org.role("Rep_A"),),
    )


def test_add_project_member_unknown_employee(org, conn):
    ghost = org.db.role("ghost")
    # Expect 'unknown employee "<ghost>"'
    refused(
        conn,
        errors.NoDataFound,
        f'unknown employee "{ghost}"',
        "SELECT crm_admin.add_project_member('p1', %s, 'marketing', 'marketer')",
        (ghost,),
    )


def test_add_project_member_bad_template_name(org, conn):
    # Expect the template name pattern to refuse it
    refused(
        conn,
        errors.CheckViolation,
        "project_members_template_check",
        "SELECT crm_admin.add_project_member('p1', %s, 'marketing', 'Bad-Name')",
        (org.role("Rep_A"),),
    )
