"""Reading hidden rows: every way SQL can hand back rows must go through the policies.

Each attempt runs as each attacker (conftest.py) and may return only customers the
attacker may see (attack_org.VISIBLE); refusals count as blocked too.
"""

import pytest
from attack_org import VISIBLE, attacker_session, column, refused, rows, touched

pytestmark = pytest.mark.attack("reading hidden rows")

CHILD_TABLES = ("contracts", "activities", "shares")


def test_ground_truth_plain_select_is_exactly_visible(attacker):
    # Expect exactly VISIBLE[attacker]: the suite's ground truth agrees with the policies
    ids = column(attacker.conn, "SELECT id FROM crm.customers")
    assert attacker.org.customer_keys(ids) == VISIBLE[attacker.key]


def test_select_target_by_id(attacker):
    # Expect 0 rows: c3 is in p2, where no attacker holds a template
    assert (
        column(attacker.conn, "SELECT id FROM crm.customers WHERE id = %s", (attacker.target,))
        == []
    )


def test_select_through_scalar_subquery(attacker):
    found = column(
        attacker.conn,
        "SELECT (SELECT full_name FROM crm.customers WHERE id = %s)",
        (attacker.target,),
    )
    # Expect NULL (or a refusal): the sub-select is filtered like any other
    assert found in ([], [None])


@pytest.mark.parametrize("table", CHILD_TABLES)
def test_child_rows_of_hidden_customers(attacker, table):
    query = f"SELECT customer_id FROM crm.{table}"
    # Expect only rows of customers the attacker sees
    assert attacker.leaked(column(attacker.conn, query)) == set()


@pytest.mark.parametrize("table", CHILD_TABLES)
def test_join_from_child_rows_to_customers(attacker, table):
    query = (
        f"SELECT c.id FROM crm.{table} AS x RIGHT JOIN crm.customers AS c ON c.id = x.customer_id"
    )
    # Expect only visible customers, however the join is written
    assert attacker.leaked(column(attacker.conn, query)) == set()


def test_temporary_view_over_customers(attacker):
    # A view the attacker defines runs with the attacker's rights: policies apply.
    # Field-level (issue 5): crm_api views and masked columns get their attempts here.
    found = rows(attacker.conn, "CREATE TEMP VIEW v AS SELECT id FROM crm.customers")
    assert found == []
    assert attacker.leaked(column(attacker.conn, "SELECT id FROM v")) == set()


def test_copy_query_to_stdout(attacker):
    conn = attacker.conn
    copied: list[int] = []
    try:
        with (
            conn.transaction(),
            conn.cursor().copy("COPY (SELECT id FROM crm.customers) TO STDOUT") as copy,
        ):
            copied = [int(row[0]) for row in copy.rows()]
    except Exception as exc:  # a refusal is fine: permission denied
        assert "permission denied" in str(exc)
    # Expect only visible ids in the COPY stream
    assert attacker.leaked(copied) == set()


def test_copy_table_to_stdout(attacker):
    conn = attacker.conn
    copied: list[int] = []
    try:
        with conn.transaction(), conn.cursor().copy("COPY crm.customers (id) TO STDOUT") as copy:
            copied = [int(row[0]) for row in copy.rows()]
    except Exception as exc:
        assert "permission denied" in str(exc)
    # Expect only visible ids: COPY of a table with row-level security applies it
    assert attacker.leaked(copied) == set()


def test_update_returning(attacker):
    query = (
        "UPDATE crm.customers SET product_interest = product_interest"
        " WHERE id = ANY (%s) RETURNING id"
    )
    every = list(attacker.visible | {attacker.target})
    # Expect RETURNING to hand back only rows the update could reach
    assert attacker.leaked(column(attacker.conn, query, (every,))) == set()


def test_delete_returning(attacker):
    query = "DELETE FROM crm.activities RETURNING customer_id"
    # Expect only activities of visible customers (or a refusal)
    assert attacker.leaked(column(attacker.conn, query)) == set()


def test_insert_select_copies_hidden_row(attacker):
    query = (
        "INSERT INTO crm.customers (project_id, owner_id, full_name)"
        " SELECT project_id, %s, full_name FROM crm.customers WHERE id = %s RETURNING full_name"
    )
    # Expect nothing copied: the SELECT half sees no hidden row
    assert column(attacker.conn, query, (attacker.me, attacker.target)) == []


def test_insert_returning_hidden_customer_activity(attacker):
    query = (
        "INSERT INTO crm.activities (customer_id, employee_id, kind, subject)"
        " VALUES (%s, %s, 'note', 'probe') RETURNING customer_id"
    )
    # Expect a refusal: an activity may only point at a visible customer
    assert column(attacker.conn, query, (attacker.target, attacker.me)) == []


def test_on_conflict_do_update_on_hidden_id(attacker):
    query = (
        "INSERT INTO crm.customers (id, project_id, owner_id, full_name)"
        " VALUES (%s, crm_private.project_id('saoviet.crm'), %s, 'probe')"
        " ON CONFLICT (id) DO UPDATE SET product_interest = 'taken' RETURNING id, full_name"
    )
    found = rows(attacker.conn, query, (attacker.target, attacker.me))
    # Expect no hidden row back: the id is the database's to give (crm_private.assign_id)
    assert attacker.leaked(r[0] for r in found) == set()
    assert [r[1] for r in found] in ([], ["probe"])


def test_merge_updates_hidden_row(attacker):
    query = (
        "MERGE INTO crm.customers AS c USING (VALUES (%s::bigint)) AS v (id) ON c.id = v.id"
        " WHEN MATCHED THEN UPDATE SET product_interest = 'merged'"
    )
    # Expect 0 rows: the hidden target does not match
    assert touched(attacker.conn, query, (attacker.target,)) == 0


def test_merge_deletes_hidden_row(attacker):
    query = (
        "MERGE INTO crm.customers AS c USING (VALUES (%s::bigint)) AS v (id) ON c.id = v.id"
        " WHEN MATCHED THEN DELETE"
    )
    # Expect 0 rows deleted
    assert touched(attacker.conn, query, (attacker.target,)) == 0


def test_data_modifying_with(attacker):
    query = (
        "WITH u AS (UPDATE crm.customers SET product_interest = 'cte' WHERE id = %s RETURNING id)"
        " SELECT id FROM u"
    )
    # Expect 0 rows: the CTE's update reaches no hidden row
    assert column(attacker.conn, query, (attacker.target,)) == []


def test_data_modifying_with_delete_into_select(attacker):
    query = (
        "WITH d AS (DELETE FROM crm.shares RETURNING customer_id)"
        " SELECT c.id FROM crm.customers AS c WHERE c.id IN (SELECT customer_id FROM d)"
    )
    # Expect only visible customers
    assert attacker.leaked(column(attacker.conn, query)) == set()


def test_cursor_fetch(attacker):
    conn = attacker.conn
    if refused(conn, "DECLARE probe SCROLL CURSOR FOR SELECT id FROM crm.customers"):
        return  # blocked: no privilege on crm.customers at all
    fetched = column(conn, "FETCH ALL FROM probe") + column(conn, "FETCH BACKWARD ALL FROM probe")
    # Expect only visible ids, forwards and backwards
    assert attacker.leaked(fetched) == set()


def test_prepared_statement(attacker):
    conn = attacker.conn
    rows(conn, "PREPARE probe (bigint) AS SELECT id FROM crm.customers WHERE id <> $1")
    # Expect only visible ids from the prepared plan, executed twice (generic plan too)
    first = column(conn, "EXECUTE probe (0)")
    again = column(conn, "EXECUTE probe (0)")
    assert attacker.leaked(first + again) == set()


def test_explain_access_of_target(attacker):
    query = "SELECT template FROM crm.explain_access('customers', %s)"
    # Expect no path: explain_access answers for the attacker's own access only
    assert column(attacker.conn, query, (attacker.target,)) == []


def test_prior_row_helper_on_target(attacker):
    query = "SELECT id FROM crm_private.prior_customers(%s)"
    # Expect 0 rows: the prior-row helpers read through the caller's policies
    assert column(attacker.conn, query, (attacker.target,)) == []


def test_audit_trail_of_hidden_customers(attacker):
    query = "SELECT record_id FROM crm.change_log WHERE table_name = 'customers'"
    # Expect no change_log row of a hidden customer (attackers hold no audit template)
    assert attacker.leaked(column(attacker.conn, query)) == set()


def test_project_admin_reads_audit_trail_of_other_project(attack_org):
    # Regression: admin.yaml read change_log with scope `all`, i.e. the history (with
    # full old and new values) of every project's customers. Now scope project.
    with attacker_session(attack_org, "adm") as adm:
        query = "SELECT record_id FROM crm.change_log WHERE table_name = 'customers'"
        found = column(adm.conn, query)
        # Expect the history of saoviet.crm customers, and none of c3 (project p2)
        assert found
        assert adm.leaked(found) == set()
