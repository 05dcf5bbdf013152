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
