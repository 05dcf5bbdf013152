"""`crmdb worker`: drain routing events, turn due reminders and SLA warnings into
notifications, send queued emails (crmdb/outbox/sender.py), then wait for a NOTIFY or
the poll interval.

LISTEN gives low latency; the poll is the fallback for notifications missed while
disconnected or busy, and for deferred events and SLA clocks falling due. Lost
connections (a database restart) are retried with backoff. stop() (SIGTERM) lets the
current batch commit, then returns.
"""

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from crmdb.db import Target, connect, server_error
from crmdb.errors import CrmdbError
from crmdb.outbox.config import SmtpConfig
from crmdb.outbox.sender import notify_due, q, send_due
from crmdb.queries import query
from crmdb.worker.batch import BatchResult, run_batch
from crmdb.worker.logs import log

WAIT_SLICE = 0.25  # seconds between checks of the stop flag while idle
# At least this long between batches that found nothing: an event that is due but not
# claimable now (its customer is being changed by someone) must not make a busy loop.
MIN_WAIT = 0.1


@dataclass
class WorkerOptions:
    batch_size: int = 500
    poll_seconds: float = 2.0
    max_backoff: float = 10.0
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # Called after each committed batch that claimed something (bench/routing.py times
    # insert -> assigned with it).
    on_batch: Callable[[BatchResult], None] | None = None
    # None: emails stay queued (said once at start); reminders still notify in-app.
    smtp: SmtpConfig | None = None
    email_batch: int = 50


@dataclass
class Totals:
    batches: int = 0
    claimed: int = 0
    assigned: int = 0
    deferred: int = 0
    notified: int = 0
    emails: int = 0

    def add(self, result: BatchResult) -> None:
        self.batches += 1
        self.claimed += result.claimed
        self.assigned += result.assigned
        self.deferred += result.deferred


class Worker:
    def __init__(self, target: Target, options: WorkerOptions | None = None) -> None:
        self.target = target
        self.options = options or WorkerOptions()
        self.totals = Totals()
        self._stopping = False

    def stop(self) -> None:
        """Finish the current batch, then return from run(); safe in a signal handler."""
        self._stopping = True

    def run(self, *, until_idle: bool = False) -> Totals:
        """Work until stop() (or, with until_idle, until nothing is due)."""
        backoff = 0.5
        email_off_said = False
        render_said = False
        while not self._stopping:
            try:
                with connect(self.target, autocommit=True) as conn:
                    conn.execute(query("listen_routing"))
                    conn.execute(q("listen_outbox"))
                    log("connected", worker=self.options.name, target=self.target.describe())
                    if self.options.smtp is None and not email_off_said:
                        email_off_said = True
                        log(
                            "email sending is off: CRMDB_SMTP_HOST is not set, emails stay queued",
                            logging.WARNING,
                            worker=self.options.name,
                        )
                    elif self.options.smtp is not None and not render_said:
                        render_said = True
                        row = conn.execute(query("worker_may_render")).fetchone()
                        if not (row and row[0]):
                            log(
                                "this login cannot act as employees: emails to employees will"
                                " fail; GRANT crmdb_worker TO it",
                                logging.WARNING,
                                worker=self.options.name,
                            )
                    backoff = 0.5
                    if self._serve(conn, until_idle):
                        break
            except (CrmdbError, psycopg.OperationalError) as exc:
                # Unreachable, restarted, or the connection dropped mid-batch: the batch's
                # transaction rolled back, its events are still there. Try again.
                log("disconnected", logging.WARNING, worker=self.options.name, error=str(exc))
                self._sleep(backoff)
                backoff = min(backoff * 2, self.options.max_backoff)
        log("stopped", worker=self.options.name, **vars(self.totals))
        return self.totals

    def _serve(self, conn: psycopg.Connection, until_idle: bool) -> bool:
        """Batches and waits on one connection; True when run() should return."""
        while not self._stopping:
            started = time.perf_counter()
            try:
                result = run_batch(conn, self.options.batch_size)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                log("batch retried", logging.WARNING, worker=self.options.name, error=str(exc))
                continue
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                # A bug or a bad rule: log it and keep serving the rest after a pause.
                error = str(server_error(exc))
                log("batch failed", logging.ERROR, worker=self.options.name, error=error)
                self._sleep(self.options.poll_seconds)
                continue
            if result.claimed:
                self.totals.add(result)
                if self.options.on_batch is not None:
                    self.options.on_batch(result)
                log(
                    "batch",
                    worker=self.options.name,
                    claimed=result.claimed,
                    assigned=result.assigned,
                    deferred=result.deferred,
                    ms=round((time.perf_counter() - started) * 1000, 1),
                )
                if result.claimed > result.deferred:
                    continue  # there may be more
            if self._outbox(conn):
                continue
            if until_idle:
                return True
            self._wait(conn)
        return True

    def _outbox(self, conn: psycopg.Connection) -> bool:
        """Due notifications, then due emails; True when a full batch suggests more."""
        name = self.options.name
        try:
            notified = notify_due(conn, self.options.batch_size)
            if notified:
                self.totals.notified += notified
                log("notified", worker=name, notifications=notified)
            if self.options.smtp is None:
                return notified >= self.options.batch_size
            sent = send_due(conn, self.options.smtp, limit=self.options.email_batch, worker=name)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            log("outbox failed", logging.ERROR, worker=name, error=str(server_error(exc)))
            self._sleep(self.options.poll_seconds)
            return False
        if sent.claimed or sent.recovered:
            self.totals.emails += sent.claimed
            log("emails", worker=name, recovered=sent.recovered, **sent.outcomes)
        return notified >= self.options.batch_size or sent.claimed >= self.options.email_batch

    def _wait(self, conn: psycopg.Connection) -> None:
        """Until a NOTIFY, the next due time or the poll interval, whichever is first."""
        row = conn.execute(query("next_routing_due")).fetchone()
        due = conn.execute(q("next_outbox_due")).fetchone()
        times = [row[0] if row else None, due[0] if due else None]
        if self.options.smtp is not None and due is not None:
            times.append(due[1])
        wait = self.options.poll_seconds
        for at in times:
            if at is not None:
                wait = min(wait, max(MIN_WAIT, (at - _now(at)).total_seconds()))
        deadline = time.monotonic() + wait
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in conn.notifies(timeout=min(left, WAIT_SLICE), stop_after=1):
                return

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(WAIT_SLICE, deadline - time.monotonic()))


def _now(like: datetime) -> datetime:
    return datetime.now(like.tzinfo)
