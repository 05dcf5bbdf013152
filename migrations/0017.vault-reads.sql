-- crm_api reads a row's field groups from the row itself (issue 5: views within 1.2x).
-- depends: 0016.batch-writes
--
-- Reading a customer through crm_api joined three side tables, each with its own row
-- policies: three sets of helper calls per statement and three index probes per row,
-- before any LIMIT (2.4x the base table). Now the parent row carries a read copy of
-- each group (one composite column per group, kept by the side tables' triggers), and
-- crm_api's view reads it from crm_vault.<table>: a partitioned table whose only
-- partition is crm.<table>, so it is the same rows, with its own privileges and row
-- policies. The view decides per row, with the same predicates as the side tables'
-- policies, which copies the caller sees (docs/field-security.md).
--
-- What keeps the copies hidden from any other SQL:
-- - crm.<table>: employees hold SELECT on every column but the copies (column
--   privileges), so `SELECT bank_account`/`financial_copy`, `SELECT *`, `RETURNING *`,
--   a filter or an order on a copy are refused;
-- - crm_vault: no role but crmdb_owner has USAGE on the schema, so nobody can name its
--   tables; crm_api's views reach them (a view stores the table, not its name);
-- - crm.change_log: record_changes leaves the copies out (each side table logs its own
--   changes, as before);
-- - crm_private.keep_derived refuses employees' writes to the copies.
--
-- The side tables stay what they were: where a group is written (crm_api's INSTEAD OF
-- trigger, or directly under their row policies) and read directly.
--
-- Partitions cannot have identity columns: ids of customers and contracts now come from
-- owned sequences through crm_private.assign_id (no column default: employees need no
-- privilege on the sequence, and an employee's insert takes one id, not two). From
-- here on, columns of crm.customers and crm.contracts are added and dropped on
-- crm_vault.customers and crm_vault.contracts (PostgreSQL refuses it on a partition).

CREATE SCHEMA crm_vault AUTHORIZATION crmdb_owner;
SET ROLE crmdb_owner;

-- Ids: owned sequences instead of identity -------------------------------------------

DO $$
DECLARE
    t text;
    v_last bigint;
    v_called boolean;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers', 'contracts'] LOOP
        EXECUTE pg_catalog.format('SELECT last_value, is_called FROM %s',
                                  pg_catalog.pg_get_serial_sequence('crm.' || t, 'id'))
           INTO v_last, v_called;
        EXECUTE pg_catalog.format('ALTER TABLE crm.%I ALTER COLUMN id DROP IDENTITY', t);
        EXECUTE pg_catalog.format('CREATE SEQUENCE crm.%I OWNED BY crm.%I.id', t || '_id_seq', t);
        PERFORM pg_catalog.setval(pg_catalog.format('crm.%I', t || '_id_seq')::regclass, v_last, v_called);
    END LOOP;
END
$$;
COMMENT ON SEQUENCE crm.customers_id_seq IS 'Ids of crm.customers, taken by crm_private.assign_id';
COMMENT ON SEQUENCE crm.contracts_id_seq IS 'Ids of crm.contracts, taken by crm_private.assign_id';

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
    IF NEW.id IS NULL OR NOT pg_catalog.pg_has_role(v_role, 'crmdb_owner', 'MEMBER') THEN
        NEW.id := pg_catalog.nextval(pg_catalog.pg_get_serial_sequence(
            pg_catalog.format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'id')::regclass);
    END IF;
    RETURN NEW;
END
$$;

-- Read copies ---------------------------------------------------------------------------

COMMENT ON SCHEMA crm_vault IS 'What only crm_api''s views read: partitioned tables over crm.customers and crm.contracts that show the field groups'' read copies; no role but crmdb_owner may name them (no USAGE)';

CREATE TYPE crm_vault.customers_contact AS (phone text, email text, address text, custom jsonb);
CREATE TYPE crm_vault.customers_financial AS
    (bank_account text, bank_name text, tax_code text, financial_notes text, custom jsonb);
CREATE TYPE crm_vault.customers_internal_notes AS (notes text, custom jsonb);
CREATE TYPE crm_vault.contracts_financial AS
    (amount numeric(18, 2), payment_method text, bank_account text, bank_name text, custom jsonb);
COMMENT ON TYPE crm_vault.customers_contact IS 'Read copy of crm.customers__contact, held by the customer row';
COMMENT ON TYPE crm_vault.customers_financial IS 'Read copy of crm.customers__financial, held by the customer row';
COMMENT ON TYPE crm_vault.customers_internal_notes IS 'Read copy of crm.customers__internal_notes, held by the customer row';
COMMENT ON TYPE crm_vault.contracts_financial IS 'Read copy of crm.contracts__financial, held by the contract row';

ALTER TABLE crm.customers
    ADD COLUMN contact_copy crm_vault.customers_contact,
    ADD COLUMN financial_copy crm_vault.customers_financial,
    ADD COLUMN internal_notes_copy crm_vault.customers_internal_notes;
ALTER TABLE crm.contracts ADD COLUMN financial_copy crm_vault.contracts_financial;
COMMENT ON COLUMN crm.customers.contact_copy IS 'Read copy of the contact group (crm.customers__contact); no employee may select it: crm_api.customers shows it where the group''s predicates allow';
COMMENT ON COLUMN crm.customers.financial_copy IS 'Read copy of the financial group (crm.customers__financial); no employee may select it: crm_api.customers shows it where the group''s predicates allow';
COMMENT ON COLUMN crm.customers.internal_notes_copy IS 'Read copy of the internal_notes group (crm.customers__internal_notes); no employee may select it: crm_api.customers shows it where the group''s predicates allow';
COMMENT ON COLUMN crm.contracts.financial_copy IS 'Read copy of the financial group (crm.contracts__financial); no employee may select it: crm_api.contracts shows it where the group''s predicates allow';

-- A group's copy as its row says it: NULL while a customer's group is empty (no value,
-- no custom field), so the empty rows made with each new customer write nothing back.
-- A contract's money is never empty (amount defaults to 0).
CREATE FUNCTION crm_private.copy_of(g crm.customers__contact) RETURNS crm_vault.customers_contact
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN num_nonnulls(g.phone, g.email, g.address) > 0 OR g.custom <> '{}'
            THEN ROW(g.phone, g.email, g.address, g.custom)::crm_vault.customers_contact END;
CREATE FUNCTION crm_private.copy_of(g crm.customers__financial) RETURNS crm_vault.customers_financial
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN num_nonnulls(g.bank_account, g.bank_name, g.tax_code, g.financial_notes) > 0
                 OR g.custom <> '{}'
            THEN ROW(g.bank_account, g.bank_name, g.tax_code, g.financial_notes,
                     g.custom)::crm_vault.customers_financial END;
CREATE FUNCTION crm_private.copy_of(g crm.customers__internal_notes) RETURNS crm_vault.customers_internal_notes
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN g.notes IS NOT NULL OR g.custom <> '{}'
            THEN ROW(g.notes, g.custom)::crm_vault.customers_internal_notes END;
CREATE FUNCTION crm_private.copy_of(g crm.contracts__financial) RETURNS crm_vault.contracts_financial
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ROW(g.amount, g.payment_method, g.bank_account, g.bank_name,
           g.custom)::crm_vault.contracts_financial;
COMMENT ON FUNCTION crm_private.copy_of(crm.customers__contact) IS 'The read copy of a customer''s contact group (NULL while empty)';
COMMENT ON FUNCTION crm_private.copy_of(crm.customers__financial) IS 'The read copy of a customer''s financial group (NULL while empty)';
COMMENT ON FUNCTION crm_private.copy_of(crm.customers__internal_notes) IS 'The read copy of a customer''s internal notes group (NULL while empty)';
COMMENT ON FUNCTION crm_private.copy_of(crm.contracts__financial) IS 'The read copy of a contract''s financial group';
REVOKE EXECUTE ON FUNCTION crm_private.copy_of(crm.customers__contact),
    crm_private.copy_of(crm.customers__financial), crm_private.copy_of(crm.customers__internal_notes),
    crm_private.copy_of(crm.contracts__financial) FROM PUBLIC;

-- Fill the copies without firing the update triggers: nothing the rows say changed.
-- (Every row is written once: VACUUM (ANALYZE) crm.customers, crm.contracts afterwards.)
ALTER TABLE crm.customers DISABLE TRIGGER _100_touch, DISABLE TRIGGER _410_field_anchors,
    DISABLE TRIGGER _500_audit_update, DISABLE TRIGGER _600_routing_update;
UPDATE crm.customers AS p
   SET contact_copy = crm_private.copy_of(c),
       financial_copy = crm_private.copy_of(f),
       internal_notes_copy = crm_private.copy_of(i)
  FROM crm.customers__contact AS c
  JOIN crm.customers__financial AS f ON f.id = c.id
  JOIN crm.customers__internal_notes AS i ON i.id = c.id
 WHERE p.id = c.id;
ALTER TABLE crm.customers ENABLE TRIGGER _100_touch, ENABLE TRIGGER _410_field_anchors,
    ENABLE TRIGGER _500_audit_update, ENABLE TRIGGER _600_routing_update;
ALTER TABLE crm.contracts DISABLE TRIGGER _100_touch, DISABLE TRIGGER _410_field_anchors,
    DISABLE TRIGGER _500_audit_update, DISABLE TRIGGER _700_automation_update;
UPDATE crm.contracts AS p
   SET financial_copy = crm_private.copy_of(f)
  FROM crm.contracts__financial AS f
 WHERE p.id = f.id;
ALTER TABLE crm.contracts ENABLE TRIGGER _100_touch, ENABLE TRIGGER _410_field_anchors,
    ENABLE TRIGGER _500_audit_update, ENABLE TRIGGER _700_automation_update;

-- The side tables keep the copies: one UPDATE of the parents per statement.
CREATE FUNCTION crm_private.copy_field_values() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Statement triggers fire for statements that changed nothing too (the parents'
    -- own triggers update the groups' anchor copies): stop there, not one level down.
    IF NOT EXISTS (SELECT FROM new_rows) THEN
        RETURN NULL;
    END IF;
    -- Rows of a transition table are records: each branch names its table's row type.
    -- Only when a copy changes: an UPDATE of no row still fires the parent's statement
    -- triggers (the audit, anchor copies, routing), and the group rows made empty with
    -- each new customer, or whose anchors alone moved, change no copy.
    IF TG_TABLE_NAME = 'customers__contact' THEN
        IF EXISTS (SELECT FROM new_rows AS n JOIN crm.customers AS p ON p.id = n.id
                    WHERE p.contact_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__contact)) THEN
            UPDATE crm.customers AS p SET contact_copy = crm_private.copy_of(ROW(n.*)::crm.customers__contact)
              FROM new_rows AS n
             WHERE p.id = n.id AND p.contact_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__contact);
        END IF;
    ELSIF TG_TABLE_NAME = 'customers__financial' THEN
        IF EXISTS (SELECT FROM new_rows AS n JOIN crm.customers AS p ON p.id = n.id
                    WHERE p.financial_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__financial)) THEN
            UPDATE crm.customers AS p SET financial_copy = crm_private.copy_of(ROW(n.*)::crm.customers__financial)
              FROM new_rows AS n
             WHERE p.id = n.id AND p.financial_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__financial);
        END IF;
    ELSIF TG_TABLE_NAME = 'customers__internal_notes' THEN
        IF EXISTS (SELECT FROM new_rows AS n JOIN crm.customers AS p ON p.id = n.id
                    WHERE p.internal_notes_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__internal_notes)) THEN
            UPDATE crm.customers AS p SET internal_notes_copy = crm_private.copy_of(ROW(n.*)::crm.customers__internal_notes)
              FROM new_rows AS n
             WHERE p.id = n.id AND p.internal_notes_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__internal_notes);
        END IF;
    ELSIF TG_TABLE_NAME = 'contracts__financial' THEN
        IF EXISTS (SELECT FROM new_rows AS n JOIN crm.contracts AS p ON p.id = n.id
                    WHERE p.financial_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.contracts__financial)) THEN
            UPDATE crm.contracts AS p SET financial_copy = crm_private.copy_of(ROW(n.*)::crm.contracts__financial)
              FROM new_rows AS n
             WHERE p.id = n.id AND p.financial_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.contracts__financial);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.copy_field_values() IS 'AFTER INSERT and UPDATE statement trigger on field group tables: the parent row''s read copy of the group follows';
REVOKE EXECUTE ON FUNCTION crm_private.copy_field_values() FROM PUBLIC;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers__contact', 'customers__financial',
                             'customers__internal_notes', 'contracts__financial'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _420_copy_insert AFTER INSERT ON crm.%I REFERENCING NEW TABLE AS new_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION crm_private.copy_field_values()', t);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _420_copy_update AFTER UPDATE ON crm.%I REFERENCING NEW TABLE AS new_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION crm_private.copy_field_values()', t);
    END LOOP;
END
$$;

-- Employees never write the copies (nor the mask).
DROP TRIGGER _040_keep_derived ON crm.customers;
CREATE TRIGGER _040_keep_derived
    BEFORE INSERT OR UPDATE OF phone_mask, contact_copy, financial_copy, internal_notes_copy ON crm.customers
    FOR EACH ROW EXECUTE FUNCTION crm_private.keep_derived('phone_mask', 'contact_copy', 'financial_copy', 'internal_notes_copy');
CREATE TRIGGER _040_keep_derived BEFORE INSERT OR UPDATE OF financial_copy ON crm.contracts
    FOR EACH ROW EXECUTE FUNCTION crm_private.keep_derived('financial_copy');

-- Update checks read the row before the statement through the caller's privileges:
-- every column but the copies (a caller may not select those; their type is named
-- through the table, as inlining parses the body as the caller, who may not name
-- crm_vault).
CREATE OR REPLACE FUNCTION crm_private.prior_customers(p_id bigint) RETURNS SETOF crm.customers
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT id, project_id, org_unit_id, owner_id, full_name, province, stage, source, score,
       product_interest, created_by, assigned_at, created_at, updated_at, phone_mask,
       (NULL::crm.customers).contact_copy, (NULL::crm.customers).financial_copy,
       (NULL::crm.customers).internal_notes_copy
  FROM crm.customers WHERE id = p_id
$$;
CREATE OR REPLACE FUNCTION crm_private.prior_contracts(p_id bigint) RETURNS SETOF crm.contracts
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT id, customer_id, project_id, owner_id, title, currency, status, signed_at,
       created_at, updated_at, (NULL::crm.contracts).financial_copy
  FROM crm.contracts WHERE id = p_id
$$;

-- The audit trail leaves the copies out --------------------------------------------------

CREATE OR REPLACE FUNCTION crm_private.record_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_actor name := crm_private.acting_role();
    v_employee bigint;
    v_columns text[];
    -- Read copies of field groups (columns of a crm_vault type): never logged here;
    -- each group's table logs its own changes. Updates name them as quiet columns (the
    -- tables' update triggers pass them), so only inserts and deletes look them up.
    v_copies text[] := '{}';
    -- Trigger arguments: columns whose changes alone are not logged.
    v_quiet text[] := ARRAY['updated_at'] || coalesce(TG_ARGV, '{}'::text[]);
BEGIN
    -- Statement-level with transition tables: one INSERT per statement, not per row.
    -- Each row is made jsonb once (MATERIALIZED: not recomputed at every reference).
    SELECT e.id INTO v_employee FROM crm.employees AS e WHERE e.role_name = v_actor;
    IF TG_OP IN ('INSERT', 'DELETE') THEN
        SELECT coalesce(array_agg(a.attname::text ORDER BY a.attname)
                            FILTER (WHERE t.typnamespace IS DISTINCT FROM 'crm_vault'::regnamespace), '{}'),
               coalesce(array_agg(a.attname::text)
                            FILTER (WHERE t.typnamespace = 'crm_vault'::regnamespace), '{}')
          INTO v_columns, v_copies
          FROM pg_catalog.pg_attribute AS a
          JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
         WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped;
    END IF;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id,
                                    project_id)
        WITH r AS MATERIALIZED (SELECT n.id, to_jsonb(n) - v_copies AS nj FROM new_rows AS n)
        SELECT TG_TABLE_NAME, r.id, 'INSERT', v_columns, NULL, r.nj, v_actor, v_employee,
               crm_private.change_project(r.nj)
          FROM r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id,
                                    project_id)
        WITH r AS MATERIALIZED (SELECT o.id, to_jsonb(o) - v_copies AS oj FROM old_rows AS o)
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

-- Updates: the copies are quiet columns (never logged; see record_changes).
DROP TRIGGER _500_audit_update ON crm.customers;
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION crm_private.record_changes('phone_mask', 'contact_copy', 'financial_copy', 'internal_notes_copy');
DROP TRIGGER _500_audit_update ON crm.contracts;
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.contracts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION crm_private.record_changes('financial_copy');

-- The vault: the same rows under other privileges -----------------------------------------

CREATE TABLE crm_vault.customers (LIKE crm.customers) PARTITION BY LIST (project_id);
ALTER TABLE crm_vault.customers ATTACH PARTITION crm.customers DEFAULT;
CREATE TABLE crm_vault.contracts (LIKE crm.contracts) PARTITION BY LIST (project_id);
ALTER TABLE crm_vault.contracts ATTACH PARTITION crm.contracts DEFAULT;
COMMENT ON TABLE crm_vault.customers IS 'crm.customers (its only partition) as crm_api.customers reads it, read copies included; row policies generated by crmdb policy apply (the table''s select policies)';
COMMENT ON TABLE crm_vault.contracts IS 'crm.contracts (its only partition) as crm_api.contracts reads it, read copies included; row policies generated by crmdb policy apply (the table''s select policies)';
ALTER TABLE crm_vault.customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_vault.customers FORCE ROW LEVEL SECURITY;
ALTER TABLE crm_vault.contracts ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_vault.contracts FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_vault.customers TO crmdb_owner USING (true) WITH CHECK (true);
CREATE POLICY crmdb_owner_all ON crm_vault.contracts TO crmdb_owner USING (true) WITH CHECK (true);

-- Whoever selected the whole table now selects every column but the copies there, and
-- the whole vault table (crmdb policy apply keeps this from the templates).
DO $$
DECLARE
    r record;
    v_columns text;
BEGIN
    FOR r IN SELECT c.relname, g.rolname
               FROM pg_catalog.pg_class AS c
              CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
               JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
              WHERE c.oid IN ('crm.customers'::regclass, 'crm.contracts'::regclass)
                AND a.privilege_type = 'SELECT' AND g.rolname <> 'crmdb_owner' LOOP
        SELECT string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_columns
          FROM pg_catalog.pg_attribute AS a
          JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
         WHERE a.attrelid = pg_catalog.format('crm.%I', r.relname)::regclass
           AND a.attnum > 0 AND NOT a.attisdropped
           AND t.typnamespace <> 'crm_vault'::regnamespace;
        EXECUTE pg_catalog.format('REVOKE SELECT ON crm.%I FROM %I', r.relname, r.rolname);
        EXECUTE pg_catalog.format('GRANT SELECT (%s) ON crm.%I TO %I', v_columns, r.relname, r.rolname);
        EXECUTE pg_catalog.format('GRANT SELECT ON crm_vault.%I TO %I', r.relname, r.rolname);
    END LOOP;
END
$$;

RESET ROLE;
