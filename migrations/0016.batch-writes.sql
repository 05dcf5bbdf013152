-- Faster writes of many rows at once: anchor copies per statement, quieter audit.
-- depends: 0015.cheaper-helpers
--
-- A routing batch gives hundreds of customers an owner in one UPDATE. The field groups'
-- anchor copies followed row by row (three UPDATEs per customer, each firing the group
-- table's statement-level audit trigger for one row): 500 customers cost 1,500
-- statements and audit runs. Now one statement-level trigger copies them with one
-- UPDATE per group table, and record_changes leaves out rows where only quiet columns
-- (the anchor copies) changed before comparing key by key; keep_derived lets crmdb's own
-- writes through before making rows jsonb.

SET ROLE crmdb_owner;

CREATE OR REPLACE FUNCTION crm_private.copy_anchors() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Statement-level: one UPDATE per group table for every row whose anchors changed
    -- (a routing batch moves hundreds of customers; row by row, each copy was three
    -- statements, each with its own audit trigger run).
    IF TG_TABLE_NAME = 'customers' THEN
        IF NOT EXISTS (SELECT FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
                        WHERE (o.project_id, o.org_unit_id, o.owner_id)
                              IS DISTINCT FROM (n.project_id, n.org_unit_id, n.owner_id)) THEN
            RETURN NULL;
        END IF;
        UPDATE crm.customers__contact AS g
           SET project_id = n.project_id, org_unit_id = n.org_unit_id, owner_id = n.owner_id
          FROM new_rows AS n
         WHERE g.id = n.id
           AND (g.project_id, g.org_unit_id, g.owner_id)
               IS DISTINCT FROM (n.project_id, n.org_unit_id, n.owner_id);
        UPDATE crm.customers__financial AS g
           SET project_id = n.project_id, org_unit_id = n.org_unit_id, owner_id = n.owner_id
          FROM new_rows AS n
         WHERE g.id = n.id
           AND (g.project_id, g.org_unit_id, g.owner_id)
               IS DISTINCT FROM (n.project_id, n.org_unit_id, n.owner_id);
        UPDATE crm.customers__internal_notes AS g
           SET project_id = n.project_id, org_unit_id = n.org_unit_id, owner_id = n.owner_id
          FROM new_rows AS n
         WHERE g.id = n.id
           AND (g.project_id, g.org_unit_id, g.owner_id)
               IS DISTINCT FROM (n.project_id, n.org_unit_id, n.owner_id);
    ELSIF TG_TABLE_NAME = 'contracts' THEN
        UPDATE crm.contracts__financial AS g
           SET project_id = n.project_id, owner_id = n.owner_id, customer_id = n.customer_id
          FROM new_rows AS n
         WHERE g.id = n.id
           AND (g.project_id, g.owner_id, g.customer_id)
               IS DISTINCT FROM (n.project_id, n.owner_id, n.customer_id);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.copy_anchors() IS 'AFTER UPDATE statement trigger on customers and contracts: the field groups'' copies of the anchors follow, one UPDATE per group table';

DROP TRIGGER _410_field_anchors ON crm.customers;
DROP TRIGGER _410_field_anchors ON crm.contracts;

-- Statement-level (transition tables cannot go with a column list or WHEN: the function
-- finds the rows whose anchors changed).
CREATE TRIGGER _410_field_anchors AFTER UPDATE ON crm.customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.copy_anchors();
CREATE TRIGGER _410_field_anchors AFTER UPDATE ON crm.contracts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.copy_anchors();

CREATE OR REPLACE FUNCTION crm_private.record_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_actor name := crm_private.acting_role();
    v_employee bigint;
    v_columns text[];
    -- Trigger arguments: columns whose changes alone are not logged.
    v_quiet text[] := ARRAY['updated_at'] || coalesce(TG_ARGV, '{}'::text[]);
BEGIN
    -- Statement-level with transition tables: one INSERT per statement, not per row.
    -- Each row is made jsonb once (MATERIALIZED: not recomputed at every reference).
    SELECT e.id INTO v_employee FROM crm.employees AS e WHERE e.role_name = v_actor;
    IF TG_OP IN ('INSERT', 'DELETE') THEN
        SELECT array_agg(a.attname::text ORDER BY a.attname) INTO v_columns
          FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped;
    END IF;

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
        -- Compared key by key; rows where only quiet columns changed are not logged
        -- (and are left out before the key-by-key comparison: a routing batch's group
        -- rows change only their anchor copies).
        WITH r AS MATERIALIZED (
            SELECT x.id, x.nj, x.oj
              FROM (SELECT n.id, to_jsonb(n) AS nj, to_jsonb(o) AS oj
                      FROM new_rows AS n
                      JOIN old_rows AS o ON o.id = n.id) AS x
             WHERE (x.nj - v_quiet) IS DISTINCT FROM (x.oj - v_quiet)
        )
        SELECT TG_TABLE_NAME, r.id, 'UPDATE', d.fields, d.old_values, d.new_values,
               v_actor, v_employee, crm_private.change_project(r.nj)
          FROM r
         CROSS JOIN LATERAL (
              SELECT array_agg(k ORDER BY k) AS fields,
                     jsonb_object_agg(k, r.oj -> k) AS old_values,
                     jsonb_object_agg(k, r.nj -> k) AS new_values
                FROM jsonb_object_keys(r.nj) AS k
               WHERE k <> ALL (v_quiet) AND (r.nj -> k) IS DISTINCT FROM (r.oj -> k)
          ) AS d
         WHERE d.fields IS NOT NULL;
    END IF;
    RETURN NULL;
END
$$;


CREATE OR REPLACE FUNCTION crm_private.keep_derived() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_new jsonb;
    v_old jsonb;
    v_column text;
BEGIN
    -- crmdb's own writes first, before any row is made jsonb (a routing batch copies
    -- anchors into hundreds of group rows).
    IF pg_catalog.pg_has_role(current_user, 'crmdb_owner', 'MEMBER') THEN
        RETURN NEW;
    END IF;
    v_new := to_jsonb(NEW);
    v_old := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END;
    FOREACH v_column IN ARRAY TG_ARGV LOOP
        IF (v_new -> v_column) IS DISTINCT FROM coalesce(v_old -> v_column, 'null') THEN
            RAISE EXCEPTION 'crmdb: %.% is kept by crmdb and cannot be written', TG_TABLE_NAME, v_column
                USING ERRCODE = 'insufficient_privilege',
                      HINT = CASE WHEN TG_TABLE_NAME LIKE '%\_\_%'
                                  THEN 'change the row it belongs to; its field groups follow'
                                  ELSE 'write the field; its mask follows' END;
        END IF;
    END LOOP;
    RETURN NEW;
END
$$;


RESET ROLE;
