"""crmdb routing benchmark: throughput, insert -> assigned latency, trigger overhead.

    python bench/routing.py [--dsn DSN] [--records N] [--rate R] [--seconds S] [--runs K]
                            [--latency-only]

Builds a fresh database (crmdb_bench_routing on the target: --dsn, $CRMDB_DSN, or the
embedded server), migrates, adds a project with two teams of 10 and three rules (round
robin with a capacity, least loaded, weighted), then measures:

- throughput: N unowned customers inserted (their events recorded), then drained by one
  worker, and again by two at once: records routed per second;
- latency: customers inserted at a fixed offered load (R per second for S seconds)
  while one worker runs (LISTEN/NOTIFY); from each insert's commit to the commit of the
  batch that assigned it (p50, p99), printed with the rate the load generator achieved.
  The load comes from LANES processes of their own (not the worker's process: its GIL
  would slow them), paced by an absolute schedule in ticks of TICK seconds, each
  tick's arrivals one INSERT and transaction (at 500/s, 100 statements of 5 rows a
  second instead of 500 round trips, which a busy 2-core machine could not offer);
- trigger overhead: a bulk insert of N customers with the routing trigger and without it
  (the audit trigger on in both), median of K runs.

Targets (2 cores): >= 2,000 routed/s, p99 <= 250 ms at 500/s, overhead <= 2x.
"""

import argparse
import multiprocessing
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

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
# The latency run's load generator: LANES processes, one connection each, taking turns
# at ticks of TICK seconds of one absolute schedule (at 500/s: 5 arrivals a tick).
LANES = 4
TICK = 0.01


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


@dataclass
class Offered:
    """What the load generator did: when each customer's insert committed (monotonic
    seconds, comparable across processes), how many it inserted, over how long, and how
    far it fell behind its schedule at worst."""

    committed: dict[int, float]
    seconds: float
    max_lag_ms: float

    @property
    def rate(self) -> float:
        return len(self.committed) / self.seconds if self.seconds else 0.0


def _due(rate: int, tick: int) -> int:
    """Arrivals due by the end of `tick` (TICK seconds each) at `rate` per second."""
    return int(rate * (tick + 1) * TICK)


def _produce(
    conninfo: str,
    rate: int,
    seconds: float,
    lane: int,
    gates: tuple[Barrier, Barrier],
    start: Any,
    out: "Queue[tuple[dict[int, float], float]]",
) -> None:
    """One lane of the load generator: ticks lane, lane + LANES, ... of an absolute
    schedule (tick k ends at start + (k + 1) * TICK). At the end of each of its ticks it
    inserts that tick's arrivals in one statement and transaction. When late it inserts
    every tick of its own that is due, at once, in one statement: a slow moment is
    caught up, and does not push the rest of the schedule back."""
    committed: dict[int, float] = {}
    max_lag = 0.0
    ticks = list(range(lane, round(seconds / TICK), LANES))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        gates[0].wait()  # every lane connected ...
        gates[1].wait()  # ... and the start set
        begin = float(start.value)
        while ticks:
            wait = begin + (ticks[0] + 1) * TICK - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # pacing by the absolute schedule, not synchronisation
            now = time.monotonic()
            due = [t for t in ticks if begin + (t + 1) * TICK <= now]
            ticks = ticks[len(due) :]
            count = sum(_due(rate, t) - _due(rate, t - 1) for t in due)
            max_lag = max(max_lag, now - (begin + (due[0] + 1) * TICK))
            if count <= 0:
                continue
            rows = conn.execute(q("insert_paced_customers"), {"count": count}).fetchall()
            committed_at = time.monotonic()
            committed.update((int(r[0]), committed_at) for r in rows)
    out.put((committed, max_lag))


def latency(target: Target, rate: int, seconds: float) -> tuple[float, float, Offered]:
    """(p50 ms, p99 ms, what was offered) at a fixed offered load, one worker listening.

    The load comes from a separate process (LANES connections of its own, so neither
    the worker's thread nor the GIL slows it), paced by an absolute schedule in ticks
    of TICK seconds: each tick's arrivals go in one INSERT, its own transaction."""
    with connect(target, autocommit=True) as conn:
        conn.execute(q("reset"))
    assigned: dict[int, float] = {}
    watcher = connect(target, autocommit=True)
    last = [0]

    def on_batch(_: BatchResult) -> None:
        now = time.monotonic()
        for history_id, customer_id in watcher.execute(q("history_since"), {"after": last[0]}):
            assigned[customer_id] = now
            last[0] = history_id

    worker = Worker(target, WorkerOptions(batch_size=500, poll_seconds=1.0, on_batch=on_batch))
    thread = threading.Thread(target=worker.run)
    thread.start()
    context = multiprocessing.get_context("spawn")
    out: Queue[tuple[dict[int, float], float]] = context.Queue()
    gates = (context.Barrier(LANES + 1), context.Barrier(LANES + 1))
    shared_start = context.Value("d", 0.0)
    lanes = [
        context.Process(
            target=_produce,
            args=(target.conninfo, rate, seconds, i, gates, shared_start, out),
        )
        for i in range(LANES)
    ]
    for p in lanes:
        p.start()
    # The schedule starts once every lane has started and connected.
    gates[0].wait()
    start = shared_start.value = time.monotonic() + 0.05
    gates[1].wait()
    committed: dict[int, float] = {}
    max_lag = 0.0
    for _ in lanes:
        part, lag = out.get()
        committed.update(part)
        max_lag = max(max_lag, lag)
    for p in lanes:
        p.join()
    ended = max(committed.values(), default=start)
    offered = Offered(committed, max(ended - start, TICK), max_lag * 1000)
    total = len(committed)
    deadline = time.monotonic() + 30
    while len(assigned) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    thread.join()
    watcher.close()
    if len(assigned) < total:
        sys.exit(f"latency run incomplete: {len(assigned)} of {total} assigned")
    if offered.rate < rate * 0.95:
        print(f"warning: the load generator offered only {offered.rate:.0f}/s", file=sys.stderr)
    waits = sorted((assigned[c] - t) * 1000 for c, t in committed.items())
    return statistics.median(waits), waits[int(len(waits) * 0.99) - 1], offered


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
    parser.add_argument(
        "--latency-only", action="store_true", help="only the fixed-load latency run"
    )
    args = parser.parse_args(argv)

    target = setup(resolve_target(args.dsn))
    with connect(target) as conn:
        row = conn.execute(q("server_version")).fetchone()
    print(f"PostgreSQL {row[0] if row else '?'}, {args.records:,} records, 2 teams of 10, 3 rules")
    p50, p99, offered = latency(target, args.rate, args.seconds)
    latency_row = (
        f"| insert -> assigned, offered {args.rate}/s for {args.seconds:.0f} s"
        f" (achieved {offered.rate:.0f}/s, {len(offered.committed):,} records, schedule lag"
        f" <= {offered.max_lag_ms:.0f} ms) | p50 {p50:.1f} ms, p99 {p99:.1f} ms |"
        f" p99 <= 250 ms {verdict(p99 <= 250 and offered.rate >= args.rate * 0.95)} |"
    )
    print()
    print("| measure | result | target |")
    print("|---|---|---|")
    if args.latency_only:
        print(latency_row)
        return 0
    one = throughput(target, args.records, 1)
    two = throughput(target, args.records, 2)
    with_ms, without_ms, ratio = trigger_overhead(target, args.records, args.runs)
    print(f"| routed/s, one worker | {one:,.0f} | >= 2,000 {verdict(one >= 2000)} |")
    print(f"| routed/s, two workers | {two:,.0f} | >= 2,000 {verdict(two >= 2000)} |")
    print(latency_row)
    print(
        f"| bulk insert of {args.records:,}, routing trigger on / off | {with_ms:.0f} /"
        f" {without_ms:.0f} ms = {ratio:.2f}x | <= 2x {verdict(ratio <= 2)} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
