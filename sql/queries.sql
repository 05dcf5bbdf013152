-- Named queries used by crmdb's Python code (see crmdb/queries.py).
-- Format: a `-- name --` line, a one-line description, then the SQL.
-- `{name}` marks an identifier formatted with psycopg.sql.Identifier.

-- Connections ------------------------------------------------------------------

-- set_local_role --
-- Act as an employee role until the end of the current transaction
SET LOCAL ROLE {role}

-- database_exists --
-- Whether a database of this name exists
SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = %(name)s)

-- create_database --
-- Create an empty database
CREATE DATABASE {name}

-- server_info --
-- Server version and the connection's identity
SELECT pg_catalog.current_setting('server_version') AS version,
       pg_catalog.current_setting('server_version_num')::int AS version_num,
       pg_catalog.current_database() AS database,
       current_user AS "user"

-- Migrations -------------------------------------------------------------------

-- applied_migrations --
-- Migrations yoyo has applied, oldest first
SELECT migration_id, applied_at_utc
  FROM _yoyo_migration
 ORDER BY applied_at_utc, migration_id

-- Scratch databases (tests, crmdb policy test) ----------------------------------

-- create_database_from_template --
-- Clone a database (the template must have no open connections)
CREATE DATABASE {name} TEMPLATE {template}

-- drop_database --
-- Drop a database, ending its connections
DROP DATABASE IF EXISTS {name} WITH (FORCE)

-- roles_with_prefix --
-- Roles whose names start with a prefix (a test's namespace)
SELECT rolname FROM pg_catalog.pg_roles WHERE starts_with(rolname, %(prefix)s) ORDER BY rolname

-- drop_role --
-- Drop a role (it must own nothing and hold no privileges in any database)
DROP ROLE IF EXISTS {role}

-- set_fast_settings --
-- Trade durability for speed on a throwaway test cluster
ALTER SYSTEM SET fsync = off

-- set_fast_settings_commit --
-- Trade durability for speed on a throwaway test cluster
ALTER SYSTEM SET synchronous_commit = off

-- reload_conf --
-- Apply ALTER SYSTEM settings that need only a reload
SELECT pg_catalog.pg_reload_conf()

-- Admin API (crm_admin.*; see sql/schema.sql) -----------------------------------

-- add_org_unit --
-- Add an org unit under a parent unit (by code)
SELECT crm_admin.add_org_unit(%(code)s, %(name)s, %(kind)s, %(parent)s, %(timezone)s)

-- add_employee --
-- Add an employee bound to a (new or adopted) role
SELECT crm_admin.add_employee(%(role)s, %(full_name)s, %(email)s, %(org_unit)s,
                              %(manager)s, %(title)s, %(login)s, %(password)s)

-- move_employee --
-- Give an employee a new manager and/or org unit
SELECT crm_admin.move_employee(%(role)s, %(manager)s, %(org_unit)s, %(clear_manager)s)

-- set_employee_status --
-- Put an employee on leave, back to active, or departed
SELECT crm_admin.set_employee_status(%(role)s, %(status)s)

-- end_sessions --
-- End every open session of a role (after its departure is committed)
SELECT crm_admin.end_sessions(%(role)s)

-- add_gateway --
-- Create a gateway login that may SET ROLE to every active employee
SELECT crm_admin.add_gateway(%(role)s, %(password)s)

-- add_project --
-- Add a project with its solutions
SELECT crm_admin.add_project(%(code)s, %(name)s, %(solutions)s::crm.solution[])

-- add_project_member --
-- Make an employee a member of a project's solution under a role template
SELECT crm_admin.add_project_member(%(project)s, %(role)s, %(solution)s, %(template)s)

-- list_employees --
-- Employees with their manager, org unit and status
SELECT e.role_name, e.full_name, e.email, m.role_name AS manager, u.code AS org_unit, e.status
  FROM crm.employees AS e
  JOIN crm.org_units AS u ON u.id = e.org_unit_id
  LEFT JOIN crm.employees AS m ON m.id = e.manager_id
 ORDER BY u.code, e.role_name

-- Policies (crmdb policy plan/apply) ------------------------------------------

-- policy_lock --
-- Serialise policy applies: one at a time per database
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('crmdb policy apply'))

-- policy_lock_timeout --
-- Fail instead of waiting behind long-running queries for table locks
SET LOCAL lock_timeout = '10s'

-- group_roles --
-- Template and sharing rule roles that exist, whether crmdb_owner may grant them, and
-- whether this database uses them (roles are cluster-wide; other databases may hold
-- other templates): a policy or table grant here, or one of this database's employees
SELECT r.rolname,
       pg_catalog.shobj_description(r.oid, 'pg_authid') AS comment,
       pg_catalog.pg_has_role('crmdb_owner', r.oid, 'MEMBER WITH ADMIN OPTION')
       AND NOT pg_catalog.pg_has_role('crmdb_owner', r.oid, 'USAGE') AS owner_admin,
       EXISTS (SELECT FROM pg_catalog.pg_policy AS p WHERE r.oid = ANY (p.polroles))
       OR EXISTS (SELECT FROM pg_catalog.pg_class AS c
                   CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
                   WHERE c.relnamespace = 'crm'::regnamespace AND a.grantee = r.oid)
       OR EXISTS (SELECT FROM pg_catalog.pg_auth_members AS am
                    JOIN pg_catalog.pg_roles AS m ON m.oid = am.member
                    JOIN crm.employees AS e ON e.role_name = m.rolname
                   WHERE am.roleid = r.oid) AS used_here
  FROM pg_catalog.pg_roles AS r
 WHERE r.rolname LIKE 'crmdb\_tpl\_%' OR r.rolname LIKE 'crmdb\_rule\_%'
 ORDER BY r.rolname

-- group_memberships --
-- Which of this database's employees is a member of which template or sharing rule
-- role (roles are cluster-wide: other databases' employees may be members too)
SELECT t.rolname AS group_role, m.rolname AS member
  FROM pg_catalog.pg_auth_members AS am
  JOIN pg_catalog.pg_roles AS t ON t.oid = am.roleid
  JOIN pg_catalog.pg_roles AS m ON m.oid = am.member
  JOIN crm.employees AS e ON e.role_name = m.rolname
 WHERE (t.rolname LIKE 'crmdb\_tpl\_%' OR t.rolname LIKE 'crmdb\_rule\_%')
 ORDER BY 1, 2

-- wanted_memberships --
-- Which employee role should be a member of which template role (project_members)
SELECT DISTINCT 'crmdb_tpl_' || pm.template AS template_role, e.role_name::text AS member
  FROM crm.project_members AS pm
  JOIN crm.employees AS e ON e.id = pm.employee_id
 WHERE e.status <> 'departed'
 ORDER BY 1, 2

-- audience_members --
-- Active employees a sharing rule reaches: an org unit (and sub-units), named employees
SELECT e.role_name::text
  FROM crm.employees AS e
 WHERE e.status <> 'departed'
   AND (e.role_name = ANY (%(employees)s::text[])
        OR EXISTS (SELECT FROM crm.org_units AS u
                     JOIN crm_private.org_unit_tree AS t ON t.ancestor_id = u.id
                    WHERE u.code = %(org_unit)s AND t.descendant_id = e.org_unit_id
                      AND (%(sub_units)s OR t.depth = 0)))
 ORDER BY 1

-- sharing_rule_audiences --
-- The audiences policy apply recorded last time
SELECT role_name::text, org_unit, include_sub_units, employees::text[], project
  FROM crm_private.sharing_rule_audiences
 ORDER BY role_name

-- template_grants --
-- Table privileges that template roles hold on crm and crm_vault tables. On a table whose
-- rows carry read copies (columns of a crm_vault type), SELECT is held column by column:
-- 'select' there means SELECT on its id column; a table-wide SELECT, which would show
-- the copies, is reported as 'select (every column)' (never wanted).
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS table_name,
       g.rolname AS role,
       CASE WHEN a.privilege_type = 'SELECT' AND n.nspname = 'crm' AND EXISTS (
                     SELECT FROM pg_catalog.pg_attribute AS at
                       JOIN pg_catalog.pg_type AS t ON t.oid = at.atttypid
                      WHERE at.attrelid = c.oid AND NOT at.attisdropped
                        AND t.typnamespace = pg_catalog.to_regnamespace('crm_vault'))
            THEN 'select (every column)'
            ELSE pg_catalog.lower(a.privilege_type) END AS privilege
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
  JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
 WHERE n.nspname IN ('crm', 'crm_vault') AND c.relkind IN ('r', 'p')
   AND g.rolname LIKE 'crmdb\_tpl\_%'
UNION
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), g.rolname, 'select'
  FROM pg_catalog.pg_attribute AS at
  JOIN pg_catalog.pg_class AS c ON c.oid = at.attrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL pg_catalog.aclexplode(at.attacl) AS a
  JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
 WHERE n.nspname = 'crm' AND c.relkind = 'r' AND at.attname = 'id'
   AND a.privilege_type = 'SELECT' AND g.rolname LIKE 'crmdb\_tpl\_%'
 ORDER BY 1, 2, 3

-- readable_columns --
-- Columns of a table employees may select: all but read copies (of a crm_vault type)
SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
  FROM pg_catalog.pg_attribute AS a
  JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
 WHERE a.attrelid = pg_catalog.to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
   AND t.typnamespace IS DISTINCT FROM pg_catalog.to_regnamespace('crm_vault')

-- template_executes --
-- EXECUTE privileges template roles hold on crm functions (reports), named as GRANT names
-- them: schema.name(argument types)
SELECT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname,
                         pg_catalog.pg_get_function_identity_arguments(p.oid)) AS function,
       g.rolname AS role
  FROM pg_catalog.pg_proc AS p
  JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
 CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
  JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
 WHERE n.nspname = 'crm' AND a.privilege_type = 'EXECUTE'
   AND g.rolname LIKE 'crmdb\_tpl\_%'
 ORDER BY 1, 2

-- rls_flags --
-- Row-level security flags of crm and crm_vault tables
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS table_name,
       c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('crm', 'crm_vault') AND c.relkind IN ('r', 'p')
 ORDER BY 1

-- managed_policies --
-- Policies on crm tables that templates and sharing rules made (not the fixed crmdb_*
-- ones of sql/schema.sql), as PostgreSQL normalised them
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS table_name,
       p.polname AS name,
       CASE p.polcmd WHEN 'r' THEN 'select' WHEN 'a' THEN 'insert' WHEN 'w' THEN 'update'
                     WHEN 'd' THEN 'delete' ELSE 'all' END AS command,
       p.polpermissive AS permissive,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r)::text END
               FROM pg_catalog.unnest(p.polroles) AS r ORDER BY 1) AS roles,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS using_expr,
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr,
       pg_catalog.obj_description(p.oid, 'pg_policy') AS comment
  FROM pg_catalog.pg_policy AS p
  JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('crm', 'crm_vault') AND p.polname NOT LIKE 'crmdb\_%'
 ORDER BY 1, 2

-- normalised_policies --
-- Expressions of the policies made on a temporary copy of a table, as normalised
SELECT p.polname AS name,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS using_expr,
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
  FROM pg_catalog.pg_policy AS p
 WHERE p.polrelid = pg_catalog.to_regclass(%(temp_table)s)

-- access_paths_source --
-- The body of the generated explain-access function as it is now
SELECT p.prosrc
  FROM pg_catalog.pg_proc AS p
 WHERE p.oid = 'crm_private.access_paths(name, text, bigint)'::pg_catalog.regprocedure

-- sharing_rule_audience --
-- Who a sharing rule reaches, and whether its org unit and project exist
SELECT (%(org_unit)s::text IS NULL OR EXISTS (SELECT FROM crm.org_units WHERE code = %(org_unit)s)) AS unit_ok,
       (%(project)s::text IS NULL OR EXISTS (SELECT FROM crm.projects WHERE code = %(project)s)) AS project_ok,
       ARRAY(SELECT x FROM unnest(%(employees)s::text[]) AS x
              WHERE NOT EXISTS (SELECT FROM crm.employees AS e WHERE e.role_name = x)) AS unknown_employees,
       (SELECT count(*) FROM crm.employees AS e
         WHERE e.status <> 'departed'
           AND (e.role_name = ANY (%(employees)s::text[])
                OR EXISTS (SELECT FROM crm.org_units AS u
                             JOIN crm_private.org_unit_tree AS t ON t.ancestor_id = u.id
                            WHERE u.code = %(org_unit)s AND t.descendant_id = e.org_unit_id
                              AND (%(sub_units)s OR t.depth = 0)))) AS audience

-- explain_access --
-- Every path by which an employee may act on a record
SELECT template, scope, actions, detail
  FROM crm_private.access_paths(%(role)s, %(table)s, %(id)s)
 ORDER BY template, scope

-- explain_fields --
-- The field groups of a record the current role (SET LOCAL ROLE to the employee) may
-- read and write
SELECT field_group, columns, readable, writable FROM crm.explain_fields(%(table)s, %(id)s)

-- employee_id_by_role --
-- An employee's id, or an error naming the unknown employee
SELECT (crm_private.employee_by_role(%(role)s)).id

-- Routing rules (crmdb rules plan/apply) -------------------------------------------

-- rules_lock --
-- Serialise rules applies: one at a time per database
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('crmdb rules apply'))

-- rules_current --
-- The routing rules of some projects, with codes where the table holds ids
SELECT p.code AS project, r.name, r.kind::text, r.on_stage::text, r.priority, r.enabled,
       r.sources::text[], r.provinces, r.product_interests, r.stages::text[],
       r.min_score, r.max_score, tu.code AS target_org_unit, r.include_sub_units,
       r.target_queue, r.strategy::text, r.load_measure, r.max_open,
       hu.code AS hours_org_unit, r.sla_minutes, r.sla_business_hours, r.sla_max_hops
  FROM crm.routing_rules AS r
  JOIN crm.projects AS p ON p.id = r.project_id
  LEFT JOIN crm.org_units AS tu ON tu.id = r.target_org_unit_id
  LEFT JOIN crm.org_units AS hu ON hu.id = r.hours_org_unit_id
 WHERE p.code = ANY (%(projects)s::text[])
 ORDER BY 1, 2

-- queue_members_current --
-- The queue members of some projects, by role name
SELECT p.code AS project, m.queue, e.role_name::text AS employee, m.weight
  FROM crm.routing_queue_members AS m
  JOIN crm.projects AS p ON p.id = m.project_id
  JOIN crm.employees AS e ON e.id = m.employee_id
 WHERE p.code = ANY (%(projects)s::text[])
 ORDER BY 1, 2, 3

-- business_hours_current --
-- The business hours of some teams
SELECT u.code AS org_unit, h.weekday, h.opens, h.closes
  FROM crm.business_hours AS h
  JOIN crm.org_units AS u ON u.id = h.org_unit_id
 WHERE u.code = ANY (%(units)s::text[])
 ORDER BY 1, 2, 3

-- rules_unknown --
-- Which of the projects, org units and employees a rules file names do not exist
-- (employees who departed count as unknown: nothing may be routed to them)
SELECT 'project' AS kind, x FROM unnest(%(projects)s::text[]) AS x
 WHERE NOT EXISTS (SELECT FROM crm.projects WHERE code = x)
UNION ALL
SELECT 'org unit', x FROM unnest(%(units)s::text[]) AS x
 WHERE NOT EXISTS (SELECT FROM crm.org_units WHERE code = x)
UNION ALL
SELECT 'employee', x FROM unnest(%(employees)s::text[]) AS x
 WHERE NOT EXISTS (SELECT FROM crm.employees WHERE role_name = x AND status <> 'departed')

-- Routing worker -------------------------------------------------------------------

-- listen_routing --
-- Wake up when a transaction records routing events
LISTEN crmdb_routing

-- worker_may_render --
-- Whether the worker's login may SET ROLE to employees (to render their emails as them)
SELECT rolsuper OR pg_has_role(current_user, 'crmdb_worker', 'MEMBER')
  FROM pg_roles WHERE rolname = current_user

-- route_events --
-- One worker batch: claim up to `limit` due events and apply the rules (now: NULL, or a
-- pinned clock)
SELECT claimed, assigned, deferred FROM crm_private.route_events(%(limit)s, %(now)s)

-- next_routing_due --
-- When the next deferred event or SLA clock falls due (NULL: none)
SELECT crm_private.next_routing_due()

-- offboard_employee --
-- Mark an employee departed; the worker hands their open work to the successor or rules
SELECT crm_admin.offboard_employee(%(role)s, %(successor)s)

-- api_views --
-- crm_api's views and the comment crmdb policy apply left on each (with its script's hash)
SELECT format('crm_api.%I', c.relname), pg_catalog.obj_description(c.oid, 'pg_class')
  FROM pg_catalog.pg_class AS c
 WHERE c.relnamespace = 'crm_api'::regnamespace AND c.relkind = 'v'

-- custom_fields --
-- Custom fields, for crm_api's views (crmdb policy apply)
SELECT table_name, field_group, name, data_type::text FROM crm.custom_fields ORDER BY id

-- field_masks --
-- Masked fields as crmdb policy apply last wrote them
SELECT table_name, column_name, keep_last FROM crm_private.field_masks

-- unowned_customers --
-- Open customers without an active owner (none, or departed), with what the engine is
-- doing about each: the pending event, its tries and when it is due next
SELECT c.id, p.code AS project, c.stage::text, o.role_name::text AS owner,
       CASE WHEN c.owner_id IS NULL THEN 'none' ELSE o.status::text END AS owner_status,
       e.kind::text AS pending, e.attempts, e.due_at
  FROM crm.customers AS c
  JOIN crm.projects AS p ON p.id = c.project_id
  LEFT JOIN crm.employees AS o ON o.id = c.owner_id
  LEFT JOIN LATERAL (SELECT x.kind, x.attempts, x.due_at FROM crm_private.routing_events AS x
                      WHERE x.customer_id = c.id ORDER BY x.id LIMIT 1) AS e ON true
 WHERE c.stage <> 'lost' AND (c.owner_id IS NULL OR o.status = 'departed')
 ORDER BY c.id

-- offboarding_report --
-- Where a departed employee's customers went since their departure: customer, new
-- owner, strategy, rule
SELECT h.customer_id, t.role_name::text AS to_employee, h.strategy, h.rule_name
  FROM crm.assignment_history AS h
  JOIN crm.employees AS f ON f.id = h.from_employee_id
  JOIN crm.employees AS t ON t.id = h.to_employee_id
 WHERE f.role_name = %(role)s AND h.reason = 'offboarding'
   AND h.at >= coalesce(f.departed_at, '-infinity')
 ORDER BY h.customer_id

-- rules_target_members --
-- For each (project, org unit, sub-units) a rule targets: how many employees of the
-- unit (or its subtree) are members of the project and not departed
SELECT t.i, count(DISTINCT e.id)
  FROM unnest(%(projects)s::text[], %(units)s::text[], %(subs)s::boolean[])
       WITH ORDINALITY AS t(project, unit, subs, i)
  JOIN crm.org_units AS u ON u.code = t.unit
  JOIN crm.projects AS p ON p.code = t.project
  LEFT JOIN crm_private.org_unit_tree AS ut
    ON ut.ancestor_id = u.id AND (t.subs OR ut.depth = 0)
  LEFT JOIN crm.employees AS e
    ON e.org_unit_id = ut.descendant_id AND e.status <> 'departed'
   AND EXISTS (SELECT FROM crm.project_members AS pm
                WHERE pm.project_id = p.id AND pm.employee_id = e.id)
 GROUP BY t.i
 ORDER BY t.i

-- rules_non_members --
-- Which (project, employee) pairs of the rules files' queues are not project members
SELECT t.project, t.employee
  FROM unnest(%(projects)s::text[], %(employees)s::text[]) AS t(project, employee)
 WHERE NOT EXISTS (SELECT FROM crm.project_members AS pm
                     JOIN crm.projects AS p ON p.id = pm.project_id
                     JOIN crm.employees AS e ON e.id = pm.employee_id
                    WHERE p.code = t.project AND e.role_name = t.employee)

-- crmdb_guard (crmdb/guard.py) ------------------------------------------------------

-- session_preload_libraries --
-- The libraries every new session loads
SELECT current_setting('session_preload_libraries')

-- set_session_preload_libraries --
-- Every new session loads {libraries} (literals, comma-separated); takes effect on reload
ALTER SYSTEM SET session_preload_libraries = {libraries}

-- guard_loaded --
-- Whether this session loaded crmdb_guard (it defines crmdb_guard.version)
SELECT current_setting('crmdb_guard.version', true) IS NOT NULL
