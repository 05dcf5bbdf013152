"""Side channels: learning about hidden rows without reading them.

Errors raised while evaluating a condition on hidden rows, functions and operators that
leak their arguments, constraint violations that tell a hidden row exists, planner
statistics, EXPLAIN and sequences. Where a probe could tell "exists but hidden" from
"does not exist", the attempt compares the two: they must teach the same.
"""

import pytest
from attack_org import NEVER_USED_ID, VISIBLE, column, outcome, refused, rows, warnings_of
from psycopg import sql

from crmdb import admin

pytestmark = pytest.mark.attack("side channels")

LEAK_FUNCTION = (
    "CREATE FUNCTION pg_temp.leak(p_id bigint, p_name text) RETURNS boolean"
    " LANGUAGE plpgsql COST 0.0001 AS $$"
    " BEGIN RAISE NOTICE 'leak %', p_id; RETURN true; END $$"
)
NEW_CUSTOMER_WITH_ID = (
    "INSERT INTO crm.customers (id, project_id, owner_id, full_name)"
    " VALUES (%s, crm_private.project_id('saoviet.crm'), %s, 'probe') RETURNING id"
)


def seen_by_leak(attacker, *statements: str) -> set[str]:
    """Customers whose ids pg_temp.leak reported while `statements` ran."""
    notices = warnings_of(attacker.conn)
    for statement in (LEAK_FUNCTION, *statements):
        rows(attacker.conn, statement)
    return attacker.org.customer_keys(int(n.split()[1]) for n in notices if n.startswith("leak "))


# Errors evaluated on hidden rows ------------------------------------------------------


def test_division_by_zero_on_hidden_row(attacker):
    query = "SELECT id FROM crm.customers WHERE 1 / (id - %s) IS NOT NULL"
    # Expect no division_by_zero (it would fail the test): the condition never sees the
    # hidden target, and every visible row comes back
    assert set(column(attacker.conn, query, (attacker.target,))) <= attacker.visible


def test_cast_error_on_hidden_row(attacker):
    query = (
        "SELECT id FROM crm.customers WHERE (CASE WHEN id = %s THEN 'boom' ELSE '1' END)::int = 1"
    )
    # Expect no invalid_text_representation: the cast never sees the hidden target
    assert set(column(attacker.conn, query, (attacker.target,))) <= attacker.visible


def test_error_in_join_condition_on_hidden_row(attacker):
    query = (
        "SELECT c.id FROM crm.contracts AS k JOIN crm.customers AS c"
        " ON c.id = k.customer_id AND 1 / (c.id - %s) IS NOT NULL"
    )
    assert set(column(attacker.conn, query, (attacker.target,))) <= attacker.visible


# Functions and operators that leak their arguments -------------------------------------


def test_non_leakproof_function_sees_visible_rows_only(attacker):
    query = "SELECT count(*) FROM crm.customers WHERE pg_temp.leak(id, full_name)"
    # Expect notices for visible rows only, however cheap the function claims to be
    assert seen_by_leak(attacker, query) == VISIBLE[attacker.key]


def test_non_leakproof_operator_sees_visible_rows_only(attacker):
    operator = (
        "CREATE OPERATOR pg_temp.<<< (LEFTARG = bigint, RIGHTARG = text, FUNCTION = pg_temp.leak)"
    )
    query = "SELECT count(*) FROM crm.customers WHERE id OPERATOR(pg_temp.<<<) full_name"
    assert seen_by_leak(attacker, operator, query) == VISIBLE[attacker.key]


def test_leakproof_function_refused(attacker):
    query = LEAK_FUNCTION.replace("LANGUAGE plpgsql", "LANGUAGE plpgsql LEAKPROOF")
    # Expect permission denied: only superusers may mark a function LEAKPROOF
    assert refused(attacker.conn, query)


def test_leaky_function_in_order_by_and_select_list(attacker):
    query = "SELECT pg_temp.leak(id, full_name) FROM crm.customers ORDER BY 1"
    assert seen_by_leak(attacker, query) == VISIBLE[attacker.key]


# Constraint violations ----------------------------------------------------------------


def test_primary_key_probe_by_insert(attacker):
    conn = attacker.conn
    # Regression: an employee could insert with an explicit id; a duplicate-key error
    # said a hidden row had that id. Now ids are assigned: both probes teach the same.
    hidden = outcome(conn, NEW_CUSTOMER_WITH_ID, (attacker.target, attacker.me))
    absent = outcome(conn, NEW_CUSTOMER_WITH_ID, (NEVER_USED_ID, attacker.me))
    assert hidden == absent
    assert "duplicate key" not in hidden


def test_explicit_id_is_replaced(attacker):
    found = column(attacker.conn, NEW_CUSTOMER_WITH_ID, (NEVER_USED_ID, attacker.me))
    # Expect the row (if allowed at all) to get an id from the sequence, not the one asked
    # for: an id ahead of the sequence would make everybody's later inserts fail
    assert NEVER_USED_ID not in found


def test_primary_key_probe_by_on_conflict(attacker):
    query = NEW_CUSTOMER_WITH_ID.replace(" RETURNING", " ON CONFLICT (id) DO NOTHING RETURNING")
    hidden = outcome(attacker.conn, query, (attacker.target, attacker.me))
    absent = outcome(attacker.conn, query, (NEVER_USED_ID, attacker.me))
    assert hidden == absent


def test_primary_key_probe_by_merge(attacker):
    query = (
        "MERGE INTO crm.customers AS c USING (VALUES (%s::bigint)) AS v (id) ON c.id = v.id"
        " WHEN NOT MATCHED THEN INSERT (id, project_id, owner_id, full_name)"
        " VALUES (v.id, crm_private.project_id('saoviet.crm'), %s, 'probe')"
    )
    hidden = outcome(attacker.conn, query, (attacker.target, attacker.me))
    absent = outcome(attacker.conn, query, (NEVER_USED_ID, attacker.me))
    # Expect the same: the hidden row does not match, and its id is not reused
    assert hidden == absent


def test_primary_key_probe_by_update_of_id(attacker):
    query = "UPDATE crm.customers SET id = %s WHERE id = ANY (%s)"
    own = list(attacker.visible)
    hidden = outcome(attacker.conn, query, (attacker.target, own))
    absent = outcome(attacker.conn, query, (NEVER_USED_ID, own))
    assert hidden == absent


@pytest.mark.parametrize("table", ["contracts", "activities", "shares"])
def test_foreign_key_probe(attacker, table):
    query = {
        "contracts": "INSERT INTO crm.contracts (customer_id, project_id, owner_id, title)"
        " VALUES (%s, crm_private.project_id('saoviet.crm'), %s, 'probe')",
        "activities": "INSERT INTO crm.activities (customer_id, employee_id, kind, subject)"
        " VALUES (%s, %s, 'note', 'probe')",
        "shares": "INSERT INTO crm.shares (customer_id, grantee_employee_id, granted_by)"
        " VALUES (%s, %s, %s)",
    }[table]
    params_for = {
        "shares": lambda c: (c, attacker.org.emp("rep_b"), attacker.me),
    }.get(table, lambda c: (c, attacker.me))
    hidden = outcome(attacker.conn, query, params_for(attacker.target))
    absent = outcome(attacker.conn, query, params_for(NEVER_USED_ID))
    # Expect the same refusal for a hidden customer and one that does not exist
    assert hidden == absent


# Statistics, EXPLAIN, sequences ----------------------------------------------------------


def test_pg_stats_hides_crm_columns(attacker):
    with attacker.org.db.connect() as su:
        su.execute("ANALYZE crm.customers")
    found = rows(attacker.conn, "SELECT attname FROM pg_stats WHERE schemaname = 'crm'")
    # Expect nothing: PostgreSQL hides statistics of tables whose policies apply to you
    assert found == []


def test_pg_statistic_refused(attacker):
    assert refused(attacker.conn, "SELECT count(*) FROM pg_catalog.pg_statistic")


def test_extended_statistics_hidden(attacker):
    found = rows(attacker.conn, "SELECT * FROM pg_stats_ext WHERE schemaname = 'crm'")
    assert found == []


def test_explain_shows_no_hidden_values(attacker):
    query = "EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM crm.customers WHERE id = %s"
    plan = "\n".join(column(attacker.conn, query, (attacker.target,)))
    # Expect the plan (if any) to hold no value of the hidden row
    assert "Customer c3" not in plan


@pytest.mark.parametrize(
    "query",
    [
        "SELECT last_value FROM crm.customers_id_seq",
        "SELECT nextval('crm.customers_id_seq')",
        "SELECT setval('crm.customers_id_seq', 1)",
        "SELECT currval('crm.customers_id_seq')",
    ],
    ids=["read", "nextval", "setval", "currval"],
)
def test_sequence_refused(attacker, query):
    # Expect permission denied: employees hold no privilege on any sequence
    assert refused(attacker.conn, query)


def test_sequence_last_value_hidden(attacker):
    found = column(
        attacker.conn,
        "SELECT pg_sequence_last_value('crm.customers_id_seq')"
        " UNION ALL SELECT last_value FROM pg_sequences WHERE schemaname = 'crm'",
    )
    # Expect NULLs: last values are shown only to those with a privilege on the sequence
    assert set(found) <= {None}


def test_colleague_query_text_hidden(attacker):
    with attacker.org.db.connect_as(attacker.org.role("rep_c")) as colleague:
        colleague.execute("SELECT 'secret-marker-c3'")
        found = column(
            attacker.conn,
            "SELECT query FROM pg_stat_activity WHERE query LIKE '%%secret-marker%%'"
            " AND pid <> pg_backend_pid()",
        )
    # Expect no colleague's query text: other roles' sessions show <insufficient privilege>
    assert found == []


def test_explain_access_probe(attacker):
    query = "SELECT * FROM crm.explain_access('customers', %s)"
    hidden = outcome(attacker.conn, query, (attacker.target,))
    absent = outcome(attacker.conn, query, (NEVER_USED_ID,))
    assert hidden == absent


# Residual: documented in README (Security), asserted so a change shows up ---------------


def test_explain_analyze_cannot_tell_hidden_matches(attack_org, crmdb_guard):
    # PostgreSQL evaluates a leakproof condition (=, <, ...) before the policies, and
    # EXPLAIN ANALYZE would show whether rows got past it: an employee who could run
    # EXPLAIN ANALYZE would learn whether hidden rows hold a value (with `id = N`: which
    # rows, with `<` the value itself). crmdb_guard refuses EXPLAIN to employees
    # (test_attack_explain.py has every form).
    query = (
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF, BUFFERS OFF)"
        " SELECT id FROM crm.customers WHERE full_name = %s"
    )
    with attack_org.db.connect_as(attack_org.role("rep_a")) as conn:
        assert refused(conn, query, ("Customer c3",))
        assert refused(conn, query, ("Nobody at all",))


@pytest.mark.residual("catalog statistics count every row")
def test_table_size_statistics(attack_org):
    with attack_org.db.connect() as su:
        su.execute("ANALYZE crm.customers")
    with attack_org.db.connect_as(attack_org.role("rep_a")) as conn:
        row = conn.execute(
            "SELECT reltuples FROM pg_class WHERE oid = 'crm.customers'::regclass"
        ).fetchone()
    # reltuples (and pg_stat_user_tables, pg_relation_size) count hidden rows too:
    # anyone learns roughly how many customers the company has.
    assert row is not None and row[0] == len(attack_org.superuser("SELECT id FROM crm.customers"))


# Project codes (issue 8) ------------------------------------------------------------------


def test_project_id_probe(attacker):
    # Regression: crm_private.project_id gave anyone the id of any project, so a code
    # told whether such a project exists. p2 is hidden from every attacker: it must
    # answer as a code no project has
    query = "SELECT crm_private.project_id(%s)"
    assert column(attacker.conn, query, ("p2",)) == column(attacker.conn, query, ("no-such",))
    assert column(attacker.conn, query, ("p2",)) in ([None], [])
    # Expect their own project to resolve (the departed have no identity, hence none)
    own = column(attacker.conn, query, ("saoviet.crm",))
    p1 = attacker.org.superuser("SELECT id FROM crm.projects WHERE code = 'saoviet.crm'")[0][0]
    assert own in (([None], []) if attacker.key == "gone" else ([p1],))


def test_project_id_for_a_colleague(attacker):
    # rep_c works in p2: asking in rep_c's name teaches nothing either
    query = "SELECT crm_private.project_id_for(%s, %s)"
    rep_c = attacker.org.role("rep_c")
    hidden = outcome(attacker.conn, query, (rep_c, "p2"))
    absent = outcome(attacker.conn, query, (rep_c, "no-such"))
    assert hidden == absent
    assert column(attacker.conn, query, (rep_c, "p2")) in ([None], [])


def test_project_id_through_a_sharing_rule(attack_org):
    # A sharing rule's audience resolves the rule's project (its policy names the
    # project by code) even without working in it, and nothing else: an employee of
    # the rule's unit (saoviet.hn.cskh) who works only in p2
    with attack_org.db.connect(autocommit=False) as su, su.transaction(force_rollback=True):
        role = attack_org.db.role("rule_only")
        admin.add_employee(su, role, "rule only", "rule_only@attack.test", "saoviet.hn.cskh")
        admin.add_project_member(su, "p2", role, "sales", "sales_rep")
        su.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        found = {
            code: column(su, "SELECT crm_private.project_id(%s)", (code,))[0]
            for code in ("saoviet.crm", "p2", "no-such")
        }
        su.execute("RESET ROLE")
        ids = dict(attack_org.superuser("SELECT code, id FROM crm.projects"))
    assert found == {"saoviet.crm": ids["saoviet.crm"], "p2": ids["p2"], "no-such": None}
