"""crmdb.seed: a small seed has the planned shape, is deterministic, and refuses reruns.

`seeded` is one seeded database shared by the module and never changed; tests that
seed again or change something make their own database.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from psycopg import sql

from crmdb.errors import CrmdbError
from crmdb.lint import copies_out_of_step, side_rows_out_of_step
from crmdb.seed import SeedReport, seed
from crmdb.testing.scratch import TEST_PASSWORD, ScratchDatabase, ScratchFactory

CUSTOMERS, EMPLOYEES = 2000, 40
ANCHOR = datetime(2025, 6, 1, tzinfo=UTC)  # fixed, so two seeds can match exactly

CHECKSUMS = """
SELECT (SELECT md5(string_agg(c::text, '|' ORDER BY c.id)) FROM crm.customers AS c),
       (SELECT md5(string_agg(c::text, '|' ORDER BY c.id)) FROM crm.contracts AS c),
       (SELECT md5(string_agg(a::text, '|' ORDER BY a.id)) FROM crm.activities AS a),
       (SELECT md5(string_agg(s::text, '|' ORDER BY s.id)) FROM crm.shares AS s)
"""


@dataclass
class Seeded:
    db: ScratchDatabase
    report: SeedReport
    steps: list[tuple[str, int, int]]

    def one(self, query: str, params: dict[str, object] | None = None) -> object:
        with self.db.connect() as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]

    def id(self, role: str) -> int:
        value = self.one("SELECT id FROM crm.employees WHERE role_name = %(r)s", {"r": role})
        assert isinstance(value, int)
        return value


def run_seed(db: ScratchDatabase, **kwargs: object) -> SeedReport:
    params: dict[str, object] = {
        "customers": CUSTOMERS,
        "employees": EMPLOYEES,
        "role_prefix": db.role("seed_"),
        "now": ANCHOR,
    }
    params.update(kwargs)
    with db.connect() as conn:
        return seed(conn, **params)  # type: ignore[arg-type]


def checksums(db: ScratchDatabase) -> tuple[object, ...]:
    with db.connect() as conn:
        row = conn.execute(CHECKSUMS).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture(scope="module")
def seeded(scratch: ScratchFactory) -> Iterator[Seeded]:
    db = scratch.migrated()
    steps: list[tuple[str, int, int]] = []
    try:
        report = run_seed(db, progress=lambda *step: steps.append(step))
        yield Seeded(db, report, steps)
    finally:
        db.drop()


# Shape ------------------------------------------------------------------------------


def test_report_counts_are_exact(seeded):
    r = seeded.report
    # Expect 1 CEO, 40/200 -> 1 director, 40/20 = 2 managers, 37 staff of whom 1 in marketing
    assert (r.employees, r.directors, r.managers, r.reps, r.marketing) == (40, 1, 2, 35, 1)
    # Expect a company, 3 branches with 2 teams each, and the marketing department
    assert (r.org_units, r.projects) == (11, 3)
    assert (r.customers, r.shares) == (CUSTOMERS, CUSTOMERS // 50)
    # Expect about one contract for three customers and two activities a customer
    assert CUSTOMERS * 0.25 < r.contracts < CUSTOMERS * 0.45
    assert CUSTOMERS * 1.7 < r.activities < CUSTOMERS * 2.3


def test_database_holds_what_the_report_says(seeded):
    r = seeded.report
    prefix = {"p": r.role_prefix}
    # Expect every count in the report to be a count of rows
    assert (
        seeded.one("SELECT count(*) FROM crm.employees WHERE starts_with(role_name, %(p)s)", prefix)
        == r.employees
    )
    assert seeded.one("SELECT count(*) FROM crm.org_units") == r.org_units
    assert seeded.one("SELECT count(*) FROM crm.projects") == r.projects
    assert seeded.one("SELECT count(*) FROM crm.customers") == r.customers
    assert seeded.one("SELECT count(*) FROM crm.contracts") == r.contracts
    assert seeded.one("SELECT count(*) FROM crm.activities") == r.activities
    assert seeded.one("SELECT count(*) FROM crm.shares") == r.shares


def test_hierarchy_has_four_levels(seeded):
    r = seeded.report
    # Expect CEO -> director -> manager -> rep: the deepest pair is 3 levels apart
    assert seeded.one("SELECT max(depth) FROM crm_private.manager_tree") == 3
    levels = seeded.one(
        "SELECT array_agg(n ORDER BY depth) FROM (SELECT depth, count(*) AS n"
        " FROM crm_private.manager_tree WHERE manager_id = %(ceo)s GROUP BY depth) AS d",
        {"ceo": seeded.id(r.admin_role)},
    )
    # Expect everyone under the CEO: 1 director, then 2 managers and the marketer, then reps
    assert levels == [1, 1, 3, 35]
    # Expect the sample roles to be a chain rep -> manager -> director -> CEO
    chain = seeded.one(
        "SELECT array_agg(m.role_name::text ORDER BY t.depth) FROM crm_private.manager_tree AS t"
        " JOIN crm.employees AS m ON m.id = t.manager_id WHERE t.employee_id = %(rep)s",
        {"rep": seeded.id(r.rep_role)},
    )
    assert chain == [r.rep_role, r.manager_role, r.director_role, r.admin_role]


def test_every_rep_owns_customers_in_their_team(seeded):
    reps_without = seeded.one(
        "SELECT count(*) FROM crm.employees AS e WHERE starts_with(e.role_name, %(p)s)"
        " AND NOT EXISTS (SELECT FROM crm.customers AS c WHERE c.owner_id = e.id)",
        {"p": seeded.report.role_prefix + "rep_"},
    )
    # Expect no rep without customers
    assert reps_without == 0
    # Expect every customer to sit in its owner's team
    assert (
        seeded.one(
            "SELECT count(*) FROM crm.customers AS c JOIN crm.employees AS e ON e.id = c.owner_id"
            " WHERE c.org_unit_id IS DISTINCT FROM e.org_unit_id"
        )
        == 0
    )


def test_rows_are_consistent(seeded):
    # Expect no dangling references: the bulk load skipped per-row FK checks
    assert (
        seeded.one(
            "SELECT count(*) FROM crm.contracts AS k LEFT JOIN crm.customers AS c"
            " ON c.id = k.customer_id WHERE c.id IS NULL OR k.owner_id IS DISTINCT FROM c.owner_id"
        )
        == 0
    )
    assert (
        seeded.one(
            "SELECT count(*) FROM crm.activities AS a"
            " LEFT JOIN crm.customers AS c ON c.id = a.customer_id"
            " LEFT JOIN crm.employees AS e ON e.id = a.employee_id"
            " WHERE c.id IS NULL OR e.id IS NULL"
        )
        == 0
    )
    assert (
        seeded.one(
            "SELECT count(*) FROM crm.shares AS s LEFT JOIN crm.employees AS e"
            " ON e.id = s.grantee_employee_id WHERE e.id IS NULL"
        )
        == 0
    )
    # Expect times relative to the anchor: nothing created after it, open tasks due near it
    assert (
        seeded.one(
            "SELECT count(*) FROM crm.customers WHERE created_at > %(a)s"
            " OR created_at < %(a)s - interval '2 years 1 day'",
            {"a": ANCHOR},
        )
        == 0
    )
    open_due = seeded.one(
        "SELECT array[count(*), count(*) FILTER (WHERE due_at BETWEEN %(a)s - interval '3 days'"
        " AND %(a)s + interval '10 days')] FROM crm.activities"
        " WHERE kind IN ('task', 'appointment') AND done_at IS NULL",
        {"a": ANCHOR},
    )
    assert isinstance(open_due, list)
    assert open_due[0] > 0
    assert open_due[0] == open_due[1]


def test_every_employee_is_a_project_member_by_level(seeded):
    templates = seeded.one(
        "SELECT array_agg(DISTINCT level ORDER BY level) FROM ("
        " SELECT substring(e.role_name FROM '_(ceo|dir|mgr|rep|mkt)') || ':' || m.template"
        " AS level FROM crm.project_members AS m"
        " JOIN crm.employees AS e ON e.id = m.employee_id) AS l"
    )
    # Expect one template per level of the org
    assert templates == [
        "ceo:admin",
        "dir:director",
        "mgr:sales_manager",
        "mkt:marketing",
        "rep:sales_rep",
    ]
    assert (
        seeded.one(
            "SELECT count(*) FROM crm.employees AS e"
            " WHERE NOT EXISTS (SELECT FROM crm.project_members AS m WHERE m.employee_id = e.id)"
        )
        == 0
    )


def test_progress_reports_each_step_to_the_end(seeded):
    last = {step: (done, total) for step, done, total in seeded.steps}
    # Expect every step to finish at its total
    assert last == {
        "employees": (EMPLOYEES, EMPLOYEES),
        "customers": (CUSTOMERS, CUSTOMERS),
        "contracts": (CUSTOMERS, CUSTOMERS),
        "activities": (CUSTOMERS, CUSTOMERS),
        "shares": (CUSTOMERS // 50, CUSTOMERS // 50),
        "analyze": (1, 1),
    }


def test_superuser_seed_is_not_audited(seeded):
    # Expect only the employees in the audit trail: the bulk rows bypassed the triggers
    assert seeded.report.audited is False
    assert seeded.one("SELECT array_agg(DISTINCT table_name) FROM crm.change_log") == ["employees"]


def test_superuser_seed_writes_the_read_copies(seeded):
    # The load runs with triggers off, so it writes what the side tables' triggers would:
    # each group's row, its anchors, and the parent's read copy that crm_api shows
    with seeded.db.connect() as conn:
        assert copies_out_of_step(conn) == []
        assert side_rows_out_of_step(conn) == []
    # ... copies with values, not NULL on both sides: every customer has a phone
    assert seeded.one("SELECT count(*) FROM crm.customers WHERE contact_copy IS NULL") == 0
    assert (
        seeded.one("SELECT count(*) FROM crm.customers WHERE (contact_copy).phone IS NOT NULL")
        == CUSTOMERS
    )
    assert seeded.one("SELECT count(*) FROM crm.contracts WHERE financial_copy IS NULL") == 0


def test_sequences_continue_after_the_seeded_ids(seeded):
    with seeded.db.connect() as conn, conn.transaction(force_rollback=True):
        row = conn.execute(
            "INSERT INTO crm.customers (project_id, full_name) SELECT min(id), 'Khách mới'"
            " FROM crm.projects RETURNING id"
        ).fetchone()
    # Expect a fresh id after the last seeded one, not a duplicate key error
    assert row == (CUSTOMERS + 1,)


# Determinism ----------------------------------------------------------------------


def test_same_seed_gives_identical_data(seeded, scratch):
    other = scratch.migrated()
    try:
        run_seed(other)
        # Expect the same rows, id for id, in another database
        assert checksums(other) == checksums(seeded.db)
    finally:
        other.drop()


def test_different_seed_gives_different_data(seeded, scratch):
    other = scratch.migrated()
    try:
        run_seed(other, seed=2)
        mine, theirs = checksums(seeded.db), checksums(other)
        # Expect every table to differ
        assert all(a != b for a, b in zip(mine, theirs, strict=True))
    finally:
        other.drop()


# Refusals ---------------------------------------------------------------------------


def test_second_seed_with_same_prefix_is_refused(seeded):
    # Expect a clear refusal and no new rows
    with pytest.raises(CrmdbError, match="already holds seed data with role prefix"):
        run_seed(seeded.db)
    assert seeded.one("SELECT count(*) FROM crm.customers") == CUSTOMERS


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"customers": 0}, "at least 1 customer, got 0"),
        ({"employees": 3}, "at least 4 employees"),
        ({"role_prefix": ""}, "role prefix '' must be"),
        ({"role_prefix": "9seed_"}, "role prefix '9seed_' must be"),
    ],
)
def test_bad_arguments_are_refused(db, arguments, message):
    # Expect the message before anything is written
    with pytest.raises(CrmdbError, match=message):
        run_seed(db, **arguments)
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM crm.employees").fetchone() == (0,)


# A DBA who is not a superuser --------------------------------------------------------


def test_non_superuser_dba_can_seed_and_is_audited(db):
    # Sorts after the employees it creates, so the teardown drops them first.
    dba = db.role("zz_dba")
    with db.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(dba), sql.Literal(TEST_PASSWORD)
            )
        )
        conn.execute(sql.SQL("GRANT crmdb_owner TO {}").format(sql.Identifier(dba)))
        conn.execute(
            sql.SQL("GRANT crmdb_employee TO {} WITH ADMIN OPTION").format(sql.Identifier(dba))
        )
    with db.connect_as(dba) as conn:
        report = seed(conn, customers=200, employees=8, role_prefix=db.role("seed_"), now=ANCHOR)
    with db.connect() as conn:
        audited = dict(
            conn.execute("SELECT table_name, count(*) FROM crm.change_log GROUP BY 1").fetchall()
        )
        customers = conn.execute("SELECT count(*) FROM crm.customers").fetchone()
    # Expect rows through RLS and triggers: every bulk row in the audit trail
    assert report.audited is True
    assert customers == (200,)
    groups = {t: audited.pop(t) for t in list(audited) if "__" in t}
    assert audited == {
        "employees": 8,
        "customers": 200,
        "contracts": report.contracts,
        "activities": report.activities,
        "shares": report.shares,
    }
    # ... and field groups' values as changes of their groups' rows (one per row that got
    # a value: every customer has a phone, some have bank accounts or notes)
    assert groups["customers__contact"] == 200
    assert 0 < groups["customers__financial"] < 200
    assert 0 < groups["customers__internal_notes"] < 200
    assert groups["contracts__financial"] == report.contracts
    # ... and the read copies written by the side tables' triggers
    with db.connect() as conn:
        assert copies_out_of_step(conn) == []
        assert conn.execute(
            "SELECT count(*) FROM crm.customers WHERE contact_copy IS NULL"
        ).fetchone() == (0,)


def test_failed_seed_leaves_nothing(db):
    # A role that exists with CREATEROLE cannot become an employee: add_employee refuses it
    with db.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE").format(
                sql.Identifier(db.role("seed_rep_00003"))
            )
        )
    with pytest.raises(CrmdbError, match="CREATEROLE"):
        run_seed(db)
    with db.connect() as conn:
        # Expect the whole seed rolled back
        assert conn.execute("SELECT count(*) FROM crm.org_units").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM crm.employees").fetchone() == (0,)
