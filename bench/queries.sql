-- Named queries of the crmdb benchmark (bench/run.py), loaded with crmdb.queries.query.
-- Format: a `-- name --` line, a one-line description, then the SQL.
-- `{visible}` is the row filter on crm.customers AS c: `true` when the query runs as an
-- employee (row-level security decides), or the hand-written literal predicate when the
-- reference runs as the superuser (no RLS). `{name}` marks other identifiers/fragments
-- formatted with psycopg.sql.

-- Read suite -----------------------------------------------------------------------

-- newest_customers --
-- The 50 newest visible customers
SELECT c.id, c.full_name, c.created_at
  FROM crm.customers AS c
 WHERE {visible}
 ORDER BY c.created_at DESC
 LIMIT 50

-- count_customers --
-- How many customers are visible
SELECT count(*) FROM crm.customers AS c WHERE {visible}

-- customer_by_name --
-- Visible customers with a given name (field groups are measured by bench/fields.py:
-- which groups a role reads is not the row predicate this suite compares)
SELECT c.id, c.full_name, c.province
  FROM crm.customers AS c
 WHERE c.full_name = %(name)s AND {visible}
 ORDER BY c.id

-- revenue_by_stage --
-- Contracts of the visible customers and their latest signing, by customer stage (the
-- amounts are a field group: contract money only for whom the templates allow)
SELECT c.stage, max(k.signed_at) AS last_signed, count(*) AS contracts
  FROM crm.contracts AS k
  JOIN crm.customers AS c ON c.id = k.customer_id
 WHERE {visible}
 GROUP BY c.stage
 ORDER BY c.stage

-- customer_by_id --
-- One visible customer by id: every column an employee may select (not the groups' read
-- copies, which only crm_api shows)
SELECT c.id, c.project_id, c.org_unit_id, c.owner_id, c.full_name, c.province, c.stage,
       c.source, c.score, c.product_interest, c.created_by, c.assigned_at, c.created_at,
       c.updated_at, c.phone_mask
  FROM crm.customers AS c WHERE c.id = %(id)s AND {visible}

-- open_tasks_today --
-- Open tasks due today on the visible customers
SELECT a.id, a.customer_id, a.subject, a.due_at
  FROM crm.activities AS a
  JOIN crm.customers AS c ON c.id = a.customer_id
 WHERE a.kind = 'task' AND a.done_at IS NULL
   AND a.due_at >= %(day)s AND a.due_at < %(day)s + interval '1 day'
   AND {visible}
 ORDER BY a.due_at, a.id

-- Role shapes and reference sets (as the superuser) --------------------------------

-- pick_roles --
-- A rep, a manager, a director and the admin of the seed (by role prefix), first of each level with the most customers for rep/manager/director
WITH owned AS (
    SELECT owner_id, count(*) AS n FROM crm.customers GROUP BY owner_id
), subtree AS (
    SELECT t.manager_id, sum(o.n) AS n
      FROM crm_private.manager_tree AS t JOIN owned AS o ON o.owner_id = t.employee_id
     GROUP BY t.manager_id
)
SELECT lvl, role_name, n
  FROM (
    SELECT CASE WHEN e.role_name LIKE %(prefix)s || 'rep\_%%' THEN 'rep'
                WHEN e.role_name LIKE %(prefix)s || 'mgr\_%%' THEN 'manager'
                WHEN e.role_name LIKE %(prefix)s || 'dir\_%%' THEN 'director'
                WHEN e.role_name = %(prefix)s || 'ceo' THEN 'admin' END AS lvl,
           e.role_name, s.n, e.id
      FROM crm.employees AS e JOIN subtree AS s ON s.manager_id = e.id
     WHERE e.role_name LIKE %(prefix)s || '%%'
  ) AS x
 WHERE lvl IS NOT NULL
 ORDER BY lvl, id

-- employee --
-- Id, org unit and manager of an employee by role
SELECT e.id, e.org_unit_id, m.role_name AS manager
  FROM crm.employees AS e LEFT JOIN crm.employees AS m ON m.id = e.manager_id
 WHERE e.role_name = %(role)s

-- subtree_ids --
-- The employee and everyone below them in the manager hierarchy
SELECT array_agg(t.employee_id ORDER BY t.employee_id)
  FROM crm_private.manager_tree AS t
 WHERE t.manager_id = %(employee_id)s

-- unit_ids --
-- The employee's org unit and every unit below it
SELECT array_agg(t.descendant_id ORDER BY t.descendant_id)
  FROM crm_private.org_unit_tree AS t
 WHERE t.ancestor_id = %(org_unit_id)s

-- template_project_ids --
-- Projects where the employee holds a template
SELECT coalesce(array_agg(DISTINCT m.project_id ORDER BY m.project_id), '{}')
  FROM crm.project_members AS m
 WHERE m.employee_id = %(employee_id)s AND m.template = %(template)s

-- shared_ids --
-- Customers shared to the employee or their org unit, not expired
SELECT coalesce(array_agg(DISTINCT s.customer_id ORDER BY s.customer_id), '{}')
  FROM crm.shares AS s
 WHERE (s.grantee_employee_id = %(employee_id)s OR s.grantee_org_unit_id = %(org_unit_id)s)
   AND (s.expires_at IS NULL OR s.expires_at > now())

-- templates_held --
-- Which templates each level of the seed holds (for the report)
SELECT regexp_replace(e.role_name, '_[0-9]+$', '') AS kind, m.template,
       count(DISTINCT e.id) AS employees, count(DISTINCT m.project_id) AS projects
  FROM crm.employees AS e JOIN crm.project_members AS m ON m.employee_id = e.id
 WHERE e.role_name LIKE %(prefix)s || '%%'
 GROUP BY 1, 2
 ORDER BY 1, 2

-- sample_customer --
-- A customer matching the reference predicate (the median id of the set)
SELECT c.id, c.full_name
  FROM crm.customers AS c
 WHERE {visible}
 ORDER BY c.id
 LIMIT 1 OFFSET %(offset)s

-- Dataset and machine --------------------------------------------------------------

-- dataset_sizes --
-- Row counts and on-disk sizes of the crm tables
SELECT c.relname, c.reltuples::bigint AS est_rows,
       pg_size_pretty(pg_total_relation_size(c.oid)) AS total_size
  FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('crm', 'crm_private') AND c.relkind = 'r'
 ORDER BY pg_total_relation_size(c.oid) DESC

-- server_settings --
-- Server version and the settings that matter for these plans
SELECT name, setting, unit
  FROM pg_settings
 WHERE name IN ('server_version', 'shared_buffers', 'work_mem', 'effective_cache_size',
                'random_page_cost', 'jit', 'max_parallel_workers_per_gather',
                'effective_io_concurrency', 'io_method')
 ORDER BY name

-- org_shape --
-- Levels of the manager hierarchy and how many org units there are
SELECT (SELECT max(depth) + 1 FROM crm_private.manager_tree) AS levels,
       (SELECT count(*) FROM crm.org_units) AS org_units,
       (SELECT count(*) FROM crm.employees) AS employees,
       (SELECT count(*) FROM crm.shares) AS shares

-- explain --
-- EXPLAIN (ANALYZE, BUFFERS) of a statement
EXPLAIN (ANALYZE, BUFFERS) {statement}

-- Write suite ----------------------------------------------------------------------

-- create_copy --
-- An unprotected copy of crm.customers: same columns, defaults and indexes, ids from an identity (crm.customers takes them from its sequence in a trigger); no RLS, no triggers
DO $$
BEGIN
    CREATE TABLE IF NOT EXISTS public.bench_copy (LIKE crm.customers INCLUDING ALL);
    IF NOT EXISTS (SELECT FROM pg_attribute
                    WHERE attrelid = 'public.bench_copy'::regclass AND attname = 'id'
                      AND attidentity <> '') THEN
        ALTER TABLE public.bench_copy ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY;
    END IF;
END
$$

-- copy_foreign_keys --
-- The copy checks the same foreign keys as crm.customers (added once, by name)
DO $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT c.conname, pg_get_constraintdef(c.oid) AS def
               FROM pg_constraint AS c
              WHERE c.conrelid = 'crm.customers'::regclass AND c.contype = 'f'
    LOOP
        IF NOT EXISTS (SELECT FROM pg_constraint
                        WHERE conrelid = 'public.bench_copy'::regclass AND conname = k.conname) THEN
            EXECUTE format('ALTER TABLE public.bench_copy ADD CONSTRAINT %I %s', k.conname, k.def);
        END IF;
    END LOOP;
END
$$

-- copy_count --
-- Rows in the unprotected copy
SELECT count(*) FROM public.bench_copy

-- fill_copy --
-- Fill the copy with the current customers (so both tables and their indexes are the same size)
INSERT INTO public.bench_copy OVERRIDING SYSTEM VALUE SELECT * FROM crm.customers

-- sync_copy_sequence --
-- Move the copy's identity past the copied ids
SELECT setval(pg_get_serial_sequence('public.bench_copy', 'id'), (SELECT max(id) FROM public.bench_copy))

-- analyze_copy --
-- Statistics for the copy
ANALYZE public.bench_copy

-- insert_batch --
-- Insert one batch of customers owned by an employee into {table}
INSERT INTO {table} (project_id, org_unit_id, owner_id, full_name, province, stage, source,
                     score, created_by, assigned_at)
SELECT %(project_id)s, %(org_unit_id)s, %(owner_id)s, 'Khách hàng thử ' || g,
       'Hà Nội', 'lead', 'manual', g %% 100, %(owner_id)s, now()
  FROM generate_series(%(first)s::int, %(last)s::int) AS g
RETURNING id

-- update_batch --
-- Update the product interest and stage of a batch of customers in {table}
UPDATE {table} SET product_interest = 'Đã gọi lại (bench)', stage = 'qualified'
 WHERE id = ANY (%(ids)s::bigint[])

-- delete_rows --
-- Remove the rows a bench run inserted, without audit triggers (superuser cleanup)
DELETE FROM {table} WHERE id = ANY (%(ids)s::bigint[])

-- without_triggers --
-- Superuser cleanup: skip user triggers (audit) for this transaction
SET LOCAL session_replication_role = replica

-- Org change and shares ------------------------------------------------------------

-- move_employee --
-- Give an employee a new manager (the admin API)
SELECT crm_admin.move_employee(%(role)s, p_manager => %(manager)s)

-- current_xid --
-- The id of the current transaction
SELECT pg_current_xact_id()::text

-- rows_written_by --
-- Customer rows whose current version was written by a transaction
SELECT count(*) FROM crm.customers WHERE xmin = %(xid)s::xid

-- customer_visible --
-- Whether the current role sees a customer
SELECT count(*) FROM crm.customers WHERE id = %(id)s

-- owned_by_any --
-- Customers owned by any of these employees
SELECT count(*) FROM crm.customers WHERE owner_id = ANY (%(ids)s::bigint[])

-- add_share --
-- Share a customer with a colleague (read access)
INSERT INTO crm.shares (customer_id, grantee_employee_id, access, reason, granted_by)
VALUES (%(customer_id)s, %(grantee_id)s, 'read', 'bench share latency', %(granted_by)s)
RETURNING id

-- remove_share --
-- Revoke a share
DELETE FROM crm.shares WHERE id = %(id)s

-- invisible_customer_of --
-- A customer owned by an employee that another employee (grantee) cannot see yet: not shared to them
SELECT c.id
  FROM crm.customers AS c
 WHERE c.owner_id = %(owner_id)s
   AND NOT EXISTS (SELECT FROM crm.shares AS s WHERE s.customer_id = c.id)
 ORDER BY c.id
 LIMIT 1

-- rep_of_subtree --
-- One rep (a leaf) below a manager, with a customer
SELECT t.employee_id, e.role_name
  FROM crm_private.manager_tree AS t
  JOIN crm.employees AS e ON e.id = t.employee_id
 WHERE t.manager_id = %(employee_id)s AND t.depth > 0
   AND EXISTS (SELECT FROM crm.customers AS c WHERE c.owner_id = t.employee_id)
 ORDER BY t.depth DESC, t.employee_id
 LIMIT 1

-- statement_timeout --
-- Cap the statements of this transaction (a runaway RLS plan must not stall the bench)
SELECT set_config('statement_timeout', %(ms)s, true)

-- Setup and checks -------------------------------------------------------------------

-- database_exists --
-- Whether a database exists
SELECT EXISTS (SELECT FROM pg_database WHERE datname = %(name)s)

-- create_database --
-- Create the benchmark database
CREATE DATABASE {name}

-- customer_count --
-- All customers (superuser)
SELECT count(*) FROM crm.customers

-- truncate_copy --
-- Empty the unprotected copy before refilling it
TRUNCATE public.bench_copy

-- updated_count --
-- How many of these customers carry the bench update
SELECT count(*) FROM crm.customers WHERE id = ANY (%(ids)s::bigint[]) AND stage = 'qualified'

-- role_of --
-- The role of an employee by id
SELECT role_name FROM crm.employees WHERE id = %(id)s

-- vacuum --
-- Reclaim the rows a bench run deleted (and their index entries)
VACUUM (ANALYZE) {table}

-- Field groups (bench/fields.py) ----------------------------------------------------

-- grant_read_copies --
-- For the baseline only: the employee may read the groups' read copies on the base table (revoked at the end of the run; crmdb lint reports one left behind)
GRANT SELECT (contact_copy, financial_copy, internal_notes_copy) ON crm.customers TO {role}

-- revoke_read_copies --
-- Take the baseline's column privilege back
REVOKE SELECT (contact_copy, financial_copy, internal_notes_copy) ON crm.customers FROM {role}
