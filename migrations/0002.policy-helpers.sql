-- Helpers the generated row-level security policies call, template membership and
-- explain access.
-- Policies call the helpers as (SELECT crm_private.f(current_user, ...)) so each runs
-- once per statement (an InitPlan) and hands the planner an array to match with an
-- index. Inside them, the caller's id is likewise a scalar subquery, computed once
-- rather than once per row scanned. They are SECURITY DEFINER (they read the closure
-- tables employees cannot), and answer only for roles the calling session may act as,
-- so nobody learns another employee's hierarchy or shares by passing a colleague's
-- role name. They are PARALLEL SAFE (read-only): one parallel-unsafe function in a
-- policy would make every query through it run without parallel workers. They are
-- PL/pgSQL so that each session plans their queries once (a SQL function that cannot
-- be inlined plans its query at every call: ~0.15 ms per helper per statement).

SET ROLE crmdb_owner;

-- Policy helpers ---------------------------------------------------------------

CREATE FUNCTION crm_private.subordinate_ids(p_role name) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(t.employee_id ORDER BY t.employee_id), '{}')
          FROM crm_private.manager_tree AS t
         WHERE t.manager_id = (SELECT crm_private.employee_id_for(p_role))
           AND t.depth > 0);
END
$$;
COMMENT ON FUNCTION crm_private.subordinate_ids(name) IS 'Employees anywhere below p_role in the manager hierarchy (not p_role itself); empty unless the session may act as p_role';

CREATE FUNCTION crm_private.org_unit_ids(p_role name, p_include_sub_units boolean) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(t.descendant_id ORDER BY t.descendant_id), '{}')
          FROM crm.employees AS e
          JOIN crm_private.org_unit_tree AS t ON t.ancestor_id = e.org_unit_id
         WHERE e.id = (SELECT crm_private.employee_id_for(p_role))
           AND (p_include_sub_units OR t.depth = 0));
END
$$;
COMMENT ON FUNCTION crm_private.org_unit_ids(name, boolean) IS 'p_role''s org unit, and with p_include_sub_units every unit below it';

CREATE FUNCTION crm_private.project_ids(p_role name, p_template text) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(DISTINCT m.project_id ORDER BY m.project_id), '{}')
          FROM crm.project_members AS m
         WHERE m.employee_id = (SELECT crm_private.employee_id_for(p_role))
           AND m.template = p_template);
END
$$;
COMMENT ON FUNCTION crm_private.project_ids(name, text) IS 'Projects where p_role is a member under template p_template (the project guard of every template policy)';

CREATE FUNCTION crm_private.has_template(p_role name, p_template text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    RETURN (
        SELECT EXISTS (
            SELECT FROM crm.project_members AS m
             WHERE m.employee_id = (SELECT crm_private.employee_id_for(p_role))
               AND m.template = p_template));
END
$$;
COMMENT ON FUNCTION crm_private.has_template(name, text) IS 'Whether p_role holds template p_template in any project (the guard for tables without a project)';

CREATE FUNCTION crm_private.shared_customer_ids(p_role name, p_edit boolean) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    -- Shares to the employee or to their org unit, not expired; with p_edit only
    -- shares that allow editing. Two index lookups (an OR join would scan every share).
    RETURN (
        WITH me AS (
            SELECT e.id, e.org_unit_id FROM crm.employees AS e
             WHERE e.id = (SELECT crm_private.employee_id_for(p_role))
        ), granted AS (
            SELECT s.customer_id, s.expires_at, s.access
              FROM me JOIN crm.shares AS s ON s.grantee_employee_id = me.id
            UNION ALL
            SELECT s.customer_id, s.expires_at, s.access
              FROM me JOIN crm.shares AS s ON s.grantee_org_unit_id = me.org_unit_id
        )
        SELECT coalesce(array_agg(DISTINCT g.customer_id ORDER BY g.customer_id), '{}')
          FROM granted AS g
         WHERE (g.expires_at IS NULL OR g.expires_at > pg_catalog.now())
           AND (NOT p_edit OR g.access = 'edit'));
END
$$;
COMMENT ON FUNCTION crm_private.shared_customer_ids(name, boolean) IS 'Customers shared to p_role or to p_role''s org unit and not expired (only edit shares with p_edit)';

CREATE FUNCTION crm_private.project_id(p_code text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    RETURN (
        SELECT p.id FROM crm.projects AS p WHERE p.code = p_code);
END
$$;
COMMENT ON FUNCTION crm_private.project_id(text) IS 'The id of a project by code (sharing rules name projects by code)';

-- The row as it was before the current statement, for WITH CHECK on UPDATE: it
-- requires columns to stay unchanged, or the old row to lie in a scope that may move
-- rows (PostgreSQL ORs the USING of one policy with the WITH CHECK of another, so the
-- new row alone proves nothing). Plain SQL, SECURITY INVOKER and without SET, so the
-- planner inlines each into a primary-key probe: the caller's own row policies apply
-- (nothing is shown that the caller could not SELECT; an invisible row gives no row,
-- and the check fails closed), and a STABLE body sees the statement's snapshot.

CREATE FUNCTION crm_private.prior_customers(p_id bigint) RETURNS SETOF crm.customers
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.customers WHERE id = p_id $$;
COMMENT ON FUNCTION crm_private.prior_customers(bigint) IS 'A customer as it was before the current statement, through the caller''s row policies (for update checks)';

CREATE FUNCTION crm_private.prior_contracts(p_id bigint) RETURNS SETOF crm.contracts
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.contracts WHERE id = p_id $$;
COMMENT ON FUNCTION crm_private.prior_contracts(bigint) IS 'A contract as it was before the current statement, through the caller''s row policies (for update checks)';

CREATE FUNCTION crm_private.prior_activities(p_id bigint) RETURNS SETOF crm.activities
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.activities WHERE id = p_id $$;
COMMENT ON FUNCTION crm_private.prior_activities(bigint) IS 'An activity as it was before the current statement, through the caller''s row policies (for update checks)';

CREATE FUNCTION crm_private.prior_shares(p_id bigint) RETURNS SETOF crm.shares
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.shares WHERE id = p_id $$;
COMMENT ON FUNCTION crm_private.prior_shares(bigint) IS 'A share as it was before the current statement, through the caller''s row policies (for update checks)';

-- Template and sharing rule membership ----------------------------------------
-- A role template is the group role crmdb_tpl_<template>, a sharing rule the group
-- role crmdb_rule_<rule>; `crmdb policy apply` creates them with ADMIN OPTION for
-- crmdb_owner. Policies name these roles, so PostgreSQL leaves out, at plan time,
-- every policy that cannot apply to the current employee. Membership follows the data:
-- project memberships for templates, the audience (org unit, named employees) for
-- sharing rules; departed employees hold none.

CREATE TABLE crm_private.sharing_rule_audiences (
    role_name          name PRIMARY KEY CHECK (role_name LIKE 'crmdb\_rule\_%'),
    org_unit           text,
    include_sub_units  boolean NOT NULL DEFAULT false,
    employees          name[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE crm_private.sharing_rule_audiences IS 'Who each sharing rule reaches: an org unit (and its sub-units) and named employees; written by crmdb policy apply';
ALTER TABLE crm_private.sharing_rule_audiences ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.sharing_rule_audiences FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.sharing_rule_audiences TO crmdb_owner USING (true) WITH CHECK (true);

CREATE FUNCTION crm_private.template_role(p_template text) RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = ''
AS $$
    SELECT ('crmdb_tpl_' || p_template)::name
$$;
COMMENT ON FUNCTION crm_private.template_role(text) IS 'The group role that carries a role template''s privileges and policies';

CREATE FUNCTION crm_private.wanted_roles(p_employee_id bigint) RETURNS SETOF name
LANGUAGE sql STABLE SET search_path = ''
AS $$
    SELECT crm_private.template_role(m.template)
      FROM crm.project_members AS m
      JOIN crm.employees AS e ON e.id = m.employee_id
     WHERE m.employee_id = p_employee_id AND e.status <> 'departed'
    UNION
    SELECT a.role_name
      FROM crm_private.sharing_rule_audiences AS a
      JOIN crm.employees AS e ON e.id = p_employee_id AND e.status <> 'departed'
     WHERE e.role_name = ANY (a.employees)
        OR EXISTS (SELECT FROM crm.org_units AS u
                     JOIN crm_private.org_unit_tree AS t ON t.ancestor_id = u.id
                    WHERE u.code = a.org_unit AND t.descendant_id = e.org_unit_id
                      AND (a.include_sub_units OR t.depth = 0))
$$;
COMMENT ON FUNCTION crm_private.wanted_roles(bigint) IS 'The template and sharing rule roles an employee should be a member of';

CREATE FUNCTION crm_private.sync_roles(p_employee_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_role name;
    v_group name;
    v_want boolean;
BEGIN
    SELECT role_name INTO v_role FROM crm.employees WHERE id = p_employee_id;
    IF v_role IS NULL THEN
        RETURN;
    END IF;
    FOR v_group, v_want IN
        SELECT r.rolname, r.rolname IN (SELECT crm_private.wanted_roles(p_employee_id))
          FROM pg_catalog.pg_roles AS r
         WHERE (r.rolname LIKE 'crmdb\_tpl\_%' OR r.rolname LIKE 'crmdb\_rule\_%')
           AND pg_catalog.pg_has_role('crmdb_owner', r.oid, 'MEMBER WITH ADMIN OPTION')
    LOOP
        IF v_want AND NOT EXISTS (
                SELECT FROM pg_catalog.pg_auth_members AS am
                  JOIN pg_catalog.pg_roles AS g ON g.oid = am.roleid
                  JOIN pg_catalog.pg_roles AS m ON m.oid = am.member
                 WHERE g.rolname = v_group AND m.rolname = v_role) THEN
            -- PostgreSQL 16+: inherit the group's privileges, never SET ROLE to it.
            EXECUTE pg_catalog.format('GRANT %I TO %I%s', v_group, v_role,
                CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
                     THEN ' WITH SET FALSE' ELSE '' END);
        ELSIF NOT v_want AND EXISTS (
                SELECT FROM pg_catalog.pg_auth_members AS am
                  JOIN pg_catalog.pg_roles AS g ON g.oid = am.roleid
                  JOIN pg_catalog.pg_roles AS m ON m.oid = am.member
                 WHERE g.rolname = v_group AND m.rolname = v_role) THEN
            EXECUTE pg_catalog.format('REVOKE %I FROM %I', v_group, v_role);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm_private.sync_roles(bigint) IS 'Grants an employee''s role exactly the template and sharing rule roles they should hold, and revokes the rest';

CREATE FUNCTION crm_private.project_members_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM crm_private.sync_roles(OLD.employee_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM crm_private.sync_roles(NEW.employee_id);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.project_members_changed() IS 'AFTER trigger on crm.project_members: keeps template role membership in step';

CREATE FUNCTION crm_private.employee_placement_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    PERFORM crm_private.sync_roles(NEW.id);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.employee_placement_changed() IS 'AFTER trigger on crm.employees: a new unit or status changes sharing rule (and, on departure, template) membership';

CREATE FUNCTION crm_private.org_units_moved() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    -- A unit moved: audiences that include sub-units may have changed for anyone.
    PERFORM crm_private.sync_roles(e.id) FROM crm.employees AS e;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.org_units_moved() IS 'AFTER statement trigger on crm.org_units: re-syncs sharing rule membership when units move';

CREATE TRIGGER _300_template_roles AFTER INSERT OR UPDATE OR DELETE ON crm.project_members
    FOR EACH ROW EXECUTE FUNCTION crm_private.project_members_changed();
CREATE TRIGGER _300_rule_roles AFTER INSERT OR UPDATE OF org_unit_id, status ON crm.employees
    FOR EACH ROW EXECUTE FUNCTION crm_private.employee_placement_changed();
CREATE TRIGGER _300_rule_roles AFTER UPDATE OF parent_id ON crm.org_units
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.org_units_moved();

-- Explain access -------------------------------------------------------------
-- `crmdb policy apply` replaces this body with one generated from the templates;
-- until then no template grants anything, so there is no path to explain.

CREATE FUNCTION crm_private.access_paths(p_role name, p_table text, p_id bigint)
RETURNS TABLE (template text, scope text, kind text, actions text[], detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
AS $function$
BEGIN
    IF NOT (p_role = session_user OR pg_catalog.pg_has_role(session_user, p_role, 'MEMBER')) THEN
        RAISE EXCEPTION 'permission denied to explain the access of role %', p_role
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$function$;
COMMENT ON FUNCTION crm_private.access_paths(name, text, bigint) IS 'Every path by which p_role may act on a record: template (or ''sharing rule''), scope label, scope kind, actions, and why (generated by crmdb policy apply)';

CREATE FUNCTION crm.explain_access(p_table text, p_id bigint)
RETURNS TABLE (template text, scope text, actions text[], detail text)
LANGUAGE sql STABLE SET search_path = ''
AS $$
    SELECT ap.template, ap.scope, ap.actions, ap.detail
      FROM crm_private.access_paths(current_user, p_table, p_id) AS ap
$$;
COMMENT ON FUNCTION crm.explain_access(text, bigint) IS 'Why the current employee may see or change a record (table name, id): one row per template scope or sharing rule; no rows means no access';

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA crm, crm_private FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    crm_private.subordinate_ids(name),
    crm_private.org_unit_ids(name, boolean),
    crm_private.project_ids(name, text),
    crm_private.has_template(name, text),
    crm_private.shared_customer_ids(name, boolean),
    crm_private.project_id(text),
    crm_private.prior_customers(bigint),
    crm_private.prior_contracts(bigint),
    crm_private.prior_activities(bigint),
    crm_private.prior_shares(bigint),
    crm_private.access_paths(name, text, bigint),
    crm.explain_access(text, bigint)
TO crmdb_employee;

RESET ROLE;
