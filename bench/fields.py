"""crmdb benchmark: reading through crm_api's views against the base table, same role.

    python bench/fields.py [--dsn DSN] [--runs K] [--prepared]

Runs on a database bench/run.py seeded (crmdb_bench on the embedded default, or --dsn),
with the shipped policies applied. For the rep, manager, director and admin bench/run.py
picks, each query runs as that employee (SET LOCAL ROLE) through crm_api.customers
(every field group joined, masks) and through crm.customers (core fields only), both
under the same row policies; alternating runs, medians of K. Target (issue 5): the view
within 1.2x of the base table. Prints one markdown table.

Every statement is planned at each run (as psql or a BI tool sends it); with --prepared
they are server-side prepared statements whose plans are reused (as psycopg does after
five runs of a statement, JDBC and PostgREST), so the ratio is execution only.
"""

import argparse
import statistics
import sys
from collections.abc import Sequence

from psycopg import sql
from run import BENCH_DBNAME, SHAPES, pick_roles, run_once, table

from crmdb.db import Target, connect, parse_dsn, resolve_target

FIELDS = "phone, email, address, bank_account, tax_code, notes"
CORE = "id, full_name, province, stage, score, created_at"
# Every column of crm.customers an employee may select (not the groups' read copies)
READABLE = (
    "id, project_id, org_unit_id, owner_id, full_name, province, stage, source, score,"
    " product_interest, created_by, assigned_at, created_at, updated_at, phone_mask"
)
# (name, through the view, through the base table); %(id)s: a customer the role sees
QUERIES = (
    (
        "newest 50",
        f"SELECT {CORE}, {FIELDS} FROM crm_api.customers ORDER BY created_at DESC LIMIT 50",
        f"SELECT {CORE} FROM crm.customers ORDER BY created_at DESC LIMIT 50",
    ),
    (
        "newest 1,000",
        f"SELECT {CORE}, {FIELDS} FROM crm_api.customers ORDER BY created_at DESC LIMIT 1000",
        f"SELECT {CORE} FROM crm.customers ORDER BY created_at DESC LIMIT 1000",
    ),
    ("count", "SELECT count(*) FROM crm_api.customers", "SELECT count(*) FROM crm.customers"),
    (
        "by id",
        "SELECT * FROM crm_api.customers WHERE id = %(id)s",
        f"SELECT {READABLE} FROM crm.customers WHERE id = %(id)s",
    ),
)
TARGET = 1.2


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dsn", help=f"a superuser DSN (default: the embedded {BENCH_DBNAME})")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--prepared", action="store_true", help="reuse plans (execution only)")
    args = ap.parse_args(argv)
    if args.dsn:
        target = Target(parse_dsn(args.dsn, "--dsn"), "--dsn")
    else:
        target = resolve_target(None).with_params(dbname=BENCH_DBNAME)
    rows: list[tuple[str, ...]] = []
    ratios: list[float] = []
    with connect(target, autocommit=True) as conn:
        # Plan every run, as ad-hoc clients do; or prepare at the first run and reuse
        conn.prepare_threshold = 0 if args.prepared else None
        for shape, (role, _) in pick_roles(conn).items():
            if shape not in SHAPES:
                continue
            _, seen = run_once(conn, sql.SQL("SELECT max(id) FROM crm.customers"), {}, role)
            params = {"id": seen[0][0]}
            for name, view, base in QUERIES:
                view_ms: list[float] = []
                base_ms: list[float] = []
                # Warm; prepared, PostgreSQL plans the first five runs anew before it
                # settles on a generic plan
                for stmt in (view, base):
                    for _ in range(6 if args.prepared else 1):
                        run_once(conn, sql.SQL(stmt), params, role)
                for _ in range(args.runs):
                    for stmt, out in ((view, view_ms), (base, base_ms)):
                        out.append(run_once(conn, sql.SQL(stmt), params, role)[0])
                v, b = statistics.median(view_ms), statistics.median(base_ms)
                ratios.append(v / b)
                rows.append((shape, name, f"{v:.2f}", f"{b:.2f}", f"{v / b:.2f}x"))
    median = statistics.median(ratios)
    mode = "prepared statements" if args.prepared else "planned at each run"
    print(f"# crm_api views vs base table, same role ({mode}, medians of {args.runs})\n")
    print("\n".join(table(["role", "query", "view ms", "base ms", "ratio"], rows)))
    verdict = "PASS" if median <= TARGET else "MISS"
    print(f"\nmedian ratio {median:.2f}x (target {TARGET}x): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
