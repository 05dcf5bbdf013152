"""crmdb.demo: the Sao Việt demo company loads once, completely, and its staff can log in.

`demo` is one loaded database shared by the module and never changed; tests that
load differently make their own database.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
from psycopg import sql

from crmdb.demo import DemoReport, access_report, load_demo, render_access, render_report
from crmdb.errors import CrmdbError
from crmdb.policies.apply import apply_in, load_desired
from crmdb.testing.scratch import TEST_PASSWORD, ScratchDatabase, ScratchFactory

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
COUNTS = ("org_units", "employees", "customers", "contracts", "activities", "shares")


@dataclass
class Demo:
    db: ScratchDatabase
    report: DemoReport

    def one(self, query: str, params: dict[str, object] | None = None) -> object:
        with self.db.connect() as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]


def load(db: ScratchDatabase) -> DemoReport:
    with db.connect() as conn:
        return load_demo(conn, role_prefix=db.role("demo_"), password=TEST_PASSWORD, now=NOW)


def counts(report: DemoReport) -> tuple[int, ...]:
    return tuple(getattr(report, name) for name in COUNTS)


@pytest.fixture(scope="module")
def demo(scratch: ScratchFactory) -> Iterator[Demo]:
    db = scratch.migrated()
    try:
        yield Demo(db, load(db))
    finally:
        db.drop()


def test_first_load_reports_what_it_loaded(demo):
    r = demo.report
    # Expect a fresh load of the whole company
    assert r.reused is False
    assert (r.org_units, r.employees, r.customers, r.shares) == (11, 32, 3000, 5)
    assert 800 < r.contracts < 1300
    assert 5000 < r.activities < 7000
    assert demo.one("SELECT count(*) FROM crm.customers") == r.customers


def test_second_load_reuses_and_changes_nothing(demo):
    before = demo.one("SELECT count(*) FROM crm.change_log")
    second = load(demo.db)
    # Expect the same report, flagged as reused, and not a single new row
    assert second.reused is True
    assert counts(second) == counts(demo.report)
    assert replace(second, reused=False) == demo.report
    assert demo.one("SELECT count(*) FROM crm.change_log") == before


def test_org_tree_has_three_manager_levels(demo):
    ceo = demo.one("SELECT id FROM crm.employees WHERE manager_id IS NULL")
    levels = demo.one(
        "SELECT array_agg(DISTINCT t.depth ORDER BY t.depth) FROM crm_private.manager_tree AS t"
        " WHERE t.manager_id = %(ceo)s"
        " AND EXISTS (SELECT FROM crm.employees AS e WHERE e.manager_id = t.employee_id)",
        {"ceo": ceo},
    )
    # Expect managers at three levels (CEO, branch directors, team leads), staff below
    assert levels == [0, 1, 2]
    assert demo.one("SELECT max(depth) FROM crm_private.manager_tree") == 3
    tree = demo.report.org_tree
    # Expect every unit in the report with exactly one head, company first
    assert [u.depth for u in tree][:2] == [0, 1]
    assert {u.depth for u in tree} == {0, 1, 2}
    assert all(len(u.heads) == 1 for u in tree)
    assert sum(u.staff for u in tree) == demo.report.employees


def test_sample_employees_are_a_rep_their_lead_and_a_marketer(demo):
    r = demo.report
    # Expect the rep to report to the sample manager
    assert (
        demo.one(
            "SELECT m.role_name::text FROM crm.employees AS e JOIN crm.employees AS m"
            " ON m.id = e.manager_id WHERE e.role_name = %(rep)s",
            {"rep": r.sales_rep.role},
        )
        == r.manager.role
    )
    assert r.sales_rep.role == f"{demo.db.prefix}demo_lan_nguyen"
    assert r.sales_rep.full_name == "Nguyễn Thị Lan"
    assert r.marketing.org_unit == "saoviet.hn.marketing"


def test_one_employee_is_on_leave_and_covered_by_an_expiring_share(demo):
    # Expect exactly one employee on leave
    assert demo.one(
        "SELECT array_agg(role_name::text) FROM crm.employees WHERE status = 'on_leave'"
    ) == [demo.db.role("demo_trang_ngo")]
    # Expect the only expiring share to be the leave cover, for one of her customers
    assert demo.one(
        "SELECT array_agg(o.role_name::text || ' -> ' || g.role_name::text)"
        " FROM crm.shares AS s JOIN crm.customers AS c ON c.id = s.customer_id"
        " JOIN crm.employees AS o ON o.id = c.owner_id"
        " JOIN crm.employees AS g ON g.id = s.grantee_employee_id"
        " WHERE s.expires_at > %(now)s AND s.reason LIKE 'Nghỉ phép%%'",
        {"now": NOW},
    ) == [f"{demo.db.role('demo_trang_ngo')} -> {demo.db.role('demo_huy_dinh')}"]
    assert demo.one("SELECT count(expires_at) FROM crm.shares") == 1


def test_records_look_like_a_live_crm(demo):
    # Expect won contracts signed, others not
    assert (
        demo.one(
            "SELECT count(*) FROM crm.contracts WHERE (status = 'won') <> (signed_at IS NOT NULL)"
        )
        == 0
    )
    assert demo.one("SELECT count(*) FROM crm.contracts WHERE status = 'won'") > 0
    # Expect open tasks and appointments due around now
    assert (
        demo.one(
            "SELECT count(*) FROM crm.activities WHERE done_at IS NULL"
            " AND kind IN ('task', 'appointment')"
            " AND due_at BETWEEN %(now)s - interval '3 days' AND %(now)s + interval '10 days'",
            {"now": NOW},
        )
        > 100
    )
    # Expect some leads waiting unassigned in the call-center queue
    assert (
        demo.one(
            "SELECT count(*) FROM crm.customers AS c"
            " JOIN crm.org_units AS u ON u.id = c.org_unit_id"
            " WHERE c.owner_id IS NULL AND u.code = 'saoviet.hn.callcenter'"
        )
        > 0
    )
    # Expect Vietnamese names with diacritics
    assert demo.one("SELECT count(*) FROM crm.customers WHERE full_name ~ '[ạảãàáăâđêôơư]'") > 0


def test_memberships_use_every_demo_template(demo):
    templates = demo.one(
        "SELECT array_agg(DISTINCT template ORDER BY template) FROM crm.project_members"
    )
    # Expect the templates the demo is meant to show
    assert templates == [
        "admin",
        "call_center",
        "customer_care",
        "marketing",
        "sales_manager",
        "sales_rep",
        "super_admin",
    ]


def test_sample_employee_can_log_in(demo):
    r = demo.report
    expected = demo.one(
        "SELECT id FROM crm.employees WHERE role_name = %(r)s", {"r": r.sales_rep.role}
    )
    with demo.db.connect_as(r.sales_rep.role) as conn:
        row = conn.execute("SELECT crm.current_employee_id(), current_user").fetchone()
    # Expect the login to be the rep, bound to their employee id
    assert row == (expected, r.sales_rep.role)


def test_render_report_shows_counts_tree_roles_and_ends_with_psql(demo):
    r = demo.report
    command = f"psql 'host=localhost dbname=crmdb user={r.sales_rep.role}'"
    text = render_report(r, command)
    # Expect the counts, the heads, the sample roles and the password, psql last
    assert "11 org units, 32 employees, 3000 customers" in text
    assert f"{r.contracts} contracts, {r.activities} activities, 5 shares" in text
    assert "Chi nhánh TP. Hồ Chí Minh [saoviet.hcm]" in text
    for employee in (r.sales_rep, r.manager, r.marketing):
        assert employee.role in text
    assert f"password '{TEST_PASSWORD}'" in text
    assert text.splitlines()[-1].strip() == command
    assert "(loaded)" in text
    assert "already there" in render_report(replace(r, reused=True), command)


def test_failed_load_leaves_nothing(db):
    # The last employee's role exists with CREATEROLE: add_employee refuses to adopt it
    with db.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE").format(
                sql.Identifier(db.role("demo_yen_to"))
            )
        )
    with pytest.raises(CrmdbError, match="CREATEROLE"):
        load(db)
    with db.connect() as conn:
        # Expect the load rolled back whole: no company, so the next run starts over
        assert conn.execute("SELECT count(*) FROM crm.org_units").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM crm.employees").fetchone() == (0,)


def test_access_report_with_shipped_policies_agrees_with_the_rules(scratch: ScratchFactory):
    db = scratch.migrated()
    try:
        with db.connect(autocommit=False) as conn, conn.transaction():
            report = load_demo(conn, role_prefix=db.role("demo_"), password=TEST_PASSWORD, now=NOW)
            apply_in(conn, load_desired())
        with db.connect() as conn:
            lines = {line.employee.role: line for line in access_report(conn, report)}
            total = conn.execute("SELECT count(*) FROM crm.customers").fetchone()
        assert total is not None
        rep, manager, marketer = (
            lines[e.role] for e in (report.sales_rep, report.manager, report.marketing)
        )
        for line in (rep, manager, marketer):
            # Expect RLS to return exactly what explain_access's rules find, and something
            assert line.visible == line.by_rules > 0, line
        # Expect the rep's customers within the manager's, and the marketer (project
        # scope) to see more than the manager and no more than the whole company
        assert rep.visible < manager.visible < marketer.visible <= total[0]
        # Expect the rep's own customers among their paths
        assert any(path == "sales_rep / own" for path, _ in rep.paths), rep.paths
        text = render_access(tuple(lines.values()))
        assert "MISMATCH" not in text and text.count("as the rules say") == 3
    finally:
        db.drop()
