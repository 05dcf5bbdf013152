"""The email outbox against a real SMTP server (aiosmtpd, smtp_server.py), as employees
where enforcement matters (the policy fixture org, policy_org.py, with the shipped
templates applied). Clocks are pinned: send_due and notify_due take `now`.
"""

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from policy_org import PolicyOrg, build_policy_org
from smtp_server import SmtpServer, smtp_server

from crmdb.outbox import automations
from crmdb.outbox.sender import SendResult, notify_due, send_due

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
T0 = datetime(2030, 1, 7, 9, 0, tzinfo=TZ)  # after every event recorded at now()
AUTOMATIONS = """\
project: saoviet.crm
automations:
  - name: welcome
    event: customer_created
    when: {source: [web_form]}
    template: welcome
  - name: order
    event: contract_won
    template: order_confirmation
"""


@pytest.fixture
def org(db) -> Iterator[PolicyOrg]:
    yield build_policy_org(db)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def rows(conn: psycopg.Connection, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()


def outbox(org: PolicyOrg) -> list[tuple[Any, ...]]:
    """(template, language, status, attempts, last_error) of every email, oldest first."""
    with org.db.connect() as conn:
        return rows(
            conn,
            "SELECT template, language, status::text, attempts, last_error"
            " FROM crm_private.email_outbox ORDER BY id",
        )


def send(org: PolicyOrg, smtp: SmtpServer, now: datetime = T0, **config: Any) -> SendResult:
    with org.db.connect() as conn:
        return send_due(conn, smtp.config(**config), now=now, worker="test")


def apply_automations(org: PolicyOrg, tmp_path: Path, text: str = AUTOMATIONS) -> None:
    folder = tmp_path / "automations"
    folder.mkdir(exist_ok=True)
    (folder / "saoviet.crm.yaml").write_text(text, encoding="utf-8")
    automations.apply(org.db.target, automations.load_automations(folder))


def new_customer(org: PolicyOrg, key: str, full_name: str = "Khách", **columns: Any) -> int:
    """A customer inserted as employee `key` (owner: themselves), through crm_api (its
    contact fields are a field group)."""
    names = ", ".join(columns)
    cells = ", ".join(f"%({c})s" for c in columns)
    with org.connect_as(key) as conn:
        row = conn.execute(
            "INSERT INTO crm_api.customers (project_id, owner_id, full_name"
            f"{', ' + names if names else ''}) VALUES (crm_private.project_id('saoviet.crm'),"
            f" crm.current_employee_id(), %(full_name)s{', ' + cells if cells else ''})"
            " RETURNING id",
            {"full_name": full_name, **columns},
        ).fetchone()
    assert row is not None
    return int(row[0])


# Automation emails: exact messages, both languages ---------------------------------


def test_welcome_email_reaches_the_customer_in_their_language(org, smtp, tmp_path):
    apply_automations(org, tmp_path)
    new_customer(org, "rep_a", full_name="Nguyễn Văn An", email="an@khach.test", source="web_form")
    en = new_customer(
        org, "rep_a", full_name="John Smith", email="john@client.test", source="web_form"
    )
    new_customer(org, "rep_a", full_name="Qua điện thoại", email="x@khach.test", source="chat")
    new_customer(org, "rep_a", full_name="Không email", source="web_form")
    with org.db.connect() as conn:
        conn.execute("SELECT crm_admin.set_customer_language(%s, 'en')", [en])
    # Expect one email per matching customer, queued in the customer's transaction
    assert [r[:3] for r in outbox(org)] == [("welcome", "vi", "queued")] * 3

    result = send(org, smtp)

    # Expect the two with an address sent, the one without skipped, nothing else
    assert result.outcomes == {"sent": 2, "skipped": 1}
    got = {r.rcpt_tos[0]: r for r in smtp.recorder.received}
    assert sorted(got) == ["an@khach.test", "john@client.test"]
    assert got["an@khach.test"].subject == "Chào mừng Nguyễn Văn An đến với Sao Việt CRM"
    assert got["an@khach.test"].part("plain") == (
        "Kính gửi Nguyễn Văn An,\n\nCảm ơn anh/chị đã quan tâm đến Sao Việt CRM."
        " Chuyên viên tư vấn sẽ sớm liên hệ với anh/chị.\n\nSao Việt CRM\n"
    )
    assert got["john@client.test"].subject == "Welcome to Sao Việt CRM, John Smith"
    assert got["john@client.test"].part("plain") == (
        "Dear John Smith,\n\nThank you for your interest in Sao Việt CRM."
        " Your advisor will contact you soon.\n\nSao Việt CRM\n"
    )
    assert "<p>Dear John Smith,</p>" in got["john@client.test"].part("html")
    message = got["an@khach.test"].message
    assert message["From"] == "Sao Việt CRM <crm@saoviet.test>"
    assert message["To"] == "Nguyễn Văn An <an@khach.test>"
    assert message["Message-ID"].startswith("<outbox-")
    statuses = [r[2] for r in outbox(org)]
    assert statuses == ["sent", "sent", "skipped"]
    # Expect a second run to send nothing more
    assert send(org, smtp).claimed == 0
    assert len(smtp.recorder.received) == 2


def test_a_won_contract_sends_the_order_confirmation_once(org, smtp, tmp_path):
    apply_automations(org, tmp_path)
    customer = new_customer(org, "rep_a", full_name="Trần Thị Bình", email="binh@khach.test")
    with org.connect_as("rep_a") as conn:
        conn.execute(
            "INSERT INTO crm_api.contracts (customer_id, project_id, owner_id, title, amount)"
            " VALUES (%s, crm_private.project_id('saoviet.crm'), crm.current_employee_id(),"
            " 'Gói Vàng', 12500000)",
            [customer],
        )
        # Won, then touched again while won: one confirmation
        conn.execute(
            "UPDATE crm.contracts SET status = 'won', signed_at = '2030-01-06 10:00+07'"
            " WHERE customer_id = %s",
            [customer],
        )
        conn.execute(
            "UPDATE crm.contracts SET title = 'Gói Vàng 2030' WHERE customer_id = %s", [customer]
        )
    assert send(org, smtp).outcomes == {"sent": 1}
    (got,) = smtp.recorder.received
    assert got.subject == 'Cảm ơn anh/chị: đơn hàng "Gói Vàng 2030" đã được xác nhận'
    assert "Giá trị: 12.500.000 VND\n  Ngày ký: 06/01/2030" in got.part("plain")


def test_unsubscribed_addresses_get_no_automation_email(org, smtp, tmp_path):
    env = {"unsubscribe_url": "https://crm.test/unsubscribe?t={token}"}
    apply_automations(org, tmp_path)
    new_customer(org, "rep_a", full_name="An", email="An@Khach.test", source="web_form")
    assert send(org, smtp, **env).outcomes == {"sent": 1}
    (got,) = smtp.recorder.received
    token = got.message["List-Unsubscribe"].split("t=")[1].rstrip(">")
    assert f"https://crm.test/unsubscribe?t={token}" in got.part("plain")
    # Expect the app, acting as any employee, to unsubscribe the address by the token
    with org.connect_as("cc") as conn:
        assert conn.execute("SELECT crm.unsubscribe(%s)", [token]).fetchone() == (True,)
        assert conn.execute("SELECT crm.unsubscribe(gen_random_uuid())").fetchone() == (False,)
    # Expect the next automation email to that address suppressed, another one sent
    new_customer(org, "rep_b", full_name="An again", email="an@khach.test", source="web_form")
    new_customer(org, "rep_b", full_name="Bình", email="binh@khach.test", source="web_form")
    assert send(org, smtp, **env).outcomes == {"suppressed": 1, "sent": 1}
    assert [r.rcpt_tos for r in smtp.recorder.received] == [["An@Khach.test"], ["binh@khach.test"]]


def test_a_forged_address_is_a_dead_letter_and_injects_nothing(org, smtp, tmp_path):
    apply_automations(org, tmp_path)
    forged = "an@khach.test\r\nBcc: spy@evil.test"
    new_customer(org, "rep_a", full_name="Forged", email=forged, source="web_form")
    new_customer(org, "rep_a", full_name="Bình", email="binh@khach.test", source="web_form")
    # Expect the forged one dead, naming the address, and the next one sent all the same
    assert send(org, smtp).outcomes == {"dead": 1, "sent": 1}
    assert outbox(org)[0][2:] == ("dead", 1, f"invalid address {forged!r}")
    assert [r.rcpt_tos for r in smtp.recorder.received] == [["binh@khach.test"]]
    assert "Bcc" not in smtp.recorder.received[0].message


# Retries, backoff, dead letters ------------------------------------------------------


def test_a_refused_email_is_retried_after_the_backoff(org, smtp, tmp_path):
    apply_automations(org, tmp_path)
    new_customer(org, "rep_a", full_name="An", email="an@khach.test", source="web_form")
    smtp.recorder.replies.append("451 4.3.0 Mailbox busy, try later")

    # Expect the first attempt refused, the email queued for T0 + 60 s
    assert send(org, smtp).outcomes == {"queued": 1}
    assert outbox(org) == [
        ("welcome", "vi", "queued", 1, "end of DATA: 451 4.3.0 Mailbox busy, try later")
    ]
    # Expect nothing before the backoff is over, then one delivery
    assert send(org, smtp, T0 + timedelta(seconds=59)).claimed == 0
    assert send(org, smtp, T0 + timedelta(seconds=60)).outcomes == {"sent": 1}
    assert len(smtp.recorder.received) == 1
    assert [r[2:4] for r in outbox(org)] == [("sent", 2)]


def test_after_max_attempts_the_email_is_a_dead_letter_with_its_error(org, smtp, tmp_path):
    apply_automations(org, tmp_path)
    new_customer(org, "rep_a", full_name="An", email="an@khach.test", source="web_form")
    smtp.recorder.replies.extend(["451 4.4.1 no answer"] * 3)
    with org.db.connect() as conn:
        due = []
        for attempt in range(3):
            now = T0 + timedelta(hours=attempt)
            send_due(conn, smtp.config(max_attempts=3), now=now)
            due.append(
                conn.execute("SELECT next_attempt_at FROM crm_private.email_outbox").fetchone()[0]
            )
    # Expect backoff doubling (1 min, 2 min), then a dead letter naming the error
    assert due[0] - T0 == timedelta(minutes=1)
    assert due[1] - (T0 + timedelta(hours=1)) == timedelta(minutes=2)
    assert outbox(org) == [
        ("welcome", "vi", "dead", 3, "end of DATA: 451 4.4.1 no answer (gave up after 3 attempts)")
    ]
    assert send(org, smtp, T0 + timedelta(days=9)).claimed == 0
    assert smtp.recorder.received == []


def test_a_permanent_refusal_is_dead_at_once_and_can_be_requeued(org, smtp, tmp_path):
    apply_automations(org, tmp_path)
    new_customer(org, "rep_a", full_name="An", email="an@khach.test", source="web_form")
    smtp.recorder.replies.append("550 5.1.1 no such user")
    assert send(org, smtp).outcomes == {"dead": 1}
    assert outbox(org) == [("welcome", "vi", "dead", 1, "end of DATA: 550 5.1.1 no such user")]
    with org.db.connect() as conn:
        (email_id,) = conn.execute("SELECT id FROM crm_private.email_outbox").fetchone()
        conn.execute("SELECT crm_admin.requeue_email(%s)", [email_id])
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="nothing to requeue"):
            conn.execute("SELECT crm_admin.requeue_email(%s)", [email_id])
    assert send(org, smtp, T0 + timedelta(days=1)).outcomes == {"sent": 1}


def test_an_unreachable_server_keeps_the_email_queued(org, tmp_path):
    apply_automations(org, tmp_path)
    new_customer(org, "rep_a", full_name="An", email="an@khach.test", source="web_form")
    with smtp_server() as server:
        config = server.config()
    with org.db.connect() as conn:  # the server is gone: connection refused
        assert send_due(conn, config, now=T0).outcomes == {"queued": 1}
    ((*_, error),) = outbox(org)
    assert error.startswith("connect: ConnectionRefusedError")


# Notifications: in-app, by email, real time, rendered through row-level security -----


def test_a_share_notifies_the_grantee_in_app_in_real_time_and_by_email(org, smtp):
    c1 = org.id("c1")
    with org.connect_as("rep_b") as listener:
        listener.execute(f"LISTEN crmdb_notifications_{org.emp('rep_b')}")
        listener.execute("SELECT crm.set_notification_preferences('en')")
        with org.connect_as("rep_a") as conn:
            conn.execute(
                "INSERT INTO crm.shares (customer_id, grantee_employee_id, access, granted_by)"
                " VALUES (%s, %s, 'read', crm.current_employee_id())",
                [c1, org.emp("rep_b")],
            )
        notes = list(listener.notifies(timeout=5, stop_after=1))
        mine = rows(listener, "SELECT id, kind, customer_id, subject FROM crm.notifications")
    # Expect the NOTIFY to carry the new notification's id, which rep_b reads through RLS
    assert [(n.channel, n.payload) for n in notes] == [
        (f"crmdb_notifications_{org.emp('rep_b')}", str(mine[0][0]))
    ]
    assert [m[1:] for m in mine] == [
        ("share_granted", c1, f"Customer #{c1} shared with you (read)")
    ]
    # Expect the email in rep_b's language, showing the customer rep_b may now see
    assert send(org, smtp).outcomes == {"sent": 1}
    (got,) = smtp.recorder.received
    with org.db.connect() as conn:
        name, email = conn.execute(
            "SELECT c.full_name, e.email FROM crm.customers AS c, crm.employees AS e"
            " WHERE c.id = %s AND e.id = %s",
            [c1, org.emp("rep_b")],
        ).fetchone()
    assert got.rcpt_tos == [email]
    assert got.subject == f"Customer #{c1} shared with you (read) ({name})"
    assert f"Customer #{c1}: {name}\n" in got.part("plain")


def test_an_email_shows_only_what_its_employee_recipient_may_see(org, smtp):
    c1, c2 = org.id("c1"), org.id("c2")  # rep_a sees c1, not c2
    with org.db.connect() as conn, conn.transaction():
        conn.execute(
            "UPDATE crm.customers__contact SET phone = '0912345678' WHERE id IN (%s, %s)", [c1, c2]
        )
        for customer in (c1, c2):
            conn.execute(
                "SELECT crm_private.notify(%s, 'escalated', 'Customer moved to you', '{}', %s)",
                [org.emp("rep_a"), customer],
            )
    assert send(org, smtp).outcomes == {"sent": 2}
    first, second = smtp.recorder.received
    # Expect c1's name and phone; of c2 only its id (RLS hid the row from rep_a)
    assert "Điện thoại: 0912345678" in first.part("plain")
    assert f"(Bạn không còn xem được khách hàng #{c2}.)" in second.part("plain")
    assert "0912345678" not in second.part("plain") + second.part("html") + second.subject
    assert second.subject == f"Khách hàng #{c2} được chuyển lên bạn: chưa ai liên hệ kịp thời hạn"


def test_a_worker_login_acts_as_employees_only_through_crmdb_worker(org, smtp):
    from psycopg import sql

    from crmdb.testing.scratch import TEST_PASSWORD

    c1 = org.id("c1")
    worker = org.db.role("worker")
    with org.db.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}; GRANT crmdb_owner TO {}").format(
                sql.Identifier(worker), sql.Literal(TEST_PASSWORD), sql.Identifier(worker)
            )
        )
        conn.execute("UPDATE crm.customers__contact SET phone = '0912345678' WHERE id = %s", [c1])
        conn.execute(
            "SELECT crm_private.notify(%s, 'escalated', 'Customer moved to you', '{}', %s)",
            [org.emp("rep_a"), c1],
        )

    def send_as_worker(now: datetime = T0) -> SendResult:
        with org.db.connect_as(worker) as conn:
            return send_due(conn, smtp.config(), now=now, worker="test")

    # The owner's privileges alone: it may not become rep_a, so the email waits
    assert send_as_worker().outcomes == {"queued": 1}
    ((_, _, status, _, error),) = outbox(org)
    assert status == "queued" and f'permission denied to set role "{org.role("rep_a")}"' in error
    assert smtp.recorder.received == []
    # With crmdb_worker (which add_employee granted rep_a to) it renders as rep_a
    with org.db.connect() as conn:
        conn.execute(sql.SQL("GRANT crmdb_worker TO {}").format(sql.Identifier(worker)))
    assert send_as_worker(T0 + timedelta(hours=1)).outcomes == {"sent": 1}
    assert "Điện thoại: 0912345678" in smtp.recorder.received[0].part("plain")
    # ... a member of rep_a that inherits none of rep_a's privileges
    with org.db.connect() as conn:
        inherits = conn.execute(
            "SELECT pg_has_role(%s, %s, 'MEMBER'), pg_has_role(%s, %s, 'USAGE')",
            [worker, org.role("rep_a")] * 2,
        ).fetchone()
    assert inherits == (True, False)
    # A departure revokes it
    with org.db.connect() as conn:
        conn.execute("SELECT crm_admin.set_employee_status(%s, 'departed')", [org.role("rep_a")])
        member = conn.execute(
            "SELECT pg_has_role('crmdb_worker', %s, 'MEMBER')", [org.role("rep_a")]
        ).fetchone()
    assert member == (False,)


def test_notify_queues_the_notification_and_its_email_in_the_callers_transaction(org):
    query = (
        "SELECT crm_private.notify(%s, 'exported', 'Your customers were exported',"
        " '{\"rows\": 3}', NULL, 'notification')"
    )
    with org.db.connect() as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute(query, [org.emp("rep_a")])
            raise RuntimeError("the export failed")
        # Expect nothing after a rollback, both after a commit
        assert outbox(org) == []
        conn.execute(query, [org.emp("rep_a")])
        assert rows(conn, "SELECT kind, details FROM crm.notifications") == [
            ("exported", {"rows": 3, "email_template": "notification"})
        ]
    assert [r[:3] for r in outbox(org)] == [("notification", "vi", "queued")]


def test_employees_who_turned_emails_off_get_notifications_only(org):
    with org.connect_as("rep_a") as conn:
        conn.execute("SELECT crm.set_notification_preferences(p_email_enabled => false)")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown language"):
            conn.execute("SELECT crm.set_notification_preferences('fr')")
    with org.db.connect() as conn:
        conn.execute("SELECT crm_private.notify(%s, 'escalated', 'x')", [org.emp("rep_a")])
        assert rows(conn, "SELECT count(*) FROM crm.notifications") == [(1,)]
    assert outbox(org) == []


def test_employees_reach_no_outbox_internals(org):
    with org.connect_as("adm") as conn:
        for table in ("email_outbox", "email_unsubscribes", "email_automations", "reminders"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM crm_private.{table}")
        for call in (
            "crm_private.claim_emails(10, now(), 'me')",
            "crm_private.notify(1, 'x', 'spoof')",
            "crm_private.recover_emails()",
            "crm_private.notify_due(10, now())",
            "crm_admin.unsubscribe('a@b.c')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT {call}")
    # Expect the worker functions to refuse an employee even if granted to them
    with org.db.connect() as conn:
        conn.execute(
            "GRANT EXECUTE ON FUNCTION crm_private.claim_emails(integer, timestamptz, text)"
            f' TO "{org.role("adm")}"'
        )
    refused = pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not run the outbox")
    with org.connect_as("adm") as conn, refused:
        conn.execute("SELECT * FROM crm_private.claim_emails(10, now(), 'me')")


# Reminders and SLA warnings ---------------------------------------------------------


def due(org: PolicyOrg, now: datetime) -> list[tuple[Any, ...]]:
    """notify_due at `now`; then every notification as (employee key, kind, subject)."""
    with org.db.connect() as conn:
        notify_due(conn, now=now)
        found = rows(conn, "SELECT employee_id, kind, subject FROM crm.notifications ORDER BY id")
    keys = {org.emp(k): k for k in ("rep_a", "rep_b", "mgr_hn")}
    return [(keys.get(e, e), k, s) for e, k, s in found]


def test_a_reminder_goes_before_the_due_time_and_follows_owner_and_time(org):
    c1 = org.id("c1")
    with org.connect_as("rep_a") as conn:
        (task,) = conn.execute(
            "INSERT INTO crm.activities (customer_id, employee_id, kind, subject, due_at)"
            " VALUES (%s, crm.current_employee_id(), 'task', 'Gọi lại cho khách', %s) RETURNING id",
            [c1, T0 + timedelta(hours=1)],
        ).fetchone()
    # Expect nothing 16 minutes before, rep_a reminded 15 minutes before
    assert due(org, T0 + timedelta(minutes=44)) == []
    assert due(org, T0 + timedelta(minutes=45)) == [
        ("rep_a", "task_due", "Task due at 2030-01-07 10:00: Gọi lại cho khách")
    ]
    # It is handed to rep_b and moved an hour later: rep_b is reminded, once
    with org.db.connect() as conn:
        moved = conn.execute(
            "UPDATE crm.activities SET employee_id = %s, due_at = due_at + interval '1 hour'"
            " WHERE id = %s",
            [org.emp("rep_b"), task],
        )
        assert moved.rowcount == 1
    assert len(due(org, T0 + timedelta(minutes=104))) == 1
    assert due(org, T0 + timedelta(minutes=105))[1:] == [
        ("rep_b", "task_due", "Task due at 2030-01-07 11:00: Gọi lại cho khách")
    ]
    assert len(due(org, T0 + timedelta(minutes=106))) == 2
    # Done tasks remind nobody
    with org.db.connect() as conn:
        conn.execute(
            "UPDATE crm.activities SET due_at = due_at + interval '1 day' WHERE id = %s", [task]
        )
        conn.execute("UPDATE crm.activities SET done_at = now() WHERE id = %s", [task])
    assert len(due(org, T0 + timedelta(days=2))) == 2
    # Expect the reminder emailed to rep_b, the task's owner at the time
    assert [r[:3] for r in outbox(org)] == [("notification", "vi", "queued")] * 2


def test_the_owner_is_reassigned_before_a_stale_reminder_goes(org):
    c1 = org.id("c1")
    with org.connect_as("rep_a") as conn:
        (task,) = conn.execute(
            "INSERT INTO crm.activities (customer_id, employee_id, kind, subject, due_at)"
            " VALUES (%s, crm.current_employee_id(), 'appointment', 'Gặp khách', %s) RETURNING id",
            [c1, T0 + timedelta(hours=1)],
        ).fetchone()
    with org.db.connect() as conn:
        conn.execute(
            "UPDATE crm.activities SET employee_id = %s WHERE id = %s", [org.emp("rep_b"), task]
        )
    # Expect only rep_b reminded: the old owner's reminder is gone
    assert [n[:2] for n in due(org, T0 + timedelta(minutes=50))] == [("rep_b", "task_due")]


def test_the_shipped_automations_welcome_a_web_lead_of_the_demo_company(db, smtp):
    from crmdb.demo import load_demo
    from crmdb.resources import resource_dir
    from crmdb.testing.scratch import TEST_PASSWORD

    with db.connect() as conn:
        load_demo(conn, role_prefix=db.role("demo_"), password=TEST_PASSWORD)
    found = automations.load_automations(resource_dir("automations"))
    # Expect the shipped file to apply to the demo, then nothing left to change
    assert automations.apply(db.target, found).statements
    assert automations.plan(db.target, found).empty
    with db.connect() as conn:
        # As the DBA, on the tables (no policies applied: no crm_api yet): the customer,
        # then its contact group's email, before the worker renders the welcome
        ids = conn.execute(
            "INSERT INTO crm.customers (project_id, full_name, source)"
            " VALUES (crm_private.project_id('saoviet.crm'), 'Lê Thị Hoa', 'web_form'),"
            " (crm_private.project_id('saoviet.crm'), 'Gọi điện', 'call_center') RETURNING id"
        ).fetchall()
        for (customer,), email in zip(ids, ("hoa@khach.test", "call@khach.test"), strict=True):
            conn.execute(
                "UPDATE crm.customers__contact SET email = %s WHERE id = %s", (email, customer)
            )
        result = send_due(conn, smtp.config(), now=T0)
    # Expect one welcome, to the web lead only
    assert result.outcomes == {"sent": 1}
    (got,) = smtp.recorder.received
    assert (got.rcpt_tos, got.subject) == (
        ["hoa@khach.test"],
        "Chào mừng Lê Thị Hoa đến với Sao Việt CRM",
    )


def test_starttls_with_credentials_and_a_private_ca(org, tmp_path):
    from smtp_server import PASSWORD, USER, self_signed

    cert, key = self_signed(tmp_path)
    apply_automations(org, tmp_path)
    new_customer(org, "rep_a", full_name="An", email="an@khach.test", source="web_form")
    hour = timedelta(hours=1)
    with smtp_server(tls=(cert, key)) as server, org.db.connect() as conn:
        trusted = {"security": "starttls", "ca_file": str(cert), "user": USER}
        # Expect a wrong password, then an untrusted certificate, to keep the email queued
        assert send_due(conn, server.config(**trusted, password="x"), now=T0).outcomes == {
            "queued": 1
        }
        assert "535" in outbox(org)[0][4]
        untrusted = server.config(security="starttls", user=USER, password=PASSWORD)
        assert send_due(conn, untrusted, now=T0 + hour).outcomes == {"queued": 1}
        assert "CERTIFICATE_VERIFY_FAILED" in outbox(org)[0][4]
        # Expect it sent over STARTTLS with the right credentials and the private CA
        right = server.config(**trusted, password=PASSWORD)
        assert send_due(conn, right, now=T0 + 9 * hour).outcomes == {"sent": 1}
        assert [r.rcpt_tos for r in server.recorder.received] == [["an@khach.test"]]
