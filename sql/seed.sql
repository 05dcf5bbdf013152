-- Named queries for loading data: crmdb seed (crmdb/seed.py) and crmdb demo (crmdb/demo.py).
-- Format: a `-- name --` line, a one-line description, then the SQL.
-- `{name}` marks an identifier formatted with psycopg.sql.Identifier.

-- Checks -----------------------------------------------------------------------

-- seed_exists --
-- Employees already bound to roles with this prefix, and whether the seed company exists
SELECT (SELECT count(*) FROM crm.employees WHERE starts_with(role_name, %(prefix)s)) AS employees,
       EXISTS (SELECT FROM crm.org_units WHERE code = %(company)s) AS company

-- session_privileges --
-- Whether the session is a superuser (may disable triggers) and whether RLS applies to it (COPY needs it not to)
SELECT r.rolsuper, r.rolsuper OR r.rolbypassrls AS bypasses_rls
  FROM pg_catalog.pg_roles AS r
 WHERE r.rolname = current_user

-- The org, through the admin API ------------------------------------------------

-- add_org_unit --
-- Add an org unit under a parent unit (by code)
SELECT crm_admin.add_org_unit(%(code)s, %(name)s, %(kind)s::crm.org_unit_kind, %(parent)s)

-- add_employee --
-- Add an employee bound to a new role (LOGIN with a password when p_login)
SELECT crm_admin.add_employee(p_role => %(role)s, p_full_name => %(full_name)s,
                              p_email => %(email)s, p_org_unit => %(org_unit)s,
                              p_manager => %(manager)s, p_title => %(title)s,
                              p_login => %(login)s, p_password => %(password)s)

-- set_employee_status --
-- Put an employee on leave, back to active, or departed
SELECT crm_admin.set_employee_status(%(role)s, %(status)s::crm.employee_status)

-- add_project --
-- Add a project with its solutions
SELECT crm_admin.add_project(%(code)s, %(name)s, %(solutions)s::text[]::crm.solution[])

-- add_project_member --
-- Make an employee a member of a project's solution under a role template
SELECT crm_admin.add_project_member(%(project)s, %(role)s, %(solution)s::crm.solution, %(template)s)

-- org_unit_ids --
-- Ids of org units by code
SELECT code, id FROM crm.org_units WHERE code = ANY (%(codes)s::text[])

-- employee_ids --
-- Ids of the employees whose roles start with a prefix
SELECT role_name::text, id FROM crm.employees WHERE starts_with(role_name, %(prefix)s)

-- project_ids --
-- Ids of projects by code
SELECT code, id FROM crm.projects WHERE code = ANY (%(codes)s::text[])

-- Bulk rows --------------------------------------------------------------------

-- lock_bulk_tables --
-- Keep other writers out while ids are handed out by the loader (readers are not blocked)
LOCK TABLE crm.customers, crm.contracts, crm.activities, crm.shares IN EXCLUSIVE MODE

-- next_id --
-- The first id above every row and every id the identity sequence has handed out
SELECT GREATEST(
           (SELECT COALESCE(max(id), 0) FROM {table}),
           COALESCE(pg_catalog.pg_sequence_last_value(
               pg_catalog.pg_get_serial_sequence(%(table)s, 'id')::regclass), 0)
       ) + 1

-- sync_sequence --
-- Move an identity sequence past ids the loader wrote explicitly (never backwards)
SELECT pg_catalog.setval(seq, GREATEST(
           (SELECT max(id) FROM {table}),
           pg_catalog.pg_sequence_last_value(seq)))
  FROM (SELECT pg_catalog.pg_get_serial_sequence(%(table)s, 'id')::regclass AS seq) AS s

-- bulk_load_without_triggers --
-- A seed is a DBA bulk load, not a business change: no audit rows, no per-row FK checks
SET LOCAL session_replication_role = replica

-- bulk_load_done --
-- Triggers fire again (audit trail, foreign keys)
SET LOCAL session_replication_role = origin

-- create_stage --
-- A temporary table shaped like {table}: COPY FROM is refused where RLS applies, INSERT is not
CREATE TEMPORARY TABLE {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP

-- insert_from_stage --
-- Move staged rows into the real table (policies and triggers apply)
INSERT INTO {table} SELECT * FROM {stage}

-- drop_stage --
-- Drop a staging table once its rows are moved
DROP TABLE {stage}

-- create_customers_stage --
-- Customers as the generator writes them: core fields and every field group's
CREATE TEMPORARY TABLE {stage} (
    id bigint, project_id bigint, org_unit_id bigint, owner_id bigint, full_name text,
    phone text, email text, address text, province text, bank_account text, bank_name text,
    tax_code text, financial_notes text, notes text, stage crm.customer_stage,
    source crm.source_channel, score integer, product_interest text, created_by bigint,
    assigned_at timestamptz, created_at timestamptz, updated_at timestamptz
) ON COMMIT DROP

-- customers_from_stage --
-- Core fields into crm.customers, with the phone's mask if a mask is declared; with
-- fill_copies (the loader turned triggers off) also each group's read copy, which the
-- side tables' copy triggers write otherwise: copy_of the group's row as the next step
-- inserts it
INSERT INTO crm.customers (id, project_id, org_unit_id, owner_id, full_name, province, stage,
                           source, score, product_interest, created_by, assigned_at,
                           created_at, updated_at, phone_mask, contact_copy, financial_copy,
                           internal_notes_copy)
SELECT s.id, s.project_id, s.org_unit_id, s.owner_id, s.full_name, s.province, s.stage,
       s.source, s.score, s.product_interest, s.created_by, s.assigned_at, s.created_at,
       s.updated_at, crm_private.mask_text(s.phone, m.keep_last),
       CASE WHEN %(fill_copies)s THEN crm_private.copy_of(
           ROW(s.id, s.project_id, s.org_unit_id, s.owner_id, s.phone, s.email, s.address,
               '{{}}')::crm.customers__contact) END,
       CASE WHEN %(fill_copies)s THEN crm_private.copy_of(
           ROW(s.id, s.project_id, s.org_unit_id, s.owner_id, s.bank_account, s.bank_name,
               s.tax_code, s.financial_notes, '{{}}')::crm.customers__financial) END,
       CASE WHEN %(fill_copies)s THEN crm_private.copy_of(
           ROW(s.id, s.project_id, s.org_unit_id, s.owner_id, s.notes,
               '{{}}')::crm.customers__internal_notes) END
  FROM {stage} AS s
  LEFT JOIN crm_private.field_masks AS m ON m.table_name = 'customers' AND m.column_name = 'phone'

-- customer_groups_from_stage --
-- Field groups into their tables: inserted (triggers off) or filled (the rows the
-- customers' trigger made)
WITH contact AS (
    INSERT INTO crm.customers__contact (id, project_id, org_unit_id, owner_id, phone, email, address)
    SELECT id, project_id, org_unit_id, owner_id, phone, email, address FROM {stage}
    ON CONFLICT (id) DO UPDATE
       SET phone = EXCLUDED.phone, email = EXCLUDED.email, address = EXCLUDED.address
), financial AS (
    INSERT INTO crm.customers__financial (id, project_id, org_unit_id, owner_id, bank_account,
                                          bank_name, tax_code, financial_notes)
    SELECT id, project_id, org_unit_id, owner_id, bank_account, bank_name, tax_code,
           financial_notes
      FROM {stage}
    ON CONFLICT (id) DO UPDATE
       SET bank_account = EXCLUDED.bank_account, bank_name = EXCLUDED.bank_name,
           tax_code = EXCLUDED.tax_code, financial_notes = EXCLUDED.financial_notes
)
INSERT INTO crm.customers__internal_notes (id, project_id, org_unit_id, owner_id, notes)
SELECT id, project_id, org_unit_id, owner_id, notes FROM {stage}
ON CONFLICT (id) DO UPDATE SET notes = EXCLUDED.notes

-- copy_customers --
-- Stream customers into their staging table
COPY {table} (id, project_id, org_unit_id, owner_id, full_name, phone, email, address, province,
              bank_account, bank_name, tax_code, financial_notes, notes, stage, source, score,
              product_interest, created_by, assigned_at, created_at, updated_at) FROM STDIN

-- create_contracts_stage --
-- Contracts as the generator writes them: core fields and the financial group's
CREATE TEMPORARY TABLE {stage} (
    id bigint, customer_id bigint, project_id bigint, owner_id bigint, title text,
    amount numeric(18, 2), currency char(3), status crm.contract_status, payment_method text,
    bank_account text, bank_name text, signed_at timestamptz, created_at timestamptz,
    updated_at timestamptz
) ON COMMIT DROP

-- contracts_from_stage --
-- Core fields into crm.contracts; with fill_copies (triggers off) also the financial
-- group's read copy (as for customers)
INSERT INTO crm.contracts (id, customer_id, project_id, owner_id, title, currency, status,
                           signed_at, created_at, updated_at, financial_copy)
SELECT s.id, s.customer_id, s.project_id, s.owner_id, s.title, s.currency, s.status,
       s.signed_at, s.created_at, s.updated_at,
       CASE WHEN %(fill_copies)s THEN crm_private.copy_of(
           ROW(s.id, s.project_id, s.owner_id, s.customer_id, s.amount, s.payment_method,
               s.bank_account, s.bank_name, '{{}}')::crm.contracts__financial) END
  FROM {stage} AS s

-- contract_groups_from_stage --
-- The financial group: inserted (triggers off) or filled (the row the trigger made)
INSERT INTO crm.contracts__financial (id, project_id, owner_id, customer_id, amount,
                                      payment_method, bank_account, bank_name)
SELECT id, project_id, owner_id, customer_id, amount, payment_method, bank_account, bank_name
  FROM {stage}
ON CONFLICT (id) DO UPDATE
   SET amount = EXCLUDED.amount, payment_method = EXCLUDED.payment_method,
       bank_account = EXCLUDED.bank_account, bank_name = EXCLUDED.bank_name

-- copy_contracts --
-- Stream contracts into their staging table
COPY {table} (id, customer_id, project_id, owner_id, title, amount, currency, status,
              payment_method, bank_account, bank_name, signed_at, created_at, updated_at) FROM STDIN

-- copy_activities --
-- Stream activities into crm.activities (or its staging table)
COPY {table} (id, customer_id, employee_id, kind, subject, body, occurred_at, due_at, done_at,
              duration_seconds, created_at, updated_at) FROM STDIN

-- copy_shares --
-- Stream manual shares into crm.shares (or its staging table)
COPY {table} (id, customer_id, grantee_employee_id, grantee_org_unit_id, access, reason,
              granted_by, created_at, expires_at) FROM STDIN

-- analyze_crm --
-- Fresh planner statistics after a bulk load
ANALYZE crm.org_units, crm.employees, crm.projects, crm.project_members, crm.customers,
        crm.customers__contact, crm.customers__financial, crm.customers__internal_notes,
        crm.contracts, crm.contracts__financial, crm.activities, crm.shares, crm.change_log,
        crm_private.manager_tree, crm_private.org_unit_tree
