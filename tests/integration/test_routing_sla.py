"""SLA rules: no activity by the owner in time moves the customer on, tells both, and
after the allowed hops escalates to the owner's manager. The clock is pinned."""

from collections.abc import Iterator

import pytest
from routing_org import MONDAY, RoutingOrg, at, routing_org


@pytest.fixture
def org(db) -> Iterator[RoutingOrg]:
    with routing_org(db) as routing:
        routing.rule(
            "sla", target_org_unit="sales", strategy="round_robin", sla_minutes=30, sla_max_hops=1
        )
        yield routing


def notes(org: RoutingOrg, customer: int) -> list[tuple[str | None, str]]:
    rows = org.conn.execute(
        "SELECT employee_id, kind FROM crm.notifications WHERE customer_id = %s ORDER BY id",
        [customer],
    ).fetchall()
    return [(org.key(e), k) for e, k in rows]


def test_no_response_hops_then_escalates_to_the_manager(org):
    (customer,) = org.customers(1)
    org.route(now=MONDAY)
    first = org.owners([customer])[0]
    # Expect nothing before the 30 minutes are up
    assert org.route(now=at(MONDAY, 0.49)).assigned == 0
    org.route(now=at(MONDAY, 0.51))
    second = org.owners([customer])[0]
    # Expect the next eligible employee, not the first again, as hop 1 of the SLA
    assert second not in (first, None)
    assert org.history(customer)[1] == (first, second, "sla", "round_robin", "sla", 1)
    # Expect both told: the new owner, and the one it was taken from
    assert notes(org, customer)[1:] == [(second, "assigned"), (first, "reassigned_away")]

    org.route(now=at(MONDAY, 1.1))
    # Expect, after max_hops (1), the second owner's manager: lead (or boss, for lead)
    manager = "boss" if second == "lead" else "lead"
    assert org.owners([customer]) == [manager]
    assert org.history(customer)[2] == (second, manager, None, "manager", "escalation", 1)
    assert notes(org, customer)[3:] == [(manager, "escalated"), (second, "reassigned_away")]
    # Expect the escalation to end the chain: no clock runs any more
    assert org.route(now=at(MONDAY, 5)).claimed == 0


def test_an_activity_by_the_owner_stops_the_clock(org):
    (customer,) = org.customers(1)
    org.route(now=MONDAY)
    owner = org.ids[org.owners([customer])[0]]
    org.conn.execute(
        "INSERT INTO crm.activities (customer_id, employee_id, kind, subject, occurred_at,"
        " created_at) VALUES (%s, %s, 'call', 'first call', %s, %s)",
        [customer, owner, at(MONDAY, 0.2), at(MONDAY, 0.2)],
    )
    # Expect the response recorded as an event, and the clock gone once it is applied
    kinds = org.conn.execute("SELECT kind::text FROM crm_private.routing_events").fetchall()
    assert kinds == [("owner_responded",)]
    org.route(now=at(MONDAY, 0.3))
    assert org.conn.execute("SELECT count(*) FROM crm_private.sla_timers").fetchone() == (0,)
    org.route(now=at(MONDAY, 2))
    assert [h[4] for h in org.history(customer)] == ["new"]


def test_an_activity_by_someone_else_does_not_count(org):
    (customer,) = org.customers(1)
    org.route(now=MONDAY)
    owner = org.owners([customer])[0]
    other = "s1" if owner != "s1" else "s2"
    org.conn.execute(
        "INSERT INTO crm.activities (customer_id, employee_id, kind, subject, created_at)"
        " VALUES (%s, %s, 'note', 'not the owner', %s)",
        [customer, org.ids[other], at(MONDAY, 0.1)],
    )
    org.route(now=at(MONDAY, 0.6))
    # Expect the customer moved on: only the owner's own activity stops the clock
    assert [h[4] for h in org.history(customer)] == ["new", "sla"]


def test_sla_in_business_hours_waits_over_the_night(org):
    org.conn.execute(
        "INSERT INTO crm.business_hours SELECT (SELECT id FROM crm.org_units WHERE code = 'care'),"
        " d, '08:00', '17:00' FROM generate_series(1, 5) AS d"
    )
    org.rule(
        "night",
        priority=1,
        target_org_unit="care",
        hours_org_unit="care",
        sla_minutes=60,
        sla_business_hours=True,
    )
    (customer,) = org.customers(1)
    late = at(MONDAY, 7.5)  # 16:30: half an hour before closing
    org.route(now=late)
    due = org.conn.execute("SELECT due_at FROM crm_private.sla_timers").fetchone()
    # Expect the clock to stop at 17:00 and run on from 08:00 Tuesday: due 08:30
    assert due == (at(MONDAY, 23.5),)
    assert org.route(now=at(MONDAY, 23.4)).assigned == 0
    assert org.route(now=at(MONDAY, 23.5)).assigned == 1
    assert [h[4] for h in org.history(customer)] == ["new", "sla"]


def test_keep_with_team_hops_to_a_team_mate_not_back_to_the_owner(org):
    org.rule(
        "team-sla",
        priority=1,
        target_org_unit="care",
        strategy="keep_with_team",
        sla_minutes=30,
        sla_max_hops=1,
    )
    (customer,) = org.customers(1)
    org.route(now=MONDAY)
    first = org.owners([customer])[0]
    org.route(now=at(MONDAY, 0.6))
    # Expect the hop to stay in the unresponsive owner's team, never back to them
    assert first in ("c1", "c2")
    assert org.owners([customer]) == [{"c1": "c2", "c2": "c1"}[first]]
    assert org.history(customer)[1][3:5] == ("keep_with_team", "sla")


# Nobody else eligible: escalate at once, never wait with the slow owner ----------------


def pending_sla(org: RoutingOrg) -> tuple[int, int]:
    """(SLA clocks running, routing events waiting)."""
    row = org.conn.execute(
        "SELECT (SELECT count(*) FROM crm_private.sla_timers),"
        " (SELECT count(*) FROM crm_private.routing_events)"
    ).fetchone()
    assert row is not None
    return (int(row[0]), int(row[1]))


def test_a_hop_with_nobody_eligible_escalates_to_the_manager_at_once(org):
    org.rule("care-sla", priority=1, target_org_unit="care", sla_minutes=30, sla_max_hops=3)
    (customer,) = org.customers(1)
    org.route(now=MONDAY)
    first = org.owners([customer])[0]
    other = {"c1": "c2", "c2": "c1"}[first]
    org.set_status(other, "on_leave")
    # The hop is due: the only other care member is on leave, 2 of 3 hops are left
    result = org.route(now=at(MONDAY, 0.6))
    # Expect no waiting: boss (c1's and c2's manager) has it now, with the reason and
    # the rule that found nobody on record, at the same hop count
    assert result.deferred == 0 and org.owners([customer]) == ["boss"]
    assert org.history(customer)[1] == (first, "boss", "care-sla", "manager", "sla_no_eligible", 0)
    # Expect both told: boss that it was escalated and why, the slow owner that it went
    (to_boss, away) = org.notifications(customer)[1:]
    assert to_boss[:2] == ("boss", "escalated") and "nobody else eligible" in to_boss[2]
    assert "care-sla" in to_boss[2]
    assert away[:2] == (first, "reassigned_away")
    # Expect the chain to end: no clock, no event, nothing more even hours later
    assert pending_sla(org) == (0, 0)
    assert org.route(now=at(MONDAY, 5)).claimed == 0
    assert org.owners([customer]) == ["boss"]


def test_the_owners_org_unit_follows_an_escalation(org):
    org.rule("care-sla", priority=1, target_org_unit="care", sla_minutes=30, sla_max_hops=3)
    (customer,) = org.customers(1)
    org.route(now=MONDAY)
    org.set_status({"c1": "c2", "c2": "c1"}[org.owners([customer])[0]], "on_leave")
    org.route(now=at(MONDAY, 0.6))
    unit = org.conn.execute(
        "SELECT u.code FROM crm.customers AS c JOIN crm.org_units AS u ON u.id = c.org_unit_id"
        " WHERE c.id = %s",
        [customer],
    ).fetchone()
    # Expect the customer in boss's unit (co), not left in care
    assert unit == ("co",)


def test_with_nobody_eligible_and_no_manager_the_triage_takes_it(org):
    org.rule("care-sla", priority=1, target_org_unit="care", sla_minutes=30, sla_max_hops=3)
    org.queue("triage", {"s3": 1})
    org.set_status("boss", "on_leave")  # c1 and c2 report to boss: no active manager
    (customer,) = org.customers(1)
    org.route(now=MONDAY)
    first = org.owners([customer])[0]
    org.set_status({"c1": "c2", "c2": "c1"}[first], "on_leave")
    org.route(now=at(MONDAY, 0.6))
    # Expect the project's triage queue, with the reason on record, and both told
    assert org.owners([customer]) == ["s3"]
    assert org.history(customer)[1] == (first, "s3", "care-sla", "triage", "sla_no_eligible", 0)
    kinds = [n[:2] for n in org.notifications(customer)[1:]]
    assert kinds == [("s3", "escalated"), (first, "reassigned_away")]
    assert pending_sla(org) == (0, 0)


def test_with_nobody_at_all_the_owner_keeps_it_and_the_clock_stops(org):
    org.rule("care-sla", priority=1, target_org_unit="care", sla_minutes=30, sla_max_hops=3)
    org.set_status("boss", "on_leave")  # no manager, no triage queue, no admin in p1
    (customer,) = org.customers(1)
    org.route(now=MONDAY)
    first = org.owners([customer])[0]
    org.set_status({"c1": "c2", "c2": "c1"}[first], "on_leave")
    result = org.route(now=at(MONDAY, 0.6))
    # Expect the owner to keep it (they are active), said so on record and to them, and
    # nothing left to fire: no clock, no event retried every few minutes
    assert (result.assigned, result.deferred) == (0, 0)
    assert org.owners([customer]) == [first]
    assert org.history(customer)[1] == (first, first, None, "kept", "sla_no_eligible", 0)
    owner, kind, subject = org.notifications(customer)[-1]
    assert (owner, kind) == (first, "sla_missed") and "stays with you" in subject
    assert pending_sla(org) == (0, 0)
    for hours in (1, 2, 24):
        assert org.route(now=at(MONDAY, hours)).claimed == 0
    assert len(org.history(customer)) == 2


def test_an_escalation_after_the_last_hop_with_nobody_at_all_ends_too(org):
    org.rule("care-sla", priority=1, target_org_unit="care", sla_minutes=30, sla_max_hops=0)
    org.set_status("boss", "on_leave")
    (customer,) = org.customers(1)
    org.route(now=MONDAY)
    first = org.owners([customer])[0]
    org.route(now=at(MONDAY, 0.6))
    # Expect max_hops 0: straight to the escalation, which finds nobody: kept, ended
    assert org.history(customer)[1] == (first, first, None, "kept", "escalation", 0)
    assert pending_sla(org) == (0, 0)
    assert org.route(now=at(MONDAY, 3)).claimed == 0
