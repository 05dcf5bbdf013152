-- Rolls back 0016: anchor copies row by row again, the audit without its prefilter.

SET ROLE crmdb_owner;

CREATE OR REPLACE FUNCTION crm_private.copy_anchors() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME = 'customers' THEN
        UPDATE crm.customers__contact
           SET project_id = NEW.project_id, org_unit_id = NEW.org_unit_id, owner_id = NEW.owner_id
         WHERE id = NEW.id;
        UPDATE crm.customers__financial
           SET project_id = NEW.project_id, org_unit_id = NEW.org_unit_id, owner_id = NEW.owner_id
         WHERE id = NEW.id;
        UPDATE crm.customers__internal_notes
           SET project_id = NEW.project_id, org_unit_id = NEW.org_unit_id, owner_id = NEW.owner_id
         WHERE id = NEW.id;
    ELSIF TG_TABLE_NAME = 'contracts' THEN
        UPDATE crm.contracts__financial
           SET project_id = NEW.project_id, owner_id = NEW.owner_id, customer_id = NEW.customer_id
         WHERE id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.copy_anchors() IS 'AFTER UPDATE row trigger on customers and contracts (when an anchor changed): the field groups'' copies follow';

DROP TRIGGER _410_field_anchors ON crm.customers;
DROP TRIGGER _410_field_anchors ON crm.contracts;

CREATE TRIGGER _410_field_anchors AFTER UPDATE OF project_id, org_unit_id, owner_id ON crm.customers
    FOR EACH ROW
    WHEN ((OLD.project_id, OLD.org_unit_id, OLD.owner_id)
          IS DISTINCT FROM (NEW.project_id, NEW.org_unit_id, NEW.owner_id))
    EXECUTE FUNCTION crm_private.copy_anchors();
CREATE TRIGGER _410_field_anchors AFTER UPDATE OF project_id, owner_id, customer_id ON crm.contracts
    FOR EACH ROW
    WHEN ((OLD.project_id, OLD.owner_id, OLD.customer_id)
          IS DISTINCT FROM (NEW.project_id, NEW.owner_id, NEW.customer_id))
    EXECUTE FUNCTION crm_private.copy_anchors();

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
        -- Compared key by key; rows where only quiet columns changed are not logged.
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
    v_new jsonb := to_jsonb(NEW);
    v_old jsonb := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END;
    v_column text;
BEGIN
    IF pg_catalog.pg_has_role(current_user, 'crmdb_owner', 'MEMBER') THEN
        RETURN NEW;
    END IF;
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
