"""`crmdb worker` sending email: kill -9 in each window a send can die in, no SMTP
configured, bad SMTP settings; SLA warnings from the routing engine's clocks.

Workers are `python -m crmdb worker` subprocesses. The SMTP server (smtp_server.py)
holds the conversation where a test wants the worker to be, and says when it got
there, so no test sleeps to guess.
"""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from policy_org import PolicyOrg, build_policy_org
from routing_org import MONDAY, RoutingOrg, routing_org
from smtp_server import SmtpServer, smtp_server
from test_outbox import T0, apply_automations, new_customer, outbox, send
from test_worker import TIMEOUT, wait_for

from crmdb.outbox.sender import notify_due, send_due

BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"


@pytest.fixture
def org(db) -> Iterator[PolicyOrg]:
    yield build_policy_org(db)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMDB_SMTP_")}
    return {**env, **extra}


def start_worker(
    org: PolicyOrg, app: str, env: dict[str, str], *args: str
) -> subprocess.Popen[str]:
    dsn = org.db.target.with_params(application_name=app).conninfo
    return subprocess.Popen(
        [sys.executable, "-m", "crmdb", "worker", "--dsn", dsn, "--poll", "0.5", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=worker_env(env),
    )


def kill_9(org: PolicyOrg, worker: subprocess.Popen[str], app: str) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == -signal.SIGKILL
    with org.db.connect() as conn:

        def gone() -> bool:
            row = conn.execute(BACKENDS, [app]).fetchone()
            return row is not None and row[0] == 0

        wait_for(gone, "the worker's session to end")


def queue_welcome(org: PolicyOrg, tmp_path: Path) -> None:
    """The welcome email alone in the outbox: the fixture's unowned lead is routed first
    (to the project's triage: its notifications' emails are not this test's)."""
    with org.db.connect() as conn:
        conn.execute("SELECT crm_private.route_events(1000, now())")
        conn.execute("DELETE FROM crm_private.email_outbox")
    apply_automations(org, tmp_path)
    new_customer(org, "rep_a", full_name="Nguyễn Văn An", email="an@khach.test", source="web_form")


def test_kill_9_after_the_server_got_the_message_never_sends_it_twice(org, smtp, tmp_path):
    queue_welcome(org, tmp_path)
    recorder = smtp.recorder
    recorder.hold_data = threading.Event()  # the server has the message, the reply waits
    worker = start_worker(org, "crmdb-mail-kill9", smtp.env())
    try:
        assert recorder.reached.wait(TIMEOUT), "the worker never sent the message"
    finally:
        kill_9(org, worker, "crmdb-mail-kill9")
    recorder.hold_data.set()  # 250 to a dead client: delivered, never recorded as sent
    assert len(recorder.received) == 1
    # Expect the email recovered as unknown, not sent again, by a worker or by a new run
    result = send(org, smtp, T0)
    assert (result.recovered, result.claimed) == (1, 0)
    ((template, _, status, attempts, error),) = outbox(org)
    assert (template, status, attempts) == ("welcome", "unknown", 1)
    assert error.startswith("delivery unknown: worker ")
    again = start_worker(org, "crmdb-mail-again", smtp.env(), "--once")
    again.communicate(timeout=TIMEOUT)
    assert again.returncode == 0
    assert len(recorder.received) == 1


def test_kill_9_before_the_message_went_out_sends_it_exactly_once(org, smtp, tmp_path):
    queue_welcome(org, tmp_path)
    recorder = smtp.recorder
    recorder.hold_rcpt = threading.Event()  # claimed, talking to the server, not sent
    worker = start_worker(org, "crmdb-mail-kill9", smtp.env())
    try:
        assert recorder.reached.wait(TIMEOUT), "the worker never reached the server"
    finally:
        kill_9(org, worker, "crmdb-mail-kill9")
    held, recorder.hold_rcpt = recorder.hold_rcpt, None
    held.set()  # the dead worker's RCPT handler returns (its thread must end, or pytest hangs)
    recorder.reached.clear()
    # Expect the email queued again (the attempt not counted), then sent once
    result = send(org, smtp, T0)
    assert (result.recovered, result.outcomes) == (1, {"sent": 1})
    assert [r[2:4] for r in outbox(org)] == [("sent", 1)]
    assert len(recorder.received) == 1


def test_without_smtp_the_worker_runs_and_leaves_emails_queued(org, tmp_path):
    queue_welcome(org, tmp_path)
    worker = start_worker(org, "crmdb-no-smtp", {}, "--once")
    _, stderr = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0
    assert "email sending is off: CRMDB_SMTP_HOST is not set" in stderr
    assert [r[2] for r in outbox(org)] == ["queued"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CRMDB_SMTP_PORT": "abc"}, "CRMDB_SMTP_PORT='abc' is not a number"),
        ({"CRMDB_SMTP_SECURITY": "ssl"}, "CRMDB_SMTP_SECURITY='ssl' is not one of"),
        ({"CRMDB_SMTP_PASSWORD": "x"}, "CRMDB_SMTP_PASSWORD is set without CRMDB_SMTP_USER"),
    ],
)
def test_bad_smtp_settings_are_one_line_naming_the_variable(org, env, message):
    worker = start_worker(org, "crmdb-bad", {"CRMDB_SMTP_HOST": "127.0.0.1", **env}, "--once")
    _, stderr = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 1
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"Error: {message}")


# SLA warnings ------------------------------------------------------------------------


@pytest.fixture
def routing(db) -> Iterator[RoutingOrg]:
    with routing_org(db) as built:
        yield built


def warnings(org: RoutingOrg, minutes: int) -> list[tuple[str | None, int]]:
    notify_due(org.conn, now=MONDAY + timedelta(minutes=minutes))
    found = org.conn.execute(
        "SELECT employee_id, customer_id FROM crm.notifications WHERE kind = 'sla_warning'"
        " ORDER BY id"
    ).fetchall()
    return [(org.key(e), c) for e, c in found]


def test_the_owner_is_warned_at_80_percent_of_the_sla_unless_they_responded(routing):
    routing.rule("rr", target_org_unit="sales", sla_minutes=60)
    first, second = routing.customers(2)
    routing.route(MONDAY)
    owners = routing.owners([first, second])
    # The second customer's owner responds before the warning
    routing.conn.execute(
        "INSERT INTO crm.activities (customer_id, employee_id, kind, subject, occurred_at)"
        " SELECT id, owner_id, 'call', 'Gọi', now() FROM crm.customers WHERE id = %s",
        [second],
    )
    routing.route(MONDAY + timedelta(minutes=10))
    # Expect nothing at 47 minutes; at 48 (80% of 60) one warning, to the first owner
    assert warnings(routing, 47) == []
    assert warnings(routing, 48) == [(owners[0], first)]
    assert warnings(routing, 59) == [(owners[0], first)]


def test_employees_cannot_make_warnings_or_reminders_due(routing):
    refused = pytest.raises(psycopg.errors.InsufficientPrivilege)
    with routing.db.connect_as(routing.role("s1")) as conn, refused:
        conn.execute("SELECT * FROM crm_private.notify_due(10, now() + interval '1 year')")


def test_an_employee_without_any_grant_on_customers_gets_the_email_without_the_record(routing):
    # No template applied: reading customers as s1 is "permission denied", not zero rows
    (customer,) = routing.customers(1, owner_id=routing.ids["s1"])
    routing.conn.execute(
        "SELECT crm_private.notify(%s, 'escalated', 'Customer moved to you', '{}', %s)",
        [routing.ids["s1"], customer],
    )
    with smtp_server() as server:
        result = send_due(routing.conn, server.config(), now=MONDAY)
        assert result.outcomes == {"sent": 1}
        (got,) = server.recorder.received
    assert f"(Bạn không còn xem được khách hàng #{customer}.)" in got.part("plain")
