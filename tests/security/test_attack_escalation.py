"""Privilege escalation: gaining rights the templates do not give.

Creating objects in crmdb's schemas, hijacking SECURITY DEFINER functions through the
session's own (temporary) schema or search_path, changing policies or row-level
security, truncating, granting oneself a template, writing the audit trail.
"""

import pytest
from attack_org import column, refused, rows, warnings_of
from psycopg import sql

pytestmark = pytest.mark.attack("privilege escalation")

SCHEMAS = ("crm", "crm_private", "crm_admin", "public")
CREATE = {
    "table": "CREATE TABLE {}.probe (id int)",
    "function": "CREATE FUNCTION {}.probe() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "view": "CREATE VIEW {}.probe AS SELECT 1 AS one",
    "type": "CREATE TYPE {}.probe AS (id int)",
}
# What a definer function may parse by name at run time, shadowed in pg_temp.
SHADOWED_TYPES = ("text", "name", "jsonb", "regclass", "timestamptz")
# Calls that run crmdb's SECURITY DEFINER code (and the triggers behind a write).
DEFINER_CALLS = {
    "explain_access": "SELECT * FROM crm.explain_access('customers', %(own)s)",
    "access_paths": "SELECT * FROM crm_private.access_paths(current_user, 'customers', %(own)s)",
    "identity": "SELECT crm.current_employee_id()",
    "helpers": "SELECT crm_private.subordinate_ids(current_user),"
    " crm_private.shared_customer_ids(current_user, true),"
    " crm_private.org_unit_ids(current_user, true)",
    "audited_update": "UPDATE crm.customers SET product_interest = 'x' WHERE id = %(own)s",
    "audited_insert": "INSERT INTO crm.activities (customer_id, employee_id, kind, subject)"
    " VALUES (%(own)s, crm.current_employee_id(), 'note', 'x')",
}
EVIL = (
    "CREATE FUNCTION pg_temp.evil(v anyelement) RETURNS boolean LANGUAGE plpgsql AS $$"
    " BEGIN RAISE WARNING 'evil runs as %', current_user; RETURN true; END $$"
)
NOT_FOR_EMPLOYEES = (
    "crm_private.sync_roles(1)",
    "crm_private.wanted_roles(1)",
    "crm_private.change_project('{}')",
    "crm_private.employee_by_role('x')",
    "crm_private.org_unit_by_code('x')",
    "crm_private.template_role('admin')",
    "crm_private.acting_role()",
    "crm_admin.add_project_member('saoviet.crm', current_user, 'management', 'super_admin')",
    "crm_admin.set_employee_status(current_user, 'active')",
    "crm_admin.add_gateway('probe_gw', 'pw')",
)
OWNER_ONLY = {
    "drop_policy": "DROP POLICY crmdb_owner_all ON crm.customers",
    "alter_policy": "ALTER POLICY crmdb_owner_all ON crm.customers TO PUBLIC",
    "create_policy": "CREATE POLICY probe ON crm.customers USING (true)",
    "disable_rls": "ALTER TABLE crm.customers DISABLE ROW LEVEL SECURITY",
    "no_force_rls": "ALTER TABLE crm.customers NO FORCE ROW LEVEL SECURITY",
    "create_trigger": "CREATE TRIGGER probe BEFORE INSERT ON crm.customers"
    " FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at()",
    "alter_function": "ALTER FUNCTION crm_private.employee_id_for(name) RESET search_path",
    "replace_function": "CREATE OR REPLACE FUNCTION crm_private.has_template(p_role name,"
    " p_template text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
    "comment": "COMMENT ON TABLE crm.customers IS 'probe'",
    "owner": "ALTER TABLE crm.customers OWNER TO CURRENT_USER",
    "truncate_customers": "TRUNCATE crm.customers CASCADE",
    "truncate_change_log": "TRUNCATE crm.change_log",
    "grant_template": "GRANT crmdb_tpl_admin TO CURRENT_USER",
    "grant_owner": "GRANT crmdb_owner TO CURRENT_USER",
    "bypassrls": "ALTER ROLE CURRENT_USER BYPASSRLS",
    "createrole": "ALTER ROLE CURRENT_USER CREATEROLE",
    "replication_role": "SET session_replication_role = replica",
    "create_schema": "CREATE SCHEMA probe",
    "create_role": "CREATE ROLE probe_role",
    "event_trigger": "CREATE EVENT TRIGGER probe ON ddl_command_start"
    " EXECUTE FUNCTION crm_private.touch_updated_at()",
    "audit_insert": "INSERT INTO crm.change_log (table_name, record_id, action,"
    " changed_fields, actor_role) VALUES ('customers', 1, 'UPDATE', '{}', 'someone')",
    "audit_update": "UPDATE crm.change_log SET actor_role = 'someone'",
    "audit_delete": "DELETE FROM crm.change_log",
}


def own_customer(attacker) -> int:
    """A customer the attacker sees, or the target (for those who see none)."""
    return min(attacker.visible, default=attacker.target)


@pytest.mark.parametrize("kind", sorted(CREATE))
@pytest.mark.parametrize("schema", SCHEMAS)
def test_create_object_in_schema(attacker, schema, kind):
    # Expect permission denied: no CREATE on crmdb's schemas (nor, PostgreSQL 15+, public)
    assert refused(attacker.conn, CREATE[kind].format(schema))


@pytest.mark.parametrize("statement", sorted(OWNER_ONLY))
def test_owner_only_statement(attacker, statement):
    # Expect permission denied: only crmdb_owner (or a superuser) may
    assert refused(attacker.conn, OWNER_ONLY[statement])


@pytest.mark.parametrize("call", NOT_FOR_EMPLOYEES)
def test_internal_function_not_executable(attacker, call):
    # Expect permission denied: internals and the admin API are not for employees
    assert refused(attacker.conn, f"SELECT {call}")


def test_grant_own_privileges_onwards(attacker):
    conn = attacker.conn
    rows(conn, "GRANT SELECT, UPDATE ON crm.customers TO PUBLIC")
    public = column(
        conn,
        "SELECT a.privilege_type FROM pg_class AS c, aclexplode(c.relacl) AS a"
        " WHERE c.oid = 'crm.customers'::regclass AND a.grantee = 0",
    )
    # Expect no privilege for PUBLIC: templates grant nothing WITH GRANT OPTION (the
    # GRANT only warns that nothing was granted)
    assert public == []


def test_row_security_off_is_an_error(attacker):
    conn = attacker.conn
    rows(conn, "SET LOCAL row_security = off")
    # Expect an error, not unfiltered rows: policies cannot be switched off by a setting
    assert refused(conn, "SELECT id FROM crm.customers")


@pytest.mark.parametrize("call", sorted(DEFINER_CALLS))
@pytest.mark.parametrize("shadowed", SHADOWED_TYPES)
def test_temporary_type_hijacks_definer_function(attacker, shadowed, call):
    # Regression: with SET search_path = '' PostgreSQL still searched the session's
    # temporary schema first for types; a temporary domain named `text` whose CHECK
    # calls the attacker's function ran that function as crmdb_owner inside crmdb's
    # definer helpers. Functions now search pg_catalog, pg_temp (migration 0005).
    conn = attacker.conn
    notices = warnings_of(conn)
    rows(conn, EVIL)
    rows(
        conn,
        f"CREATE DOMAIN pg_temp.{shadowed} AS pg_catalog.{shadowed} CHECK (pg_temp.evil(VALUE))",
    )
    try:
        with conn.transaction():
            conn.execute(DEFINER_CALLS[call], {"own": own_customer(attacker)})
    except Exception:  # refusals and errors are fine; running as the owner is not
        pass
    assert [n for n in notices if n == "evil runs as crmdb_owner"] == []


def test_temporary_tables_shadow_no_crm_table(attacker):
    conn = attacker.conn
    before = set(column(conn, "SELECT id FROM crm.customers"))
    for table in ("employees", "customers", "project_members", "manager_tree", "pg_roles"):
        rows(
            conn,
            sql.SQL("CREATE TEMP TABLE {} (id bigint, role_name name)").format(
                sql.Identifier(table)
            ),
        )
    # Expect the same identity and rows: crmdb names every relation with its schema
    assert set(column(conn, "SELECT id FROM crm.customers")) == before


def test_search_path_of_the_session(attacker):
    conn = attacker.conn
    before = set(column(conn, "SELECT id FROM crm.customers"))
    rows(
        conn,
        "CREATE FUNCTION pg_temp.current_employee_id() RETURNS bigint LANGUAGE sql AS 'SELECT 1'",
    )
    rows(conn, "SET LOCAL search_path = pg_temp, crm, crm_private, public")
    # Expect the same rows: policies and helpers were bound when created, and functions
    # are never looked up in pg_temp
    assert set(column(conn, "SELECT id FROM crm.customers")) == before


def test_own_function_in_policy_context(attacker):
    conn = attacker.conn
    notices = warnings_of(conn)
    rows(conn, EVIL.replace("v anyelement", "v bigint"))
    # An employee's function runs with the employee's rights, and on visible rows only
    rows(conn, "SELECT id FROM crm.customers WHERE pg_temp.evil(id)")
    assert [n for n in notices if n == "evil runs as crmdb_owner"] == []


def test_super_admin_grants_template_in_foreign_project(attack_org):
    from attack_org import attacker_session

    with attacker_session(attack_org, "sadm") as sadm:
        query = (
            "INSERT INTO crm.project_members (project_id, employee_id, solution, template)"
            " VALUES (%s, %s, 'management', 'super_admin')"
        )
        # p2's id as the superuser knows it: crm_private.project_id does not tell sadm
        p2 = attack_org.superuser("SELECT id FROM crm.projects WHERE code = 'p2'")[0][0]
        # Expect a refusal: a super admin manages the members of their own projects only
        assert refused(sadm.conn, query, (p2, sadm.me))


@pytest.mark.residual("employees who may update a table may lock it")
def test_lock_table(attack_org):
    from attack_org import attacker_session

    # LOCK ... ACCESS EXCLUSIVE needs UPDATE, DELETE or TRUNCATE on the table: a rep
    # can hold everyone's queries on crm.customers until their transaction ends.
    # Availability, not confidentiality: set lock_timeout and
    # idle_in_transaction_session_timeout for employee roles (README).
    with attacker_session(attack_org, "rep_a") as rep:
        assert not refused(rep.conn, "LOCK TABLE crm.customers IN ACCESS EXCLUSIVE MODE")
