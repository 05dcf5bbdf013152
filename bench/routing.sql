-- Named queries of bench/routing.py (loaded with crmdb.queries.query).

-- database_exists --
-- Whether the bench database exists
SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = %(name)s)

-- drop_database --
-- Start from scratch
DROP DATABASE IF EXISTS {name} WITH (FORCE)

-- create_database --
-- The bench database
CREATE DATABASE {name}

-- add_rules --
-- Three rules: web forms round robin over team A (with a capacity), chats to the least
-- loaded of team B, the rest weighted over a queue of both teams' leads
INSERT INTO crm.routing_rules (project_id, name, priority, sources, target_org_unit_id,
                               strategy, max_open)
VALUES (crm_private.project_id('bench'), 'web', 10, '{web_form}',
        (SELECT id FROM crm.org_units WHERE code = 'team-a'), 'round_robin', 5000),
       (crm_private.project_id('bench'), 'chat', 20, '{chat}',
        (SELECT id FROM crm.org_units WHERE code = 'team-b'), 'least_loaded', NULL);
INSERT INTO crm.routing_rules (project_id, name, priority, target_queue, strategy)
VALUES (crm_private.project_id('bench'), 'rest', 30, 'leads', 'weighted');
INSERT INTO crm.routing_queue_members (project_id, queue, employee_id, weight)
SELECT crm_private.project_id('bench'), 'leads', e.id, 1 + (e.id % 3)
  FROM crm.employees AS e WHERE e.role_name LIKE 'rbench\_%';

-- insert_customers --
-- Unowned customers from a mix of channels (each makes a routing event)
INSERT INTO crm.customers (project_id, full_name, source, province, score)
SELECT crm_private.project_id('bench'), 'Bench ' || g,
       (ARRAY['web_form', 'chat', 'email', 'event']::crm.source_channel[])[1 + g %% 4],
       (ARRAY['Hà Nội', 'Hồ Chí Minh', 'Đà Nẵng'])[1 + g %% 3], g %% 101
  FROM generate_series(1, %(count)s) AS g

-- routing_trigger_off --
-- Bulk insert without the routing trigger (the audit trigger stays)
ALTER TABLE crm.customers DISABLE TRIGGER _600_routing_insert

-- routing_trigger_on --
-- The routing trigger back on
ALTER TABLE crm.customers ENABLE TRIGGER _600_routing_insert

-- pending --
-- Routing events not yet applied
SELECT count(*) FROM crm_private.routing_events

-- history_since --
-- Customers assigned after a history id
SELECT id, customer_id FROM crm.assignment_history WHERE id > %(after)s ORDER BY id

-- reset --
-- Empty the routing state and the customers between runs
TRUNCATE crm_private.routing_events, crm_private.routing_counters, crm.assignment_history,
         crm.notifications, crm.customers CASCADE

-- server_version --
-- Which PostgreSQL
SELECT pg_catalog.current_setting('server_version')

-- vacuum --
-- Fresh statistics after the bulk insert
VACUUM ANALYZE

-- insert_paced_customers --
-- One tick's arrivals of the latency run's offered load, in one statement
INSERT INTO crm.customers (project_id, full_name, source)
SELECT crm_private.project_id('bench'), 'Paced', 'web_form'
  FROM generate_series(1, %(count)s) RETURNING id
