"""The audit trail: crm.change_log rows written by crm_private.record_changes, append-only.

The module shares one database: the standard org, a gateway, project p1, and (for
actor attribution, since no template grants anything yet) SELECT and UPDATE on
crm.customers for Rep_A with a permissive policy, set up by the superuser. Each test
works on customers of its own and reads the change_log rows of those customers only.
"""

from collections.abc import Iterator

import psycopg
import pytest
from org_fixture import Org, shared_org
from psycopg import errors, sql

from crmdb.db import as_role

CUSTOMER_COLUMNS = sorted(
    [
        "id",
        "project_id",
        "org_unit_id",
        "owner_id",
        "full_name",
        "province",
        "stage",
        "source",
        "score",
        "product_interest",
        "created_by",
        "assigned_at",
        "created_at",
        "updated_at",
        "phone_mask",
    ]
)
LOG = (
    "SELECT action, changed_fields, old_values, new_values, actor_role, actor_employee_id"
    " FROM crm.change_log WHERE table_name = %s AND record_id = %s ORDER BY id"
)


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[Org]:
    for shared in shared_org(scratch):
        shared.add_gateway("Gateway")
        shared.ids["p1"] = shared.add_project("p1")
        rep_a = sql.Identifier(shared.role("Rep_A"))
        with shared.db.connect() as conn:
            conn.execute(sql.SQL("GRANT SELECT, UPDATE ON crm.customers TO {}").format(rep_a))
            conn.execute(
                sql.SQL("CREATE POLICY t ON crm.customers TO {} USING (true)").format(rep_a)
            )
        yield shared


@pytest.fixture(scope="module")
def superuser(org) -> str:
    with org.db.connect() as conn:
        return str(one(conn, "SELECT current_user"))


def one(conn: psycopg.Connection, query: str, params: object = None) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def log(org: Org, record_id: int, table: str = "customers") -> list[tuple]:
    with org.db.connect() as conn:
        return [tuple(r) for r in conn.execute(LOG, (table, record_id))]


def new_customer(org: Org, name: str = "Nguyen Van A") -> int:
    return org.add_customer(org.id("p1"), name, owner="Rep_A")


def update_as(conn: psycopg.Connection, customer: int, interest: str) -> None:
    conn.execute(
        "UPDATE crm.customers SET product_interest = %s WHERE id = %s", (interest, customer)
    )


# What is recorded -------------------------------------------------------------------


def test_insert_is_recorded_with_all_fields(org, superuser):
    customer = new_customer(org, "Tran Thi B")
    [(action, fields, old, new, actor, actor_id)] = log(org, customer)
    # Expect one INSERT row: every column, no old values, the new row, the superuser
    assert (action, fields, old, actor, actor_id) == (
        "INSERT",
        CUSTOMER_COLUMNS,
        None,
        superuser,
        None,
    )
    assert sorted(new) == CUSTOMER_COLUMNS
    assert (new["id"], new["full_name"], new["owner_id"], new["stage"]) == (
        customer,
        "Tran Thi B",
        org.id("Rep_A"),
        "lead",
    )


def test_update_records_only_changed_fields(org):
    customer = new_customer(org)
    with org.db.connect() as conn:
        conn.execute(
            "UPDATE crm.customers SET stage = 'qualified', product_interest = 'loans',"
            " score = score,"
            " full_name = full_name WHERE id = %s",
            (customer,),
        )
        # updated_at was touched by the _100_touch trigger ...
        assert (
            one(
                conn, "SELECT updated_at > created_at FROM crm.customers WHERE id = %s", (customer,)
            )
            is True
        )
    [_, (action, fields, old, new, _, _)] = log(org, customer)
    # ... Expect only product_interest and stage: unchanged columns and updated_at are
    # left out
    assert (action, fields) == ("UPDATE", ["product_interest", "stage"])
    assert old == {"product_interest": None, "stage": "lead"}
    assert new == {"product_interest": "loans", "stage": "qualified"}


def test_field_group_changes_are_recorded_under_the_group(org):
    customer = new_customer(org)
    with org.db.connect() as conn:
        conn.execute(
            "UPDATE crm.customers__financial SET bank_account = '0123456789' WHERE id = %s",
            (customer,),
        )
        conn.execute("UPDATE crm.customers SET owner_id = NULL WHERE id = %s", (customer,))
    [(action, fields, old, new, _, _)] = log(org, customer, "customers__financial")
    # Expect the value's change under customers__financial; the owner's copy that followed
    # the customer is not a change of the group (the customer's own row records it)
    assert (action, fields, old, new) == (
        "UPDATE",
        ["bank_account"],
        {"bank_account": None},
        {"bank_account": "0123456789"},
    )
    assert [r[1] for r in log(org, customer)][1:] == [["owner_id"]]


def test_update_that_changes_nothing_is_not_recorded(org):
    customer = new_customer(org)
    with org.db.connect() as conn:
        conn.execute(
            "UPDATE crm.customers SET product_interest = product_interest WHERE id = %s",
            (customer,),
        )
    # Expect only the INSERT row: a no-op UPDATE (only updated_at moved) leaves no trace
    assert [r[0] for r in log(org, customer)] == ["INSERT"]


def test_delete_is_recorded_with_old_values(org, superuser):
    customer = new_customer(org, "Le Van C")
    with org.db.connect() as conn:
        conn.execute("DELETE FROM crm.customers WHERE id = %s", (customer,))
    [_, (action, fields, old, new, actor, actor_id)] = log(org, customer)
    # Expect a DELETE row: every column, the old row, no new values
    assert (action, fields, new, actor, actor_id) == (
        "DELETE",
        CUSTOMER_COLUMNS,
        None,
        superuser,
        None,
    )
    assert (old["id"], old["full_name"]) == (customer, "Le Van C")


def test_multi_row_update_writes_one_row_per_record_in_one_transaction(org):
    customers = [new_customer(org, f"Batch {i}") for i in range(5)]
    with org.db.connect() as conn:
        conn.execute("UPDATE crm.customers SET score = 42 WHERE id = ANY(%s)", (customers,))
        entries = conn.execute(
            "SELECT record_id, changed_fields, txid::text FROM crm.change_log"
            " WHERE table_name = 'customers' AND action = 'UPDATE' AND record_id = ANY(%s)",
            (customers,),
        ).fetchall()
    # Expect 5 rows, one per customer, each naming only score ...
    assert sorted(r[0] for r in entries) == customers
    assert {tuple(r[1]) for r in entries} == {("score",)}
    # ... all from the one statement's transaction
    assert len({r[2] for r in entries}) == 1


def test_admin_api_changes_are_recorded(org, superuser):
    with org.db.connect() as conn:
        conn.execute("SELECT crm_admin.set_employee_status(%s, 'on_leave')", (org.role("boss"),))
        conn.execute("SELECT crm_admin.set_employee_status(%s, 'active')", (org.role("boss"),))
    entries = log(org, org.id("boss"), "employees")
    # Expect INSERT, then two UPDATEs of status alone, by the superuser
    assert [(r[0], r[1], r[4]) for r in entries] == [
        ("INSERT", entries[0][1], superuser),
        ("UPDATE", ["status"], superuser),
        ("UPDATE", ["status"], superuser),
    ]
    assert (entries[1][2], entries[1][3]) == ({"status": "active"}, {"status": "on_leave"})


# Who did it -----------------------------------------------------------------------


def test_actor_under_set_role_is_the_employee(org):
    customer = new_customer(org)
    with org.db.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(org.role("Rep_A"))))
        update_as(conn, customer, "set role")
    [_, (_, fields, _, _, actor, actor_id)] = log(org, customer)
    # Expect Rep_A (the SET ROLE role, mixed case intact), not the superuser login
    assert (fields, actor, actor_id) == (["product_interest"], org.role("Rep_A"), org.id("Rep_A"))


def test_actor_under_set_local_role_is_the_employee(org):
    customer = new_customer(org)
    with org.db.connect(autocommit=False) as conn, as_role(conn, org.role("Rep_A")):
        update_as(conn, customer, "as_role")
    [_, (_, _, _, _, actor, actor_id)] = log(org, customer)
    # Expect Rep_A through crmdb.db.as_role (SET LOCAL ROLE)
    assert (actor, actor_id) == (org.role("Rep_A"), org.id("Rep_A"))


def test_actor_through_gateway_is_the_employee_not_the_gateway(org):
    customer = new_customer(org)
    with org.db.connect_as(org.db.role("Gateway")) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(org.role("Rep_A"))))
        update_as(conn, customer, "via gateway")
    [_, (_, _, _, _, actor, actor_id)] = log(org, customer)
    # Expect Rep_A: the gateway login is never the actor
    assert (actor, actor_id) == (org.role("Rep_A"), org.id("Rep_A"))


def test_actor_on_direct_login_is_the_employee(org):
    customer = new_customer(org)
    with org.connect_as("Rep_A") as conn:
        update_as(conn, customer, "direct")
    [_, (_, _, _, _, actor, actor_id)] = log(org, customer)
    # Expect Rep_A: without SET ROLE the actor is the login
    assert (actor, actor_id) == (org.role("Rep_A"), org.id("Rep_A"))


def test_employee_without_grant_changes_nothing(org):
    customer = new_customer(org)
    # Expect permission denied: rep_b has no grant on crm.customers
    with org.connect_as("rep_b") as conn, pytest.raises(errors.InsufficientPrivilege):
        update_as(conn, customer, "not allowed")
    # Expect no change_log row beyond the INSERT
    assert [r[0] for r in log(org, customer)] == ["INSERT"]


# Append-only ----------------------------------------------------------------------


@pytest.fixture
def logged(org) -> int:
    """A customer with a change_log row; returns the customer id."""
    return new_customer(org)


def count_log(org: Org, customer: int) -> int:
    return len(log(org, customer))


def test_change_log_update_refused_for_superuser(org, logged):
    # Expect 'crm.change_log is append-only: UPDATE is not allowed'
    with (
        org.db.connect() as conn,
        pytest.raises(errors.InsufficientPrivilege, match="append-only: UPDATE"),
    ):
        conn.execute(
            "UPDATE crm.change_log SET actor_role = 'someone_else' WHERE record_id = %s", (logged,)
        )
    assert log(org, logged)[0][4] != "someone_else"


def test_change_log_delete_refused_for_superuser(org, logged):
    # Expect 'crm.change_log is append-only: DELETE is not allowed'
    with (
        org.db.connect() as conn,
        pytest.raises(errors.InsufficientPrivilege, match="append-only: DELETE"),
    ):
        conn.execute("DELETE FROM crm.change_log WHERE record_id = %s", (logged,))
    assert count_log(org, logged) == 1


def test_change_log_truncate_refused_for_superuser(org, logged):
    # Expect 'crm.change_log is append-only: TRUNCATE is not allowed'
    with (
        org.db.connect() as conn,
        pytest.raises(errors.InsufficientPrivilege, match="append-only: TRUNCATE"),
    ):
        conn.execute("TRUNCATE crm.change_log")
    assert count_log(org, logged) == 1


def test_change_log_edit_refused_for_owner(org, logged):
    with org.db.connect() as conn:
        conn.execute("SET ROLE crmdb_owner")
        # Expect the owner refused too
        with pytest.raises(errors.InsufficientPrivilege, match="append-only: DELETE"):
            conn.execute("DELETE FROM crm.change_log WHERE record_id = %s", (logged,))
        with pytest.raises(errors.InsufficientPrivilege, match="append-only: UPDATE"):
            conn.execute("UPDATE crm.change_log SET at = now() WHERE record_id = %s", (logged,))
    assert count_log(org, logged) == 1


def test_employee_cannot_touch_change_log(org, logged):
    with org.connect_as("Rep_A") as conn:
        # Expect permission denied before any trigger: no grant at all
        for stmt in (
            "SELECT count(*) FROM crm.change_log",
            "DELETE FROM crm.change_log",
            "TRUNCATE crm.change_log",
        ):
            with pytest.raises(errors.InsufficientPrivilege, match="change_log"):
                conn.execute(stmt)
    assert count_log(org, logged) == 1
