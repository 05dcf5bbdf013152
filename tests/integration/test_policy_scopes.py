"""Every scope and action of the shipped role templates, probed as the employee.

Probes log in DIRECTLY as the employee's role (no SET ROLE) unless they test another
identity path, and check what the employee may and must not see or do. `org` (the
fixture org of policies/fixture.yaml plus the EXTRAS in policy_org.py, shipped
templates applied) is shared by the module: writes run in a transaction that is
rolled back. Tests that must commit (org changes, statuses, shares) build their own.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from policy_org import (
    P1,
    VISIBLE_CUSTOMERS,
    PolicyOrg,
    build_policy_org,
    policy_dir,
    shared_policy_org,
)
from psycopg import errors, sql

from crmdb import admin
from crmdb.policies.checks import run_tests
from crmdb.resources import resource_dir
from crmdb.testing.scratch import TEST_PASSWORD

NEW_ROW_REFUSED = 'new row violates row-level security policy for table "{}"'
UPDATE = "UPDATE crm.customers SET {} = %s WHERE id = %s"
NOTES = "UPDATE crm.customers SET product_interest = 'probe' WHERE id = %s"
DELETE = "DELETE FROM crm.customers WHERE id = %s"
INSERT = (
    "INSERT INTO crm.customers (project_id, org_unit_id, owner_id, full_name, source, stage)"
    " VALUES (%s, %s, %s, 'Probe', %s, %s)"
)
ACTIVITY = (
    "INSERT INTO crm.activities (customer_id, employee_id, kind, subject)"
    " VALUES (%s, %s, 'call', 'probe')"
)
XMIN = "SELECT id, xmin::text FROM crm.customers ORDER BY id"


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[PolicyOrg]:
    yield from shared_policy_org(scratch)


@pytest.fixture
def fresh(db) -> PolicyOrg:
    """The same org in this test's own database: free to commit changes."""
    return build_policy_org(db)


@pytest.fixture(scope="module")
def gateway(org) -> str:
    role = org.db.role("Gw")  # mixed case: catches quoting bugs
    with org.db.connect() as conn:
        conn.execute("SELECT crm_admin.add_gateway(%s, %s)", (role, TEST_PASSWORD))
    return role


@contextmanager
def session(org: PolicyOrg, key: str) -> Iterator[psycopg.Connection]:
    """A direct login as `key`, everything in one transaction that is rolled back."""
    with org.connect_as(key, autocommit=False) as conn, conn.transaction(force_rollback=True):
        yield conn


def count(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> int:
    """Rows a statement returned or touched."""
    cur = conn.execute(query, params)  # type: ignore[arg-type]
    return len(cur.fetchall()) if cur.description else cur.rowcount


def sees(conn: psycopg.Connection, customer: int) -> int:
    return count(conn, "SELECT id FROM crm.customers WHERE id = %s", (customer,))


def refused(
    conn: psycopg.Connection, query: str, params: tuple[Any, ...], table: str = "customers"
) -> None:
    """The statement fails with a row-level security error (in a savepoint)."""
    message = re.escape(NEW_ROW_REFUSED.format(table))
    with pytest.raises(errors.InsufficientPrivilege, match=message), conn.transaction():
        conn.execute(query, params)  # type: ignore[arg-type]


def denied(conn: psycopg.Connection, query: str, params: tuple[Any, ...], table: str) -> None:
    """The statement fails for lack of a table privilege (in a savepoint)."""
    match = f"permission denied for table {table}"
    with pytest.raises(errors.InsufficientPrivilege, match=match), conn.transaction():
        conn.execute(query, params)  # type: ignore[arg-type]


def project(org: PolicyOrg, code: str) -> int:
    with org.db.connect() as conn:
        row = conn.execute("SELECT crm_private.project_id(%s)", (code,)).fetchone()
    assert row is not None
    return int(row[0])


def unit(org: PolicyOrg, code: str) -> int:
    with org.db.connect() as conn:
        row = conn.execute("SELECT id FROM crm.org_units WHERE code = %s", (code,)).fetchone()
    assert row is not None
    return int(row[0])


def xmins(org: PolicyOrg) -> list[tuple[Any, ...]]:
    with org.db.connect() as conn:
        return conn.execute(XMIN).fetchall()


# Who sees which customers ---------------------------------------------------------


@pytest.mark.parametrize("key", sorted(VISIBLE_CUSTOMERS))
def test_each_employee_sees_exactly_their_customers(org, key):
    with org.connect_as(key) as conn:
        # Expect exactly VISIBLE_CUSTOMERS[key] (policy_org.py): nothing less, nothing more
        assert org.visible(conn) == VISIBLE_CUSTOMERS[key]


# own -------------------------------------------------------------------------------


def test_own_rep_works_own_customers_only(org):
    p1, rep_a, rep_b = project(org, "saoviet.crm"), org.emp("rep_a"), org.emp("rep_b")
    with session(org, "rep_a") as conn:
        # Expect 1 row: rep_a owns c1
        assert sees(conn, org.id("c1")) == 1
        # Expect 0 rows: rep_a does not own c2, and nothing else gives it to them
        assert sees(conn, org.id("c2")) == 0
        # Expect 1 row updated: own allows update
        assert count(conn, NOTES, (org.id("c1"),)) == 1
        # Expect 0 rows updated: c2 is invisible to rep_a
        assert count(conn, NOTES, (org.id("c2"),)) == 0
        # Expect permission denied: sales_rep grants no delete, not even on c1 it owns
        denied(conn, DELETE, (org.id("c1"),), "customers")
        # Expect the insert to work: a new customer of rep_a's own, in rep_a's project
        assert count(conn, INSERT, (p1, None, rep_a, "manual", "lead")) == 1
        # Expect a refusal: a new customer owned by someone else (rep_b)
        refused(conn, INSERT, (p1, None, rep_b, "manual", "lead"))
        # Expect a refusal: a new customer with no owner (not rep_a's either)
        refused(conn, INSERT, (p1, None, None, "manual", "lead"))


def test_rep_cannot_move_or_give_away_own_customer(org):
    c1 = org.id("c1")
    with session(org, "rep_a") as conn:
        # Expect a refusal: rep_a is not a sales_rep in p2, so c1 cannot move there
        refused(conn, UPDATE.format("project_id"), (project(org, "p2"), c1))
        # Expect a refusal: giving c1 to rep_b (the new row is not rep_a's)
        refused(conn, UPDATE.format("owner_id"), (org.emp("rep_b"), c1))
        # Expect c1 still in p1 and owned by rep_a
        row = conn.execute("SELECT owner_id FROM crm.customers WHERE id = %s", (c1,)).fetchone()
        assert row == (org.emp("rep_a"),)


# subordinates ---------------------------------------------------------------------


def test_manager_sees_subordinates_at_depth_1_and_2(org):
    with org.connect_as("mgr_hn") as conn:
        # Expect c1 (rep_a, depth 1) and x_deep (intern, below rep_a: depth 2)
        assert {"c1", "x_deep"} <= org.visible(conn)
        # Expect no c6: rep_c reports to boss, not to mgr_hn
        assert "c6" not in org.visible(conn)
        # Expect the subordinates' contracts and activities as well
        assert org.visible(conn, "contracts") == {"k1", "k2", "k4"}
        assert org.visible(conn, "activities") == {"a1", "a2"}
    with org.connect_as("rep_a") as conn:
        # Expect no x_deep: intern reports to rep_a, but sales_rep has no subordinates scope
        assert "x_deep" not in org.visible(conn)
    with org.connect_as("boss") as conn:
        # Expect x_deep at depth 3 (boss -> mgr_hn -> rep_a -> intern) and c6 (rep_c,
        # depth 1), both in unit hcm, outside boss's org unit subtree
        assert {"x_deep", "c6"} <= org.visible(conn)


def test_manager_reassigns_within_subtree_only(org):
    owner = UPDATE.format("owner_id")
    with session(org, "mgr_hn") as conn:
        # Expect 1 row: c1 (rep_a's) to rep_b, both below mgr_hn
        assert count(conn, owner, (org.emp("rep_b"), org.id("c1"))) == 1
        # Expect 1 row: c2 (rep_b's) to mgr_hn themselves
        assert count(conn, owner, (org.emp("mgr_hn"), org.id("c2"))) == 1
        # Expect 1 row: c7 to intern, two levels down
        assert count(conn, owner, (org.emp("intern"), org.id("c7"))) == 1
        # Expect a refusal: c4 to boss, above mgr_hn
        refused(conn, owner, (org.emp("boss"), org.id("c4")))
        # Expect a refusal: c4 to rep_c, in another branch of the hierarchy
        refused(conn, owner, (org.emp("rep_c"), org.id("c4")))
        # Expect 0 rows: c6 (rep_c's) is not mgr_hn's to reassign
        assert count(conn, owner, (org.emp("rep_a"), org.id("c6"))) == 0


# org_unit -------------------------------------------------------------------------


def test_director_sees_org_unit_with_sub_units(org):
    with session(org, "boss") as conn:
        # Expect c5 (unit hn, boss's own) and x_care (saoviet.hn.cskh, a sub-unit), both unowned:
        # only the org_unit scope reaches them
        assert {"c5", "x_care"} <= org.visible(conn)
        # Expect 0 rows updated: the org_unit scope is select and export only
        assert count(conn, NOTES, (org.id("x_care"),)) == 0
        # Expect 0 rows: c3 is in p2, where boss holds no template
        assert sees(conn, org.id("c3")) == 0


def test_director_org_unit_without_sub_units(db, tmp_path):
    directory = policy_dir(
        tmp_path, {"director.yaml": [("include_sub_units: true", "include_sub_units: false")]}
    )
    org = build_policy_org(db, directory)
    with org.connect_as("boss") as conn:
        visible = org.visible(conn)
    # Expect c5: it is in boss's own unit hn
    assert "c5" in visible
    # Expect no x_care: saoviet.hn.cskh is a sub-unit of hn, and sub-units are not included
    assert "x_care" not in visible
    # Expect c1 still: it comes through the subordinates scope, not the org unit
    assert "c1" in visible


# project --------------------------------------------------------------------------


def test_marketing_reads_project_and_works_own_leads(org):
    with session(org, "mkt") as conn:
        # Expect every p1 customer and nothing of p2
        assert org.visible(conn) == P1
        # Expect 0 rows updated: the project scope is select and export only
        assert count(conn, NOTES, (org.id("c1"),)) == 0
        # Expect permission denied: marketing grants no delete
        denied(conn, DELETE, (org.id("c1"),), "customers")
        # Expect the insert to work: a lead of mkt's own in p1
        assert (
            count(
                conn,
                INSERT,
                (project(org, "saoviet.crm"), None, org.emp("mkt"), "event", "lead"),
            )
            == 1
        )
        # Expect no activities: marketing sees only its own, and has none
        assert org.visible(conn, "activities") == set()


def test_marketing_cannot_touch_contracts(org):
    k1 = org.id("k1", "contracts")
    with session(org, "mkt") as conn:
        # Expect permission denied (not 0 rows): marketing holds no privilege on contracts
        denied(conn, "SELECT * FROM crm.contracts", (), "contracts")
        denied(conn, "UPDATE crm.contracts SET title = 'x' WHERE id = %s", (k1,), "contracts")
        denied(conn, "DELETE FROM crm.contracts WHERE id = %s", (k1,), "contracts")
        denied(
            conn,
            "INSERT INTO crm.contracts (customer_id, project_id, title) VALUES (%s, %s, 'x')",
            (org.id("c1"), project(org, "saoviet.crm")),
            "contracts",
        )


def test_admin_works_every_record_of_their_project(org):
    p1, p2 = project(org, "saoviet.crm"), project(org, "p2")
    with session(org, "adm") as conn:
        # Expect every p1 customer, none of p2
        assert org.visible(conn) == P1
        # Expect 1 row updated: c2 is nobody's of adm's, but in adm's project
        assert count(conn, NOTES, (org.id("c2"),)) == 1
        # Expect 1 row deleted: c5 (no contracts or activities hang on it)
        assert count(conn, DELETE, (org.id("c5"),)) == 1
        # Expect 0 rows deleted: c3 is in p2
        assert count(conn, DELETE, (org.id("c3"),)) == 0
        # Expect p1's contracts, not k3 (p2)
        assert org.visible(conn, "contracts") == {"k1", "k2", "k4"}
        # Expect the insert in p1 to work unowned (routing assigns it) or as adm's own ...
        assert count(conn, INSERT, (p1, None, None, "manual", "lead")) == 1
        assert count(conn, INSERT, (p1, None, org.emp("adm"), "manual", "lead")) == 1
        # ... and a refusal for anyone else: a project scope does not bound the owner,
        # so through it adm may not give records away (issue 8)
        refused(conn, INSERT, (p1, None, org.emp("rep_b"), "manual", "lead"))
        # Expect a refusal: reassigning c2 by hand (the routing engine does that)
        refused(conn, UPDATE.format("owner_id"), (org.emp("rep_a"), org.id("c2")))
        # Expect a refusal in p2
        refused(conn, INSERT, (p2, None, None, "manual", "lead"))
        # Expect a refusal: moving c1 out of adm's project
        refused(conn, UPDATE.format("project_id"), (p2, org.id("c1")))


# shared ---------------------------------------------------------------------------


def test_edit_share_to_employee_allows_fields_not_anchors(org):
    c6 = org.id("c6")  # rep_c's, shared to rep_a for edit (s1)
    with session(org, "rep_a") as conn:
        # Expect 1 row: the edit share lets rep_a see c6 ...
        assert sees(conn, c6) == 1
        # ... and change its fields
        assert count(conn, NOTES, (c6,)) == 1
        # Expect refusals: not its owner (to rep_b), project or org unit
        refused(conn, UPDATE.format("owner_id"), (org.emp("rep_b"), c6))
        refused(conn, UPDATE.format("project_id"), (project(org, "p2"), c6))
        refused(conn, UPDATE.format("org_unit_id"), (unit(org, "hn"), c6))
        # Expect permission denied: a share never allows delete (nor does sales_rep)
        denied(conn, DELETE, (c6,), "customers")


def test_edit_share_cannot_take_ownership(org):
    c6 = org.id("c6")
    with session(org, "rep_a") as conn:
        # Expect a refusal: rep_a may edit c6 (s1) but must not make it their own
        refused(conn, UPDATE.format("owner_id"), (org.emp("rep_a"), c6))


def test_read_share_to_employee_reads_only(org):
    c4 = org.id("c4")  # rep_a's, shared to rep_b for reading (x_read)
    with session(org, "rep_b") as conn:
        # Expect 1 row: the read share lets rep_b see c4 ...
        assert sees(conn, c4) == 1
        # ... and its contract, through the contracts' customer scope
        assert "k4" in org.visible(conn, "contracts")
        # Expect 0 rows updated: a read share does not allow changes
        assert count(conn, NOTES, (c4,)) == 0


def test_read_share_cannot_be_turned_into_edit(org):
    c4, rep_b = org.id("c4"), org.emp("rep_b")
    share = (
        "INSERT INTO crm.shares (customer_id, grantee_employee_id, access, granted_by)"
        " VALUES (%s, %s, 'edit', %s)"
    )
    with session(org, "rep_b") as conn:
        # Expect a refusal: rep_b may only read c4, so may not hand out edit access,
        # least of all to themselves
        refused(conn, share, (c4, rep_b, rep_b), "shares")
        # Expect c4 still read-only for rep_b
        assert count(conn, NOTES, (c4,)) == 0


def test_read_share_to_org_unit(org):
    c7 = org.id("c7")  # rep_b's, shared to unit hcm for reading (x_unit)
    for key in ("rep_c", "intern"):
        with session(org, key) as conn:
            # Expect 1 row: key works in hcm
            assert sees(conn, c7) == 1
            # Expect 0 rows updated: the unit share is read-only
            assert count(conn, NOTES, (c7,)) == 0
    with org.connect_as("rep_a") as conn:
        # Expect 0 rows: rep_a is in hn_sales, not hcm (and s2 to rep_a has expired)
        assert sees(conn, c7) == 0


def test_expired_share_gives_nothing(org):
    c7 = org.id("c7")  # shared to rep_a (s2), expired yesterday
    with session(org, "rep_a") as conn:
        # Expect 0 rows seen and updated: the share has expired
        assert sees(conn, c7) == 0
        assert count(conn, NOTES, (c7,)) == 0
        # Expect no access path either
        assert count(conn, "SELECT * FROM crm.explain_access('customers', %s)", (c7,)) == 0


def test_share_changes_take_effect_at_next_statement(fresh):
    org = fresh
    c1, c4 = org.id("c1"), org.id("c4")
    with org.connect_as("rep_b") as rep_b, org.db.connect() as dba:
        # Expect c4 through the read share x_read
        assert sees(rep_b, c4) == 1
        dba.execute("DELETE FROM crm.shares WHERE id = %s", (org.id("x_read", "shares"),))
        # Expect 0 rows at the next statement of the same session: the share is revoked
        assert sees(rep_b, c4) == 0
        share = dba.execute(
            "INSERT INTO crm.shares (customer_id, grantee_employee_id, access, granted_by)"
            " VALUES (%s, %s, 'read', %s) RETURNING id",
            (c1, org.emp("rep_b"), org.emp("rep_a")),
        ).fetchone()
        assert share is not None
        # Expect c1 at the next statement: a new share works at once
        assert sees(rep_b, c1) == 1
        dba.execute("UPDATE crm.shares SET expires_at = now() WHERE id = %s", (share[0],))
        # Expect 0 rows: the share has expired, with no job to run
        assert sees(rep_b, c1) == 0


# criteria -------------------------------------------------------------------------


def test_customer_care_criteria(org):
    p1, care = project(org, "saoviet.crm"), org.emp("care")
    with session(org, "care") as conn:
        # Expect c4: stage after_sales matches the 'bought' criteria
        assert sees(conn, org.id("c4")) == 1
        # Expect 0 rows: c2 is a lead, not bought
        assert sees(conn, org.id("c2")) == 0
        # Expect 1 row updated: 'bought' allows update
        assert count(conn, NOTES, (org.id("c4"),)) == 1
        # Expect a refusal: the update may not take the customer (owner is an anchor)
        refused(conn, UPDATE.format("owner_id"), (care, org.id("c4")))
        # Expect permission denied: customer_care has no insert on customers at all
        denied(conn, INSERT, (p1, None, care, "manual", "customer"), "customers")


def test_call_center_criteria(org):
    p1 = project(org, "saoviet.crm")
    with session(org, "cc") as conn:
        # Expect only c5: a chat lead of p1
        assert org.visible(conn) == {"c5"}
        # Expect 1 row updated: inbound_leads allows update
        assert count(conn, NOTES, (org.id("c5"),)) == 1
        # Expect a refusal: the new row would leave the criteria (stage must stay lead)
        refused(conn, UPDATE.format("stage"), ("qualified", org.id("c5")))
        # Expect the insert of a new chat lead to work, and of a web form lead to fail
        assert count(conn, INSERT, (p1, None, None, "chat", "lead")) == 1
        # Expect refusals: the lead's owner is the routing engine's choice, not the call
        # centre's, on insert and on update (issue 8)
        refused(conn, INSERT, (p1, None, org.emp("rep_a"), "chat", "lead"))
        refused(conn, UPDATE.format("owner_id"), (org.emp("rep_a"), org.id("c5")))
        refused(conn, INSERT, (p1, None, None, "web_form", "lead"))
        # Expect 0 rows: c1 came from the web form
        assert count(conn, NOTES, (org.id("c1"),)) == 0
        # Expect permission denied: call_center has no contracts
        denied(conn, "SELECT * FROM crm.contracts", (), "contracts")


# all ------------------------------------------------------------------------------


def test_all_scope_is_the_employee_directory(org):
    everyone = {k for (t, k) in org.loaded.ids if t == "employees"}
    with session(org, "rep_a") as conn:
        # Expect every employee: sales_rep reads employees with scope all
        assert org.visible(conn, "employees") == everyone
        # Expect every org unit (the fixture's five and hn_empty)
        assert count(conn, "SELECT id FROM crm.org_units") == 6
        # Expect permission denied: the directory is read-only
        denied(conn, "UPDATE crm.employees SET title = 'x'", (), "employees")
    with session(org, "cc") as conn:
        # Expect every employee: call_center reads the directory too ...
        assert org.visible(conn, "employees") == everyone
        # ... but not org units: permission denied
        denied(conn, "SELECT * FROM crm.org_units", (), "org_units")


# sharing rule ---------------------------------------------------------------------


def test_sharing_rule_gives_care_read_on_web_form_customers(org):
    with session(org, "care") as conn:
        # Expect c1: from the web form, in p1, and care works in saoviet.hn.cskh
        assert sees(conn, org.id("c1")) == 1
        # Expect its contract, through the contracts' customer scope
        assert "k1" in org.visible(conn, "contracts")
        # Expect 0 rows updated: the rule gives read access only
        assert count(conn, NOTES, (org.id("c1"),)) == 0
    with org.connect_as("cc") as conn:
        # Expect 0 rows: cc works in hn, outside the rule's audience
        assert sees(conn, org.id("c1")) == 0


# activities -----------------------------------------------------------------------


def test_activities_only_on_visible_customers(org):
    rep_a = org.emp("rep_a")
    with session(org, "rep_a") as conn:
        # Expect a refusal: rep_a cannot see c2, so cannot log a call on it
        refused(conn, ACTIVITY, (org.id("c2"), rep_a), "activities")
        # Expect the insert to work on c1, rep_a's own customer
        assert count(conn, ACTIVITY, (org.id("c1"), rep_a)) == 1
        # Expect a refusal: logging a call in rep_b's name
        refused(conn, ACTIVITY, (org.id("c1"), org.emp("rep_b")), "activities")
        # Expect a1 only (a2 is rep_b's, on c2)
        assert org.visible(conn, "activities") >= {"a1"}
        assert "a2" not in org.visible(conn, "activities")
        # Expect 1 row deleted (own activity), 0 for rep_b's
        assert (
            count(conn, "DELETE FROM crm.activities WHERE id = %s", (org.id("a1", "activities"),))
            == 1
        )
        assert (
            count(conn, "DELETE FROM crm.activities WHERE id = %s", (org.id("a2", "activities"),))
            == 0
        )


# status ---------------------------------------------------------------------------


def test_on_leave_keeps_access_and_departed_sees_nothing(fresh):
    org = fresh
    mine = VISIBLE_CUSTOMERS["rep_a"]
    before = xmins(org)
    with org.connect_as("rep_a") as rep_a, org.db.connect() as dba:
        admin.set_employee_status(dba, org.role("rep_a"), "on_leave")
        # Expect the same customers: on leave keeps access
        assert org.visible(rep_a) == mine
        admin.set_employee_status(dba, org.role("rep_a"), "active")
        # Expect the same customers after returning
        assert org.visible(rep_a) == mine
        admin.set_employee_status(dba, org.role("rep_a"), "departed")
        # Expect refusal at the next statement of the still open session: no identity,
        # and no template roles left to grant the tables
        for table in ("customers", "employees"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                org.visible(rep_a, table)
        # Expect no access path either
        assert (
            count(rep_a, "SELECT * FROM crm.explain_access('customers', %s)", (org.id("c1"),)) == 0
        )
    # Expect a new login to be refused
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        org.connect_as("rep_a")
    with org.db.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(org.role("rep_a"))))
        # Expect refusal where SET ROLE still works (a superuser session)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            org.visible(conn)
    with org.connect_as("mgr_hn") as conn:
        # Expect c1 and c4 still with the manager until they are reassigned
        assert {"c1", "c4"} <= org.visible(conn)
    # Expect not one customer row rewritten by leave, return or departure
    assert xmins(org) == before


# identity paths -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["rep_a", "mgr_hn", "boss", "care", "cc", "intern"])
def test_same_rows_direct_gateway_and_set_role(org, gateway, key):
    role = sql.Identifier(org.role(key))
    with org.connect_as(key) as conn:
        direct = org.visible(conn)
    with org.db.connect_as(gateway, autocommit=False) as conn:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
            through_gateway = org.visible(conn)
        # Expect nothing after COMMIT: SET LOCAL ended, the gateway holds no privilege
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema crm"):
            conn.execute("SELECT id FROM crm.customers")
        conn.rollback()
    with org.db.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(role))
        set_role = org.visible(conn)
    # Expect the same customers on all three paths
    assert direct == through_gateway == set_role == VISIBLE_CUSTOMERS[key]


def test_gateway_after_reset_role_sees_nothing(org, gateway):
    with org.db.connect_as(gateway) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(org.role("rep_a"))))
        # Expect rep_a's customers while acting as rep_a
        assert org.visible(conn) == VISIBLE_CUSTOMERS["rep_a"]
        conn.execute("RESET ROLE")
        # Expect permission denied, not rows: the NOINHERIT gateway holds nothing itself
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema crm"):
            conn.execute("SELECT id FROM crm.customers")


# org changes ----------------------------------------------------------------------


def test_moving_rep_to_another_manager(fresh):
    org = fresh
    mgr2 = org.db.role("mgr2")
    with org.db.connect() as dba:
        admin.add_employee(
            dba,
            mgr2,
            "mgr2",
            "mgr2@fixture.test",
            "hn_sales",
            org.role("boss"),
            login=True,
            password=TEST_PASSWORD,
        )
        admin.add_project_member(dba, "saoviet.crm", mgr2, "sales", "sales_manager")
    before = xmins(org)
    with (
        org.connect_as("mgr_hn") as old,
        org.db.connect_as(mgr2) as new,
        org.connect_as("boss") as boss,
        org.db.connect() as dba,
    ):
        # Expect mgr_hn to see rep_a's c1, c4 and intern's x_deep; mgr2 nothing yet
        assert {"c1", "c4", "x_deep"} <= org.visible(old)
        assert org.visible(new) == set()
        admin.move_employee(dba, org.role("rep_a"), manager=mgr2)
        # Expect, at the next statement of the same sessions: the old manager loses
        # rep_a's customers and those of rep_a's own subordinate (intern) ...
        assert org.visible(old) == {"c2", "c7"}
        # ... and the new manager gains them, the whole subtree moved along
        assert org.visible(new) == {"c1", "c4", "x_deep"}
        # Expect boss to keep them: still above, now through mgr2
        assert org.visible(boss) == P1
    # Expect not one customer row rewritten
    assert xmins(org) == before


def test_moving_to_another_org_unit(fresh):
    org = fresh
    before = xmins(org)
    with (
        org.connect_as("care") as care,
        org.connect_as("rep_b") as rep_b,
        org.connect_as("rep_a") as rep_a,
        org.db.connect() as dba,
    ):
        # Expect care to read c1 (rule web_leads_to_care: audience saoviet.hn.cskh)
        assert org.visible(care) == {"c1", "c4"}
        admin.move_employee(dba, org.role("care"), org_unit="hcm")
        # Expect care to lose c1 at the next statement: hcm is outside the audience
        assert org.visible(care) == {"c4"}
        admin.move_employee(dba, org.role("rep_b"), org_unit="saoviet.hn.cskh")
        # Expect rep_b to gain c1 (read only) by joining saoviet.hn.cskh
        assert "c1" in org.visible(rep_b)
        assert count(rep_b, NOTES, (org.id("c1"),)) == 0
        # Expect rep_a to gain c7 by joining hcm: it is shared to that unit (x_unit)
        assert "c7" not in org.visible(rep_a)
        admin.move_employee(dba, org.role("rep_a"), org_unit="hcm")
        assert "c7" in org.visible(rep_a)
    # Expect not one customer row rewritten
    assert xmins(org) == before


def test_membership_changes_take_effect_without_apply(fresh):
    org = fresh
    member = "SELECT pg_has_role(%s, %s, 'MEMBER')"
    with (
        org.connect_as("rep_b") as rep_b,
        org.connect_as("rep_a") as rep_a,
        org.db.connect() as dba,
    ):
        assert org.visible(rep_b) == VISIBLE_CUSTOMERS["rep_b"]
        admin.add_project_member(dba, "saoviet.crm", org.role("rep_b"), "marketing", "marketing")
        # Expect every p1 customer at the next statement: rep_b now also holds marketing
        assert org.visible(rep_b) == P1
        dba.execute(
            "DELETE FROM crm.project_members WHERE employee_id = %s AND solution = 'marketing'",
            (org.emp("rep_b"),),
        )
        # Expect rep_b's own view back: the trigger revoked crmdb_tpl_marketing
        assert org.visible(rep_b) == VISIBLE_CUSTOMERS["rep_b"]
        assert dba.execute(member, (org.role("rep_b"), "crmdb_tpl_marketing")).fetchone() == (
            False,
        )

        # Another template for the same membership: rep_a becomes a sales manager
        admin.add_project_member(dba, "saoviet.crm", org.role("rep_a"), "sales", "sales_manager")
        # Expect x_deep at the next statement: intern reports to rep_a
        assert org.visible(rep_a) == {"c1", "c4", "c6", "x_deep"}
        assert dba.execute(member, (org.role("rep_a"), "crmdb_tpl_sales_rep")).fetchone() == (
            False,
        )

        dba.execute("DELETE FROM crm.project_members WHERE employee_id = %s", (org.emp("rep_b"),))
        # Expect permission denied: with no membership, rep_b holds no template at all
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for table"):
            rep_b.execute("SELECT id FROM crm.customers")


# the templates' own tests -----------------------------------------------------------


def test_shipped_inline_tests_pass(org):
    with org.db.connect() as conn:
        outcomes = run_tests(conn, org.policies, org.loaded)
    # Expect every can/cannot of every template with tests to hold
    assert [str(o) for o in outcomes if not o.passed] == []
    tested = {name for name, t in org.policies.templates.items() if t.tests}
    assert {o.template for o in outcomes} == tested and len(tested) == 8
    assert len(outcomes) > 50


# index-friendliness (a plan, not a timing) ------------------------------------------


def test_customer_list_can_use_an_index(fresh):
    org = fresh
    with org.db.connect() as conn:
        conn.execute(
            "INSERT INTO crm.employees (role_name, full_name, email, org_unit_id, manager_id)"
            " SELECT 'ghost_' || g, 'Ghost ' || g, 'ghost' || g || '@fixture.test',"
            " (SELECT id FROM crm.org_units WHERE code = 'hn_sales'), %s"
            " FROM generate_series(1, 200) AS g",
            (org.emp("mgr_hn"),),
        )
        owners = [r[0] for r in conn.execute("SELECT id FROM crm.employees ORDER BY id")]
        conn.execute(
            "INSERT INTO crm.customers (project_id, org_unit_id, owner_id, full_name, created_at)"
            " SELECT crm_private.project_id(CASE WHEN g %% 4 = 0 THEN 'p2' ELSE 'saoviet.crm' END),"
            " (SELECT id FROM crm.org_units WHERE code = 'hn_sales'),"
            " (%s::bigint[])[1 + g %% cardinality(%s::bigint[])], 'Bulk ' || g,"
            " now() - g * interval '1 minute'"
            " FROM generate_series(1, 20000) AS g",
            (owners, owners),
        )
        conn.execute("ANALYZE")
    plans = {}
    for key in ("rep_a", "mgr_hn", "boss", "mkt", "care", "cc"):
        with org.db.connect() as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(org.role(key))))
            rows = conn.execute(
                # (every column an employee may select: not the read copies of groups)
                "EXPLAIN SELECT id, full_name, owner_id FROM crm.customers"
                " ORDER BY created_at DESC LIMIT 50"
            )
            plans[key] = "\n".join(r[0] for r in rows)
    # Expect no sequential scan of customers for anyone: the newest 50 come from an index
    offenders = {k: p for k, p in plans.items() if "Seq Scan on customers" in p}
    assert offenders == {}, "\n\n".join(f"{k}:\n{p}" for k, p in offenders.items())


def test_policy_org_helper_matches_the_fixture_files():
    # Expect the helper's customers to be the fixture's and its extras, so the
    # expectations above name every customer there is
    fixture = resource_dir("policies") / "fixture.yaml"
    keys = set(re.findall(r"key: (c\d+), project", fixture.read_text(encoding="utf-8")))
    assert keys | {"x_deep", "x_care"} == P1 | {"c3"}
