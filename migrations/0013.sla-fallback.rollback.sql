-- Rolls back 0013: the SLA fallback, routing settings and routed org units.
SET ROLE crmdb_owner;

DROP TRIGGER _060_routed_unit ON crm.customers;
DROP FUNCTION crm_private.customers_routed_unit();

CREATE OR REPLACE FUNCTION crm_private.route_events(p_limit integer, p_now timestamptz DEFAULT NULL)
RETURNS TABLE (claimed integer, assigned integer, deferred integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, pg_catalog.clock_timestamp());
    v_ids bigint[];
    v_rule bigint;
    v_work record;
    v_assigned integer;
    v_deferred integer;
BEGIN
    PERFORM crm_private.check_router();
    IF pg_catalog.to_regclass('pg_temp.routing_work') IS NULL THEN
        CREATE TEMP TABLE routing_work (
            event_id bigint PRIMARY KEY, customer_id bigint NOT NULL, project_id bigint NOT NULL,
            from_employee bigint, rule_id bigint, strategy text NOT NULL, reason text NOT NULL,
            hop integer NOT NULL, excluded bigint[] NOT NULL, to_employee bigint
        ) ON COMMIT DELETE ROWS;
    END IF;
    DELETE FROM pg_temp.routing_work;

    -- 1. SLA clocks that ran out become events.
    WITH due AS (
        DELETE FROM crm_private.sla_timers AS t
         WHERE t.customer_id IN (SELECT s.customer_id FROM crm_private.sla_timers AS s
                                  WHERE s.due_at <= v_now ORDER BY s.due_at LIMIT p_limit
                                    FOR UPDATE SKIP LOCKED)
        RETURNING t.*
    )
    INSERT INTO crm_private.routing_events (kind, customer_id, employee_id, rule_id, hop, excluded, due_at)
    SELECT 'sla_expired', d.customer_id, d.owner_id, d.rule_id, d.hop, d.excluded, v_now FROM due AS d;

    -- 2. Claim due events. A customer's events go in order: one waits while an earlier
    --    one is pending, deferred, or held by another worker.
    v_ids := ARRAY(
        SELECT e.id FROM crm_private.routing_events AS e
         WHERE e.due_at <= v_now
           AND (e.customer_id IS NULL OR NOT EXISTS (
                SELECT FROM crm_private.routing_events AS p
                 WHERE p.customer_id = e.customer_id AND p.id < e.id))
         ORDER BY e.due_at, e.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED);
    IF cardinality(v_ids) = 0 THEN
        RETURN QUERY SELECT 0, 0, 0;
        RETURN;
    END IF;

    -- 3. Lock their customers in id order. A customer someone is changing right now is
    --    left, with its event, for a later batch: the worker never waits on the app.
    v_ids := ARRAY(
        SELECT e.id FROM crm_private.routing_events AS e
         WHERE e.id = ANY (v_ids)
           AND (e.customer_id IS NULL
                OR e.customer_id IN (SELECT c.id FROM crm.customers AS c
                                      WHERE c.id IN (SELECT x.customer_id FROM crm_private.routing_events AS x
                                                      WHERE x.id = ANY (v_ids))
                                      ORDER BY c.id FOR UPDATE SKIP LOCKED)
                OR NOT EXISTS (SELECT FROM crm.customers AS c WHERE c.id = e.customer_id)));

    -- 4. Departures: every open customer becomes an offboard_customer event.
    PERFORM crm_private.offboard(e.employee_id, v_now)
       FROM crm_private.routing_events AS e
      WHERE e.id = ANY (v_ids) AND e.kind = 'employee_status_changed' AND e.status = 'departed'
      ORDER BY e.id;

    -- 5. Owners who responded stop their SLA clock.
    DELETE FROM crm_private.sla_timers AS t
     USING crm_private.routing_events AS e
     WHERE e.id = ANY (v_ids) AND e.kind = 'owner_responded'
       AND t.customer_id = e.customer_id AND t.owner_id = e.employee_id;

    -- 6. What to route, and by which rule (still applicable: the customer may have
    --    moved on since the event). A new customer no rule matches is 'unmatched': the
    --    project's triage takes it (below); a stage without a hand-off rule moves nothing.
    INSERT INTO pg_temp.routing_work
    SELECT e.id, c.id, c.project_id, c.owner_id, r.id, coalesce(r.strategy::text, 'triage'),
           CASE WHEN e.kind = 'stage_changed' THEN 'handoff'
                WHEN r.id IS NULL THEN 'unmatched' ELSE 'new' END, 0, '{}', NULL
      FROM crm_private.routing_events AS e
      JOIN crm.customers AS c ON c.id = e.customer_id
      LEFT JOIN LATERAL (
           SELECT r.* FROM crm.routing_rules AS r
            WHERE r.project_id = c.project_id
              AND crm_private.rule_matches(r, c)
              AND CASE e.kind WHEN 'customer_created' THEN r.kind = 'assign'
                              ELSE r.kind = 'handoff' AND r.on_stage = e.stage END
            ORDER BY r.priority, r.id LIMIT 1) AS r ON true
     WHERE e.id = ANY (v_ids)
       AND ((e.kind = 'customer_created' AND c.owner_id IS NULL)
            OR (e.kind = 'stage_changed' AND c.stage = e.stage AND r.id IS NOT NULL));

    -- Offboarding: to the successor, else by the rules, else to the nearest manager.
    INSERT INTO pg_temp.routing_work
    SELECT e.id, c.id, c.project_id, c.owner_id,
           CASE WHEN s.successor_id IS NULL THEN r.id END,
           CASE WHEN s.successor_id IS NOT NULL THEN 'successor'
                WHEN r.id IS NULL THEN 'manager' ELSE r.strategy::text END,
           'offboarding', 0, '{}',
           CASE WHEN s.successor_id IS NOT NULL THEN s.successor_id
                WHEN r.id IS NULL THEN crm_private.active_manager(e.employee_id) END
      FROM crm_private.routing_events AS e
      JOIN crm.customers AS c ON c.id = e.customer_id AND c.owner_id = e.employee_id
      LEFT JOIN (crm_private.successors AS s
                 JOIN crm.employees AS se ON se.id = s.successor_id AND se.status = 'active')
        ON s.employee_id = e.employee_id
      LEFT JOIN LATERAL (
           SELECT r.* FROM crm.routing_rules AS r
            WHERE r.project_id = c.project_id
              AND crm_private.rule_matches(r, c)
              AND (r.kind = 'assign' OR r.on_stage = c.stage)
            ORDER BY r.priority, r.id LIMIT 1) AS r ON true
     WHERE e.id = ANY (v_ids) AND e.kind = 'offboard_customer';

    -- SLA expiry without an activity by the owner since assignment: the next eligible
    -- employee of the rule, or after sla_max_hops the owner's manager.
    INSERT INTO pg_temp.routing_work
    SELECT e.id, c.id, c.project_id, c.owner_id,
           CASE WHEN e.hop < r.sla_max_hops THEN r.id END,
           CASE WHEN e.hop < r.sla_max_hops THEN r.strategy::text ELSE 'manager' END,
           CASE WHEN e.hop < r.sla_max_hops THEN 'sla' ELSE 'escalation' END,
           CASE WHEN e.hop < r.sla_max_hops THEN e.hop + 1 ELSE e.hop END,
           e.excluded || e.employee_id,
           CASE WHEN e.hop >= r.sla_max_hops THEN crm_private.active_manager(e.employee_id) END
      FROM crm_private.routing_events AS e
      JOIN crm.customers AS c ON c.id = e.customer_id AND c.owner_id = e.employee_id
      JOIN crm.routing_rules AS r ON r.id = e.rule_id
     WHERE e.id = ANY (v_ids) AND e.kind = 'sla_expired'
       AND NOT EXISTS (SELECT FROM crm.activities AS a
                        WHERE a.customer_id = c.id AND a.employee_id = c.owner_id
                          AND a.created_at >= c.assigned_at);

    -- The planner has no statistics on a temporary table: give it the batch's size, so
    -- that the joins below probe customers, activities and contracts by index.
    ANALYZE pg_temp.routing_work;

    -- 7. Outside the team's business hours nothing moves: wait until it opens.
    WITH closed AS (
        DELETE FROM pg_temp.routing_work AS w
         USING crm.routing_rules AS r
         WHERE r.id = w.rule_id AND w.to_employee IS NULL AND r.hours_org_unit_id IS NOT NULL
           AND NOT crm_private.is_open(r.hours_org_unit_id, v_now)
        RETURNING w.event_id, r.hours_org_unit_id
    )
    UPDATE crm_private.routing_events AS e
       SET due_at = coalesce(crm_private.next_open(closed.hours_org_unit_id, v_now), v_now + interval '1 day')
      FROM closed
     WHERE e.id = closed.event_id;

    -- 8. Pick owners, rule by rule in id order (the order every worker locks them in).
    FOR v_rule IN SELECT DISTINCT w.rule_id FROM pg_temp.routing_work AS w
                   WHERE w.rule_id IS NOT NULL AND w.to_employee IS NULL ORDER BY 1 LOOP
        PERFORM crm_private.assign_rule(v_rule, v_now);
    END LOOP;

    -- Nobody eligible. A new customer whose rule found nobody for an hour (this is the
    -- 12th try, 5 minutes apart) overflows to the project's triage; offboarding falls
    -- back to the nearest active manager.
    UPDATE pg_temp.routing_work AS w
       SET reason = 'overflow'
      FROM crm_private.routing_events AS e
     WHERE e.id = w.event_id AND w.to_employee IS NULL AND w.reason = 'new'
       AND e.attempts + 1 >= 12;
    UPDATE pg_temp.routing_work AS w
       SET to_employee = crm_private.active_manager(w.from_employee), strategy = 'manager', rule_id = NULL
     WHERE w.to_employee IS NULL AND w.reason = 'offboarding';

    -- The project's triage: its queue named triage, else its admins, the least loaded
    -- first, one customer at a time (each pick counts in the next one's load). It takes
    -- unmatched and overflowing new customers, and offboarding and SLA escalations that
    -- found no active manager. Whatever finds nobody here either waits and retries.
    FOR v_work IN SELECT w.event_id, w.project_id, w.from_employee FROM pg_temp.routing_work AS w
                   WHERE w.to_employee IS NULL
                     AND w.reason IN ('unmatched', 'overflow', 'offboarding', 'escalation')
                   ORDER BY w.event_id LOOP
        UPDATE pg_temp.routing_work AS w
           SET to_employee = f.employee_id, strategy = f.strategy,
               rule_id = CASE WHEN w.reason = 'overflow' THEN w.rule_id END
          FROM (SELECT f.employee_id, f.strategy
                  FROM crm_private.fallback_candidates(v_work.project_id) AS f
                 WHERE f.employee_id IS DISTINCT FROM v_work.from_employee
                 ORDER BY f.tier,
                          f.open_customers + (SELECT count(*) FROM pg_temp.routing_work AS b
                                               WHERE b.to_employee = f.employee_id),
                          f.employee_id
                 LIMIT 1) AS f
         WHERE w.event_id = v_work.event_id;
    END LOOP;
    WITH stuck AS (
        DELETE FROM pg_temp.routing_work AS w WHERE w.to_employee IS NULL RETURNING w.event_id
    )
    UPDATE crm_private.routing_events AS e
       SET due_at = v_now + interval '5 minutes', attempts = e.attempts + 1
      FROM stuck
     WHERE e.id = stuck.event_id;

    -- 9. Write: owner, history, open work of a departed owner, SLA clock, notifications.
    UPDATE crm.customers AS c
       SET owner_id = w.to_employee, org_unit_id = e.org_unit_id, assigned_at = v_now
      FROM pg_temp.routing_work AS w
      JOIN crm.employees AS e ON e.id = w.to_employee
     WHERE c.id = w.customer_id;
    GET DIAGNOSTICS v_assigned = ROW_COUNT;

    INSERT INTO crm.assignment_history (customer_id, project_id, from_employee_id, to_employee_id,
                                        rule_id, rule_name, strategy, reason, hop, event_id, at)
    SELECT w.customer_id, w.project_id, w.from_employee, w.to_employee, w.rule_id, r.name,
           w.strategy, w.reason, w.hop, w.event_id, v_now
      FROM pg_temp.routing_work AS w
      LEFT JOIN crm.routing_rules AS r ON r.id = w.rule_id;

    IF EXISTS (SELECT FROM pg_temp.routing_work AS w WHERE w.reason = 'offboarding') THEN
        UPDATE crm.activities AS a
           SET employee_id = w.to_employee
          FROM pg_temp.routing_work AS w
         WHERE w.reason = 'offboarding' AND a.customer_id = w.customer_id
           AND a.employee_id = w.from_employee AND a.done_at IS NULL
           AND a.kind IN ('task', 'appointment');
        UPDATE crm.contracts AS k
           SET owner_id = w.to_employee
          FROM pg_temp.routing_work AS w
         WHERE w.reason = 'offboarding' AND k.customer_id = w.customer_id
           AND k.owner_id = w.from_employee AND k.status IN ('draft', 'negotiating');
    END IF;

    DELETE FROM crm_private.sla_timers AS t USING pg_temp.routing_work AS w
     WHERE t.customer_id = w.customer_id;
    INSERT INTO crm_private.sla_timers (customer_id, rule_id, owner_id, assigned_at, due_at, hop, excluded)
    SELECT w.customer_id, r.id, w.to_employee, v_now,
           CASE WHEN r.sla_business_hours
                THEN crm_private.add_business_minutes(r.hours_org_unit_id, v_now, r.sla_minutes)
                ELSE v_now + pg_catalog.make_interval(mins => r.sla_minutes) END,
           w.hop, w.excluded
      FROM pg_temp.routing_work AS w
      JOIN crm.routing_rules AS r ON r.id = w.rule_id
     WHERE r.sla_minutes IS NOT NULL AND w.reason <> 'overflow';

    INSERT INTO crm.notifications (employee_id, kind, customer_id, subject, details)
    SELECT w.to_employee,
           CASE WHEN w.reason IN ('escalation', 'overflow') OR w.strategy = 'project_admin'
                THEN 'escalated' ELSE 'assigned' END,
           w.customer_id,
           CASE
               WHEN w.reason = 'escalation' AND w.strategy <> 'manager' THEN pg_catalog.format('Customer #%s escalated to you: no response within the SLA, and no active manager', w.customer_id)
               WHEN w.reason = 'escalation' THEN pg_catalog.format('Customer #%s escalated to you: no response within the SLA', w.customer_id)
               WHEN w.reason = 'sla' THEN pg_catalog.format('Customer #%s reassigned to you: the previous owner did not respond in time', w.customer_id)
               WHEN w.reason = 'unmatched' THEN pg_catalog.format('Customer #%s assigned to you: no routing rule of its project matched it', w.customer_id)
               WHEN w.reason = 'overflow' THEN pg_catalog.format('Customer #%s assigned to you: rule %s found nobody eligible for an hour', w.customer_id, r.name)
               WHEN w.reason = 'offboarding' AND w.strategy IN ('manager', 'triage', 'project_admin') THEN pg_catalog.format('Customer #%s of a departed colleague assigned to you: no successor or rule could take it', w.customer_id)
               ELSE pg_catalog.format('Customer #%s assigned to you', w.customer_id)
           END,
           pg_catalog.jsonb_build_object('reason', w.reason, 'rule', r.name, 'strategy', w.strategy,
                                         'from_employee_id', w.from_employee, 'hop', w.hop)
      FROM pg_temp.routing_work AS w
      LEFT JOIN crm.routing_rules AS r ON r.id = w.rule_id
    UNION ALL
    SELECT w.from_employee, 'reassigned_away', w.customer_id,
           pg_catalog.format('Customer #%s moved to someone else: no activity logged within the SLA', w.customer_id),
           pg_catalog.jsonb_build_object('reason', w.reason, 'rule', r.name, 'to_employee_id', w.to_employee)
      FROM pg_temp.routing_work AS w
      LEFT JOIN crm.routing_rules AS r ON r.id = w.rule_id
      JOIN crm.employees AS prev ON prev.id = w.from_employee AND prev.status <> 'departed'
     WHERE w.reason IN ('sla', 'escalation');

    -- 10. Done: applied events go; deferred ones stay, due later.
    DELETE FROM crm_private.routing_events AS e WHERE e.id = ANY (v_ids) AND e.due_at <= v_now;
    SELECT count(*) INTO v_deferred FROM crm_private.routing_events AS e
     WHERE e.id = ANY (v_ids) AND e.due_at > v_now;
    DELETE FROM pg_temp.routing_work;
    RETURN QUERY SELECT cardinality(v_ids), v_assigned, v_deferred;
END
$$;
COMMENT ON FUNCTION crm_private.route_events(integer, timestamptz) IS 'The routing worker''s batch: claims up to p_limit due events (SKIP LOCKED), applies the rules (what they cannot place goes to the project''s triage), writes owners, history, SLA clocks and notifications; p_now pins the clock (tests). Callable by crmdb_owner members that are not employees';

CREATE OR REPLACE FUNCTION crm_private.fallback_candidates(p_project_id bigint)
RETURNS TABLE (employee_id bigint, strategy text, tier integer, open_customers bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    -- Active members of the project in its queue named triage (tier 0), and its admins:
    -- members holding the admin or super_admin template (tier 1), with their loads.
    SELECT x.employee_id, x.strategy, x.tier,
           (SELECT count(*) FROM crm.customers AS c
             WHERE c.owner_id = x.employee_id AND c.stage <> 'lost')
      FROM (SELECT m.employee_id, 'triage' AS strategy, 0 AS tier
              FROM crm.routing_queue_members AS m
             WHERE m.project_id = p_project_id AND m.queue = 'triage'
            UNION
            SELECT pm.employee_id, 'project_admin', 1
              FROM crm.project_members AS pm
             WHERE pm.project_id = p_project_id AND pm.template IN ('admin', 'super_admin')) AS x
      JOIN crm.employees AS e ON e.id = x.employee_id AND e.status = 'active'
     WHERE EXISTS (SELECT FROM crm.project_members AS pm
                    WHERE pm.project_id = p_project_id AND pm.employee_id = x.employee_id)
$$;
COMMENT ON FUNCTION crm_private.fallback_candidates(bigint) IS 'Who takes a project''s customers the rules cannot place: active members of its triage queue (tier 0), then its admins (tier 1), with their open customers';

DROP FUNCTION crm_private.routing_settings_of(bigint);
-- crm_api's view of the table is generated by crmdb policy apply: it goes first.
DROP VIEW IF EXISTS crm_api.routing_settings;
DROP TABLE crm.routing_settings;
DELETE FROM crm_private.notification_emails WHERE kind = 'sla_missed';

-- History only 0013 writes: an early escalation reads as an escalation; a kept owner
-- (no change of owner) has no row before 0013.
DELETE FROM crm.assignment_history WHERE strategy = 'kept';
UPDATE crm.assignment_history SET reason = 'escalation' WHERE reason = 'sla_no_eligible';
ALTER TABLE crm.assignment_history DROP CONSTRAINT assignment_history_strategy_check;
ALTER TABLE crm.assignment_history ADD CONSTRAINT assignment_history_strategy_check
    CHECK (strategy IN ('round_robin', 'least_loaded', 'weighted', 'keep_with_team',
                        'successor', 'manager', 'triage', 'project_admin'));
ALTER TABLE crm.assignment_history DROP CONSTRAINT assignment_history_reason_check;
ALTER TABLE crm.assignment_history ADD CONSTRAINT assignment_history_reason_check
    CHECK (reason IN ('new', 'handoff', 'sla', 'escalation', 'offboarding', 'unmatched', 'overflow'));
COMMENT ON COLUMN crm.assignment_history.strategy IS 'The rule''s strategy; successor or manager for offboarding and escalation; triage (the project''s triage queue) or project_admin for the fallbacks';
COMMENT ON COLUMN crm.assignment_history.reason IS 'new customer, stage handoff, sla reassignment, sla escalation, offboarding; unmatched (no rule matched a new customer), overflow (its rule found nobody eligible for an hour)';

RESET ROLE;
