"""Who may see and change routing rules, history and notifications, as employees.

The shipped templates over the policy fixture org (policy_org.py): adm is the admin of
saoviet.crm (and of nothing in p2); reps, managers and care staff are not admins.
Notifications have fixed policies: every employee reads and marks only their own.
"""

from collections.abc import Iterator

import psycopg
import pytest
from policy_org import PolicyOrg, build_policy_org

from crmdb.worker.batch import drain

RULE = (
    "INSERT INTO crm.routing_rules (project_id, name, target_org_unit_id)"
    " VALUES (crm_private.project_id(%s), %s,"
    " (SELECT id FROM crm.org_units WHERE code = 'hn_sales'))"
)


@pytest.fixture
def org(db) -> Iterator[PolicyOrg]:
    yield build_policy_org(db)


def count(conn: psycopg.Connection, query: str, params: list[object] | None = None) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def notify(org: PolicyOrg, key: str, subject: str) -> int:
    with org.db.connect() as conn:
        row = conn.execute(
            "INSERT INTO crm.notifications (employee_id, kind, subject) VALUES (%s, 'test', %s)"
            " RETURNING id",
            [org.emp(key), subject],
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_admin_manages_rules_of_their_project_only(org):
    with org.connect_as("adm") as conn:
        # Expect the admin to add, change and delete a rule in saoviet.crm
        conn.execute(RULE, ["saoviet.crm", "web"])
        conn.execute("UPDATE crm.routing_rules SET priority = 5 WHERE name = 'web'")
        assert count(conn, "SELECT count(*) FROM crm.routing_rules WHERE priority = 5") == 1
        conn.execute(
            "INSERT INTO crm.routing_queue_members (project_id, queue, employee_id)"
            " VALUES (crm_private.project_id('saoviet.crm'), 'q', %s)",
            [org.emp("rep_a")],
        )
        # Expect a rule in p2 (not theirs) refused
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(RULE, ["p2", "steal"])
        # Expect moving their rule to p2 refused too
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(
                "UPDATE crm.routing_rules SET project_id = crm_private.project_id('p2')"
                " WHERE name = 'web'"
            )
        conn.execute("DELETE FROM crm.routing_rules WHERE name = 'web'")
        assert count(conn, "SELECT count(*) FROM crm.routing_rules") == 0


def test_admin_does_not_see_other_projects_rules(org):
    with org.db.connect() as conn:
        conn.execute(RULE, ["p2", "theirs"])
    with org.connect_as("adm") as conn:
        # Expect p2's rule invisible to saoviet.crm's admin
        assert count(conn, "SELECT count(*) FROM crm.routing_rules") == 0


@pytest.mark.parametrize("key", ["rep_a", "mgr_hn", "boss", "care", "cc"])
def test_non_admins_neither_see_nor_write_rules(org, key):
    with org.db.connect() as conn:
        conn.execute(RULE, ["saoviet.crm", "existing"])
    with org.connect_as(key) as conn:
        # Expect no privilege at all on the routing configuration
        for query in (
            "SELECT count(*) FROM crm.routing_rules",
            "SELECT count(*) FROM crm.routing_queue_members",
            "SELECT count(*) FROM crm.assignment_history",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(RULE, ["saoviet.crm", "mine"])


def test_employees_never_reach_the_engine_internals(org):
    with org.connect_as("adm") as conn:
        # Expect even an admin refused the event queue, counters, clocks
        for table in ("routing_events", "routing_counters", "sla_timers", "successors"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM crm_private.{table}")


def test_notifications_are_private_and_marked_read_by_their_owner(org):
    mine = notify(org, "rep_a", "for rep_a")
    theirs = notify(org, "rep_b", "for rep_b")
    with org.connect_as("rep_a") as conn:
        # Expect rep_a to see only their own notification
        assert conn.execute("SELECT id FROM crm.notifications").fetchall() == [(mine,)]
        # Expect marking rep_b's notification to do nothing, their own to work
        assert count(conn, "SELECT crm.mark_notifications_read(%s)", [[theirs]]) == 0
        assert count(conn, "SELECT crm.mark_notifications_read()") == 1
        # Expect no way to change anything but read_at, nor to add notifications
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE crm.notifications SET employee_id = %s", [org.emp("rep_b")])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO crm.notifications (employee_id, kind, subject)"
                " VALUES (%s, 'x', 'spoof')",
                [org.emp("rep_b")],
            )
    with org.db.connect() as conn:
        rows = conn.execute(
            "SELECT id, read_at IS NOT NULL FROM crm.notifications ORDER BY id"
        ).fetchall()
    assert rows == [(mine, True), (theirs, False)]


def test_admins_see_only_their_own_notifications_too(org):
    notify(org, "rep_a", "for rep_a")
    with org.connect_as("adm") as conn:
        # Expect nothing: no template reaches notifications, not even admin
        assert count(conn, "SELECT count(*) FROM crm.notifications") == 0


def test_a_notification_wakes_the_employees_channel_with_its_id(org):
    with org.connect_as("rep_a") as listener:
        listener.execute(f"LISTEN crmdb_notifications_{org.emp('rep_a')}")
        other = notify(org, "rep_b", "not for rep_a")
        mine = notify(org, "rep_a", "for rep_a")
        notes = list(listener.notifies(timeout=2, stop_after=1))
    # Expect one notification on rep_a's channel, carrying only the new row's id
    assert [(n.channel, n.payload) for n in notes] == [
        (f"crmdb_notifications_{org.emp('rep_a')}", str(mine))
    ]
    assert other != mine


def test_policy_plan_leaves_the_fixed_notification_policies_alone(org):
    from crmdb.policies.apply import load_desired
    from crmdb.policies.plan import make_plan

    with org.db.connect(autocommit=False) as conn:
        # Expect nothing to change after apply: the crmdb_* policies are not the plan's
        assert make_plan(conn, load_desired()).statements == []
        conn.rollback()


def test_a_call_center_lead_reaches_a_rep_through_the_engine(org):
    with org.db.connect() as conn:
        conn.execute(RULE, ["saoviet.crm", "inbound"])
    with org.connect_as("cc") as conn:
        row = conn.execute(
            "INSERT INTO crm.customers (project_id, full_name, source)"
            " VALUES (crm_private.project_id('saoviet.crm'), 'Khách gọi đến', 'call_center')"
            " RETURNING id"
        ).fetchone()
        assert row is not None
        lead = row[0]
    with org.db.connect() as conn:
        drain(conn)
        owner = conn.execute("SELECT owner_id FROM crm.customers WHERE id = %s", [lead]).fetchone()
    assert owner is not None and owner[0] in {org.emp(k) for k in ("mgr_hn", "rep_a", "rep_b")}
    key = next(k for k in ("mgr_hn", "rep_a", "rep_b") if org.emp(k) == owner[0])
    with org.connect_as(key) as conn:
        # Expect the new owner to see the lead and their notification about it
        assert count(conn, "SELECT count(*) FROM crm.customers WHERE id = %s", [lead]) == 1
        notes = conn.execute("SELECT kind, customer_id FROM crm.notifications").fetchall()
        assert notes == [("assigned", lead)]


# Routing settings ------------------------------------------------------------------

SETTINGS = (
    "INSERT INTO crm.routing_settings (project_id, triage_queue) VALUES"
    " (crm_private.project_id(%s), 'inbox')"
)


def test_admin_manages_routing_settings_of_their_project_only(org):
    with org.connect_as("adm") as conn:
        # Expect the admin to set and change saoviet.crm's settings
        conn.execute(SETTINGS, ["saoviet.crm"])
        conn.execute("UPDATE crm.routing_settings SET overflow_tries = 3")
        changed = "SELECT count(*) FROM crm.routing_settings WHERE overflow_tries = 3"
        assert count(conn, changed) == 1
        # Expect p2's (not theirs) refused
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(SETTINGS, ["p2"])
    with org.db.connect() as conn:
        conn.execute(SETTINGS, ["p2"])
    with org.connect_as("adm") as conn:
        # Expect p2's row invisible, and untouched by the admin's update
        assert count(conn, "SELECT count(*) FROM crm.routing_settings") == 1
        conn.execute("UPDATE crm.routing_settings SET retry_minutes = 9")
    with org.db.connect() as conn:
        rows = conn.execute(
            "SELECT p.code, s.retry_minutes FROM crm.routing_settings AS s"
            " JOIN crm.projects AS p ON p.id = s.project_id ORDER BY 1"
        ).fetchall()
    assert rows == [("p2", 5), ("saoviet.crm", 9)]


@pytest.mark.parametrize("key", ["rep_a", "mgr_hn", "care", "cc"])
def test_non_admins_neither_see_nor_write_routing_settings(org, key):
    with org.connect_as(key) as conn:
        # Expect no privilege at all on the settings
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM crm.routing_settings")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(SETTINGS, ["saoviet.crm"])


# A routed customer's org unit is the engine's ----------------------------------------

MOVE = "UPDATE crm.customers SET org_unit_id = %s WHERE id = %s"


def unit(org: PolicyOrg, code: str) -> int:
    """An org unit's id (the call centre does not read org units)."""
    with org.db.connect() as conn:
        row = conn.execute("SELECT id FROM crm.org_units WHERE code = %s", [code]).fetchone()
    assert row is not None
    return int(row[0])


def unit_of(org: PolicyOrg, customer: int) -> str:
    with org.db.connect() as conn:
        row = conn.execute(
            "SELECT u.code FROM crm.customers AS c JOIN crm.org_units AS u"
            " ON u.id = c.org_unit_id WHERE c.id = %s",
            [customer],
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_the_call_centre_cannot_move_a_lead_the_engine_places(org):
    with org.db.connect() as conn:
        conn.execute(RULE, ["saoviet.crm", "inbound"])
    hcm = unit(org, "hcm")
    with org.connect_as("cc") as conn:
        row = conn.execute(
            "INSERT INTO crm.customers (project_id, full_name, source)"
            " VALUES (crm_private.project_id('saoviet.crm'), 'Khách gọi đến', 'call_center')"
            " RETURNING id"
        ).fetchone()
        assert row is not None
        lead = row[0]
        # Expect a refusal naming the customer and why, while it waits for the engine
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"#{lead} waits for the"):
            conn.execute(MOVE, [hcm, lead])
    with org.db.connect() as conn:
        drain(conn)
    # Expect the engine to have put it in its new owner's unit
    assert unit_of(org, lead) == "hn_sales"
    with org.connect_as("cc") as conn:
        # Expect a refusal once placed too: the unit follows the owner the engine chose
        placed = f"#{lead} was placed by the routing engine"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=placed):
            conn.execute(MOVE, [hcm, lead])
        # Expect everything else the call centre may write still writable
        assert (
            count(
                conn,
                "WITH u AS (UPDATE crm.customers SET product_interest = 'probe' WHERE id = %s"
                " RETURNING 1) SELECT count(*) FROM u",
                [lead],
            )
            == 1
        )
    assert unit_of(org, lead) == "hn_sales"


def test_the_call_centre_may_still_move_a_lead_no_engine_placed(org):
    c5 = org.id("c5")  # unowned but loaded by a DBA with its unit: not the engine's yet
    with org.db.connect() as conn:
        conn.execute("UPDATE crm.customers SET owner_id = %s WHERE id = %s", [org.emp("rep_a"), c5])
    with org.connect_as("cc") as conn:
        # Expect templates alone to decide for customers the engine never placed
        assert conn.execute(MOVE, [unit(org, "hn_sales"), c5]).rowcount == 1
    assert unit_of(org, c5) == "hn_sales"
