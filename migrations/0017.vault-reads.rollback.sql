-- Rolls back 0017: crm_api reads the side tables again; ids from identity columns.
-- crm_api's views read the vault: they are dropped with it (crmdb policy apply makes
-- them again).

SET ROLE crmdb_owner;

DROP VIEW IF EXISTS crm_private.export_customers, crm_private.export_contracts;
DROP VIEW IF EXISTS crm_api.customers, crm_api.contracts;
ALTER TABLE crm_vault.customers DETACH PARTITION crm.customers;
ALTER TABLE crm_vault.contracts DETACH PARTITION crm.contracts;

-- Column privileges back to table privileges.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT c.relname, g.rolname
               FROM pg_catalog.pg_attribute AS at
               JOIN pg_catalog.pg_class AS c ON c.oid = at.attrelid
              CROSS JOIN LATERAL pg_catalog.aclexplode(at.attacl) AS a
               JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
              WHERE c.oid IN ('crm.customers'::regclass, 'crm.contracts'::regclass)
                AND at.attname = 'id' AND a.privilege_type = 'SELECT'
                AND g.rolname <> 'crmdb_owner' LOOP
        EXECUTE pg_catalog.format('REVOKE SELECT ON crm.%I FROM %I', r.relname, r.rolname);
        EXECUTE pg_catalog.format('GRANT SELECT ON crm.%I TO %I', r.relname, r.rolname);
    END LOOP;
END
$$;
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers__contact', 'customers__financial',
                             'customers__internal_notes', 'contracts__financial'] LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER _420_copy_insert ON crm.%I', t);
        EXECUTE pg_catalog.format('DROP TRIGGER _420_copy_update ON crm.%I', t);
    END LOOP;
END
$$;
DROP FUNCTION crm_private.copy_field_values();
DROP FUNCTION crm_private.copy_of(crm.customers__contact), crm_private.copy_of(crm.customers__financial),
    crm_private.copy_of(crm.customers__internal_notes), crm_private.copy_of(crm.contracts__financial);

DROP TRIGGER _500_audit_update ON crm.customers;
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes('phone_mask');
DROP TRIGGER _500_audit_update ON crm.contracts;
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.contracts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();

DROP TRIGGER _040_keep_derived ON crm.contracts;
DROP TRIGGER _040_keep_derived ON crm.customers;
CREATE TRIGGER _040_keep_derived BEFORE INSERT OR UPDATE OF phone_mask ON crm.customers
    FOR EACH ROW EXECUTE FUNCTION crm_private.keep_derived('phone_mask');

CREATE OR REPLACE FUNCTION crm_private.prior_customers(p_id bigint) RETURNS SETOF crm.customers
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.customers WHERE id = p_id $$;
CREATE OR REPLACE FUNCTION crm_private.prior_contracts(p_id bigint) RETURNS SETOF crm.contracts
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.contracts WHERE id = p_id $$;
-- The types go with the copies (their columns).
DROP SCHEMA crm_vault CASCADE;



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

CREATE OR REPLACE FUNCTION crm_private.assign_id() RETURNS trigger
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

DO $$
DECLARE
    t text;
    v_last bigint;
    v_called boolean;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers', 'contracts'] LOOP
        EXECUTE pg_catalog.format('SELECT last_value, is_called FROM crm.%I', t || '_id_seq')
           INTO v_last, v_called;
        EXECUTE pg_catalog.format('DROP SEQUENCE crm.%I', t || '_id_seq');
        EXECUTE pg_catalog.format('ALTER TABLE crm.%I ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY', t);
        PERFORM pg_catalog.setval(pg_catalog.pg_get_serial_sequence('crm.' || t, 'id')::regclass, v_last, v_called);
    END LOOP;
END
$$;

RESET ROLE;
