"""crm.routing_settings: a project's triage queue and templates, the tries before a new
customer overflows to the triage and the minutes between tries. A project without a
row has the defaults (queue triage, templates admin and super_admin, 12 tries, 5
minutes). Times are pinned."""

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from routing_org import MONDAY, RoutingOrg, at, routing_org

from crmdb import admin

SETTINGS = (
    "INSERT INTO crm.routing_settings (project_id, {columns})"
    " VALUES ((SELECT id FROM crm.projects WHERE code = %s), {values})"
)


@pytest.fixture
def org(db) -> Iterator[RoutingOrg]:
    with routing_org(db) as routing:
        yield routing


def settings(org: RoutingOrg, project: str = "p1", **values: object) -> None:
    org.conn.execute(
        SETTINGS.format(columns=", ".join(values), values=", ".join(["%s"] * len(values))),
        [project, *values.values()],
    )


def test_a_project_without_a_row_has_the_column_defaults(org):
    org.conn.execute(
        "INSERT INTO crm.routing_settings (project_id)"
        " SELECT id FROM crm.projects WHERE code = 'p2'"
    )
    rows = org.conn.execute(
        "SELECT p.code, s.triage_queue, s.triage_templates, s.overflow_tries, s.retry_minutes"
        " FROM crm.projects AS p, crm_private.routing_settings_of(p.id) AS s ORDER BY p.code"
    ).fetchall()
    # Expect p1 (no row) to read exactly as p2's row of DEFAULTs
    assert rows == [
        ("p1", "triage", ["admin", "super_admin"], 12, 5),
        ("p2", "triage", ["admin", "super_admin"], 12, 5),
    ]


def test_overflow_tries_and_retry_minutes_come_from_the_settings(org):
    org.rule("care", target_org_unit="care")
    org.queue("triage", {"lead": 1})
    org.set_status("c1", "on_leave")
    org.set_status("c2", "on_leave")
    settings(org, overflow_tries=3, retry_minutes=2)
    (new,) = org.customers(1)
    org.route(MONDAY)
    due = org.conn.execute("SELECT due_at, attempts FROM crm_private.routing_events").fetchone()
    # Expect the next try 2 minutes later, not 5
    assert due == (MONDAY + timedelta(minutes=2), 1)
    org.route(at(MONDAY, 2 / 60))
    assert org.owners([new]) == [None]
    org.route(at(MONDAY, 4 / 60))
    # Expect the 3rd try to overflow to the triage, not the 12th
    assert org.owners([new]) == ["lead"]
    assert org.history(new)[0][1:5] == ("lead", "care", "triage", "overflow")


def test_the_triage_queue_is_the_one_the_settings_name(org):
    org.queue("triage", {"c1": 1})
    org.queue("front-desk", {"c2": 1})
    settings(org, triage_queue="front-desk")
    (new,) = org.customers(1)
    org.route()
    # Expect front-desk's c2: the queue named triage is an ordinary queue now
    assert org.owners([new]) == ["c2"]
    assert org.history(new)[0][3:5] == ("triage", "unmatched")


def test_the_triage_templates_are_the_ones_the_settings_name(org):
    admin.add_project_member(org.conn, "p1", org.role("boss"), "management", "super_admin")
    org.make_admin("c1")
    (first,) = org.customers(1)
    org.route()
    # Expect by default both tiers of admins: boss and c1 equally loaded, boss by id
    assert org.owners([first]) == ["boss"]
    settings(org, triage_templates=["admin"])
    new = org.customers(2)
    org.route()
    # Expect only holders of admin now: c1 takes both, though boss is less loaded
    assert org.owners(new) == ["c1", "c1"]
    assert org.history(new[0])[0][3:5] == ("project_admin", "unmatched")
    org.conn.execute("UPDATE crm.routing_settings SET triage_templates = '{}'")
    (other,) = org.customers(1)
    org.route()
    # Expect no templates: nobody takes it, it waits and retries
    assert org.owners([other]) == [None] and org.pending_events() == 1


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("overflow_tries", 0, "routing_settings_overflow_tries_range"),
        ("retry_minutes", 0, "routing_settings_retry_minutes_range"),
        ("triage_queue", "Bad Name", "routing_settings_triage_queue_name"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(org, column, value, constraint):
    # Expect the check's name to say which setting is wrong
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        settings(org, **{column: value})
