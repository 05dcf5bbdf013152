-- Security hardening: what the attack suite (tests/security) found.
-- depends: 0004.routing
--
-- 1. Functions search pg_temp last. `SET search_path = ''` still searches the
--    session's temporary schema FIRST for relations and types, and every session may
--    create objects there: a temporary domain named `text` whose CHECK calls a
--    temporary function made `'x'::text` inside a SECURITY DEFINER function run that
--    function as crmdb_owner. With `pg_catalog, pg_temp` the built-in types win, and
--    crmdb names every relation with its schema.
-- 2. Employees never choose ids. An id given in an INSERT (or MERGE) could hit a row
--    the employee cannot see (the duplicate-key error says it exists) or an id the
--    sequence hands out later (everybody's inserts would then fail).
-- 3. The audit trail knows each change's project, so templates can limit it to their
--    projects (scope project) instead of handing out every project's history.

SET ROLE crmdb_owner;

-- 1. pg_temp last --------------------------------------------------------------

DO $$
DECLARE
    v_function regprocedure;
BEGIN
    FOR v_function IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc AS p
          JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('crm', 'crm_private', 'crm_admin')
           AND 'search_path=""' = ANY (p.proconfig)
         ORDER BY 1
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', v_function);
    END LOOP;
END
$$;

-- 2. Ids are the database's ----------------------------------------------------

CREATE FUNCTION crm_private.assign_id() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- crm_private.acting_role(), written out: this runs for every inserted row.
    v_role name := pg_catalog.current_setting('role');
BEGIN
    IF v_role = 'none' THEN
        v_role := session_user;
    END IF;
    -- DBAs (members of crmdb_owner, superusers) keep the ids they load; everyone
    -- else gets the next one, whatever they asked for.
    IF NOT pg_catalog.pg_has_role(v_role, 'crmdb_owner', 'MEMBER') THEN
        NEW.id := pg_catalog.nextval(pg_catalog.pg_get_serial_sequence(
            pg_catalog.format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'id')::regclass);
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.assign_id() IS 'BEFORE INSERT trigger: rows employees insert get the next id from the sequence, never one they chose';

CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.customers
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();
CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.contracts
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();
CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.activities
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();
CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.shares
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();

-- 3. The audit trail's project -------------------------------------------------

ALTER TABLE crm.change_log ADD COLUMN project_id bigint;
CREATE INDEX change_log_project_id_idx ON crm.change_log (project_id, at);
COMMENT ON COLUMN crm.change_log.project_id IS 'Project of the changed row (of its customer for activities and shares); NULL for the org (employees)';

-- PL/pgSQL: its query is planned once per session, not at every row.
CREATE FUNCTION crm_private.change_project(p_row jsonb) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((p_row ->> 'project_id')::bigint,
                    (SELECT c.project_id FROM crm.customers AS c
                      WHERE c.id = (p_row ->> 'customer_id')::bigint));
END
$$;
COMMENT ON FUNCTION crm_private.change_project(jsonb) IS 'The project an audited row (as jsonb) belongs to: its project_id, else its customer''s';

CREATE OR REPLACE FUNCTION crm_private.record_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_actor name := crm_private.acting_role();
    v_employee bigint;
    v_columns text[];
BEGIN
    -- Statement-level with transition tables: one INSERT per statement, not per row.
    -- Each row is made jsonb once (MATERIALIZED: not recomputed at every reference).
    SELECT e.id INTO v_employee FROM crm.employees AS e WHERE e.role_name = v_actor;
    SELECT array_agg(a.attname::text ORDER BY a.attname) INTO v_columns
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id,
                                    project_id)
        WITH r AS MATERIALIZED (SELECT n.id, to_jsonb(n) AS nj FROM new_rows AS n)
        SELECT TG_TABLE_NAME, r.id, 'INSERT', v_columns, NULL, r.nj, v_actor, v_employee,
               crm_private.change_project(r.nj)
          FROM r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id,
                                    project_id)
        WITH r AS MATERIALIZED (SELECT o.id, to_jsonb(o) AS oj FROM old_rows AS o)
        SELECT TG_TABLE_NAME, r.id, 'DELETE', v_columns, r.oj, NULL, v_actor, v_employee,
               crm_private.change_project(r.oj)
          FROM r;
    ELSE
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id,
                                    project_id)
        -- Compared key by key; rows where only updated_at changed are not logged.
        WITH r AS MATERIALIZED (
            SELECT n.id, to_jsonb(n) AS nj, to_jsonb(o) AS oj
              FROM new_rows AS n
              JOIN old_rows AS o ON o.id = n.id
        )
        SELECT TG_TABLE_NAME, r.id, 'UPDATE', d.fields, d.old_values, d.new_values,
               v_actor, v_employee, crm_private.change_project(r.nj)
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

-- Trigger code only: nobody else may call them.
REVOKE EXECUTE ON FUNCTION crm_private.assign_id(), crm_private.change_project(jsonb) FROM PUBLIC;

RESET ROLE;
