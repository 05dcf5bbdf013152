"""One batch of the routing engine: a transaction around crm_private.route_events."""

from dataclasses import dataclass
from datetime import datetime

import psycopg

from crmdb.queries import query


@dataclass(frozen=True)
class BatchResult:
    claimed: int  # events taken (applied, deferred or found moot)
    assigned: int  # customers that got a new owner
    deferred: int  # events put off: outside business hours, or nobody eligible


def run_batch(conn: psycopg.Connection, limit: int, now: datetime | None = None) -> BatchResult:
    """Claim and apply up to `limit` due events in one transaction.

    `now` pins the clock the rules see (business hours, SLA clocks); None is the
    server's clock. Only crmdb_owner members that are not employees may run it.
    """
    with conn.transaction():
        row = conn.execute(query("route_events"), {"limit": limit, "now": now}).fetchone()
    assert row is not None
    return BatchResult(*row)


def drain(conn: psycopg.Connection, limit: int = 500, now: datetime | None = None) -> BatchResult:
    """Batches until none claims anything (tests, `crmdb worker --once`); the totals."""
    claimed = assigned = deferred = 0
    while True:
        result = run_batch(conn, limit, now)
        if result.claimed == 0:
            return BatchResult(claimed, assigned, deferred)
        claimed += result.claimed
        assigned += result.assigned
        deferred += result.deferred
        if result.claimed == result.deferred:
            # Everything left is put off to later than `now`: draining again finds nothing.
            return BatchResult(claimed, assigned, deferred)
