"""The read copies of field groups (migration 0017), attacked as the employees.

crm.customers and crm.contracts carry a copy of each field group (<group>_copy), which
crm_api's views read through crm_vault.<table> and show only where the group's
predicate holds. Every other way to the copies must be closed: the base table's column
privileges, crm_vault's schema, the audit trail, writes, statistics. And the copies must
follow every write of a group, so the view never shows a stale value.

Values (the fixture org, policies/fixture.yaml): c1 is rep_a's customer, c2 rep_b's
(rep_a sees neither its financial group nor the row); mkt sees c1's contact group
only. Writes run in transactions that are rolled back.
"""

from collections.abc import Iterator

import psycopg
import pytest
from policy_org import PolicyOrg, shared_policy_org

BANK = "1903 0000 7777"
# The attempts count in the attack suite's summary; the other tests check the copies
# follow every write.
ATTEMPT = pytest.mark.attack("hidden fields")


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[PolicyOrg]:
    for shared in shared_policy_org(scratch, extras=False):
        with shared.db.connect() as conn:
            conn.execute(
                "UPDATE crm.customers__financial SET bank_account = %s WHERE id = ANY (%s)",
                (BANK, [shared.id("c1"), shared.id("c2")]),
            )
        yield shared


def refused(conn: psycopg.Connection, statement: str, params: tuple = ()) -> str:
    """The error a statement gets, rolled back to a savepoint so the test goes on."""
    with pytest.raises(psycopg.Error) as caught, conn.transaction():
        conn.execute(statement, params)  # type: ignore[arg-type]
    return str(caught.value)


@ATTEMPT
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT financial_copy FROM crm.customers",
        "SELECT (financial_copy).bank_account FROM crm.customers",
        "SELECT * FROM crm.customers",
        "SELECT c FROM crm.customers AS c",
        "SELECT id FROM crm.customers WHERE (financial_copy).bank_account LIKE '19%%'",
        "SELECT id FROM crm.customers ORDER BY financial_copy",
        "SELECT to_jsonb(c) FROM crm.customers AS c",
        "COPY crm.customers TO STDOUT",
        "SELECT financial_copy FROM crm.contracts",
    ],
)
def test_base_table_refuses_the_copies(org, statement):
    # Expect column privileges to refuse any read of a copy on the base table, for the
    # owner of the row too (rep_a owns c1)
    with org.connect_as("rep_a") as conn:
        assert "permission denied" in refused(conn, statement)


def test_base_table_still_reads_its_core_columns(org):
    # Expect rep_a to read c1's core columns and mask on crm.customers, and not c2's row
    with org.connect_as("rep_a") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM crm.customers ORDER BY id")]
    assert org.id("c1") in ids
    assert org.id("c2") not in ids


@ATTEMPT
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM crm_vault.customers",
        "SELECT (financial_copy).bank_account FROM crm_vault.customers",
        "TABLE crm_vault.contracts",
        "SELECT 'crm_vault.customers'::regclass",
        "SELECT NULL::crm_vault.customers_financial",
    ],
)
def test_vault_cannot_be_named(org, statement):
    # Expect no employee to name crm_vault's tables or types (no USAGE on the schema)
    with org.connect_as("rep_a") as conn:
        assert "permission denied for schema crm_vault" in refused(conn, statement)


@ATTEMPT
def test_vault_by_oid_is_no_way_in(org):
    # A function given the table's oid still has to look its name up: refused
    with org.db.connect() as conn:
        oid = conn.execute("SELECT 'crm_vault.customers'::regclass::oid").fetchone()
    assert oid is not None
    with org.connect_as("rep_a") as conn:
        error = refused(conn, "SELECT table_to_xml(%s::oid::regclass, true, false, '')", oid)
    # (builds without libxml refuse the function itself)
    assert "permission denied for schema crm_vault" in error or "XML" in error


@ATTEMPT
def test_copies_are_not_writable(org):
    # Expect keep_derived to refuse a forged copy, even on the writer's own row
    with org.connect_as("rep_a", autocommit=False) as conn:
        error = refused(
            conn,
            "UPDATE crm.customers SET financial_copy = ROW('x', NULL, NULL, NULL, '{}')"
            " WHERE id = %s",
            (org.id("c1"),),
        )
        conn.rollback()
    assert "is kept by crmdb" in error or "permission denied" in error


@ATTEMPT
def test_statistics_do_not_show_the_copies(org):
    with org.db.connect() as conn:
        conn.execute("ANALYZE crm.customers, crm_vault.customers")
    with org.connect_as("rep_a") as conn:
        rows = conn.execute(
            "SELECT attname FROM pg_stats WHERE schemaname IN ('crm', 'crm_vault')"
            " AND tablename = 'customers'"
        ).fetchall()
    # Expect pg_stats to hide tables whose row security applies to the reader
    assert rows == []


def test_copies_follow_writes_through_the_view(org):
    c1 = org.id("c1")
    with org.connect_as("rep_a", autocommit=False) as conn:
        conn.execute(
            "UPDATE crm_api.customers SET bank_account = 'NEW 42', phone = '0900000042'"
            " WHERE id = %s",
            (c1,),
        )
        row = conn.execute(
            "SELECT bank_account, phone FROM crm_api.customers WHERE id = %s", (c1,)
        ).fetchone()
        # Expect the view to show the new values at the next statement
        assert row == ("NEW 42", "0900000042")
        conn.rollback()


def test_copies_follow_writes_to_the_side_tables(org):
    c1 = org.id("c1")
    with org.db.connect(autocommit=False) as conn:
        conn.execute(
            "UPDATE crm.customers__financial SET bank_account = 'SIDE 7' WHERE id = %s", (c1,)
        )
        copy = conn.execute(
            "SELECT (financial_copy).bank_account FROM crm.customers WHERE id = %s", (c1,)
        ).fetchone()
        conn.rollback()
    # Expect the parent's copy to follow a direct write of the group's table
    assert copy == ("SIDE 7",)


@ATTEMPT
def test_audit_trail_never_holds_a_copy(org):
    c1 = org.id("c1")
    with org.connect_as("rep_a", autocommit=False) as conn:
        conn.execute(
            "UPDATE crm_api.customers SET bank_account = 'AUDIT 1', stage = 'qualified'"
            " WHERE id = %s",
            (c1,),
        )
        conn.commit()
    with org.db.connect() as conn:
        logged = conn.execute(
            "SELECT table_name, changed_fields,"
            "       coalesce(old_values::text, '') || coalesce(new_values::text, '')"
            "  FROM crm.change_log WHERE record_id = %s AND table_name LIKE 'customers%%'"
            " ORDER BY id DESC LIMIT 5",
            (c1,),
        ).fetchall()
        conn.execute(
            "UPDATE crm.customers__financial SET bank_account = %s WHERE id = %s", (BANK, c1)
        )
    # Expect the customers row to log stage, and the financial group its own change;
    # no row of customers carries a copy
    customers = [r for r in logged if r[0] == "customers"]
    assert customers and all("_copy" not in " ".join(r[1]) + r[2] for r in customers)
    assert any(r[0] == "customers__financial" for r in logged)


@ATTEMPT
def test_view_hides_what_the_copy_holds(org):
    # mkt reads c1's contact group but not its financial one: the copy holds the bank
    # account, the view shows NULL, and a filter on it finds nothing
    with org.connect_as("mkt") as conn:
        row = conn.execute(
            "SELECT bank_account FROM crm_api.customers WHERE id = %s", (org.id("c1"),)
        ).fetchone()
        found = conn.execute(
            "SELECT count(*) FROM crm_api.customers WHERE bank_account LIKE '1903%%'"
        ).fetchone()
    assert row == (None,)
    assert found == (0,)


@ATTEMPT
def test_rep_cannot_update_another_reps_copy_through_the_side_table(org):
    # rep_a does not see c2: writing its financial group changes nothing, and the copy
    # stays as it was
    c2 = org.id("c2")
    with org.connect_as("rep_a", autocommit=False) as conn:
        cur = conn.execute(
            "UPDATE crm.customers__financial SET bank_account = 'HIJACK' WHERE id = %s", (c2,)
        )
        assert cur.rowcount == 0
        conn.rollback()
    with org.db.connect() as conn:
        copy = conn.execute(
            "SELECT (financial_copy).bank_account FROM crm.customers WHERE id = %s", (c2,)
        ).fetchone()
    assert copy == (BANK,)


def test_ids_come_from_the_sequence(org):
    # Partitions have no identity columns: an employee's insert still takes the next id,
    # whatever it asks for
    with org.connect_as("rep_a", autocommit=False) as conn:
        row = conn.execute(
            "INSERT INTO crm_api.customers (project_id, owner_id, full_name)"
            " SELECT project_id, owner_id, 'Seq' FROM crm_api.customers WHERE id = %s"
            " RETURNING id",
            (org.id("c1"),),
        ).fetchone()
        conn.rollback()
    assert row is not None and row[0] > org.id("c2")


@ATTEMPT
def test_audit_of_a_deleted_customer_holds_no_copy(org):
    # A customer deleted with a financial group: its DELETE row lists every column but
    # the read copies, and its old values show none
    with org.db.connect(autocommit=False) as conn:
        row = conn.execute(
            "INSERT INTO crm.customers (project_id, owner_id, full_name)"
            " SELECT project_id, owner_id, 'Gone' FROM crm.customers WHERE id = %s RETURNING id",
            (org.id("c1"),),
        ).fetchone()
        assert row is not None
        conn.execute(
            "UPDATE crm.customers__financial SET bank_account = %s WHERE id = %s", (BANK, row[0])
        )
        conn.execute("DELETE FROM crm.customers WHERE id = %s", row)
        logged = conn.execute(
            "SELECT changed_fields, old_values::text FROM crm.change_log"
            " WHERE table_name = 'customers' AND record_id = %s AND action = 'DELETE'",
            row,
        ).fetchone()
        conn.rollback()
    assert logged is not None
    assert "_copy" not in " ".join(logged[0]) + logged[1]
    assert BANK not in logged[1]
