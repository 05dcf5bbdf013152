-- Rolls back 0015: the helpers call employee_id_for again, which is SQL again.

SET ROLE crmdb_owner;

CREATE OR REPLACE FUNCTION crm_private.employee_id_for(p_role name) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    -- Answers only for roles this session could act as, so no one learns about a
    -- colleague by passing their role name.
    SELECT e.id
      FROM crm.employees AS e
      JOIN pg_catalog.pg_roles AS r ON r.rolname = e.role_name
     WHERE e.role_name = p_role
       AND e.status <> 'departed'
       AND (p_role = session_user OR pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER'))
$$;
COMMENT ON FUNCTION crm_private.employee_id_for(name) IS 'Employee bound to a role the calling session may act as; NULL otherwise or if departed. Use crm.current_employee_id()';

CREATE OR REPLACE FUNCTION crm_private.subordinate_ids(p_role name) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION crm_private.org_unit_ids(p_role name, p_include_sub_units boolean) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION crm_private.project_ids(p_role name, p_template text) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION crm_private.has_template(p_role name, p_template text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION crm_private.shared_customer_ids(p_role name, p_edit boolean) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
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

DROP FUNCTION crm_private.may_act_as(name);

RESET ROLE;
