"""`crmdb lint` on the demo database (clean) and on deliberately broken copies of it.

Each break runs in a transaction on the demo database that is rolled back: lint must
report the finding with its fix, and running the fix in the same transaction must
clear it. The CLI is run once on the clean demo and once on a database that misses
its policies (exit status 3, --json).
"""

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from crmdb.cli import main
from crmdb.demo import load_demo
from crmdb.lint import Finding, lint
from crmdb.policies.apply import apply_in, load_desired
from crmdb.policies.compile import Desired
from crmdb.testing.scratch import TEST_PASSWORD, ScratchDatabase, ScratchFactory

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def desired() -> Desired:
    return load_desired()


@pytest.fixture(scope="module")
def demo(scratch: ScratchFactory, desired: Desired) -> Iterator[ScratchDatabase]:
    db = scratch.migrated()
    try:
        with db.connect(autocommit=False) as conn, conn.transaction():
            load_demo(conn, role_prefix=db.role("demo_"), password=TEST_PASSWORD, now=NOW)
            apply_in(conn, desired)
        yield db
    finally:
        db.drop()


@pytest.fixture
def broken(demo: ScratchDatabase) -> Iterator[psycopg.Connection]:
    """A superuser session on the demo database, in a transaction rolled back."""
    with demo.connect(autocommit=False) as conn, conn.transaction(force_rollback=True):
        yield conn


@pytest.fixture(scope="module")
def employee(demo: ScratchDatabase) -> str:
    with demo.connect() as conn:
        row = conn.execute("SELECT min(role_name) FROM crm.employees").fetchone()
    assert row is not None
    return str(row[0])


def findings_of(conn: psycopg.Connection, desired: Desired, kind: str) -> list[Finding]:
    return [f for f in lint(conn, desired) if f.kind == kind]


def assert_found_and_fixed(
    conn: psycopg.Connection, desired: Desired, kind: str, obj: str, fix: str
) -> None:
    """Lint reports `kind` on `obj` with a fix containing `fix`; the fix clears it."""
    found = [f for f in findings_of(conn, desired, kind) if f.object == obj]
    assert len(found) == 1, lint(conn, desired)
    assert fix in found[0].fix
    conn.execute(found[0].fix)  # type: ignore[arg-type]
    assert [f for f in findings_of(conn, desired, kind) if f.object == obj] == []


def test_demo_database_is_clean(demo, desired, crmdb_guard):
    with demo.connect() as conn:
        # Expect no finding: migrations plus policy apply make a database lint accepts
        assert lint(conn, desired) == []
    result = CliRunner().invoke(main, ["lint", "--dsn", demo.target.conninfo])
    assert result.exit_code == 0, result.output
    assert "0 finding(s)" in result.output


def test_sessions_without_crmdb_guard(demo, desired, crmdb_guard):
    # A superuser may start a session without the preloaded libraries: as if not installed
    uri = demo.cluster.uri(demo.name, options="-c session_preload_libraries=")
    with psycopg.connect(uri) as conn:
        found = findings_of(conn, desired, "explain_guard")
    assert [f.object for f in found] == ["session_preload_libraries"]
    assert "EXPLAIN ANALYZE" in found[0].problem and "crmdb guard enable" in found[0].fix


def test_rls_not_forced(broken, desired):
    broken.execute("ALTER TABLE crm.customers NO FORCE ROW LEVEL SECURITY")
    assert_found_and_fixed(
        broken,
        desired,
        "rls_not_forced",
        "crm.customers",
        "ALTER TABLE crm.customers FORCE ROW LEVEL SECURITY;",
    )


def test_table_without_rls(broken, desired):
    broken.execute("SET LOCAL ROLE crmdb_owner")
    broken.execute("CREATE TABLE crm.notes (id bigint)")
    broken.execute("RESET ROLE")
    assert_found_and_fixed(
        broken, desired, "rls_disabled", "crm.notes", "ENABLE ROW LEVEL SECURITY"
    )


def test_rls_disabled_on_a_protected_table(broken, desired):
    broken.execute("ALTER TABLE crm.shares DISABLE ROW LEVEL SECURITY")
    assert_found_and_fixed(
        broken,
        desired,
        "rls_disabled",
        "crm.shares",
        "ALTER TABLE crm.shares ENABLE ROW LEVEL SECURITY;",
    )


def test_view_without_security_invoker(broken, desired):
    broken.execute("CREATE VIEW crm.leads AS SELECT id FROM crm.customers")
    assert_found_and_fixed(
        broken,
        desired,
        "view_not_security_invoker",
        "crm.leads",
        "ALTER VIEW crm.leads SET (security_invoker = true);",
    )


def test_security_definer_without_search_path(broken, desired):
    broken.execute(
        "CREATE FUNCTION crm_private.probe() RETURNS bigint LANGUAGE sql SECURITY DEFINER"
        " AS 'SELECT count(*) FROM crm.customers'"
    )
    assert_found_and_fixed(
        broken,
        desired,
        "function_search_path",
        "crm_private.probe()",
        "ALTER FUNCTION crm_private.probe() SET search_path = pg_catalog, pg_temp;",
    )


def test_search_path_with_pg_temp_first(broken, desired):
    broken.execute("ALTER FUNCTION crm_private.subordinate_ids(name) SET search_path = ''")
    found = findings_of(broken, desired, "function_search_path")
    assert [f.object for f in found] == ["crm_private.subordinate_ids(name)"]
    assert "searches pg_temp before pg_catalog" in found[0].problem
    assert_found_and_fixed(
        broken,
        desired,
        "function_search_path",
        "crm_private.subordinate_ids(name)",
        "SET search_path = pg_catalog, pg_temp;",
    )


@pytest.mark.parametrize("attribute", ["BYPASSRLS", "SUPERUSER", "CREATEROLE"])
def test_employee_role_with_attribute(broken, desired, employee, attribute):
    broken.execute(f'ALTER ROLE "{employee}" {attribute}')  # type: ignore[arg-type]
    found = findings_of(broken, desired, "privileged_role")
    assert [f.object for f in found] == [employee]
    assert attribute in found[0].problem
    assert_found_and_fixed(
        broken, desired, "privileged_role", employee, "NOSUPERUSER NOBYPASSRLS NOCREATEROLE"
    )


def test_employee_member_of_owner(broken, desired, employee):
    broken.execute(f'GRANT crmdb_owner TO "{employee}"')  # type: ignore[arg-type]
    assert_found_and_fixed(
        broken, desired, "privileged_role", employee, f"REVOKE crmdb_owner FROM {employee};"
    )


def test_employee_member_of_worker_may_act_as_every_colleague(broken, desired, employee):
    # crmdb_worker holds every active employee: PostgreSQL refuses the cycle...
    with pytest.raises(psycopg.errors.InvalidGrantOperation), broken.transaction():
        broken.execute(f'GRANT crmdb_worker TO "{employee}"')  # type: ignore[arg-type]
    # ... but not once the employee departed (their role no longer in crmdb_worker)
    broken.execute("SELECT crm_admin.set_employee_status(%s, 'departed')", [employee])
    broken.execute(f'GRANT crmdb_worker TO "{employee}"')  # type: ignore[arg-type]
    found = findings_of(broken, desired, "privileged_role")
    assert "every employee's identity" in found[0].problem
    assert_found_and_fixed(
        broken, desired, "privileged_role", employee, f"REVOKE crmdb_worker FROM {employee};"
    )


def test_employee_owns_a_table(broken, desired, employee):
    broken.execute(f'ALTER TABLE crm.activities OWNER TO "{employee}"')  # type: ignore[arg-type]
    found = findings_of(broken, desired, "role_owns_objects")
    assert "table crm.activities" in found[0].problem
    assert_found_and_fixed(
        broken,
        desired,
        "role_owns_objects",
        employee,
        f"REASSIGN OWNED BY {employee} TO crmdb_owner;",
    )


@pytest.mark.parametrize(
    ("grant", "obj", "fix"),
    [
        (
            "GRANT SELECT ON crm.customers TO PUBLIC",
            "table crm.customers",
            "REVOKE ALL ON TABLE crm.customers FROM PUBLIC;",
        ),
        (
            "GRANT USAGE ON SCHEMA crm_admin TO PUBLIC",
            "schema crm_admin",
            "REVOKE ALL ON SCHEMA crm_admin FROM PUBLIC;",
        ),
        (
            "GRANT EXECUTE ON FUNCTION crm_private.sync_roles(bigint) TO PUBLIC",
            "function crm_private.sync_roles(bigint)",
            "REVOKE EXECUTE ON FUNCTION crm_private.sync_roles(bigint) FROM PUBLIC;",
        ),
    ],
    ids=["table", "schema", "function"],
)
def test_grant_to_public(broken, desired, grant, obj, fix):
    broken.execute(grant)
    assert_found_and_fixed(broken, desired, "public_grants", obj, fix)


def test_policy_no_template_generated(broken, desired):
    broken.execute("CREATE POLICY backdoor ON crm.customers FOR SELECT TO PUBLIC USING (true)")
    found = findings_of(broken, desired, "policy_drift")
    assert [(f.object, f.problem) for f in found] == [
        ("backdoor on crm.customers", "no template generates this policy")
    ]
    assert_found_and_fixed(
        broken,
        desired,
        "policy_drift",
        "backdoor on crm.customers",
        "DROP POLICY backdoor ON crm.customers;",
    )


def test_policy_changed_by_hand(broken, desired):
    name = "customers__sales_rep__own__select"
    broken.execute(f"ALTER POLICY {name} ON crm.customers USING (true)")  # type: ignore[arg-type]
    found = findings_of(broken, desired, "policy_drift")
    assert [f.problem for f in found] == ["the policy differs from what its template generates"]
    assert_found_and_fixed(
        broken, desired, "policy_drift", f"{name} on crm.customers", f"CREATE POLICY {name}"
    )


def test_owner_policy_opened_to_everyone(broken, desired):
    broken.execute("ALTER POLICY crmdb_owner_all ON crm.contracts TO PUBLIC")
    assert_found_and_fixed(
        broken,
        desired,
        "owner_policy_drift",
        "crmdb_owner_all on crm.contracts",
        "CREATE POLICY crmdb_owner_all ON crm.contracts TO crmdb_owner",
    )


def test_template_that_grants_nothing(broken, desired, demo):
    template = demo.role("idle")
    broken.execute(f"CREATE ROLE crmdb_tpl_{template} NOLOGIN")  # type: ignore[arg-type]
    broken.execute(
        "INSERT INTO crm.project_members (project_id, employee_id, solution, template)"
        " SELECT p.project_id, e.id, p.solution, %s"
        "   FROM crm.project_solutions AS p CROSS JOIN crm.employees AS e"
        "  WHERE e.status <> 'departed' AND NOT EXISTS (SELECT FROM crm.project_members AS m"
        "  WHERE (m.project_id, m.employee_id, m.solution) = (p.project_id, e.id, p.solution))"
        "  ORDER BY 1, 2, 3 LIMIT 1",
        (template,),
    )
    found = findings_of(broken, desired, "template_grants_nothing")
    assert [f.object for f in found] == [template]
    assert "is granted no crm table and no report: it grants nothing" in found[0].problem
    assert_found_and_fixed(
        broken,
        desired,
        "template_grants_nothing",
        template,
        f"DELETE FROM crm.project_members WHERE template = '{template}';",
    )


def _idle_template(broken: psycopg.Connection, template: str) -> None:
    """Template role `template`, held by one employee in one project, granted nothing."""
    broken.execute(f"CREATE ROLE crmdb_tpl_{template} NOLOGIN")  # type: ignore[arg-type]
    broken.execute(
        "INSERT INTO crm.project_members (project_id, employee_id, solution, template)"
        " SELECT p.project_id, e.id, p.solution, %s"
        "   FROM crm.project_solutions AS p CROSS JOIN crm.employees AS e"
        "  WHERE e.status <> 'departed' AND NOT EXISTS (SELECT FROM crm.project_members AS m"
        "  WHERE (m.project_id, m.employee_id, m.solution) = (p.project_id, e.id, p.solution))"
        "  ORDER BY 1, 2, 3 LIMIT 1",
        (template,),
    )


def test_template_that_grants_only_a_report(broken, desired, demo):
    # Regression (issue 8): a report (`reports:`, EXECUTE on crm.report_*) is a grant too;
    # the check looked at table grants only and called such a template empty
    template = demo.role("reporter")
    _idle_template(broken, template)
    assert [f.object for f in findings_of(broken, desired, "template_grants_nothing")] == [template]
    broken.execute(f"GRANT EXECUTE ON FUNCTION crm.report_pipeline() TO crmdb_tpl_{template}")  # type: ignore[arg-type]
    # Expect no finding while the role holds the report, and one again once it is revoked
    assert findings_of(broken, desired, "template_grants_nothing") == []
    broken.execute(f"REVOKE EXECUTE ON FUNCTION crm.report_pipeline() FROM crmdb_tpl_{template}")  # type: ignore[arg-type]
    assert [f.object for f in findings_of(broken, desired, "template_grants_nothing")] == [template]


def test_cli_json_on_a_database_without_policies(db):
    result = CliRunner().invoke(main, ["lint", "--json", "--dsn", db.target.conninfo])
    # Expect exit status 3: findings (every template policy and crm_api view is missing)
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    kinds = {f["kind"] for f in report["findings"]}
    assert kinds == {"policy_drift", "api_view_drift"}
    first = report["findings"][0]
    assert set(first) == {"kind", "object", "problem", "fix"}
    assert first["problem"] == "a policy the templates generate is missing"
    assert first["fix"].startswith("CREATE POLICY")


# Field groups (issue 5) -----------------------------------------------------------------


def test_api_view_missing(broken, desired):
    broken.execute("DROP VIEW crm_api.customers CASCADE")  # crm_private.export_customers too
    assert_found_and_fixed(
        broken, desired, "api_view_drift", "crm_api.customers", "CREATE VIEW crm_api.customers"
    )


def test_api_view_edited_by_hand_keeping_its_comment(broken, desired):
    # An edit `crmdb policy plan` does not see (it compares the comment's hash): the
    # definition itself must match what the templates generate
    row = broken.execute("SELECT pg_get_viewdef('crm_api.contracts')").fetchone()
    assert row is not None
    edited = row[0].rstrip().rstrip(";") + " WHERE contracts.id IS NOT NULL"
    broken.execute(f"CREATE OR REPLACE VIEW crm_api.contracts AS {edited}")  # type: ignore[arg-type]
    found = findings_of(broken, desired, "api_view_drift")
    assert [(f.object, f.problem) for f in found] == [
        ("crm_api.contracts", "differs from what the templates generate: definition")
    ]
    assert_found_and_fixed(
        broken, desired, "api_view_drift", "crm_api.contracts", "CREATE VIEW crm_api.contracts"
    )


def test_scope_view_edited_by_hand(broken, desired, crmdb_guard):
    # With the statement cache, crm_private.api_<table>_scope decides which groups the
    # caller sees: widening it (here: every group flag true) is drift like the view's
    row = broken.execute("SELECT pg_get_viewdef('crm_private.api_customers_scope')").fetchone()
    assert row is not None and "bool_and" in row[0]
    edited = row[0].rstrip().rstrip(";").replace("bool_and(", "bool_or(")
    broken.execute(f"CREATE OR REPLACE VIEW crm_private.api_customers_scope AS {edited}")  # type: ignore[arg-type]
    found = findings_of(broken, desired, "api_view_drift")
    assert [(f.object, f.problem) for f in found] == [
        ("crm_api.customers", "differs from what the templates generate: scope")
    ]
    assert_found_and_fixed(
        broken, desired, "api_view_drift", "crm_api.customers", "CREATE VIEW crm_api.customers"
    )


@pytest.mark.parametrize(
    ("statement", "what"),
    [
        ("ALTER FUNCTION crm_private.api_customers_write() SECURITY DEFINER", "writer_definer"),
        ("DROP TRIGGER write ON crm_api.customers", "writer_source"),
        (
            "CREATE OR REPLACE FUNCTION crm_private.api_customers_write() RETURNS trigger"
            " LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp"
            " AS $$ BEGIN RETURN NEW; END $$",
            "writer_source",
        ),
        ("REVOKE SELECT ON crm_api.customers FROM crmdb_tpl_marketing", "grants"),
    ],
    ids=["definer", "no-trigger", "writer-replaced", "grant"],
)
def test_api_view_writer_or_grants_changed(broken, desired, statement, what):
    broken.execute(statement)
    found = findings_of(broken, desired, "api_view_drift")
    assert [f.object for f in found] == ["crm_api.customers"]
    assert what in found[0].problem
    assert_found_and_fixed(
        broken, desired, "api_view_drift", "crm_api.customers", "CREATE TRIGGER write"
    )


def test_api_view_no_template_generates(broken, desired):
    broken.execute("SET LOCAL ROLE crmdb_owner")
    broken.execute(
        "CREATE VIEW crm_api.everything WITH (security_invoker = true) AS"
        " SELECT c.id, f.bank_account FROM crm.customers AS c"
        " JOIN crm.customers__financial AS f USING (id)"
    )
    broken.execute("RESET ROLE")
    assert_found_and_fixed(
        broken, desired, "api_view_drift", "crm_api.everything", "DROP VIEW crm_api.everything;"
    )


def test_api_view_without_security_invoker(broken, desired):
    # Covered by the check every view gets: crm_api is one of crmdb's schemas
    broken.execute("ALTER VIEW crm_api.customers SET (security_invoker = false)")
    assert_found_and_fixed(
        broken,
        desired,
        "view_not_security_invoker",
        "crm_api.customers",
        "ALTER VIEW crm_api.customers SET (security_invoker = true);",
    )


def test_side_rows_with_anchors_out_of_step(broken, desired):
    broken.execute(
        "UPDATE crm.customers__financial SET owner_id = NULL WHERE id IN"
        " (SELECT id FROM crm.customers WHERE owner_id IS NOT NULL ORDER BY id LIMIT 3)"
    )
    found = findings_of(broken, desired, "side_rows_out_of_step")
    assert [(f.object, f.problem.split(" row(s)")[0]) for f in found] == [
        ("crm.customers__financial", "3")
    ]
    assert_found_and_fixed(
        broken,
        desired,
        "side_rows_out_of_step",
        "crm.customers__financial",
        'UPDATE "crm"."customers__financial" AS s SET',
    )


def test_read_copies_out_of_step(broken, desired):
    # A load that bypassed the side tables' triggers: three rows' copies are stale
    broken.execute(
        "UPDATE crm.customers SET financial_copy = ROW('forged', NULL, NULL, NULL, '{}')"
        " WHERE id IN (SELECT id FROM crm.customers ORDER BY id LIMIT 3)"
    )
    found = findings_of(broken, desired, "copies_out_of_step")
    assert [(f.object, f.problem.split(" row(s)")[0]) for f in found] == [
        ("crm.customers__financial", "3")
    ]
    assert_found_and_fixed(
        broken,
        desired,
        "copies_out_of_step",
        "crm.customers__financial",
        'UPDATE "crm"."customers" AS p SET "financial_copy" = crm_private.copy_of(s)',
    )


def test_side_rows_missing(broken, desired):
    broken.execute(
        "DELETE FROM crm.contracts__financial WHERE id IN"
        " (SELECT id FROM crm.contracts ORDER BY id LIMIT 2)"
    )
    found = findings_of(broken, desired, "side_rows_out_of_step")
    assert [f.object for f in found] == ["crm.contracts__financial"]
    assert found[0].problem.startswith("2 row(s) of crm.contracts without their row here")
    assert_found_and_fixed(
        broken,
        desired,
        "side_rows_out_of_step",
        "crm.contracts__financial",
        'INSERT INTO "crm"."contracts__financial" (id, "project_id", "owner_id", "customer_id")',
    )


@pytest.mark.parametrize(
    ("grant", "obj", "fix"),
    [
        (
            "GRANT USAGE ON SCHEMA crm_vault TO {}",
            "schema crm_vault",
            "REVOKE USAGE ON SCHEMA crm_vault FROM",
        ),
        ("GRANT SELECT ON crm.customers TO {}", "crm.customers", "REVOKE SELECT ON crm.customers"),
        (
            "GRANT SELECT (financial_copy) ON crm.contracts TO {}",
            "crm.contracts.financial_copy",
            "REVOKE SELECT (financial_copy) ON crm.contracts",
        ),
    ],
)
def test_read_copies_exposed(broken, desired, employee, grant, obj, fix):
    # Each of these shows every field group of the rows the employee may read
    broken.execute(sql.SQL(grant).format(sql.Identifier(employee)))  # type: ignore[arg-type]
    assert_found_and_fixed(broken, desired, "read_copies_exposed", obj, fix)


@pytest.mark.parametrize(
    ("view", "obj", "fix"),
    [
        (  # employees select crm_vault's tables (crm_api's views read them as the caller)
            "CREATE VIEW public.money WITH (security_invoker) AS"
            " SELECT id, (financial_copy).bank_account FROM crm_vault.customers",
            "public.money",
            "DROP VIEW public.money;",
        ),
        (  # its owner's privileges: the superuser's, no row policy either
            "CREATE VIEW public.money AS SELECT id, (financial_copy).bank_account"
            " FROM crm.customers",
            "public.money",
            "DROP VIEW public.money;",
        ),
        (
            "CREATE MATERIALIZED VIEW public.everything AS SELECT * FROM crm_vault.contracts",
            "public.everything",
            "DROP MATERIALIZED VIEW public.everything;",
        ),
    ],
)
def test_views_over_the_read_copies(broken, desired, employee, view, obj, fix):
    # A DBA's view over the copies shows them to its readers without crm_api's checks
    broken.execute(view)  # type: ignore[arg-type]
    broken.execute(
        sql.SQL("GRANT SELECT ON {} TO {}").format(sql.SQL(obj), sql.Identifier(employee))
    )
    # Expect the employee to read the copies through it (what lint reports)
    broken.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(employee)))
    broken.execute(f"SELECT * FROM {obj}").fetchall()  # type: ignore[arg-type]
    broken.execute("RESET ROLE")
    found = [f for f in findings_of(broken, desired, "read_copies_exposed") if f.object == obj]
    assert len(found) == 1 and "without crm_api's checks" in found[0].problem
    assert_found_and_fixed(broken, desired, "read_copies_exposed", obj, fix)


def test_an_invoker_view_over_a_copy_column_is_refused_not_reported(broken, desired, employee):
    broken.execute(
        "CREATE VIEW public.money WITH (security_invoker) AS"
        " SELECT id, (financial_copy).bank_account FROM crm.customers"
    )
    broken.execute(sql.SQL("GRANT SELECT ON public.money TO {}").format(sql.Identifier(employee)))
    # Expect the column privileges to refuse the employee: nothing for lint to report
    broken.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(employee)))
    with pytest.raises(psycopg.errors.InsufficientPrivilege), broken.transaction():
        broken.execute("SELECT * FROM public.money")
    broken.execute("RESET ROLE")
    found = findings_of(broken, desired, "read_copies_exposed")
    assert [f.object for f in found if f.object == "public.money"] == []


def test_anchor_copies_writable_without_their_guard(broken, desired):
    broken.execute("DROP TRIGGER _040_keep_derived ON crm.customers__contact")
    found = findings_of(broken, desired, "derived_columns_writable")
    assert sorted(f.object for f in found) == [
        "crm.customers__contact.org_unit_id",
        "crm.customers__contact.owner_id",
        "crm.customers__contact.project_id",
    ]
    # Expect the template roles that may update the contact group to be named
    assert "crmdb_tpl_sales_rep" in found[0].problem
    assert_found_and_fixed(
        broken,
        desired,
        "derived_columns_writable",
        "crm.customers__contact.owner_id",
        "CREATE TRIGGER _040_keep_derived BEFORE UPDATE OF project_id, org_unit_id, owner_id"
        " ON crm.customers__contact FOR EACH ROW EXECUTE FUNCTION crm_private.keep_derived("
        "'project_id', 'org_unit_id', 'owner_id');",
    )
    assert findings_of(broken, desired, "derived_columns_writable") == []


def test_template_role_granted_update_of_an_anchor(broken, desired):
    # A grant of one column by hand is harmless while the guard holds, reported once not.
    # (The table's lock first: see test_audit_reader_without_every_field_group.)
    broken.execute("LOCK TABLE crm.contracts__financial IN ACCESS EXCLUSIVE MODE")
    broken.execute("GRANT UPDATE (owner_id) ON crm.contracts__financial TO crmdb_tpl_marketing")
    assert findings_of(broken, desired, "derived_columns_writable") == []
    broken.execute("ALTER TABLE crm.contracts__financial DISABLE TRIGGER _040_keep_derived")
    found = findings_of(broken, desired, "derived_columns_writable")
    owner = [f for f in found if f.object == "crm.contracts__financial.owner_id"]
    assert len(owner) == 1 and "crmdb_tpl_marketing" in owner[0].problem


def test_masks_writable_without_their_guard(broken, desired):
    broken.execute("DROP TRIGGER _040_keep_derived ON crm.customers")
    assert_found_and_fixed(
        broken,
        desired,
        "derived_columns_writable",
        "crm.customers.phone_mask",
        "BEFORE INSERT OR UPDATE OF phone_mask ON crm.customers",
    )


def test_masks_out_of_step(broken, desired):
    broken.execute(
        "UPDATE crm.customers SET phone_mask = '*******000' WHERE id IN"
        " (SELECT id FROM crm.customers__contact WHERE phone IS NOT NULL ORDER BY id LIMIT 4)"
    )
    found = findings_of(broken, desired, "masks_out_of_step")
    assert [(f.object, f.problem.split(" stored")[0]) for f in found] == [
        ("crm.customers.phone_mask", "4")
    ]
    assert_found_and_fixed(
        broken,
        desired,
        "masks_out_of_step",
        "crm.customers.phone_mask",
        "crm_private.mask_text(g.phone, 3)",
    )


def test_audit_reader_without_every_field_group(broken, desired):
    # Marketing reads contact (and its own leads' notes), never money; the audit trail
    # holds every group's history. The table's lock first: autovacuum's ANALYZE of it
    # would otherwise wait for this transaction (the GRANT changes its pg_class row)
    # while CREATE POLICY waits for autovacuum, a deadlock.
    broken.execute("LOCK TABLE crm.change_log IN ACCESS EXCLUSIVE MODE")
    broken.execute("GRANT SELECT ON crm.change_log TO crmdb_tpl_marketing")
    broken.execute(
        "CREATE POLICY change_log__marketing ON crm.change_log FOR SELECT"
        " TO crmdb_tpl_marketing USING (true)"
    )
    found = findings_of(broken, desired, "audit_reader_without_groups")
    assert [f.object for f in found] == ["crmdb_tpl_marketing"]
    assert found[0].problem.endswith("read contracts__financial, customers__financial")
    assert_found_and_fixed(
        broken,
        desired,
        "audit_reader_without_groups",
        "crmdb_tpl_marketing",
        "REVOKE SELECT ON crm.change_log FROM crmdb_tpl_marketing;",
    )


def test_admins_read_the_audit_trail_and_every_group(demo, desired):
    # The shipped admin templates read change_log and every group: no finding
    with demo.connect() as conn:
        assert findings_of(conn, desired, "audit_reader_without_groups") == []
        row = conn.execute(
            "SELECT has_table_privilege('crmdb_tpl_admin', 'crm.change_log', 'SELECT')"
        ).fetchone()
    assert row == (True,)
