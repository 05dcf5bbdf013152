"""crmdb routing benchmark: throughput, insert -> assigned latency, trigger overhead.

    python bench/routing.py [--dsn DSN] [--records N] [--rate R] [--seconds S] [--runs K]

Builds a fresh database (crmdb_bench_routing on the target: --dsn, $CRMDB_DSN, or the
embedded server), migrates, adds a project with two teams of 10 and three rules (round
robin with a capacity, least loaded, weighted), then measures:

- throughput: N unowned customers inserted (their events recorded), then drained by one
  worker, and again by two at once: records routed per second;
- latency: customers inserted one per transaction at a fixed offered load (R per second
  for S seconds) while one worker runs (LISTEN/NOTIFY); from each insert's commit to the
  commit of the batch that assigned it (p50, p99);
- trigger overhead: a bulk insert of N customers with the routing trigger and without it
  (the audit trigger on in both), median of K runs.

Targets (2 cores): >= 2,000 routed/s, p99 <= 250 ms at 500/s, overhead <= 2x.
"""

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from crmdb import admin, migrate
from crmdb.db import Target, connect, resolve_target
from crmdb.queries import query
from crmdb.worker.batch import BatchResult
from crmdb.worker.loop import Worker, WorkerOptions

QUERIES = str(Path(__file__).resolve().parent / "routing.sql")
DBNAME = "crmdb_bench_routing"
PREFIX = "rbench_"
PRODUCERS = 16  # client connections offering the latency run's load


def q(name: str) -> sql.SQL:
    return query(name, QUERIES)


def setup(server: Target) -> Target:
    target = server.with_params(dbname=DBNAME)
    with connect(server.with_params(dbname="postgres"), autocommit=True) as conn:
        conn.execute(q("drop_database").format(name=sql.Identifier(DBNAME)))
        conn.execute(q("create_database").format(name=sql.Identifier(DBNAME)))
    migrate.apply(target)
    with connect(target) as conn, conn.transaction():
        admin.add_org_unit(conn, "bench-co", "Bench", "company")
        admin.add_project(conn, "bench", "Bench", ["sales"])
        for team in ("team-a", "team-b"):
            admin.add_org_unit(conn, team, team, "team", "bench-co")
            for i in range(10):
                role = f"{PREFIX}{team.replace('-', '_')}_{i}"
                admin.add_employee(conn, role, role, f"{role}@bench.test", team)
                admin.add_project_member(conn, "bench", role, "sales", "sales_rep")
        conn.execute(q("add_rules"))
    return target


def pending(conn: psycopg.Connection) -> int:
    row = conn.execute(q("pending")).fetchone()
    return int(row[0]) if row else 0


def throughput(target: Target, records: int, workers: int) -> float:
    with connect(target, autocommit=True) as conn:
        conn.execute(q("reset"))
        conn.execute(q("insert_customers"), {"count": records})
        conn.execute(q("vacuum"))
    pool = [Worker(target, WorkerOptions(batch_size=500, name=f"w{i}")) for i in range(workers)]
    threads = [threading.Thread(target=w.run, kwargs={"until_idle": True}) for w in pool]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    with connect(target, autocommit=True) as conn:
        left = pending(conn)
    routed = sum(w.totals.assigned for w in pool)
    if left or routed != records:
        sys.exit(f"throughput run incomplete: {routed} routed, {left} events left")
    return records / elapsed


def latency(target: Target, rate: int, seconds: float) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, the load achieved per second) at a fixed offered load, one worker
    listening."""
    with connect(target, autocommit=True) as conn:
        conn.execute(q("reset"))
    inserted: dict[int, float] = {}
    assigned: dict[int, float] = {}
    watcher = connect(target, autocommit=True)
    last = [0]

    def on_batch(_: BatchResult) -> None:
        now = time.perf_counter()
        for history_id, customer_id in watcher.execute(q("history_since"), {"after": last[0]}):
            assigned[customer_id] = now
            last[0] = history_id

    worker = Worker(target, WorkerOptions(batch_size=500, poll_seconds=1.0, on_batch=on_batch))
    thread = threading.Thread(target=worker.run)
    thread.start()
    total = int(rate * seconds)
    start = time.perf_counter()

    def produce(offset: int) -> None:
        # Producer `offset` inserts records offset, offset + PRODUCERS, ...: together an
        # arrival every 1/rate seconds, each its own transaction, as app clients would.
        with connect(target, autocommit=True) as conn:
            for i in range(offset, total, PRODUCERS):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # pacing the offered load, not synchronisation
                row = conn.execute(q("insert_one_customer")).fetchone()
                assert row is not None
                inserted[int(row[0])] = time.perf_counter()

    producers = [threading.Thread(target=produce, args=(i,)) for i in range(PRODUCERS)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    achieved = total / (time.perf_counter() - start)
    deadline = time.perf_counter() + 30
    while len(assigned) < total and time.perf_counter() < deadline:
        time.sleep(0.05)
    worker.stop()
    thread.join()
    watcher.close()
    if len(assigned) < total:
        sys.exit(f"latency run incomplete: {len(assigned)} of {total} assigned")
    if achieved < rate * 0.95:
        print(f"warning: the producer offered only {achieved:.0f}/s", file=sys.stderr)
    waits = sorted((assigned[c] - t) * 1000 for c, t in inserted.items())
    return statistics.median(waits), waits[int(len(waits) * 0.99) - 1], achieved


def trigger_overhead(target: Target, records: int, runs: int) -> tuple[float, float, float]:
    """(median ms with the routing trigger, without, ratio)."""
    timings: dict[bool, list[float]] = {True: [], False: []}
    with connect(target, autocommit=True) as conn:
        for _ in range(runs):
            for enabled in (True, False):
                conn.execute(q("reset"))
                conn.execute(q("routing_trigger_on" if enabled else "routing_trigger_off"))
                started = time.perf_counter()
                conn.execute(q("insert_customers"), {"count": records})
                timings[enabled].append((time.perf_counter() - started) * 1000)
        conn.execute(q("routing_trigger_on"))
        conn.execute(q("reset"))
    with_ms, without_ms = statistics.median(timings[True]), statistics.median(timings[False])
    return with_ms, without_ms, with_ms / without_ms


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    target = setup(resolve_target(args.dsn))
    with connect(target) as conn:
        row = conn.execute(q("server_version")).fetchone()
    print(f"PostgreSQL {row[0] if row else '?'}, {args.records:,} records, 2 teams of 10, 3 rules")
    one = throughput(target, args.records, 1)
    two = throughput(target, args.records, 2)
    p50, p99, achieved = latency(target, args.rate, args.seconds)
    with_ms, without_ms, ratio = trigger_overhead(target, args.records, args.runs)
    print()
    print("| measure | result | target |")
    print("|---|---|---|")
    print(f"| routed/s, one worker | {one:,.0f} | >= 2,000 {verdict(one >= 2000)} |")
    print(f"| routed/s, two workers | {two:,.0f} | >= 2,000 {verdict(two >= 2000)} |")
    print(
        f"| insert -> assigned at {args.rate}/s for {args.seconds:.0f} s (offered:"
        f" {achieved:.0f}/s) | p50 {p50:.1f} ms,"
        f" p99 {p99:.1f} ms | p99 <= 250 ms {verdict(p99 <= 250)} |"
    )
    print(
        f"| bulk insert of {args.records:,}, routing trigger on / off | {with_ms:.0f} /"
        f" {without_ms:.0f} ms = {ratio:.2f}x | <= 2x {verdict(ratio <= 2)} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
