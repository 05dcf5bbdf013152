-- Rolls back 0001: drops crmdb's schemas and the employee and gateway roles they
-- bound, then crmdb's own roles unless another database still uses them.

DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT role_name FROM crm.employees
        UNION
        SELECT role_name FROM crm_private.gateways
    LOOP
        BEGIN
            EXECUTE pg_catalog.format('DROP ROLE IF EXISTS %I', v_role);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'role % kept: objects in other databases depend on it', v_role;
        END;
    END LOOP;
END
$$;

DROP SCHEMA crm_admin, crm_private, crm CASCADE;

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
