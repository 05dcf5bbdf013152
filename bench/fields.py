"""crmdb benchmark: reading through crm_api's views against the base table, same role.

    python bench/fields.py [--dsn DSN] [--runs K] [--prepared]

Runs on a database bench/run.py seeded (crmdb_bench on the embedded default, or --dsn),
with the shipped policies applied. For the rep, manager, director and admin bench/run.py
picks, each query runs as that employee (SET LOCAL ROLE), under the same row policies:

- view: through crm_api.customers, core fields and six fields of three groups, each
  shown, masked or NULL as the templates say;
- base: crm.customers, the same fields read from the row's read copies, unmasked (what
  the view reads, without the field checks). Employees may not read the copies, so for
  this run each picked employee holds SELECT on those three columns; it is revoked at
  the end (crmdb lint reports a grant left behind by a killed run);
- core: crm.customers, core fields only (the baseline of earlier runs).

Alternating runs, medians of K. Target (issue 5): the view within 1.2x of the base
table (median ratio). Prints one markdown table, and whether the database has
crmdb_guard's statement cache (the policies and views compile for it when it does).

Every statement is planned at each run (as psql or a BI tool sends it); with --prepared
they are server-side prepared statements whose plans are reused (as psycopg does after
five runs of a statement, JDBC and PostgREST), so the ratio is execution only.
"""

import argparse
import statistics
import sys
from collections.abc import Sequence

from psycopg import sql
from run import BENCH_DBNAME, SHAPES, pick_roles, q, run_once, table

from crmdb.db import Target, connect, parse_dsn, resolve_target
from crmdb.guard import statement_cache_installed
from crmdb.lint import copies_out_of_step

FIELDS = "phone, email, address, bank_account, tax_code, notes"
COPIES = (
    "(contact_copy).phone, (contact_copy).email, (contact_copy).address,"
    " (financial_copy).bank_account, (financial_copy).tax_code, (internal_notes_copy).notes"
)
CORE = "id, full_name, province, stage, score, created_at"
# Every column of crm.customers an employee may select (not the groups' read copies)
READABLE = (
    "id, project_id, org_unit_id, owner_id, full_name, province, stage, source, score,"
    " product_interest, created_by, assigned_at, created_at, updated_at, phone_mask"
)
NEWEST = "SELECT {columns} FROM {source} ORDER BY created_at DESC LIMIT {n}"


def newest(n: int) -> tuple[str, str, str, str]:
    return (
        f"newest {n:,}",
        NEWEST.format(columns=f"{CORE}, {FIELDS}", source="crm_api.customers", n=n),
        NEWEST.format(columns=f"{CORE}, {COPIES}", source="crm.customers", n=n),
        NEWEST.format(columns=CORE, source="crm.customers", n=n),
    )


# (name, view, base, core); %(id)s: a customer the role sees
QUERIES = (
    newest(50),
    newest(1000),
    (
        "count",
        "SELECT count(*) FROM crm_api.customers",
        "SELECT count(*) FROM crm.customers",
        "SELECT count(*) FROM crm.customers",
    ),
    (
        "by id",
        "SELECT * FROM crm_api.customers WHERE id = %(id)s",
        f"SELECT {READABLE}, contact_copy, financial_copy, internal_notes_copy"
        " FROM crm.customers WHERE id = %(id)s",
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
    core_ratios: list[float] = []
    with connect(target, autocommit=True) as conn:
        # Both sides read the read copies: copies left NULL by a load would time rows
        # with no fields at all (crmdb lint reports them, with the statement that fixes them)
        if stale := copies_out_of_step(conn):
            for finding in stale:
                print(f"bench: {finding.object}: {finding.problem}", file=sys.stderr)
            print("bench: run crmdb lint for the fix; nothing measured", file=sys.stderr)
            return 1
        cache = "with" if statement_cache_installed(conn) else "without"
        # Plan every run, as ad-hoc clients do; or prepare at the first run and reuse
        conn.prepare_threshold = 0 if args.prepared else None
        picked = [(shape, role) for shape, (role, _) in pick_roles(conn).items() if shape in SHAPES]
        try:
            for _, role in picked:
                conn.execute(q("grant_read_copies").format(role=sql.Identifier(role)))
            for shape, role in picked:
                _, seen = run_once(conn, sql.SQL("SELECT max(id) FROM crm.customers"), {}, role)
                params = {"id": seen[0][0]}
                for name, *statements in QUERIES:
                    # Warm; prepared, PostgreSQL plans the first five runs anew before it
                    # settles on a generic plan
                    for stmt in statements:
                        for _ in range(6 if args.prepared else 1):
                            run_once(conn, sql.SQL(stmt), params, role)
                    ms: list[list[float]] = [[] for _ in statements]
                    for _ in range(args.runs):
                        for stmt, out in zip(statements, ms, strict=True):
                            out.append(run_once(conn, sql.SQL(stmt), params, role)[0])
                    v, b, c = (statistics.median(m) for m in ms)
                    ratios.append(v / b)
                    core_ratios.append(v / c)
                    rows.append((shape, name, f"{v:.2f}", f"{b:.2f}", f"{v / b:.2f}x", f"{c:.2f}"))
        finally:
            for _, role in picked:
                conn.execute(q("revoke_read_copies").format(role=sql.Identifier(role)))
    median = statistics.median(ratios)
    mode = "prepared statements" if args.prepared else "planned at each run"
    print(f"# crm_api views vs base table, same role ({mode}, medians of {args.runs})\n")
    print(f"Policies and views compiled {cache} crmdb_guard's statement cache.\n")
    header = ["role", "query", "view ms", "base ms", "ratio", "core ms"]
    print("\n".join(table(header, rows)))
    verdict = "PASS" if median <= TARGET else "MISS"
    print(f"\nmedian ratio {median:.2f}x (target {TARGET}x): {verdict}")
    print(f"against core fields only: median {statistics.median(core_ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
