-- crmdb_guard's statement cache in one database (ext/crmdb_guard/scope.c), installed by
-- crmdb/guard.py with the library crmdb guard enable built. While crmdb_guard.scope_has
-- exists, crmdb policy plan/apply compile the row policies to call the crmdb_guard
-- helpers and the crm_api views to read the caller's scope through it (crmdb/policies/
-- statement_cache.py); drop the schema (CASCADE drops those policies and views) and
-- re-apply to go back to plain SQL.

-- install_statement_cache --
-- Create or replace the functions; {library}: the library's name or absolute path
CREATE SCHEMA IF NOT EXISTS crmdb_guard;
COMMENT ON SCHEMA crmdb_guard IS 'crmdb_guard''s statement cache: the caller''s scope computed once per statement (ext/crmdb_guard/scope.c)';
REVOKE ALL ON SCHEMA crmdb_guard FROM PUBLIC;
GRANT USAGE ON SCHEMA crmdb_guard TO crmdb_employee, crmdb_owner;

-- Each stands for the crm_private function of the same name and arguments, called once
-- per statement, role and arguments; SECURITY INVOKER: the helper checks its caller.
CREATE OR REPLACE FUNCTION crmdb_guard.employee_id_for(p_role name) RETURNS bigint
LANGUAGE c STABLE PARALLEL SAFE AS {library}, 'crmdb_guard_memo';
CREATE OR REPLACE FUNCTION crmdb_guard.subordinate_ids(p_role name) RETURNS bigint[]
LANGUAGE c STABLE PARALLEL SAFE AS {library}, 'crmdb_guard_memo';
CREATE OR REPLACE FUNCTION crmdb_guard.org_unit_ids(p_role name, p_include_sub_units boolean) RETURNS bigint[]
LANGUAGE c STABLE PARALLEL SAFE AS {library}, 'crmdb_guard_memo';
CREATE OR REPLACE FUNCTION crmdb_guard.project_ids(p_role name, p_template text) RETURNS bigint[]
LANGUAGE c STABLE PARALLEL SAFE AS {library}, 'crmdb_guard_memo';
CREATE OR REPLACE FUNCTION crmdb_guard.has_template(p_role name, p_template text) RETURNS boolean
LANGUAGE c STABLE PARALLEL SAFE AS {library}, 'crmdb_guard_memo';
CREATE OR REPLACE FUNCTION crmdb_guard.shared_customer_ids(p_role name, p_edit boolean) RETURNS bigint[]
LANGUAGE c STABLE PARALLEL SAFE AS {library}, 'crmdb_guard_memo';
CREATE OR REPLACE FUNCTION crmdb_guard.project_id(p_code text) RETURNS bigint
LANGUAGE c STABLE PARALLEL SAFE AS {library}, 'crmdb_guard_memo';
COMMENT ON FUNCTION crmdb_guard.employee_id_for(name) IS 'crm_private.employee_id_for, once per statement';
COMMENT ON FUNCTION crmdb_guard.subordinate_ids(name) IS 'crm_private.subordinate_ids, once per statement';
COMMENT ON FUNCTION crmdb_guard.org_unit_ids(name, boolean) IS 'crm_private.org_unit_ids, once per statement';
COMMENT ON FUNCTION crmdb_guard.project_ids(name, text) IS 'crm_private.project_ids, once per statement';
COMMENT ON FUNCTION crmdb_guard.has_template(name, text) IS 'crm_private.has_template, once per statement';
COMMENT ON FUNCTION crmdb_guard.shared_customer_ids(name, boolean) IS 'crm_private.shared_customer_ids, once per statement';
COMMENT ON FUNCTION crmdb_guard.project_id(text) IS 'crm_private.project_id, once per statement';

-- A column of the caller's row of a crm_private scope view (a crm_api view's), read once
-- per statement with the caller's privileges. PARALLEL RESTRICTED: SPI in the leader.
CREATE OR REPLACE FUNCTION crmdb_guard.scope_flag(p_view regclass, p_slot integer) RETURNS boolean
LANGUAGE c STABLE PARALLEL RESTRICTED COST 1 AS {library}, 'crmdb_guard_scope_flag';
CREATE OR REPLACE FUNCTION crmdb_guard.scope_id(p_view regclass, p_slot integer) RETURNS bigint
LANGUAGE c STABLE PARALLEL RESTRICTED COST 1 AS {library}, 'crmdb_guard_scope_id';
CREATE OR REPLACE FUNCTION crmdb_guard.scope_ids(p_view regclass, p_slot integer) RETURNS bigint[]
LANGUAGE c STABLE PARALLEL RESTRICTED COST 1 AS {library}, 'crmdb_guard_scope_ids';
CREATE OR REPLACE FUNCTION crmdb_guard.scope_has(p_view regclass, p_slot integer, p_id bigint) RETURNS boolean
LANGUAGE c STABLE PARALLEL RESTRICTED COST 1 AS {library}, 'crmdb_guard_scope_has';
COMMENT ON FUNCTION crmdb_guard.scope_flag(regclass, integer) IS 'Boolean column p_slot of the caller''s row of scope view p_view, once per statement';
COMMENT ON FUNCTION crmdb_guard.scope_id(regclass, integer) IS 'Bigint column p_slot of the caller''s row of scope view p_view, once per statement';
COMMENT ON FUNCTION crmdb_guard.scope_ids(regclass, integer) IS 'Bigint[] column p_slot of the caller''s row of scope view p_view, once per statement';
COMMENT ON FUNCTION crmdb_guard.scope_has(regclass, integer, bigint) IS 'p_id = ANY (bigint[] column p_slot of the caller''s scope row), by binary search; once per statement';

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA crmdb_guard FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA crmdb_guard TO crmdb_employee, crmdb_owner;

-- statement_cache_installed --
-- Whether this database has crmdb_guard's statement cache (the compiler then uses it)
SELECT pg_catalog.to_regprocedure('crmdb_guard.scope_has(regclass, integer, bigint)') IS NOT NULL
