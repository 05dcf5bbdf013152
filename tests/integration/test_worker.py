"""`crmdb worker`: several at once, kill -9 in the middle of a batch, a database restart,
SIGTERM. Workers are real: threads with their own connections, or `python -m crmdb
worker` subprocesses. A worker is caught mid-batch by holding the advisory lock of a
rule it needs: it has claimed its events and picked owners for the first rule, and
waits; pg_locks shows the wait, so no test sleeps to guess when it got there.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from routing_org import RoutingOrg, routing_org

from crmdb.worker.batch import drain
from crmdb.worker.loop import Worker, WorkerOptions

RULE_LOCK = "SELECT pg_advisory_lock(hashtext('crmdb routing rule'), %s)"
WAITING = (
    "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = %s"
)
BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
TIMEOUT = 60.0


@pytest.fixture
def org(db) -> Iterator[RoutingOrg]:
    with routing_org(db) as routing:
        yield routing


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Until `condition` holds (it reads the database); fails after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def scalar(conn: psycopg.Connection, query: str, params: list[object] | None = None) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def start_worker(org: RoutingOrg, app: str, batch: int = 50) -> subprocess.Popen[str]:
    dsn = org.db.target.with_params(application_name=app).conninfo
    command = ["worker", "--dsn", dsn, "--batch", str(batch), "--poll", "0.5"]
    return subprocess.Popen(
        [sys.executable, "-m", "crmdb", *command],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def two_rules(org: RoutingOrg, each: int) -> tuple[int, int, list[int]]:
    """Rules chat -> sales and email -> care; `each` customers of each, interleaved."""
    first = org.rule("chat", target_org_unit="sales", sources=["chat"])
    second = org.rule("email", target_org_unit="care", sources=["email"])
    ids: list[int] = []
    for _ in range(each):
        ids += org.customers(1, source="chat") + org.customers(1, source="email")
    return first, second, ids


def assigned_once(org: RoutingOrg, ids: list[int]) -> None:
    """Every customer assigned exactly once; counters agree; no event left."""
    rows = org.conn.execute(
        "SELECT count(*), count(DISTINCT customer_id) FROM crm.assignment_history"
    ).fetchone()
    assert rows == (len(ids), len(ids))
    assert None not in org.owners(ids)
    assert scalar(org.conn, "SELECT sum(assigned) FROM crm_private.routing_counters") == len(ids)
    assert org.pending_events() == 0


def test_two_workers_at_once_assign_each_customer_once_and_fairly(org):
    org.rule("rr", target_org_unit="sales", strategy="round_robin")
    ids = org.customers(400)
    workers = [Worker(org.db.target, WorkerOptions(batch_size=20, name=f"w{i}")) for i in (1, 2)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(worker: Worker) -> None:
        start.wait()
        try:
            worker.run(until_idle=True)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    # Expect no error (no deadlock), every customer once, and turns within one
    assert errors == [] and not any(t.is_alive() for t in threads)
    drain(org.conn)  # whatever a worker left when it found nothing claimable
    assigned_once(org, ids)
    counts = org.counts(ids)
    assert set(counts) == {"lead", "s1", "s2", "s3"}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(w.totals.assigned for w in workers) == 400


def test_kill_9_mid_batch_loses_nothing_and_applies_nothing_twice(org):
    _, second, ids = two_rules(org, 40)
    with psycopg.connect(org.db.target.conninfo, autocommit=True) as blocker:
        blocker.execute(RULE_LOCK, [second])
        worker = start_worker(org, "crmdb-kill9")
        try:
            wait_for(lambda: scalar(org.conn, WAITING, ["crmdb-kill9"]) == 1, "the worker to block")
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=TIMEOUT)
    # The lock is free: the orphaned backend finishes its statement, finds no client
    # and rolls back.
    wait_for(lambda: scalar(org.conn, BACKENDS, ["crmdb-kill9"]) == 0, "the backend to end")
    assert worker.returncode == -signal.SIGKILL
    # Expect nothing applied and no event lost
    assert scalar(org.conn, "SELECT count(*) FROM crm.assignment_history") == 0
    assert scalar(org.conn, "SELECT count(*) FROM crm_private.routing_counters") == 0
    assert org.pending_events() == len(ids)
    # Expect a new worker to apply each exactly once
    drain(org.conn, limit=50)
    assigned_once(org, ids)


def test_sigterm_lets_the_batch_commit_then_exits(org):
    _, second, ids = two_rules(org, 10)
    with psycopg.connect(org.db.target.conninfo, autocommit=True) as blocker:
        blocker.execute(RULE_LOCK, [second])
        worker = start_worker(org, "crmdb-term", batch=100)
        wait_for(lambda: scalar(org.conn, WAITING, ["crmdb-term"]) == 1, "the worker to block")
        worker.send_signal(signal.SIGTERM)
    # Expect the batch in progress to finish and commit, then a clean exit
    _, stderr = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0
    events = [json.loads(line)["event"] for line in stderr.splitlines()]
    assert events[0] == "connected" and events[-1] == "stopped"
    assigned_once(org, ids)


@pytest.mark.slow
def test_a_database_restart_mid_batch_loses_nothing(org, pg_cluster):
    _, second, ids = two_rules(org, 40)
    blocker = psycopg.connect(org.db.target.conninfo, autocommit=True)
    blocker.execute(RULE_LOCK, [second])
    worker = start_worker(org, "crmdb-restart")
    try:
        wait_for(lambda: scalar(org.conn, WAITING, ["crmdb-restart"]) == 1, "the worker to block")
        org.conn.close()
        pg_cluster.restart()  # ends every session: the blocker's, the worker's, ours
        org.conn = org.db.connect()
        # Expect the worker to reconnect and finish the work
        wait_for(lambda: org.pending_events() == 0, "the worker to drain after the restart")
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=TIMEOUT)
        assert worker.returncode == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
        blocker.close()
    assigned_once(org, ids)
    events = [json.loads(line)["event"] for line in stderr.splitlines()]
    assert "disconnected" in events and events.count("connected") >= 2


def test_crmdb_worker_once_drains_and_exits(org):
    org.rule("rr", target_org_unit="sales")
    ids = org.customers(5)
    result = subprocess.run(
        [sys.executable, "-m", "crmdb", "worker", "--once", "--dsn", org.db.target.conninfo],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    batch = next(line for line in lines if line["event"] == "batch")
    assert (batch["claimed"], batch["assigned"]) == (5, 5) and "ms" in batch
    assigned_once(org, ids)
