"""crmdb/policies/tables.py (the tables role templates govern) against the database.

The registry is data the compiler trusts: column lists for criteria checks and insert
probes, and the column each scope is anchored on. These tests read the catalog so
that the registry and sql/schema.sql cannot drift apart, and check that every crm
table is under forced row-level security once the templates are applied.
"""

from collections.abc import Iterator

import pytest
from policy_org import PolicyOrg, shared_policy_org

from crmdb.policies.apply import load_desired
from crmdb.policies.plan import make_plan
from crmdb.policies.tables import TABLES

BASE_TABLES = (
    "SELECT table_name::text FROM information_schema.tables"
    " WHERE table_schema = 'crm' AND table_type = 'BASE TABLE' ORDER BY 1"
)
# Not the read copies of field groups (of crm_vault types, migration 0017): no template
# names them, only crm_api's views read them
COLUMNS = (
    "SELECT column_name::text, data_type::text FROM information_schema.columns"
    " WHERE table_schema = 'crm' AND table_name = %s AND udt_schema <> 'crm_vault'"
    " ORDER BY ordinal_position"
)
# Single-column foreign keys of crm tables: (table, column) -> referenced table
FOREIGN_KEYS = """
SELECT c.relname::text, a.attname::text, r.relname::text
  FROM pg_constraint AS k
  JOIN pg_class AS c ON c.oid = k.conrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  JOIN pg_class AS r ON r.oid = k.confrelid
  JOIN pg_attribute AS a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
 WHERE n.nspname = 'crm' AND k.contype = 'f' AND cardinality(k.conkey) = 1
"""
RLS_FLAGS = """
SELECT n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('crm', 'crm_private') AND c.relkind = 'r'
 ORDER BY 1
"""
# Which table each kind of scope column points at.
POINTS_AT = {
    "owner": "employees",
    "org_unit": "org_units",
    "project": "projects",
    "customer": "customers",
}
# Deliberately not foreign keys: the audit trail keeps rows of any actor.
NOT_FOREIGN_KEYS = {("change_log", "actor_employee_id"), ("change_log", "project_id")}


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[PolicyOrg]:
    yield from shared_policy_org(scratch, extras=False)


def test_registry_names_every_crm_table(org):
    with org.db.connect() as conn:
        tables = [r[0] for r in conn.execute(BASE_TABLES)]
    # Expect the same tables: a table the registry misses would have no policies at all
    assert sorted(TABLES) == tables


@pytest.mark.parametrize("table", sorted(TABLES))
def test_registry_columns_match_the_catalog(org, table):
    with org.db.connect() as conn:
        columns = [r[0] for r in conn.execute(COLUMNS, (table,))]
    # Expect the registry's columns, in the table's order
    assert list(TABLES[table].columns) == columns


@pytest.mark.parametrize("table", sorted(TABLES))
def test_scope_columns_point_where_they_should(org, table):
    spec = TABLES[table]
    with org.db.connect() as conn:
        types = dict(conn.execute(COLUMNS, (table,)).fetchall())
        keys = {(t, c): r for t, c, r in conn.execute(FOREIGN_KEYS)}
    for kind, target in POINTS_AT.items():
        column = getattr(spec, kind)
        if column is None:
            continue
        # Expect a bigint id column ...
        assert types.get(column) == "bigint", f"{table}.{column} ({kind})"
        # ... that is the target's own id, or a foreign key to the target
        if (table, column) in NOT_FOREIGN_KEYS or (table == target and column == "id"):
            continue
        if spec.parent:
            # A field group's anchors are copies of its parent's (checked there); its id
            # is the parent's
            parent = TABLES[spec.parent]
            assert keys.get((table, "id")) == spec.parent
            assert column == "id" or column in parent.anchors, f"{table}.{column} ({kind})"
            continue
        assert keys.get((table, column)) == target, f"{table}.{column} ({kind})"
    # Expect anchors to be real columns, and the column `crmdb policy test` sets to
    # probe an update too, on tables whose rows it can probe (those with an id)
    assert set(spec.anchors) <= set(types), spec.anchors
    if "id" in types:
        assert spec.touch in types


def test_every_table_forces_row_level_security_after_apply(org):
    with org.db.connect() as conn:
        flags = conn.execute(RLS_FLAGS).fetchall()
    # Expect every table enabled and forced: even its owner goes through policies
    assert [f for f in flags if not (f[1] and f[2])] == []
    assert {f[0] for f in flags} >= {f"crm.{t}" for t in TABLES}


def test_plan_forces_row_level_security_again(org):
    with org.db.connect(autocommit=False) as conn, conn.transaction(force_rollback=True):
        conn.execute("ALTER TABLE crm.customers NO FORCE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE crm.shares DISABLE ROW LEVEL SECURITY")
        statements = make_plan(conn, load_desired()).statements
    # Expect the plan to turn both back on, and to change nothing else
    assert statements == [
        "ALTER TABLE crm.customers FORCE ROW LEVEL SECURITY;",
        "ALTER TABLE crm.shares ENABLE ROW LEVEL SECURITY;",
    ]


def test_every_policy_is_on_a_registry_table(org):
    with org.db.connect() as conn:
        policies = conn.execute(
            "SELECT tablename::text, policyname::text FROM pg_policies"
            " WHERE schemaname = 'crm' AND policyname NOT LIKE 'crmdb\\_%'"
        ).fetchall()
    # Expect every generated policy to be named after its table: {table}__...
    assert policies and all(name.startswith(f"{table}__") for table, name in policies)
    # Expect generated policies on every registry table templates may name, and on each
    # field group's table: some template grants each (the others have fixed crmdb_*
    # policies of their own)
    assert {table for table, _ in policies} == {
        t for t, spec in TABLES.items() if spec.templates or spec.parent
    }


def test_owner_administers_but_does_not_inherit_template_and_rule_roles(org):
    owner_only = (
        "SELECT r.rolname::text, pg_has_role('crmdb_owner', r.oid, 'MEMBER WITH ADMIN OPTION'),"
        " pg_has_role('crmdb_owner', r.oid, 'USAGE')"
        " FROM pg_roles AS r"
        " WHERE r.rolname LIKE 'crmdb\\_tpl\\_%' OR r.rolname LIKE 'crmdb\\_rule\\_%'"
    )
    with org.db.connect() as conn:
        rows = conn.execute(owner_only).fetchall()
        conn.execute("SET ROLE crmdb_owner")
        # Expect the owner's own queries (in the helpers) to plan only its own policy
        plan = conn.execute("EXPLAIN SELECT * FROM crm.shares").fetchall()
        conn.execute("RESET ROLE")
    assert rows and {role for role, _, _ in rows} >= {"crmdb_tpl_sales_rep"}
    # Expect ADMIN OPTION (to grant them) on every role, and none inherited
    assert [r for r in rows if not r[1] or r[2]] == []
    assert not any("SubPlan" in line or "InitPlan" in line for (line,) in plan), plan
