-- Rolls back 0001: drops crmdb's schemas and the employee, gateway and template roles
-- they bound, then crmdb's own roles, each unless another database still uses it.

DO $$
DECLARE
    v_roles name[];
    v_role name;
BEGIN
    SELECT pg_catalog.array_agg(r.role_name) INTO v_roles
      FROM (SELECT role_name FROM crm.employees
            UNION SELECT role_name FROM crm_private.gateways
            UNION SELECT rolname FROM pg_catalog.pg_roles WHERE rolname LIKE 'crmdb\_tpl\_%') AS r;
    -- Schemas first: a grant or policy naming a role would block DROP ROLE. crmdb_guard
    -- holds the statement cache `crmdb guard enable` installs (sql/guard.sql), granted
    -- to crmdb's roles.
    DROP SCHEMA IF EXISTS crmdb_guard CASCADE;
    DROP SCHEMA crm_admin, crm_private, crm CASCADE;
    FOREACH v_role IN ARRAY coalesce(v_roles, '{}') LOOP
        BEGIN
            EXECUTE pg_catalog.format('DROP ROLE IF EXISTS %I', v_role);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'role % kept: objects in other databases depend on it', v_role;
        END;
    END LOOP;
END
$$;

ALTER DEFAULT PRIVILEGES FOR ROLE crmdb_owner GRANT EXECUTE ON FUNCTIONS TO PUBLIC;

DO $$
BEGIN
    BEGIN
        DROP ROLE IF EXISTS crmdb_employee;
    EXCEPTION WHEN dependent_objects_still_exist THEN
        RAISE NOTICE 'role crmdb_employee kept: another database uses it';
    END;
    BEGIN
        DROP ROLE IF EXISTS crmdb_owner;
    EXCEPTION WHEN dependent_objects_still_exist THEN
        RAISE NOTICE 'role crmdb_owner kept: another database uses it';
    END;
END
$$;
