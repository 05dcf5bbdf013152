-- The worker renders an employee's email as that employee: crmdb_worker.
-- depends: 0013.sla-fallback
--
-- An email to an employee shows the customer as they see it: the worker reads it under
-- SET LOCAL ROLE <employee>, so their row policies and field groups decide. The worker's
-- login (not a superuser, in production) could not do that unless it held every employee
-- role. crmdb_worker holds them: NOINHERIT, so its members may SET ROLE to an employee but
-- inherit none of their privileges; add_employee grants each new employee to it and a
-- departure revokes it, as for gateways. Grant it to the worker's login:
--   GRANT crmdb_owner, crmdb_worker TO crm_worker;

DO $$
DECLARE
    v_role name;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'crmdb_worker') THEN
        CREATE ROLE crmdb_worker NOLOGIN NOINHERIT;
    END IF;
    -- Roles are the cluster's: this grant marks the role as used by this database, so
    -- rolling crmdb back elsewhere cannot drop it (PUBLIC may connect anyway).
    EXECUTE pg_catalog.format('GRANT CONNECT ON DATABASE %I TO crmdb_worker', pg_catalog.current_database());
    FOR v_role IN SELECT role_name FROM crm.employees WHERE status <> 'departed' ORDER BY role_name LOOP
        EXECUTE pg_catalog.format('GRANT %I TO crmdb_worker', v_role);
    END LOOP;
END
$$;

SET ROLE crmdb_owner;

CREATE OR REPLACE FUNCTION crm_admin.add_employee(
    p_role name, p_full_name text, p_email text, p_org_unit text,
    p_manager name DEFAULT NULL, p_title text DEFAULT NULL,
    p_login boolean DEFAULT false, p_password text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role pg_catalog.pg_roles;
    v_id bigint;
    v_gateway name;
BEGIN
    PERFORM crm_private.check_role_name(p_role, 'employee');
    IF EXISTS (SELECT FROM crm.employees WHERE role_name = p_role) THEN
        RAISE EXCEPTION 'employee "%" already exists', p_role USING ERRCODE = 'unique_violation';
    END IF;
    SELECT * INTO v_role FROM pg_catalog.pg_roles WHERE rolname = p_role;
    IF FOUND THEN
        -- Adopting an existing role is fine, unless it is, or is a member of, a role
        -- that could step around RLS (every role is a member of itself).
        IF EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                    WHERE pg_catalog.pg_has_role(v_role.oid, r.oid, 'MEMBER')
                      AND (r.rolsuper OR r.rolbypassrls OR r.rolcreaterole OR r.rolreplication
                           OR r.rolname IN ('crmdb_owner', 'crmdb_worker'))) THEN
            RAISE EXCEPTION 'role "%" exists and has, or is a member of a role with, SUPERUSER, BYPASSRLS, CREATEROLE, REPLICATION, crmdb_owner or crmdb_worker: it cannot be an employee', p_role
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF EXISTS (SELECT FROM crm_private.gateways WHERE role_name = p_role) THEN
            RAISE EXCEPTION 'role "%" is a gateway, not an employee', p_role USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSE
        EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN INHERIT', p_role);
    END IF;
    IF p_login THEN
        EXECUTE pg_catalog.format('ALTER ROLE %I LOGIN PASSWORD %L', p_role, p_password);
    END IF;
    -- On PostgreSQL 16+ the employee inherits crmdb_employee but cannot SET ROLE to it.
    EXECUTE pg_catalog.format('GRANT crmdb_employee TO %I%s', p_role,
        CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
             THEN ' WITH SET FALSE' ELSE '' END);
    FOR v_gateway IN SELECT role_name FROM crm_private.gateways ORDER BY role_name LOOP
        EXECUTE pg_catalog.format('GRANT %I TO %I', p_role, v_gateway);
    END LOOP;
    -- The worker renders this employee's emails as them (crmdb_worker is NOINHERIT:
    -- it may SET ROLE to the employee but holds none of their privileges).
    EXECUTE pg_catalog.format('GRANT %I TO crmdb_worker', p_role);

    IF p_manager IS NOT NULL AND (crm_private.employee_by_role(p_manager)).status = 'departed' THEN
        RAISE EXCEPTION 'employee "%" has departed and cannot be a manager', p_manager
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO crm.employees (role_name, full_name, email, title, manager_id, org_unit_id)
    VALUES (p_role, p_full_name, p_email, p_title,
            CASE WHEN p_manager IS NOT NULL THEN (crm_private.employee_by_role(p_manager)).id END,
            crm_private.org_unit_by_code(p_org_unit))
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION crm_admin.add_employee(name, text, text, text, name, text, boolean, text) IS 'Adds an employee bound to role p_role (created NOLOGIN unless p_login), grants it to every gateway and to crmdb_worker; returns the id';

CREATE OR REPLACE FUNCTION crm_admin.set_employee_status(p_role name, p_status crm.employee_status)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_employee crm.employees := crm_private.employee_by_role(p_role);
    v_gateway name;
BEGIN
    IF v_employee.status = 'departed' AND p_status <> 'departed' THEN
        RAISE EXCEPTION 'employee "%" has departed; add them again under a new role to rehire', p_role
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_employee.status = p_status THEN
        RETURN;
    END IF;
    UPDATE crm.employees
       SET status = p_status,
           departed_at = CASE WHEN p_status = 'departed' THEN pg_catalog.now() END
     WHERE id = v_employee.id;
    IF p_status = 'departed' THEN
        -- Closed three ways: no login, no gateway can SET ROLE to it, no identity
        -- (crm.current_employee_id() is NULL for departed staff).
        EXECUTE pg_catalog.format('ALTER ROLE %I NOLOGIN', p_role);
        FOR v_gateway IN SELECT role_name FROM crm_private.gateways ORDER BY role_name LOOP
            EXECUTE pg_catalog.format('REVOKE %I FROM %I', p_role, v_gateway);
        END LOOP;
        EXECUTE pg_catalog.format('REVOKE %I FROM crmdb_worker', p_role);
    END IF;
END
$$;
COMMENT ON FUNCTION crm_admin.set_employee_status(name, crm.employee_status) IS 'Puts an employee on leave, back to active, or departed (login closed, gateways and crmdb_worker revoked, no identity); after commit, end their open sessions with crm_admin.end_sessions';

RESET ROLE;
