-- Rolls back 0014: the admin functions no longer grant employees to crmdb_worker, which
-- is dropped unless another database's crmdb still uses it.

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
                           OR r.rolname = 'crmdb_owner')) THEN
            RAISE EXCEPTION 'role "%" exists and has, or is a member of a role with, SUPERUSER, BYPASSRLS, CREATEROLE, REPLICATION or crmdb_owner: it cannot be an employee', p_role
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
COMMENT ON FUNCTION crm_admin.add_employee(name, text, text, text, name, text, boolean, text) IS 'Adds an employee bound to role p_role (created NOLOGIN unless p_login), grants it to every gateway; returns the id';

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
    END IF;
END
$$;
COMMENT ON FUNCTION crm_admin.set_employee_status(name, crm.employee_status) IS 'Puts an employee on leave, back to active, or departed (login closed, gateways revoked, no identity); after commit, end their open sessions with crm_admin.end_sessions';

RESET ROLE;

DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT role_name FROM crm.employees WHERE status <> 'departed' ORDER BY role_name LOOP
        EXECUTE pg_catalog.format('REVOKE %I FROM crmdb_worker', v_role);
    END LOOP;
    EXECUTE pg_catalog.format('REVOKE CONNECT ON DATABASE %I FROM crmdb_worker', pg_catalog.current_database());
    DROP ROLE IF EXISTS crmdb_worker;
EXCEPTION WHEN dependent_objects_still_exist THEN
    -- Another database's crmdb holds its CONNECT grant: it still uses the role.
    RAISE NOTICE 'role crmdb_worker kept: another database uses it';
END
$$;
