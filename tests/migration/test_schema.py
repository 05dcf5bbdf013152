"""Applying migrations/ in order yields exactly sql/schema.sql, object for object.

One database runs sql/schema.sql, another runs every migration; their catalog
snapshots (crmdb.catalog) must be equal. The other tests prove the comparison can
fail: a snapshot that missed a kind of object would let drift through silently.
"""

from collections.abc import Iterator

import pytest

from crmdb import migrate
from crmdb.catalog import Snapshot, as_dict, diff, snapshot
from crmdb.resources import sql_path
from crmdb.testing.scratch import ScratchDatabase, ScratchFactory


def keys(snap: Snapshot, category: str) -> set[str]:
    return {row[0] for row in snap[category]}


@pytest.fixture
def from_schema_sql(empty_db: ScratchDatabase) -> ScratchDatabase:
    script = sql_path("schema.sql").read_text(encoding="utf-8")
    with empty_db.connect() as conn:
        # Without parameters psycopg sends the whole file as one simple query.
        conn.execute(script)
    return empty_db


@pytest.fixture
def from_migrations(scratch: ScratchFactory) -> Iterator[ScratchDatabase]:
    database = scratch.empty()
    try:
        assert migrate.apply(database.target)
        yield database
    finally:
        database.drop()


@pytest.fixture(scope="module")
def migrated(scratch: ScratchFactory) -> Iterator[ScratchDatabase]:
    """One migrated database for the module; tests change it only inside a rollback."""
    database = scratch.migrated()
    try:
        yield database
    finally:
        database.drop()


@pytest.fixture(scope="module")
def baseline(migrated: ScratchDatabase) -> Snapshot:
    with migrated.connect() as conn:
        return snapshot(conn)


def test_migrations_yield_schema_sql(
    from_schema_sql: ScratchDatabase, from_migrations: ScratchDatabase
) -> None:
    with from_schema_sql.connect() as conn:
        expected = snapshot(conn)
    with from_migrations.connect() as conn:
        actual = snapshot(conn)
    drift = diff(expected, actual, left="schema.sql", right="migrations")
    assert not drift, "migrations/ and sql/schema.sql differ:\n" + "\n".join(drift)
    assert expected == actual


def test_snapshot_is_not_trivial(baseline: Snapshot) -> None:
    tables = {row[0] for row in baseline["relations"] if as_dict(row)["kind"] == "r"}
    assert "crm.customers" in tables
    assert len(tables) >= 10
    assert len(baseline["functions"]) >= 10
    assert "crm.current_employee_id()" in keys(baseline, "functions")
    assert len(baseline["columns"]) >= 50
    assert len(baseline["constraints"]) >= 20
    assert len(baseline["indexes"]) >= 10
    assert len(baseline["triggers"]) >= 10
    assert "crm.customers.crmdb_owner_all" in keys(baseline, "policies")
    assert "crm.customer_stage" in keys(baseline, "enums")
    assert {"crm", "crm_private", "crm_admin"} <= keys(baseline, "schemas")
    assert {
        "schema crm",
        "table crm.customers",
        "table column crm.customers.province",
        "type crm.customer_stage",
        "function crm.current_employee_id()",
    } <= keys(baseline, "comments")
    assert baseline["default_privileges"], "0001 revokes EXECUTE from PUBLIC by default"
    assert all(as_dict(row)["present"] for row in baseline["roles"])
    assert keys(baseline, "roles") == {"crmdb_owner", "crmdb_employee"}


# Each change must show up in diff() as a line naming the changed object.
MUTATIONS = [
    pytest.param(
        "COMMENT ON TABLE crm.customers IS 'x'",
        "comments table crm.customers: description",
        id="comment-table",
    ),
    pytest.param(
        "COMMENT ON SCHEMA crm IS 'x'", "comments schema crm: description", id="comment-schema"
    ),
    pytest.param(
        "COMMENT ON COLUMN crm.customers.province IS NULL",
        "comments table column crm.customers.province: only in baseline",
        id="comment-column",
    ),
    pytest.param(
        "COMMENT ON FUNCTION crm.current_employee_id() IS 'x'",
        "comments function crm.current_employee_id(): description",
        id="comment-function",
    ),
    pytest.param(
        "COMMENT ON TYPE crm.solution IS 'x'",
        "comments type crm.solution: description",
        id="comment-type",
    ),
    pytest.param(
        "COMMENT ON TRIGGER _100_touch ON crm.customers IS 'x'",
        "comments trigger _100_touch on crm.customers: only in changed",
        id="comment-trigger",
    ),
    pytest.param(
        "COMMENT ON POLICY crmdb_owner_all ON crm.customers IS 'x'",
        "comments policy crmdb_owner_all on crm.customers: only in changed",
        id="comment-policy",
    ),
    pytest.param(
        "COMMENT ON CONSTRAINT customers_score_check ON crm.customers IS 'x'",
        "comments table constraint customers_score_check on crm.customers: only in changed",
        id="comment-constraint",
    ),
    pytest.param(
        "COMMENT ON INDEX crm.customers_stage_idx IS 'x'",
        "comments index crm.customers_stage_idx: only in changed",
        id="comment-index",
    ),
    pytest.param(
        "DROP INDEX crm.customers_stage_idx",
        "indexes crm.customers_stage_idx: only in baseline",
        id="drop-index",
    ),
    pytest.param(
        "DROP INDEX crm.customers_stage_idx; CREATE INDEX customers_stage_idx"
        " ON crm.customers (stage, source)",
        "indexes crm.customers_stage_idx: definition",
        id="change-index",
    ),
    pytest.param(
        "ALTER TYPE crm.solution ADD VALUE 'support'",
        "enums crm.solution: labels",
        id="enum-label",
    ),
    pytest.param(
        "ALTER TYPE crm.solution RENAME VALUE 'sales' TO 'selling'",
        "enums crm.solution: labels",
        id="enum-rename",
    ),
    pytest.param(
        "REVOKE USAGE ON TYPE crm.solution FROM PUBLIC",
        "types crm.solution: acl",
        id="type-acl",
    ),
    pytest.param(
        "CREATE DOMAIN crm.email AS text CHECK (VALUE ~ '@')",
        "types crm.email: only in changed",
        id="domain",
    ),
    pytest.param(
        "ALTER TABLE crm.customers ALTER COLUMN score SET DEFAULT 1",
        "columns crm.customers.score: default_expr",
        id="column-default",
    ),
    pytest.param(
        "ALTER TABLE crm.customers ALTER COLUMN province SET NOT NULL",
        "columns crm.customers.province: not_null",
        id="column-not-null",
    ),
    pytest.param(
        "ALTER TABLE crm.activities ALTER COLUMN body TYPE varchar(200)",
        "columns crm.activities.body: data_type",
        id="column-type",
    ),
    pytest.param(
        'ALTER TABLE crm.activities ALTER COLUMN body SET DATA TYPE text COLLATE "C"',
        "columns crm.activities.body: collation",
        id="column-collation",
    ),
    pytest.param(
        "ALTER TABLE crm.activities ADD COLUMN extra integer",
        "columns crm.activities.extra: only in changed",
        id="column-added",
    ),
    pytest.param(
        # Same columns, different order: to_jsonb, SELECT * and COPY would differ.
        "ALTER TABLE crm.activities DROP COLUMN body;"
        " ALTER TABLE crm.activities ADD COLUMN body text",
        "columns crm.activities.body: position",
        id="column-order",
    ),
    pytest.param(
        "ALTER TABLE crm.activities ALTER COLUMN id SET GENERATED ALWAYS",
        "columns crm.activities.id: identity",
        id="column-identity",
    ),
    pytest.param(
        "GRANT SELECT (province) ON crm.customers TO crmdb_employee",
        "columns crm.customers.province: acl",
        id="column-acl",
    ),
    pytest.param(
        "ALTER TABLE crm.customers DROP CONSTRAINT customers_score_check",
        "constraints crm.customers.customers_score_check: only in baseline",
        id="drop-constraint",
    ),
    pytest.param(
        "ALTER TABLE crm.customers DROP CONSTRAINT customers_score_check;"
        " ALTER TABLE crm.customers ADD CONSTRAINT customers_score_check CHECK (score <= 99)",
        "constraints crm.customers.customers_score_check: definition",
        id="change-constraint",
    ),
    pytest.param(
        "GRANT SELECT ON crm.customers TO crmdb_employee",
        "relations crm.customers: acl",
        id="table-acl",
    ),
    pytest.param(
        "ALTER TABLE crm.projects OWNER TO crmdb_employee",
        "relations crm.projects: owner",
        id="table-owner",
    ),
    pytest.param(
        "ALTER TABLE crm.shares NO FORCE ROW LEVEL SECURITY",
        "relations crm.shares: rls_forced",
        id="rls-forced",
    ),
    pytest.param(
        "ALTER TABLE crm.shares DISABLE ROW LEVEL SECURITY",
        "relations crm.shares: rls_enabled",
        id="rls-enabled",
    ),
    pytest.param(
        "ALTER TABLE crm.customers SET (fillfactor = 80)",
        "relations crm.customers: options",
        id="table-options",
    ),
    pytest.param(
        "CREATE VIEW crm.customer_names AS SELECT full_name FROM crm.customers",
        "relations crm.customer_names: only in changed",
        id="view",
    ),
    pytest.param(
        "ALTER SEQUENCE crm.customers_id_seq INCREMENT BY 2",
        "sequences crm.customers_id_seq: increment",
        id="sequence",
    ),
    pytest.param(
        "ALTER TABLE crm.employees DISABLE TRIGGER _100_touch",
        "triggers crm.employees._100_touch: enabled",
        id="trigger-disabled",
    ),
    pytest.param(
        "DROP TRIGGER _500_audit_insert ON crm.customers",
        "triggers crm.customers._500_audit_insert: only in baseline",
        id="drop-trigger",
    ),
    pytest.param(
        "CREATE OR REPLACE FUNCTION crm_private.touch_updated_at() RETURNS trigger"
        " LANGUAGE plpgsql SET search_path = '' AS $$ BEGIN RETURN NEW; END $$",
        "functions crm_private.touch_updated_at(): definition differs",
        id="function-body",
    ),
    pytest.param(
        "GRANT EXECUTE ON FUNCTION crm_private.acting_role() TO crmdb_employee",
        "functions crm_private.acting_role(): acl",
        id="function-acl",
    ),
    pytest.param(
        "ALTER FUNCTION crm_private.employee_id_for(name) SECURITY INVOKER",
        "functions crm_private.employee_id_for(name): security_definer",
        id="function-security",
    ),
    pytest.param(
        "ALTER FUNCTION crm.current_employee_id() RESET search_path",
        "functions crm.current_employee_id(): config",
        id="function-config",
    ),
    pytest.param(
        "ALTER FUNCTION crm_private.acting_role() OWNER TO crmdb_employee",
        "functions crm_private.acting_role(): owner",
        id="function-owner",
    ),
    pytest.param(
        "ALTER POLICY crmdb_owner_all ON crm.customers USING (false)",
        "policies crm.customers.crmdb_owner_all: using_expr",
        id="policy-using",
    ),
    pytest.param(
        "ALTER POLICY crmdb_owner_all ON crm.customers TO crmdb_owner, crmdb_employee",
        "policies crm.customers.crmdb_owner_all: roles",
        id="policy-roles",
    ),
    pytest.param(
        "DROP POLICY crmdb_owner_all ON crm.shares",
        "policies crm.shares.crmdb_owner_all: only in baseline",
        id="drop-policy",
    ),
    pytest.param(
        "REVOKE USAGE ON SCHEMA crm FROM crmdb_employee",
        "schemas crm: acl",
        id="schema-acl",
    ),
    pytest.param(
        "ALTER DEFAULT PRIVILEGES FOR ROLE crmdb_owner GRANT EXECUTE ON FUNCTIONS TO PUBLIC",
        "default_privileges crmdb_owner * f: only in baseline",
        id="default-privileges",
    ),
    pytest.param(
        'CREATE COLLATION crm.ordinal FROM "C"',
        "objects collation crm.ordinal: only in changed",
        id="other-object",
    ),
]


@pytest.mark.parametrize(("change", "expected"), MUTATIONS)
def test_snapshot_notices_drift(
    migrated: ScratchDatabase, baseline: Snapshot, change: str, expected: str
) -> None:
    with migrated.connect() as conn:
        # DDL is transactional: every change is undone, so the tests share one database.
        with conn.transaction(force_rollback=True):
            conn.execute(change)
            changed = snapshot(conn)
        assert snapshot(conn) == baseline, "the change must have been rolled back"
    lines = diff(baseline, changed, left="baseline", right="changed")
    assert any(line.startswith(expected) for line in lines), "\n".join(lines)
