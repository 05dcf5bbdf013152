-- Cheaper identity helpers: the employee lookup inlined into each policy helper.
-- depends: 0014.worker-role
--
-- Every generated policy calls these once per statement (an InitPlan each), so their
-- fixed cost is paid by every query an employee runs. Each helper called
-- employee_id_for, a SQL function (planned at every call on PostgreSQL 15) joining
-- pg_roles; now the check "may this session act as p_role" is crm_private.may_act_as,
-- a SQL-standard function the planner inlines (a one-time filter), and each helper
-- looks the employee up by role in its own query. Same answers, about half the cost
-- per call (bench/README.md).

SET ROLE crmdb_owner;

-- Whether the session may act as p_role: it is the login, or the login may SET ROLE to
-- it. SQL-standard body (bound when created, whatever the caller's search_path) and no
-- SET, so the planner inlines it: inside the helpers below it is a one-time filter.
CREATE FUNCTION crm_private.may_act_as(p_role name) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(p_role = SESSION_USER
                    OR pg_catalog.pg_has_role(SESSION_USER,
                           pg_catalog.to_regrole(pg_catalog.quote_ident(p_role)), 'MEMBER'),
                    false);
END;
COMMENT ON FUNCTION crm_private.may_act_as(name) IS 'Whether the session (its login) is p_role or may SET ROLE to it; the guard of every identity helper';

CREATE OR REPLACE FUNCTION crm_private.employee_id_for(p_role name) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Answers only for roles this session could act as, so no one learns about a
    -- colleague by passing their role name. PL/pgSQL: its plan is cached per session
    -- (a SQL function is planned at every call on PostgreSQL 15).
    IF NOT crm_private.may_act_as(p_role) THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT e.id FROM crm.employees AS e
             WHERE e.role_name = p_role AND e.status <> 'departed');
END
$$;
COMMENT ON FUNCTION crm_private.employee_id_for(name) IS 'Employee bound to a role the calling session may act as; NULL otherwise or if departed. Use crm.current_employee_id()';

CREATE OR REPLACE FUNCTION crm_private.subordinate_ids(p_role name) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(t.employee_id ORDER BY t.employee_id), '{}')
          FROM crm.employees AS e
          JOIN crm_private.manager_tree AS t ON t.manager_id = e.id
         WHERE e.role_name = p_role AND e.status <> 'departed'
           AND crm_private.may_act_as(p_role)
           AND t.depth > 0);
END
$$;
COMMENT ON FUNCTION crm_private.subordinate_ids(name) IS 'Employees anywhere below p_role in the manager hierarchy (not p_role itself); empty unless the session may act as p_role';

CREATE OR REPLACE FUNCTION crm_private.org_unit_ids(p_role name, p_include_sub_units boolean) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(t.descendant_id ORDER BY t.descendant_id), '{}')
          FROM crm.employees AS e
          JOIN crm_private.org_unit_tree AS t ON t.ancestor_id = e.org_unit_id
         WHERE e.role_name = p_role AND e.status <> 'departed'
           AND crm_private.may_act_as(p_role)
           AND (p_include_sub_units OR t.depth = 0));
END
$$;
COMMENT ON FUNCTION crm_private.org_unit_ids(name, boolean) IS 'p_role''s org unit, and with p_include_sub_units every unit below it';

CREATE OR REPLACE FUNCTION crm_private.project_ids(p_role name, p_template text) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(DISTINCT m.project_id ORDER BY m.project_id), '{}')
          FROM crm.employees AS e
          JOIN crm.project_members AS m ON m.employee_id = e.id
         WHERE e.role_name = p_role AND e.status <> 'departed'
           AND crm_private.may_act_as(p_role)
           AND m.template = p_template);
END
$$;
COMMENT ON FUNCTION crm_private.project_ids(name, text) IS 'Projects where p_role is a member under template p_template (the project guard of every template policy)';

CREATE OR REPLACE FUNCTION crm_private.has_template(p_role name, p_template text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT EXISTS (
            SELECT FROM crm.employees AS e
              JOIN crm.project_members AS m ON m.employee_id = e.id
             WHERE e.role_name = p_role AND e.status <> 'departed'
               AND crm_private.may_act_as(p_role)
               AND m.template = p_template));
END
$$;
COMMENT ON FUNCTION crm_private.has_template(name, text) IS 'Whether p_role holds template p_template in any project (the guard for tables without a project)';

CREATE OR REPLACE FUNCTION crm_private.shared_customer_ids(p_role name, p_edit boolean) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Shares to the employee or to their org unit, not expired; with p_edit only
    -- shares that allow editing. Two index lookups (an OR join would scan every share).
    RETURN (
        WITH me AS (
            SELECT e.id, e.org_unit_id FROM crm.employees AS e
             WHERE e.role_name = p_role AND e.status <> 'departed'
               AND crm_private.may_act_as(p_role)
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

RESET ROLE;
