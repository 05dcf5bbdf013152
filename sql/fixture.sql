-- Queries of the policy test fixture (crmdb/policies/fixture.py) and its probes
-- (crmdb/policies/checks.py). `{name}` marks identifiers.

-- fixture_customer --
-- One fixture customer
INSERT INTO crm.customers (project_id, org_unit_id, owner_id, full_name, stage, source)
VALUES (crm_private.project_id(%(project)s),
        (SELECT u.id FROM crm.org_units AS u WHERE u.code = %(unit)s),
        (SELECT e.id FROM crm.employees AS e WHERE e.role_name = %(owner)s),
        %(name)s, %(stage)s::crm.customer_stage, %(source)s::crm.source_channel)
RETURNING id

-- fixture_contract --
-- One fixture contract, in its customer's project
INSERT INTO crm.contracts (customer_id, project_id, owner_id, title, status, signed_at)
SELECT c.id, c.project_id, (SELECT e.id FROM crm.employees AS e WHERE e.role_name = %(owner)s),
       %(title)s, %(status)s::crm.contract_status,
       CASE WHEN %(status)s = 'won' THEN now() END
  FROM crm.customers AS c
 WHERE c.id = %(customer)s
RETURNING id

-- fixture_activity --
-- One fixture activity
INSERT INTO crm.activities (customer_id, employee_id, kind, subject, occurred_at, due_at)
VALUES (%(customer)s, (SELECT e.id FROM crm.employees AS e WHERE e.role_name = %(employee)s),
        %(kind)s::crm.activity_kind, %(subject)s, now(),
        CASE WHEN %(kind)s IN ('task', 'appointment') THEN now() + interval '1 day' END)
RETURNING id

-- fixture_share --
-- One fixture share to an employee (expired ones were made two days ago, for one day)
INSERT INTO crm.shares (customer_id, grantee_employee_id, access, reason, granted_by,
                        created_at, expires_at)
VALUES (%(customer)s, (SELECT e.id FROM crm.employees AS e WHERE e.role_name = %(to)s),
        %(access)s::crm.share_access, 'fixture',
        (SELECT e.id FROM crm.employees AS e WHERE e.role_name = %(by)s),
        CASE WHEN %(expired)s THEN now() - interval '2 days' ELSE now() END,
        CASE WHEN %(expired)s THEN now() - interval '1 day' END)
RETURNING id

-- employee_id --
-- An employee's id by role
SELECT id FROM crm.employees WHERE role_name = %(role)s

-- row_as_json --
-- A row as jsonb (read as the superuser, to copy it in an insert probe)
SELECT to_jsonb(r) FROM {table} AS r WHERE r.id = %(id)s

-- probe_select --
-- Whether the current role sees a row
SELECT count(*) FROM {table} WHERE id = %(id)s

-- probe_update --
-- Update a row to itself: goes through USING and WITH CHECK
UPDATE {table} SET {column} = {column} WHERE id = %(id)s

-- probe_delete --
-- Delete a row (the caller rolls back)
DELETE FROM {table} WHERE id = %(id)s

-- probe_insert --
-- Insert a copy of a row (without its id)
INSERT INTO {table} ({columns}) SELECT {columns} FROM jsonb_populate_record(NULL::{table}, %(row)s)

-- probe_export --
-- Whether any access path of the current role on a row includes export
SELECT EXISTS (SELECT FROM crm.explain_access(%(table)s, %(id)s) AS p WHERE 'export' = ANY (p.actions))

-- project_solutions --
-- The solutions a project has, in a stable order
SELECT ps.solution::text
  FROM crm.project_solutions AS ps
  JOIN crm.projects AS p ON p.id = ps.project_id
 WHERE p.code = %(code)s
 ORDER BY ps.solution

-- fixture_segment --
-- One fixture segment
INSERT INTO crm.segments (project_id, owner_id, name, description)
VALUES (crm_private.project_id(%(project)s),
        (SELECT e.id FROM crm.employees AS e WHERE e.role_name = %(owner)s),
        %(name)s, %(description)s)
RETURNING id

-- fixture_campaign --
-- One fixture campaign
INSERT INTO crm.campaigns (project_id, owner_id, name, channel, segment_id)
VALUES (crm_private.project_id(%(project)s),
        (SELECT e.id FROM crm.employees AS e WHERE e.role_name = %(owner)s),
        %(name)s, %(channel)s::crm.campaign_channel, %(segment)s)
RETURNING id

-- fixture_audience --
-- One customer in a fixture campaign's audience (its project is the customer's)
INSERT INTO crm.campaign_audiences (campaign_id, customer_id, added_by)
VALUES (%(campaign)s, %(customer)s,
        (SELECT e.id FROM crm.employees AS e WHERE e.role_name = %(by)s))
RETURNING id
