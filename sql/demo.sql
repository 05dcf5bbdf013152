-- Named queries for the demo company (crmdb/demo.py); loading itself uses sql/seed.sql.
-- Format: a `-- name --` line, a one-line description, then the SQL.

-- demo_company_exists --
-- Whether the demo company (its org unit) is already there
SELECT EXISTS (SELECT FROM crm.org_units WHERE code = %(company)s)

-- demo_counts --
-- Rows that belong to the demo: units under the company, their staff, the demo projects' records
WITH units AS (
    SELECT t.descendant_id AS id
      FROM crm_private.org_unit_tree AS t
      JOIN crm.org_units AS c ON c.id = t.ancestor_id
     WHERE c.code = %(company)s
), projects AS (
    SELECT id FROM crm.projects WHERE code = ANY (%(projects)s::text[])
), customers AS (
    SELECT id FROM crm.customers WHERE project_id IN (SELECT id FROM projects)
)
SELECT (SELECT count(*) FROM units) AS org_units,
       (SELECT count(*) FROM crm.employees WHERE org_unit_id IN (SELECT id FROM units)) AS employees,
       (SELECT count(*) FROM customers) AS customers,
       (SELECT count(*) FROM crm.contracts WHERE project_id IN (SELECT id FROM projects)) AS contracts,
       (SELECT count(*) FROM crm.activities WHERE customer_id IN (SELECT id FROM customers)) AS activities,
       (SELECT count(*) FROM crm.shares WHERE customer_id IN (SELECT id FROM customers)) AS shares

-- demo_org_tree --
-- The company's units depth-first, each with its heads (staff whose manager sits outside the unit)
WITH RECURSIVE tree AS (
    SELECT u.id, u.code, u.name, 0 AS depth, ARRAY[u.id] AS path
      FROM crm.org_units AS u
     WHERE u.code = %(company)s
    UNION ALL
    SELECT u.id, u.code, u.name, t.depth + 1, t.path || u.id
      FROM crm.org_units AS u
      JOIN tree AS t ON u.parent_id = t.id
)
SELECT t.depth, t.code, t.name,
       COALESCE(array_agg(e.full_name ORDER BY e.id) FILTER (WHERE e.is_head), '{}') AS head_names,
       COALESCE(array_agg(e.role_name::text ORDER BY e.id) FILTER (WHERE e.is_head), '{}') AS head_roles,
       count(e.id) AS staff
  FROM tree AS t
  LEFT JOIN LATERAL (
      SELECT e.id, e.full_name, e.role_name,
             e.manager_id IS NULL OR m.org_unit_id <> e.org_unit_id AS is_head
        FROM crm.employees AS e
        LEFT JOIN crm.employees AS m ON m.id = e.manager_id
       WHERE e.org_unit_id = t.id
  ) AS e ON true
 GROUP BY t.id, t.depth, t.code, t.name, t.path
 ORDER BY t.path

-- demo_employee --
-- A demo employee by email (role names depend on the prefix the demo was loaded with)
SELECT e.role_name::text, e.full_name, COALESCE(e.title, ''), u.code
  FROM crm.employees AS e
  JOIN crm.org_units AS u ON u.id = e.org_unit_id
 WHERE e.email = %(email)s

-- demo_visible_customers --
-- How many of the demo's customers the current role sees (run as the employee: RLS decides)
SELECT count(*) FROM crm.customers WHERE project_id = ANY (%(projects)s::bigint[])

-- demo_access_paths --
-- The demo's customers an employee may select, per template and scope, by explain_access's reckoning (per row: only the demo's projects, not a seeded million)
SELECT ap.template || ' / ' || ap.scope AS path, count(*) AS customers
  FROM crm.customers AS c
 CROSS JOIN LATERAL crm_private.access_paths(%(role)s, 'customers', c.id) AS ap
 WHERE c.project_id = ANY (%(projects)s::bigint[]) AND 'select' = ANY (ap.actions)
 GROUP BY 1
 ORDER BY 2 DESC, 1

-- demo_customers_by_rules --
-- Customers an employee may select by explain_access (one path is enough)
SELECT count(*)
  FROM crm.customers AS c
 WHERE c.project_id = ANY (%(projects)s::bigint[])
   AND EXISTS (SELECT FROM crm_private.access_paths(%(role)s, 'customers', c.id) AS ap
                WHERE 'select' = ANY (ap.actions))
