"""The outbox worker's work: due reminders and SLA warnings (notify_due), and sending
claimed emails (send_due).

send_due, in order: emails whose worker died are recovered (queued again if they never
went on the wire, unknown if they may have); due emails are claimed, and the claim is
committed (status sending, a session advisory lock each) before any SMTP traffic;
each email is rendered (as its employee recipient, under SET LOCAL ROLE, so row-level
security decides what it shows), the transmission is committed once the server said
354 to DATA, and the outcome is recorded. A crash therefore never sends an email
twice: at most once, with the one ambiguous window (accepted by the server, outcome
not yet committed) left as `unknown` for an operator.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any

import psycopg
from psycopg.rows import dict_row

from crmdb.db import as_role, server_error
from crmdb.outbox.config import SmtpConfig
from crmdb.outbox.render import Rendered, RenderError, render
from crmdb.outbox.smtp import DEAD, RETRY, SENT, UNKNOWN, Delivery, SmtpSession
from crmdb.queries import query

EMAIL = "email.sql"
# One address, no display name, nothing that could end a header line.
ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")


def q(name: str) -> Any:
    """A named query of sql/email.sql."""
    return query(name, EMAIL)


@dataclass
class SendResult:
    recovered: int = 0
    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def notify_due(conn: psycopg.Connection, limit: int = 500, now: datetime | None = None) -> int:
    """Turn due reminders and SLA warnings into notifications; how many were sent."""
    with conn.transaction():
        row = conn.execute(q("notify_due"), {"limit": limit, "now": now}).fetchone()
    assert row is not None
    return int(row[0]) + int(row[1])


def _one(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q(name), params).fetchone()


def _values(conn: psycopg.Connection, email: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(address, template values), each record read as the recipient may see it."""
    customer: dict[str, Any] | None = None
    contract: dict[str, Any] | None = None
    if email["recipient_employee_id"] is not None:
        address, name = email["recipient_email"], email["recipient_name"]
        if email["customer_id"] is not None:
            with as_role(conn, email["recipient_role"]):
                try:
                    with conn.transaction():  # a savepoint: the role stays set after it
                        customer = _one(conn, "customer_for_employee", {"id": email["customer_id"]})
                except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable):
                    # No template grants them customers (or none is applied yet, so
                    # crm_api has no views): nothing to show
                    customer = None
    else:
        customer = _one(conn, "customer_for_customer", {"id": email["recipient_customer_id"]})
        address = customer["email"] if customer else None
        name = customer["full_name"] if customer else None
        if customer and email["contract_id"] is not None:
            contract = _one(
                conn,
                "contract_for_customer",
                {"id": email["contract_id"], "customer": email["recipient_customer_id"]},
            )
    context = email["context"] or {}
    values = {
        "recipient": {"name": name, "email": address},
        "customer": customer,
        "customer_id": email["customer_id"],
        "contract": contract,
        "notification": context if "kind" in context else None,
        "automation": context.get("automation"),
    }
    return address, values


def _message(
    conn: psycopg.Connection,
    config: SmtpConfig,
    email: dict[str, Any],
    address: str,
    rendered: Rendered,
    now: datetime | None,
    values_name: str | None,
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = config.sender
    name = values_name or ""
    message["To"] = formataddr((name, address)) if name else address
    message["Date"] = format_datetime(now or datetime.now(UTC))
    # The idempotency key, visible to the server: one outbox row, one Message-ID.
    message["Message-ID"] = f"<outbox-{email['id']}.{conn.info.dbname}@{config.domain}>"
    message["X-Crmdb-Outbox-Id"] = str(email["id"])
    url = _unsubscribe_url(config, email)
    if url:
        message["List-Unsubscribe"] = f"<{url}>"
    message.set_content(rendered.text, cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return message


def _unsubscribe_url(config: SmtpConfig, email: dict[str, Any]) -> str | None:
    if not email["automation"] or not config.unsubscribe_url:
        return None
    return config.unsubscribe_url.replace("{token}", str(email["unsubscribe_token"]))


def _sender_name(config: SmtpConfig) -> str:
    return parseaddr(config.sender)[0] or "crmdb"


def _deliver(
    conn: psycopg.Connection,
    session: SmtpSession,
    config: SmtpConfig,
    email: dict[str, Any],
    now: datetime | None,
) -> tuple[Delivery, str | None]:
    """What became of one claimed email, and the address it went to."""
    if email["recipient_departed"]:
        return Delivery("skipped", "the recipient has departed"), None
    try:
        address, values = _values(conn, email)
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:  # e.g. the worker may not act as the employee
        return Delivery(RETRY, f"reading the record: {server_error(exc)}"), None
    if not address:
        return Delivery("skipped", f"customer #{email['recipient_customer_id']} has no email"), None
    if not ADDRESS.match(address):
        return Delivery(DEAD, f"invalid address {address!r}"), None
    if email["automation"]:
        row = conn.execute(q("email_unsubscribed"), {"email": address}).fetchone()
        if row is not None and row[0]:
            return Delivery("suppressed", f"{address} unsubscribed"), address
    values["unsubscribe_url"] = _unsubscribe_url(config, email)
    values["sender_name"] = _sender_name(config)
    try:
        rendered = render(email["template"], email["language"], values)
    except RenderError as exc:
        return Delivery(DEAD, f"template: {exc}"), address
    message = _message(conn, config, email, address, rendered, now, values["recipient"]["name"])
    sender = parseaddr(config.sender)[1]

    def transmitting() -> bool:
        row = conn.execute(
            q("transmitting_email"), {"id": email["id"], "token": email["claim_token"], "now": now}
        ).fetchone()
        return bool(row and row[0])

    return session.send(message, sender, address, transmitting), address


def send_due(
    conn: psycopg.Connection,
    config: SmtpConfig,
    *,
    limit: int = 50,
    now: datetime | None = None,
    worker: str = "crmdb",
    on_outcome: Callable[[dict[str, Any], Delivery], None] | None = None,
) -> SendResult:
    """Recover, claim and send up to `limit` due emails. `conn` must be in autocommit
    mode (each step commits on its own); `now` pins the clock (retries, backoff)."""
    result = SendResult()
    row = conn.execute(q("recover_emails")).fetchone()
    result.recovered = int(row[0]) if row else 0
    with conn.cursor(row_factory=dict_row) as cur:
        claimed = cur.execute(
            q("claim_emails"), {"limit": limit, "now": now, "worker": worker}
        ).fetchall()
    result.claimed = len(claimed)
    session = SmtpSession(config)
    try:
        for email in claimed:
            try:
                delivery, address = _deliver(conn, session, config, email, now)
            except psycopg.OperationalError:
                raise  # the connection is gone: recovery sorts out the claimed emails
            except Exception as exc:  # this email's record or a bug: never the batch
                delivery = Delivery(DEAD, f"cannot send: {type(exc).__name__}: {exc}")
                address = None
            conn.execute(
                q("finish_email"),
                {
                    "id": email["id"],
                    "token": email["claim_token"],
                    "outcome": delivery.outcome,
                    "error": delivery.error,
                    "now": now,
                    "recipient": address,
                    "max_attempts": config.max_attempts,
                    "backoff": config.backoff,
                },
            )
            result.count(delivery.outcome)
            if on_outcome is not None:
                on_outcome(email, delivery)
    finally:
        session.close()
    return result


__all__ = ["DEAD", "RETRY", "SENT", "UNKNOWN", "SendResult", "notify_due", "send_due"]
