-- Rolls back 0006: field group values move back into their parents.
-- PostgreSQL appends re-added columns: customers and contracts keep every value, but
-- their moved columns come last (tests/migration/test_rollback.py knows this).
SET ROLE crmdb_owner;

-- Generated objects: the views (with the schema) and their write triggers' functions.
DROP SCHEMA crm_api CASCADE;
DROP FUNCTION crm.explain_fields(text, bigint);
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc AS p
              WHERE p.pronamespace = 'crm_private'::regnamespace
                AND p.proname LIKE 'api\_%\_write' LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s', f);
    END LOOP;
END
$$;

DROP TRIGGER _040_keep_derived ON crm.customers;
DROP TRIGGER _400_field_rows ON crm.customers;
DROP TRIGGER _400_field_rows ON crm.contracts;
DROP TRIGGER _410_field_anchors ON crm.customers;
DROP TRIGGER _410_field_anchors ON crm.contracts;

ALTER TABLE crm.customers DISABLE TRIGGER USER;
ALTER TABLE crm.contracts DISABLE TRIGGER USER;

ALTER TABLE crm.customers DROP COLUMN phone_mask,
    ADD COLUMN phone text, ADD COLUMN email text, ADD COLUMN address text,
    ADD COLUMN bank_account text, ADD COLUMN bank_name text, ADD COLUMN tax_code text,
    ADD COLUMN financial_notes text, ADD COLUMN notes text;
ALTER TABLE crm.contracts
    ADD COLUMN amount numeric(18, 2) NOT NULL DEFAULT 0 CHECK (amount >= 0),
    ADD COLUMN payment_method text, ADD COLUMN bank_account text, ADD COLUMN bank_name text;

UPDATE crm.customers AS c
   SET phone = ct.phone, email = ct.email, address = ct.address,
       bank_account = f.bank_account, bank_name = f.bank_name, tax_code = f.tax_code,
       financial_notes = f.financial_notes, notes = n.notes
  FROM crm.customers__contact AS ct, crm.customers__financial AS f,
       crm.customers__internal_notes AS n
 WHERE ct.id = c.id AND f.id = c.id AND n.id = c.id;
UPDATE crm.contracts AS k
   SET amount = f.amount, payment_method = f.payment_method, bank_account = f.bank_account,
       bank_name = f.bank_name
  FROM crm.contracts__financial AS f
 WHERE f.id = k.id;

ALTER TABLE crm.customers ENABLE TRIGGER USER;
ALTER TABLE crm.contracts ENABLE TRIGGER USER;

CREATE INDEX customers_phone_idx ON crm.customers (phone);
COMMENT ON COLUMN crm.customers.phone IS 'Contact field';
COMMENT ON COLUMN crm.customers.email IS 'Contact field';
COMMENT ON COLUMN crm.customers.address IS 'Contact field';
COMMENT ON COLUMN crm.customers.bank_account IS 'Sensitive (financial) field';
COMMENT ON COLUMN crm.customers.bank_name IS 'Sensitive (financial) field';
COMMENT ON COLUMN crm.customers.tax_code IS 'Sensitive (financial) field';
COMMENT ON COLUMN crm.customers.financial_notes IS 'Sensitive (financial) field';
COMMENT ON COLUMN crm.customers.notes IS 'Internal notes';
COMMENT ON COLUMN crm.contracts.amount IS 'Sensitive (financial) field: contract money';
COMMENT ON COLUMN crm.contracts.payment_method IS 'Sensitive (financial) field';
COMMENT ON COLUMN crm.contracts.bank_account IS 'Sensitive (financial) field';
COMMENT ON COLUMN crm.contracts.bank_name IS 'Sensitive (financial) field';

DROP TABLE crm.customers__contact, crm.customers__financial, crm.customers__internal_notes,
    crm.contracts__financial;
DROP TABLE crm_private.field_masks;
DROP FUNCTION crm_private.create_field_rows(), crm_private.copy_anchors(),
    crm_private.keep_derived(), crm_private.refresh_masks(), crm_private.mask_text(text, integer);

DROP TRIGGER _500_audit_update ON crm.customers;
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();

-- The audit trigger function as 0005 left it (no quiet columns).
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

RESET ROLE;
