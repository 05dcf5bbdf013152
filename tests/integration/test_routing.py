"""The routing engine: rules, strategies, eligibility, business hours, hand-offs.

Each test builds the small routing org (routing_org.py) in its own database, adds
rules, inserts customers (the trigger records the events) and runs the worker's batch
with a pinned clock.
"""

from collections.abc import Iterator

import psycopg
import pytest
from routing_org import MONDAY, SATURDAY, RoutingOrg, at, routing_org

from crmdb.worker.batch import run_batch


@pytest.fixture
def org(db) -> Iterator[RoutingOrg]:
    with routing_org(db) as routing:
        yield routing


def spread(counts: dict[str | None, int]) -> int:
    return max(counts.values()) - min(counts.values())


# Events ----------------------------------------------------------------------------


def test_new_unowned_customers_record_one_event_each_and_owned_ones_none(org):
    org.customers(3)
    org.customers(2, owner_id=org.ids["s1"])
    # Expect an event per unowned customer, none for the two a rep created as owner
    assert org.pending_events() == 3


def notifications_of(db, work) -> list[str]:
    """The routing wake-ups a listener receives while `work` commits."""
    with db.connect() as listener:
        listener.execute("LISTEN crmdb_routing")
        work()
        return [n.channel for n in listener.notifies(timeout=1, stop_after=5)]


def test_one_wake_up_per_transaction_whatever_records_events(org, db):
    org.rule("rr", target_org_unit="sales")
    (owned,) = org.customers(1, owner_id=org.ids["s1"])

    def many() -> None:
        with org.conn.transaction():
            org.customers(2)
            org.conn.execute("UPDATE crm.customers SET stage = 'qualified' WHERE id = %s", [owned])
            org.set_status("c1", "on_leave")

    def none() -> None:
        org.customers(2, owner_id=org.ids["s1"])

    # Expect one wake-up for three statements recording events of three kinds
    assert notifications_of(db, many) == ["crmdb_routing"]
    # Expect none for a statement that records nothing (owned customers)
    assert notifications_of(db, none) == []
    # Expect the engine's own events (a departure's customers) to wake workers too
    org.route()
    org.set_status("s1", "departed")
    assert notifications_of(db, org.route) == ["crmdb_routing"]


def test_events_wake_listeners_once_per_transaction(org, db):
    with db.connect() as listener:
        listener.execute("LISTEN crmdb_routing")
        with org.conn.transaction():
            org.customers(2)
            org.customers(3)
        notes = list(listener.notifies(timeout=2, stop_after=5))
    # Expect one wake-up for the transaction's two statements and five events
    assert [n.channel for n in notes] == ["crmdb_routing"]


# Strategies ------------------------------------------------------------------------


def test_round_robin_takes_turns_within_one(org):
    org.rule("rr", target_org_unit="sales", strategy="round_robin")
    first = org.customers(10)
    org.route()
    second = org.customers(11)
    for _ in range(11):  # one by one: each batch continues the turn
        org.route(limit=1)
    counts = org.counts(first + second)
    # Expect only the sales team, lead included, and counts within 1 of each other
    assert set(counts) == {"lead", "s1", "s2", "s3"}
    assert spread(counts) <= 1
    # Expect the history to say which rule and strategy
    assert org.history(first[0])[0][2:] == ("rr", "round_robin", "new", 0)


def test_least_loaded_fills_up_the_least_busy(org):
    org.rule("ll", target_org_unit="sales", strategy="least_loaded")
    org.customers(5, owner_id=org.ids["s1"])
    org.customers(5, owner_id=org.ids["lead"])
    org.customers(2, owner_id=org.ids["s3"])
    new = org.customers(6)
    org.route()
    # Expect s2 (0 open) and s3 (2) to get everything: loads end 5 5 4 4
    assert org.counts(new) == {"s2": 4, "s3": 2}


def test_least_loaded_by_open_tasks(org):
    org.rule("tasks", target_org_unit="care", strategy="least_loaded", load_measure="tasks")
    (owned,) = org.customers(1, owner_id=org.ids["c1"])
    org.conn.execute(
        "INSERT INTO crm.activities (customer_id, employee_id, kind, subject, due_at)"
        " SELECT %s, %s, 'task', 'call back', now() FROM generate_series(1, 3)",
        [owned, org.ids["c1"]],
    )
    new = org.customers(2)
    org.route()
    # Expect c2 (no open tasks) to get both, though c1 has only one customer
    assert org.counts(new) == {"c2": 2}


def test_weighted_follows_queue_weights(org):
    org.queue("hot", {"s1": 1, "s2": 3})
    org.rule("w", target_queue="hot", strategy="weighted")
    new = org.customers(40)
    org.route(limit=7)
    # Expect a 1:3 split
    assert org.counts(new) == {"s1": 10, "s2": 30}


def test_keep_with_team_keeps_the_owner_or_their_team(org):
    org.rule(
        "keep",
        kind="handoff",
        on_stage="qualified",
        target_org_unit="care",
        strategy="keep_with_team",
    )
    kept, moved = org.customers(2, owner_id=org.ids["s1"])
    org.conn.execute("UPDATE crm.customers SET owner_id = %s WHERE id = %s", [org.ids["c1"], moved])
    org.set_status("c1", "on_leave")
    org.conn.execute(
        "UPDATE crm.customers SET stage = 'qualified' WHERE id = ANY (%s)", [[kept, moved]]
    )
    org.route()
    # Expect s1 to keep theirs (active); c1's to go to c1's team mate, not to c1 on leave
    assert org.owners([kept, moved]) == ["s1", "c2"]
    assert org.history(kept)[0][:5] == ("s1", "s1", "keep", "keep_with_team", "handoff")


def test_keep_with_team_respects_capacity(org):
    org.rule("keep", target_org_unit="sales", strategy="keep_with_team", max_open=2)
    org.customers(2, owner_id=org.ids["lead"])
    org.customers(2, owner_id=org.ids["s2"])
    mine = org.customers(3, owner_id=org.ids["s1"])
    org.set_status("s1", "departed")
    org.route()
    # Expect s3 (the only team mate with room) to take 2, up to max_open; the third goes
    # to s1's nearest active manager (lead), not over s3's capacity
    assert org.owners(mine) == ["s3", "s3", "lead"]
    assert [org.history(c)[0][3] for c in mine] == ["keep_with_team"] * 2 + ["manager"]


def test_keep_with_team_keeps_a_hand_off_with_an_owner_at_capacity(org):
    org.rule(
        "keep", kind="handoff", on_stage="qualified", target_org_unit="sales",
        strategy="keep_with_team", max_open=2,
    )  # fmt: skip
    first, _ = org.customers(2, owner_id=org.ids["s1"])
    org.conn.execute("UPDATE crm.customers SET stage = 'qualified' WHERE id = %s", [first])
    org.route()
    # Expect s1 to keep it: it is already one of s1's two open customers
    assert org.owners([first]) == ["s1"]


# Nothing unowned is dropped ----------------------------------------------------------


def test_an_unmatched_customer_goes_to_the_triage_queue(org):
    org.rule("web", target_org_unit="sales", sources=["web_form"])
    org.queue("triage", {"c1": 1, "c2": 1})
    new = org.customers(4, source="chat")
    org.route()
    # Expect the triage queue, least loaded first: two each, with the reason on record
    assert org.counts(new) == {"c1": 2, "c2": 2}
    assert org.history(new[0])[0][1:] == ("c1", None, "triage", "unmatched", 0)
    owner, kind, subject = org.notifications(new[0])[0]
    assert (owner, kind) == ("c1", "assigned") and "no routing rule" in subject
    assert org.pending_events() == 0


def test_without_a_triage_queue_the_project_admins_take_it(org):
    org.make_admin("boss")
    org.make_admin("o1", project="p2", solution="sales")  # another project's admin: never
    (new,) = org.customers(1)
    org.route()
    # Expect boss (p1's admin), told it was escalated
    assert org.owners([new]) == ["boss"]
    assert org.history(new)[0][3:5] == ("project_admin", "unmatched")
    assert org.notifications(new)[0][:2] == ("boss", "escalated")


def test_triage_skips_on_leave_and_non_members(org):
    org.queue("triage", {"c1": 1, "o1": 1})  # o1 is not in p1
    org.set_status("c1", "on_leave")
    org.make_admin("c2")
    (new,) = org.customers(1)
    org.route()
    # Expect neither c1 (on leave) nor o1 (not a member): p1's admin c2
    assert org.owners([new]) == ["c2"]


def test_nobody_eligible_waits_then_overflows_to_triage_after_an_hour(org):
    org.rule("care", target_org_unit="care")
    org.queue("triage", {"lead": 1})
    org.set_status("c1", "on_leave")
    org.set_status("c2", "on_leave")
    (new,) = org.customers(1)
    for attempt in range(11):  # every 5 minutes for 55 minutes: it waits
        org.route(at(MONDAY, attempt * 5 / 60))
        assert org.owners([new]) == [None]
    assert org.unowned()[new][1:] == ("none", "customer_created", 11)
    org.route(at(MONDAY, 55 / 60))
    # Expect the 12th try (an hour) to hand it to triage, naming the rule that found nobody
    assert org.owners([new]) == ["lead"]
    assert org.history(new)[0][1:5] == ("lead", "care", "triage", "overflow")
    assert org.notifications(new)[0][:2] == ("lead", "escalated")
    assert org.unowned() == {}


def test_a_stage_without_a_hand_off_rule_moves_nothing(org):
    org.make_admin("boss")
    (customer,) = org.customers(1, owner_id=org.ids["s1"])
    org.conn.execute("UPDATE crm.customers SET stage = 'customer' WHERE id = %s", [customer])
    org.route()
    # Expect s1 to keep the customer: it has an active owner, nothing to hand off
    assert org.owners([customer]) == ["s1"] and org.pending_events() == 0


# Eligibility ------------------------------------------------------------------------


def test_on_leave_departed_and_outside_the_project_are_skipped(org):
    org.rule("all", target_org_unit="co", include_sub_units=True)
    org.set_status("s2", "on_leave")
    org.set_status("s3", "departed")
    new = org.customers(12)
    org.route()
    counts = org.counts(new)
    # Expect neither s2 (on leave), s3 (departed) nor o1 (not in p1) to get any
    assert set(counts) == {"boss", "lead", "s1", "c1", "c2"}
    assert spread(counts) <= 1


def test_capacity_defers_what_nobody_may_take(org):
    org.rule("cap", target_org_unit="care", max_open=2)
    org.customers(1, owner_id=org.ids["c1"])
    new = org.customers(4)
    result = org.route()
    # Expect c1 to get 1 (up to 2 open), c2 2, and one customer to wait for room
    assert org.counts(new) == {"c1": 1, "c2": 2, None: 1}
    assert (result.assigned, result.deferred) == (3, 1)
    retry = org.conn.execute(
        "SELECT attempts, due_at > %s FROM crm_private.routing_events", [MONDAY]
    ).fetchall()
    assert retry == [(1, True)]


def test_rules_apply_by_priority_and_condition(org):
    org.rule("web", priority=10, target_org_unit="care", sources=["web_form"], min_score=50)
    org.rule("hanoi", priority=20, target_org_unit="sales", provinces=["Hà Nội"])
    org.rule("rest", priority=30, target_org_unit="other")
    (web,) = org.customers(1, source="web_form", score=70, province="Hà Nội")
    (cold,) = org.customers(1, source="web_form", score=10, province="Hà Nội")
    (elsewhere,) = org.customers(1, source="chat", province="Huế")
    org.route()
    # Expect the first matching rule by priority; "rest" targets a team with nobody in p1
    assert [org.history(c)[0][2] for c in (web, cold)] == ["web", "hanoi"]
    assert org.owners([elsewhere]) == [None]


def test_disabled_and_other_projects_rules_do_not_apply(org):
    org.rule("off", target_org_unit="sales", enabled=False)
    org.rule("p2", project="p2", target_org_unit="other")
    new = org.customers(2)
    org.route()
    # Expect nothing routed: the only p1 rule is disabled, and p1 has no triage queue
    # or admin to fall back on; the events are not dropped: they wait and retry
    assert org.owners(new) == [None, None]
    assert org.pending_events() == 2
    assert {c: row[1:] for c, row in org.unowned().items()} == {
        c: ("none", "customer_created", 1) for c in new
    }


# Business hours ----------------------------------------------------------------------


def test_outside_business_hours_customers_wait_for_the_opening(org):
    for weekday in range(1, 6):
        org.conn.execute(
            "INSERT INTO crm.business_hours VALUES"
            " ((SELECT id FROM crm.org_units WHERE code = 'sales'), %s, '08:00', '17:00')",
            [weekday],
        )
    org.rule("office", target_org_unit="sales", hours_org_unit="sales")
    new = org.customers(2)
    result = org.route(now=SATURDAY)
    # Expect nothing moved on Saturday; the events wait for Monday 08:00 local time
    assert (result.assigned, result.deferred) == (0, 2)
    due = org.conn.execute("SELECT DISTINCT due_at FROM crm_private.routing_events").fetchall()
    assert due == [(at(MONDAY, -1),)]
    assert org.route(now=at(MONDAY, -1.01)).claimed == 0
    # Expect them assigned once the team opens
    assert org.route(now=at(MONDAY, -1)).assigned == 2
    assert None not in org.owners(new)


def test_the_next_due_time_ignores_events_waiting_behind_a_deferred_one(org):
    org.conn.execute(
        "INSERT INTO crm.business_hours SELECT (SELECT id FROM crm.org_units WHERE code = 'sales'),"
        " d, '08:00', '17:00' FROM generate_series(1, 5) AS d"
    )
    org.rule("office", target_org_unit="sales", hours_org_unit="sales")
    (customer,) = org.customers(1)
    org.route(now=SATURDAY)
    org.conn.execute("UPDATE crm.customers SET stage = 'qualified' WHERE id = %s", [customer])
    # Expect the worker told to sleep until Monday 08:00: the stage change is due now but
    # waits behind the deferred creation, so it must not keep the worker spinning
    assert org.conn.execute("SELECT crm_private.next_routing_due()").fetchone() == (at(MONDAY, -1),)
    assert org.route(now=SATURDAY).claimed == 0


def test_business_minutes_skip_the_night_and_the_weekend(org):
    org.conn.execute(
        "INSERT INTO crm.business_hours SELECT (SELECT id FROM crm.org_units WHERE code = 'sales'),"
        " d, '08:00', '17:00' FROM generate_series(1, 5) AS d"
    )
    friday_4pm = at(MONDAY, -65)
    row = org.conn.execute(
        "SELECT crm_private.add_business_minutes((SELECT id FROM crm.org_units"
        " WHERE code = 'sales'), %s, 90)",
        [friday_4pm],
    ).fetchone()
    # Expect 60 minutes on Friday, 30 on Monday morning
    assert row == (at(MONDAY, -0.5),)


# Hand-offs ----------------------------------------------------------------------------


def test_a_won_customer_is_handed_to_after_sales(org):
    org.queue("care", {"c1": 1, "c2": 1})
    org.rule("new", target_org_unit="sales")
    org.rule(
        "won", kind="handoff", on_stage="customer", target_queue="care", strategy="least_loaded"
    )
    (customer,) = org.customers(1)
    org.route()
    seller = org.owners([customer])[0]
    org.conn.execute("UPDATE crm.customers SET stage = 'opportunity' WHERE id = %s", [customer])
    org.conn.execute("UPDATE crm.customers SET stage = 'customer' WHERE id = %s", [customer])
    org.route()
    # Expect the sale to sales, then the hand-off (not the opportunity stage) to care
    assert [h[2:5] for h in org.history(customer)] == [
        ("new", "round_robin", "new"),
        ("won", "least_loaded", "handoff"),
    ]
    assert org.history(customer)[1][0] == seller
    assert org.owners([customer])[0] in ("c1", "c2")


def test_events_of_one_customer_apply_in_order(org):
    org.rule("new", target_org_unit="sales")
    org.rule("won", kind="handoff", on_stage="customer", target_org_unit="care")
    (customer,) = org.customers(1)
    org.conn.execute("UPDATE crm.customers SET stage = 'customer' WHERE id = %s", [customer])
    # A batch of one must take the creation first, not the later hand-off
    first = org.route(limit=1)
    assert first.claimed >= 1
    # Expect sales first, then care: the hand-off is not overtaken by the creation
    assert [h[4] for h in org.history(customer)] == ["new", "handoff"]
    assert org.owners([customer])[0] in ("c1", "c2")


# Exactly once -------------------------------------------------------------------------


def test_each_event_is_applied_once(org):
    org.rule("rr", target_org_unit="sales")
    new = org.customers(30)
    org.route(limit=8)
    again = org.route()
    # Expect one history row per customer, no event left, nothing done on a second run
    rows = org.conn.execute(
        "SELECT count(*), count(DISTINCT customer_id) FROM crm.assignment_history"
    ).fetchone()
    assert rows == (30, 30)
    assert org.pending_events() == 0 and again.claimed == 0
    assert sum(org.counts(new).values()) == 30
    total = org.conn.execute("SELECT sum(assigned) FROM crm_private.routing_counters").fetchone()
    assert total == (30,)


def test_notifications_go_to_the_new_owner(org):
    org.rule("rr", target_org_unit="care")
    (customer,) = org.customers(1)
    org.route()
    owner = org.ids[org.owners([customer])[0]]
    rows = org.conn.execute(
        "SELECT employee_id, kind, customer_id, details ->> 'rule' FROM crm.notifications"
    ).fetchall()
    assert rows == [(owner, "assigned", customer, "rr")]


def test_the_assignment_is_audited_as_the_worker(org):
    org.rule("rr", target_org_unit="care")
    (customer,) = org.customers(1)
    org.route()
    row = org.conn.execute(
        "SELECT actor_role = session_user, actor_employee_id, changed_fields"
        " FROM crm.change_log WHERE table_name = 'customers' AND record_id = %s"
        " AND action = 'UPDATE'",
        [customer],
    ).fetchone()
    # Expect the change log to name the worker's login, no employee, and the owner fields
    assert row is not None and row[0] and row[1] is None
    assert {"owner_id", "org_unit_id", "assigned_at"} <= set(row[2])


# Who may run the engine ----------------------------------------------------------------


def test_employees_cannot_run_the_engine(org):
    org.rule("rr", target_org_unit="sales")
    org.customers(1)
    # Expect no EXECUTE for an employee: the function is not theirs to call
    with (
        org.db.connect_as(org.role("s1")) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        run_batch(conn, 10)
    assert org.pending_events() == 1


def test_the_engine_refuses_an_employee_even_with_execute(org):
    org.conn.execute(
        "GRANT EXECUTE ON FUNCTION crm_private.route_events(integer, timestamptz) TO crmdb_employee"
    )
    # Expect the caller check to refuse an employee role, whatever the grants say
    with (
        org.db.connect_as(org.role("s1")) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not run the routing"),
    ):
        run_batch(conn, 10)
