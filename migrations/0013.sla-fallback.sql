-- SLA fallback, routing settings, routed org units (issue 6, routing engine).
-- depends: 0012.security-findings
--
-- 1. An SLA hop that finds nobody else eligible escalates at once (reason
--    sla_no_eligible) to the owner's nearest active manager, else the project's
--    triage; with nobody at all the owner keeps the customer (strategy kept), is told
--    (sla_missed), and the chain ends: no SLA clock fires again.
-- 2. crm.routing_settings: the triage queue and templates, the tries before a new
--    customer overflows to triage and the retry interval, per project, managed by its
--    admins under row-level security (policies/admin.yaml); no row: the defaults.
-- 3. The routing engine owns a routed customer's org unit: it follows the owner the
--    engine picks, and an employee's update may not set it to anything else.

SET ROLE crmdb_owner;

-- 1. What assignment_history may now say -----------------------------------------

ALTER TABLE crm.assignment_history DROP CONSTRAINT assignment_history_strategy_check;
ALTER TABLE crm.assignment_history ADD CONSTRAINT assignment_history_strategy_check
    CHECK (strategy IN ('round_robin', 'least_loaded', 'weighted', 'keep_with_team',
                        'successor', 'manager', 'triage', 'project_admin', 'kept'));
ALTER TABLE crm.assignment_history DROP CONSTRAINT assignment_history_reason_check;
ALTER TABLE crm.assignment_history ADD CONSTRAINT assignment_history_reason_check
    CHECK (reason IN ('new', 'handoff', 'sla', 'escalation', 'offboarding', 'unmatched', 'overflow',
                      'sla_no_eligible'));
COMMENT ON COLUMN crm.assignment_history.strategy IS 'The rule''s strategy; successor or manager for offboarding and escalation; triage (the project''s triage queue) or project_admin for the fallbacks; kept: an SLA escalation found nobody at all, the owner keeps the customer';
COMMENT ON COLUMN crm.assignment_history.reason IS 'new customer, stage handoff, sla reassignment, sla escalation (after max_hops), offboarding; unmatched (no rule matched a new customer), overflow (its rule found nobody eligible for overflow_tries tries), sla_no_eligible (an SLA hop found nobody else eligible: escalated at once)';

INSERT INTO crm_private.notification_emails (kind, template) VALUES ('sla_missed', 'notification');

-- 2. Routing settings ------------------------------------------------------------

CREATE TABLE crm.routing_settings (
    project_id        bigint PRIMARY KEY REFERENCES crm.projects (id) ON DELETE CASCADE,
    triage_queue      text NOT NULL DEFAULT 'triage'
                      CONSTRAINT routing_settings_triage_queue_name CHECK (triage_queue ~ '^[a-z0-9][a-z0-9_.-]*$'),
    triage_templates  text[] NOT NULL DEFAULT '{admin,super_admin}'
                      CONSTRAINT routing_settings_triage_templates_names
                      CHECK (array_position(triage_templates, NULL) IS NULL),
    overflow_tries    integer NOT NULL DEFAULT 12
                      CONSTRAINT routing_settings_overflow_tries_range CHECK (overflow_tries BETWEEN 1 AND 10000),
    retry_minutes     integer NOT NULL DEFAULT 5
                      CONSTRAINT routing_settings_retry_minutes_range CHECK (retry_minutes BETWEEN 1 AND 1440),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm.routing_settings IS 'Per project: who takes what the routing rules cannot place and how long a new customer waits for its rule; managed by the project''s admins (policies/admin.yaml) or a DBA; a project without a row has the column defaults';
COMMENT ON COLUMN crm.routing_settings.triage_queue IS 'The queue (crm.routing_queue_members) whose active project members take unmatched and overflowing customers and escalations without a manager (tier 0)';
COMMENT ON COLUMN crm.routing_settings.triage_templates IS 'Role templates whose holders in the project take them when the triage queue has nobody (tier 1; strategy project_admin); empty: nobody';
COMMENT ON COLUMN crm.routing_settings.overflow_tries IS 'Tries of a new customer''s rule that found nobody eligible before it overflows to the triage (reason overflow)';
COMMENT ON COLUMN crm.routing_settings.retry_minutes IS 'Minutes between tries of an event that found nobody eligible';
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.routing_settings
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();

CREATE FUNCTION crm_private.routing_settings_of(p_project_id bigint) RETURNS crm.routing_settings
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    -- The project's row, else the defaults (the same as the columns' DEFAULTs: a test
    -- compares them).
    SELECT coalesce(
        (SELECT s FROM crm.routing_settings AS s WHERE s.project_id = p_project_id),
        ROW(p_project_id, 'triage', '{admin,super_admin}'::text[], 12, 5,
            '-infinity'::timestamptz)::crm.routing_settings)
$$;
COMMENT ON FUNCTION crm_private.routing_settings_of(bigint) IS 'A project''s routing settings: its crm.routing_settings row, else the defaults';

-- Triage from the settings ------------------------------------------------------

CREATE OR REPLACE FUNCTION crm_private.fallback_candidates(p_project_id bigint)
RETURNS TABLE (employee_id bigint, strategy text, tier integer, open_customers bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    -- Active members of the project in its triage queue (tier 0), and its admins:
    -- members holding one of its triage templates (tier 1), with their loads; both
    -- named by crm.routing_settings (crm_private.routing_settings_of: the defaults).
    SELECT x.employee_id, x.strategy, x.tier,
           (SELECT count(*) FROM crm.customers AS c
             WHERE c.owner_id = x.employee_id AND c.stage <> 'lost')
      FROM (SELECT m.employee_id, 'triage' AS strategy, 0 AS tier
              FROM crm.routing_queue_members AS m
             WHERE m.project_id = p_project_id
               AND m.queue = (crm_private.routing_settings_of(p_project_id)).triage_queue
            UNION
            SELECT pm.employee_id, 'project_admin', 1
              FROM crm.project_members AS pm
             WHERE pm.project_id = p_project_id
               AND pm.template = ANY ((crm_private.routing_settings_of(p_project_id)).triage_templates)) AS x
      JOIN crm.employees AS e ON e.id = x.employee_id AND e.status = 'active'
     WHERE EXISTS (SELECT FROM crm.project_members AS pm
                    WHERE pm.project_id = p_project_id AND pm.employee_id = x.employee_id)
$$;
COMMENT ON FUNCTION crm_private.fallback_candidates(bigint) IS 'Who takes a project''s customers the rules cannot place: active members of its triage queue (tier 0), then its members holding a triage template (tier 1: its admins), with their open customers; queue and templates from crm.routing_settings';

-- The engine: SLA fallback, settings ---------------------------------------------

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

    -- Nobody eligible. A new customer whose rule found nobody for overflow_tries tries
    -- (crm.routing_settings; by default the 12th, 5 minutes apart: an hour) overflows to
    -- the project's triage; offboarding falls back to the nearest active manager.
    UPDATE pg_temp.routing_work AS w
       SET reason = 'overflow'
      FROM crm_private.routing_events AS e
     WHERE e.id = w.event_id AND w.to_employee IS NULL AND w.reason = 'new'
       AND e.attempts + 1 >= (crm_private.routing_settings_of(w.project_id)).overflow_tries;
    UPDATE pg_temp.routing_work AS w
       SET to_employee = crm_private.active_manager(w.from_employee), strategy = 'manager', rule_id = NULL
     WHERE w.to_employee IS NULL AND w.reason = 'offboarding';
    -- An SLA hop that finds nobody else eligible (everyone else already had it, is on
    -- leave, departed or at capacity) escalates at once, as after the last hop: to the
    -- owner's nearest active manager, else (below) the project's triage. It never waits:
    -- the unresponsive owner would keep the customer meanwhile. The rule stays on record.
    UPDATE pg_temp.routing_work AS w
       SET reason = 'sla_no_eligible', strategy = 'manager', hop = w.hop - 1,
           to_employee = crm_private.active_manager(w.from_employee)
     WHERE w.to_employee IS NULL AND w.reason = 'sla';

    -- The project's triage: its triage queue, else its admins (crm.routing_settings),
    -- the least loaded first, one customer at a time (each pick counts in the next one's
    -- load). It takes unmatched and overflowing new customers, and offboarding and SLA
    -- escalations that found no active manager.
    FOR v_work IN SELECT w.event_id, w.project_id, w.from_employee FROM pg_temp.routing_work AS w
                   WHERE w.to_employee IS NULL
                     AND w.reason IN ('unmatched', 'overflow', 'offboarding', 'escalation', 'sla_no_eligible')
                   ORDER BY w.event_id LOOP
        UPDATE pg_temp.routing_work AS w
           SET to_employee = f.employee_id, strategy = f.strategy,
               rule_id = CASE WHEN w.reason IN ('overflow', 'sla_no_eligible') THEN w.rule_id END
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
    -- An SLA escalation that finds nobody at all (no active manager, an empty triage)
    -- ends the chain with the owner, who is active: on record (strategy kept) and told,
    -- with no clock to fire again. Whatever else finds nobody waits and retries.
    UPDATE pg_temp.routing_work AS w
       SET to_employee = w.from_employee, strategy = 'kept', rule_id = NULL
     WHERE w.to_employee IS NULL AND w.reason IN ('escalation', 'sla_no_eligible');
    WITH stuck AS (
        DELETE FROM pg_temp.routing_work AS w WHERE w.to_employee IS NULL
        RETURNING w.event_id, w.project_id
    )
    UPDATE crm_private.routing_events AS e
       SET due_at = v_now + pg_catalog.make_interval(
               mins => (crm_private.routing_settings_of(stuck.project_id)).retry_minutes),
           attempts = e.attempts + 1
      FROM stuck
     WHERE e.id = stuck.event_id;

    -- 9. Write: owner, history, open work of a departed owner, SLA clock, notifications.
    UPDATE crm.customers AS c
       SET owner_id = w.to_employee, org_unit_id = e.org_unit_id, assigned_at = v_now
      FROM pg_temp.routing_work AS w
      JOIN crm.employees AS e ON e.id = w.to_employee
     WHERE c.id = w.customer_id AND w.strategy <> 'kept';
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
     WHERE r.sla_minutes IS NOT NULL AND w.reason NOT IN ('overflow', 'sla_no_eligible');

    INSERT INTO crm.notifications (employee_id, kind, customer_id, subject, details)
    SELECT w.to_employee,
           CASE WHEN w.strategy = 'kept' THEN 'sla_missed'
                WHEN w.reason IN ('escalation', 'overflow', 'sla_no_eligible') OR w.strategy = 'project_admin'
                THEN 'escalated' ELSE 'assigned' END,
           w.customer_id,
           CASE
               WHEN w.strategy = 'kept' THEN pg_catalog.format('Customer #%s: no activity logged within the SLA, and nobody could take it over (no one else eligible, no active manager, an empty triage): it stays with you', w.customer_id)
               WHEN w.reason = 'sla_no_eligible' AND w.strategy <> 'manager' THEN pg_catalog.format('Customer #%s escalated to you: no response within the SLA, nobody else eligible under rule %s, and no active manager', w.customer_id, r.name)
               WHEN w.reason = 'sla_no_eligible' THEN pg_catalog.format('Customer #%s escalated to you: no response within the SLA, and nobody else eligible under rule %s', w.customer_id, r.name)
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
     WHERE w.reason IN ('sla', 'escalation', 'sla_no_eligible') AND w.strategy <> 'kept';

    -- 10. Done: applied events go; deferred ones stay, due later.
    DELETE FROM crm_private.routing_events AS e WHERE e.id = ANY (v_ids) AND e.due_at <= v_now;
    SELECT count(*) INTO v_deferred FROM crm_private.routing_events AS e
     WHERE e.id = ANY (v_ids) AND e.due_at > v_now;
    DELETE FROM pg_temp.routing_work;
    RETURN QUERY SELECT cardinality(v_ids), v_assigned, v_deferred;
END
$$;
COMMENT ON FUNCTION crm_private.route_events(integer, timestamptz) IS 'The routing worker''s batch: claims up to p_limit due events (SKIP LOCKED), applies the rules (what they cannot place goes to the project''s triage; an SLA hop with nobody eligible escalates at once), writes owners, history, SLA clocks and notifications; p_now pins the clock (tests). Callable by crmdb_owner members that are not employees';

-- 3. A routed customer's org unit is the routing engine's ---------------------------

CREATE FUNCTION crm_private.customers_routed_unit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role name := crm_private.acting_role();
    v_unit bigint;
BEGIN
    -- The engine and DBAs (not employees) place customers as they must.
    IF NOT EXISTS (SELECT FROM crm.employees AS e WHERE e.role_name = v_role) THEN
        RETURN NEW;
    END IF;
    IF OLD.owner_id IS NULL AND NEW.owner_id IS NULL THEN
        RAISE EXCEPTION 'crmdb: customer #% waits for the routing engine, which sets its owner and org unit: % may not change its org_unit_id', NEW.id, v_role
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Leave org_unit_id as it is; the routing rules (crmdb rules) decide where new customers go.';
    END IF;
    -- Placed by the engine: its org unit follows its owner, whoever changes the owner.
    IF EXISTS (SELECT FROM crm.assignment_history AS h WHERE h.customer_id = NEW.id) THEN
        SELECT e.org_unit_id INTO v_unit FROM crm.employees AS e WHERE e.id = NEW.owner_id;
        IF NEW.org_unit_id IS DISTINCT FROM v_unit THEN
            RAISE EXCEPTION 'crmdb: customer #% was placed by the routing engine: its org unit is its owner''s (org unit #%), so % may not set org_unit_id to %', NEW.id, v_unit, v_role, NEW.org_unit_id
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Change the owner (where your role may) and set org_unit_id to the new owner''s unit, or leave it as it is.';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.customers_routed_unit() IS 'BEFORE UPDATE OF org_unit_id trigger on crm.customers: an employee may not change the org unit of a customer waiting for the routing engine, nor set a routed customer''s to another than its owner''s';
REVOKE EXECUTE ON FUNCTION crm_private.customers_routed_unit(), crm_private.routing_settings_of(bigint) FROM PUBLIC;
CREATE TRIGGER _060_routed_unit BEFORE UPDATE OF org_unit_id ON crm.customers
    FOR EACH ROW WHEN (OLD.org_unit_id IS DISTINCT FROM NEW.org_unit_id)
    EXECUTE FUNCTION crm_private.customers_routed_unit();
COMMENT ON TRIGGER _060_routed_unit ON crm.customers IS 'The routing engine owns routed customers'' org units: employees'' updates may not move them elsewhere';

-- Row-level security: the owner's; employees' policies come from the role templates.

ALTER TABLE crm.routing_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.routing_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.routing_settings TO crmdb_owner USING (true) WITH CHECK (true);

RESET ROLE;
