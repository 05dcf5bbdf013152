-- Rolls back 0005: the audit trail's project, database-assigned ids, pg_temp last.
SET ROLE crmdb_owner;

CREATE OR REPLACE FUNCTION crm_private.record_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_actor name := crm_private.acting_role();
    v_employee bigint;
    v_columns text[];
BEGIN
    -- Statement-level with transition tables: one INSERT per statement, not per row.
    SELECT e.id INTO v_employee FROM crm.employees AS e WHERE e.role_name = v_actor;
    SELECT array_agg(a.attname::text ORDER BY a.attname) INTO v_columns
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id)
        SELECT TG_TABLE_NAME, n.id, 'INSERT', v_columns, NULL, to_jsonb(n), v_actor, v_employee
          FROM new_rows AS n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id)
        SELECT TG_TABLE_NAME, o.id, 'DELETE', v_columns, to_jsonb(o), NULL, v_actor, v_employee
          FROM old_rows AS o;
    ELSE
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id)
        -- Each row made jsonb once (MATERIALIZED: not recomputed at every reference),
        -- then compared key by key; rows where only updated_at changed are not logged.
        WITH r AS MATERIALIZED (
            SELECT n.id, to_jsonb(n) AS nj, to_jsonb(o) AS oj
              FROM new_rows AS n
              JOIN old_rows AS o ON o.id = n.id
        )
        SELECT TG_TABLE_NAME, r.id, 'UPDATE', d.fields, d.old_values, d.new_values,
               v_actor, v_employee
          FROM r
         CROSS JOIN LATERAL (
              SELECT array_agg(k ORDER BY k) AS fields,
                     jsonb_object_agg(k, r.oj -> k) AS old_values,
                     jsonb_object_agg(k, r.nj -> k) AS new_values
                FROM jsonb_object_keys(r.nj) AS k
               WHERE k <> 'updated_at' AND (r.nj -> k) IS DISTINCT FROM (r.oj -> k)
          ) AS d
         WHERE d.fields IS NOT NULL;
    END IF;
    RETURN NULL;
END
$$;
DROP FUNCTION crm_private.change_project(jsonb);
-- CASCADE: policies generated for the column (scope project) go with it; run
-- `crmdb policy apply` with the matching templates afterwards.
ALTER TABLE crm.change_log DROP COLUMN project_id CASCADE;

DROP TRIGGER _050_assign_id ON crm.customers;
DROP TRIGGER _050_assign_id ON crm.contracts;
DROP TRIGGER _050_assign_id ON crm.activities;
DROP TRIGGER _050_assign_id ON crm.shares;
DROP FUNCTION crm_private.assign_id();

DO $$
DECLARE
    v_function regprocedure;
BEGIN
    FOR v_function IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc AS p
          JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('crm', 'crm_private', 'crm_admin')
           AND 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig)
         ORDER BY 1
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = ''''', v_function);
    END LOOP;
END
$$;

RESET ROLE;
