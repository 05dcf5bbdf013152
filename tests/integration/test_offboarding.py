"""Offboarding: a departing employee's open customers, tasks, appointments and open
contracts go on by the rules, or to a named successor; nothing keeps a departed owner."""

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from routing_org import MONDAY, RoutingOrg, at, routing_org

from crmdb import admin
from crmdb.cli import main


@pytest.fixture
def org(db) -> Iterator[RoutingOrg]:
    with routing_org(db) as routing:
        yield routing


def give_work(org: RoutingOrg, owner: str, customers: int) -> list[int]:
    """Customers of `owner`, each with an open task, a done task and a draft contract."""
    ids = org.customers(customers, owner_id=org.ids[owner])
    org.conn.execute(
        "INSERT INTO crm.activities (customer_id, employee_id, kind, subject, due_at, done_at)"
        " SELECT c, %(e)s, k, 'follow up', now(), d"
        " FROM unnest(%(ids)s::bigint[]) AS c,"
        " (VALUES ('task'::crm.activity_kind, NULL::timestamptz), ('appointment', NULL),"
        " ('task', now())) AS v(k, d)",
        {"e": org.ids[owner], "ids": ids},
    )
    org.conn.execute(
        "INSERT INTO crm.contracts (customer_id, project_id, owner_id, title)"
        " SELECT c, (SELECT id FROM crm.projects WHERE code = 'p1'), %s, 'deal'"
        " FROM unnest(%s::bigint[]) AS c",
        [org.ids[owner], ids],
    )
    return ids


def left_with(org: RoutingOrg, key: str) -> dict[str, int]:
    row = org.conn.execute(
        "SELECT (SELECT count(*) FROM crm.customers WHERE owner_id = %(e)s AND stage <> 'lost'),"
        " (SELECT count(*) FROM crm.activities WHERE employee_id = %(e)s AND done_at IS NULL),"
        " (SELECT count(*) FROM crm.contracts WHERE owner_id = %(e)s AND status = 'draft')",
        {"e": org.ids[key]},
    ).fetchone()
    assert row is not None
    return dict(zip(("customers", "open activities", "open contracts"), row, strict=True))


def test_departure_redistributes_by_the_rules(org):
    org.rule("team", target_org_unit="sales", strategy="least_loaded")
    ids = give_work(org, "s1", 6)
    (lost,) = org.customers(1, owner_id=org.ids["s1"], stage="lost")
    admin.offboard_employee(org.conn, org.role("s1"))
    org.route()
    # Expect nothing open left with s1: customers spread by the rule, their work with them
    assert left_with(org, "s1") == {"customers": 0, "open activities": 0, "open contracts": 0}
    assert set(org.owners(ids)) <= {"lead", "s2", "s3"} and len(set(org.owners(ids))) == 3
    assert org.history(ids[0])[0][0] == "s1" and org.history(ids[0])[0][4] == "offboarding"
    # Expect a customer's open tasks and contract to follow it; the done task stays
    row = org.conn.execute(
        "SELECT array_agg(DISTINCT a.employee_id) FILTER (WHERE a.done_at IS NULL),"
        " array_agg(DISTINCT a.employee_id) FILTER (WHERE a.done_at IS NOT NULL),"
        " (SELECT array_agg(owner_id) FROM crm.contracts WHERE customer_id = %s)"
        " FROM crm.activities AS a WHERE a.customer_id = %s",
        [ids[0], ids[0]],
    ).fetchone()
    new_owner = org.ids[org.owners([ids[0]])[0]]
    assert row == ([new_owner], [org.ids["s1"]], [new_owner])
    # Expect the closed (lost) customer left as history
    assert org.owners([lost]) == ["s1"]


def test_departure_to_a_named_successor(org):
    org.rule("team", target_org_unit="sales")
    ids = give_work(org, "s2", 3)
    admin.offboard_employee(org.conn, org.role("s2"), org.role("c2"))
    org.route()
    # Expect everything with the successor, by strategy "successor"
    assert org.owners(ids) == ["c2"] * 3
    assert left_with(org, "s2") == {"customers": 0, "open activities": 0, "open contracts": 0}
    assert org.history(ids[0])[0][1:5] == ("c2", None, "successor", "offboarding")


def test_without_a_rule_the_manager_takes_over(org):
    ids = give_work(org, "s3", 2)
    admin.offboard_employee(org.conn, org.role("s3"))
    org.route()
    # Expect the nearest active manager: lead
    assert org.owners(ids) == ["lead", "lead"]
    assert org.history(ids[0])[0][3:5] == ("manager", "offboarding")


def test_tasks_on_other_peoples_customers_go_to_those_owners(org):
    (customer,) = org.customers(1, owner_id=org.ids["c1"])
    org.conn.execute(
        "INSERT INTO crm.activities (customer_id, employee_id, kind, subject, due_at)"
        " VALUES (%s, %s, 'appointment', 'visit', now())",
        [customer, org.ids["s1"]],
    )
    admin.offboard_employee(org.conn, org.role("s1"))
    org.route()
    # Expect s1's appointment on c1's customer to be c1's now
    assert left_with(org, "s1")["open activities"] == 0
    row = org.conn.execute(
        "SELECT employee_id FROM crm.activities WHERE customer_id = %s", [customer]
    ).fetchone()
    assert row == (org.ids["c1"],)


def test_a_successor_must_be_active(org):
    org.set_status("s3", "on_leave")
    with pytest.raises(Exception, match="cannot take over"):
        admin.offboard_employee(org.conn, org.role("s1"), org.role("s3"))


def test_without_a_rule_or_an_active_manager_the_project_admins_take_over(org):
    org.make_admin("c1")
    ids = give_work(org, "boss", 2)  # boss reports to nobody
    admin.offboard_employee(org.conn, org.role("boss"))
    org.route()
    # Expect p1's admin to take everything, told it was escalated
    assert org.owners(ids) == ["c1", "c1"]
    assert left_with(org, "boss") == {"customers": 0, "open activities": 0, "open contracts": 0}
    assert org.history(ids[0])[0][3:5] == ("project_admin", "offboarding")
    assert org.notifications(ids[0])[0][:2] == ("c1", "escalated")


def test_an_on_leave_manager_is_passed_over_for_the_next_one_up(org):
    org.set_status("lead", "on_leave")
    ids = give_work(org, "s1", 1)
    admin.offboard_employee(org.conn, org.role("s1"))
    org.route()
    # Expect boss: lead, s1's manager, is on leave
    assert org.owners(ids) == ["boss"]


def test_with_nobody_to_take_over_the_customers_wait_and_are_listed(org):
    ids = give_work(org, "boss", 2)
    admin.offboard_employee(org.conn, org.role("boss"))
    org.route()
    # Expect no manager and no admin: nothing moves, nothing is dropped, and both are
    # listed as owned by a departed employee, their offboarding retried
    assert org.owners(ids) == ["boss", "boss"]
    assert org.unowned() == {c: ("boss", "departed", "offboard_customer", 1) for c in ids}
    # Expect an admin appointed later to get them at the next try
    org.make_admin("c2")
    org.route(at(MONDAY, 0.1))
    assert org.owners(ids) == ["c2", "c2"] and org.unowned() == {}


def test_deactivate_reports_what_moved_where_and_unowned_lists_the_rest(org, db):
    org.rule("team", target_org_unit="sales", strategy="least_loaded", provinces=["Hà Nội"])
    moved = give_work(org, "s1", 2)
    org.conn.execute("UPDATE crm.customers SET province = 'Hà Nội' WHERE id = ANY (%s)", [moved])
    stuck = give_work(org, "boss", 1)  # no rule, manager or admin: nobody takes it
    run = CliRunner().invoke(main, ["unowned", "--dsn", db.target.conninfo])
    # Expect nothing to list yet: exit 0
    assert run.exit_code == 0, run.output
    for key in ("s1", "boss"):
        run = CliRunner().invoke(
            main, ["employee", "deactivate", org.role(key), "--dsn", db.target.conninfo]
        )
        assert run.exit_code == 0, run.output
        if key == "s1":
            # Expect each customer with its new owner and the strategy
            assert "2 open customer(s) of " + org.role("s1") + " moved, 0 waiting" in run.output
            for customer, owner in zip(moved, org.owners(moved), strict=True):
                assert owner in ("lead", "s2", "s3")
                row = [str(customer), org.role(owner), "least_loaded", "team"]
                assert row in [line.split() for line in run.output.splitlines()]
        else:
            assert "0 open customer(s) of " + org.role("boss") + " moved, 1 waiting" in run.output
    run = CliRunner().invoke(main, ["unowned", "--dsn", db.target.conninfo])
    # Expect boss's customer listed, with its pending offboarding: exit 3
    assert run.exit_code == 3
    (line,) = [x for x in run.stdout.splitlines()[1:]]
    assert line.split()[:7] == [
        str(stuck[0]), "p1", "lead", org.role("boss"), "departed", "offboard_customer", "1",
    ]  # fmt: skip
