"""`crmdb policy check | plan | apply | test` against a real server.

plan exits 0 when there is nothing to change and 3 when there is; apply asks first
(naming the database) unless --yes; test runs the templates' inline tests in a
scratch database of its own. The shipped sharing rule names org unit saoviet.hn.cskh and
project p1, so databases here hold the fixture org (policies/fixture.yaml) first.
"""

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from crmdb import catalog
from crmdb.cli import main
from crmdb.policies import apply as policy_apply
from crmdb.policies.apply import apply_in, load_desired
from crmdb.policies.fixture import LoadedFixture, load_fixture
from crmdb.policies.model import load_policies
from crmdb.policies.plan import Plan
from crmdb.resources import resource_dir
from crmdb.testing.scratch import TEST_PASSWORD, ScratchDatabase, ScratchFactory

TEMPLATE_ROLES = (
    "SELECT r.rolname::text, shobj_description(r.oid, 'pg_authid'),"
    " ARRAY(SELECT m.rolname::text FROM pg_auth_members AS am"
    "       JOIN pg_roles AS m ON m.oid = am.member WHERE am.roleid = r.oid ORDER BY 1)"
    " FROM pg_roles AS r WHERE r.rolname LIKE 'crmdb\\_tpl\\_%' ORDER BY 1"
)
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed \((\d+) checks in (\d+) templates, (.+)\)$")


def crmdb(db: ScratchDatabase, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--dsn", db.target.conninfo], input=input)


def load_org(db: ScratchDatabase) -> LoadedFixture:
    """The fixture org of policies/fixture.yaml, no templates applied."""
    policies = load_policies(resource_dir("policies"))
    assert policies.fixture is not None and policies.fixture_path is not None
    solutions = {name: t.solution for name, t in policies.templates.items()}
    with db.connect(autocommit=False) as conn, conn.transaction():
        return load_fixture(
            conn, policies.fixture, policies.fixture_path, db.role(""), solutions, TEST_PASSWORD
        )


def edited_policies(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of the shipped policies/ with one replacement in one file."""
    directory = tmp_path / "policies"
    shutil.copytree(resource_dir("policies"), directory)
    path = directory / name
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")
    return directory


def line_of(path: Path, needle: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if needle in line)


def state(db: ScratchDatabase) -> dict[str, Any]:
    """What apply may change: the catalog snapshot plus template roles and members."""
    with db.connect() as conn:
        result: dict[str, Any] = dict(catalog.snapshot(conn))
        result["template_roles"] = conn.execute(TEMPLATE_ROLES).fetchall()
    return result


def visible(db: ScratchDatabase, role: str) -> list[int]:
    with db.connect_as(role) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM crm.customers ORDER BY id")]


# check ------------------------------------------------------------------------------


def test_check_shipped_policies_ok() -> None:
    result = CliRunner().invoke(main, ["policy", "check"])
    # Expect exit 0 and a one-line summary of the shipped templates
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"8 templates, 1 sharing rules: \d+ policies, \d+ grants, \d+ report grants; ok\n",
        result.output,
    ), result.output


def test_check_broken_dir_names_file_and_line(tmp_path: Path) -> None:
    directory = edited_policies(tmp_path, "marketing.yaml", "  activities:\n", "  activty:\n")
    path = directory / "marketing.yaml"
    result = CliRunner().invoke(main, ["policy", "check", str(directory)])
    # Expect exit 1 and file:line: message, without a traceback
    assert result.exit_code == 1
    assert f"{path}:{line_of(path, 'activty:')}: unknown table 'activty'" in result.output
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["policy", "check", str(tmp_path / "nowhere")])
    # Expect a clear error for a folder that does not exist
    assert missing.exit_code == 1 and "policies directory not found" in missing.output


# plan and apply ---------------------------------------------------------------------


def test_plan_apply_plan(db: ScratchDatabase) -> None:
    load_org(db)
    before = state(db)
    plan = crmdb(db, "policy", "plan")
    # Expect exit 3 (changes to make) and the CREATE POLICY statements, on stdout
    assert plan.exit_code == 3, plan.output
    assert "CREATE POLICY customers__sales_rep__own__select ON crm.customers" in plan.stdout
    assert "CREATE POLICY customers__rule__web_leads_to_care__select" in plan.stdout
    count = re.search(r"-- (\d+) statement\(s\) to apply", plan.stderr)
    assert count is not None
    # Expect planning to have changed nothing
    assert catalog.diff(before, state(db)) == []

    refused = crmdb(db, "policy", "apply", input="n\n")
    # Expect a question naming host, database and user, and "no" to abort
    assert refused.exit_code == 1 and "Aborted" in refused.output
    prompt = refused.output.splitlines()[0]
    assert f"Apply {count[1]} statement(s) to host=" in prompt
    assert f"dbname={db.name} user=" in prompt
    # Expect nothing changed
    assert catalog.diff(before, state(db)) == []

    applied = crmdb(db, "policy", "apply", "--yes")
    # Expect the same number of statements, applied
    assert applied.exit_code == 0, applied.output
    assert f"applied {count[1]} statement(s) to host=" in applied.output
    again = crmdb(db, "policy", "plan")
    # Expect exit 0: nothing left to change
    assert again.exit_code == 0, again.output
    assert again.stdout == "" and "-- nothing to change" in again.stderr
    nothing = crmdb(db, "policy", "apply")
    # Expect apply to say so, without asking
    assert nothing.exit_code == 0
    assert nothing.output.startswith("nothing to change on host=")


def test_plan_without_the_org_the_sharing_rule_names(db: ScratchDatabase) -> None:
    sharing_rules = resource_dir("policies") / "sharing_rules.yaml"
    where = f"{sharing_rules}:{line_of(sharing_rules, 'name: web_leads_to_care')}"
    before = state(db)
    result = crmdb(db, "policy", "plan")
    # Expect exit 1 naming the rule's file:line and both names it cannot find: the
    # shipped rule is written for the demo org (unit saoviet.hn.cskh, project
    # saoviet.crm)
    assert result.exit_code == 1, result.output
    assert (
        f"{where}: sharing rule web_leads_to_care: unknown org unit 'saoviet.hn.cskh'"
        in result.output
    )
    assert (
        f"{where}: sharing rule web_leads_to_care: unknown project 'saoviet.crm'" in result.output
    )
    # Expect nothing changed
    assert catalog.diff(before, state(db)) == []


def test_concurrent_applies_are_serialised(db: ScratchDatabase) -> None:
    load_org(db)
    desired = load_desired()
    pending = len(policy_apply.plan(db.target, desired).statements)
    barrier = threading.Barrier(2)
    results: list[Plan] = []
    failures: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(policy_apply.apply(db.target, desired))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Expect both to succeed: one applies everything, the other waits for the
    # advisory lock and then finds nothing left to do
    assert failures == []
    assert sorted(len(r.statements) for r in results) == [0, pending]
    # Expect an empty plan afterwards
    assert crmdb(db, "policy", "plan").exit_code == 0


def test_an_apply_that_deadlocks_runs_again(db: ScratchDatabase) -> None:
    load_org(db)
    desired = load_desired()
    pending = len(policy_apply.plan(db.target, desired).statements)
    results: list[Plan] = []
    failures: list[BaseException] = []

    # The apply looks for a deadlock 5 s after it starts waiting (time for this test to
    # close the cycle, even on a loaded machine); the other session only after 60 s, so
    # PostgreSQL fails the apply, not it
    target = db.target.with_params(options="-c deadlock_timeout=5s")

    def run() -> None:
        try:
            results.append(policy_apply.apply(target, desired))
        except BaseException as exc:
            failures.append(exc)

    apply = threading.Thread(target=run)
    with db.connect(autocommit=False) as other:
        # Another session reads crm.customers and keeps its lock: the apply, once it
        # holds the apply lock, waits for it to create the table's policies
        other.execute("SET deadlock_timeout = '60s'")
        other.execute("SELECT count(*) FROM crm.customers")
        apply.start()
        with db.connect() as watch:
            for _ in range(1000):
                waiting = watch.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                    " AND relation = 'crm.customers'::regclass"
                ).fetchone()
                if waiting == (1,):
                    break
                threading.Event().wait(0.01)
            else:
                pytest.fail("the apply never waited for crm.customers")
        # ... then waits for the apply lock itself: a deadlock, which fails the apply's
        # transaction (nothing applied) and gives this session the lock
        other.execute("SELECT pg_advisory_xact_lock(hashtext('crmdb policy apply'))")
        other.commit()
    apply.join(timeout=60)
    # Expect the apply to have run again, once the other session ended, and to be whole
    assert failures == []
    assert [len(r.statements) for r in results] == [pending]
    assert crmdb(db, "policy", "plan").exit_code == 0


# drift --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def applied(scratch: ScratchFactory) -> Iterator[tuple[ScratchDatabase, LoadedFixture]]:
    """The fixture org with the shipped templates applied, shared by the drift tests."""
    database = scratch.migrated()
    try:
        loaded = load_org(database)
        with database.connect(autocommit=False) as conn, conn.transaction():
            apply_in(conn, load_desired())
        yield database, loaded
    finally:
        database.drop()


DRIFTS = {
    "dropped policy": (
        "DROP POLICY customers__sales_rep__own__select ON crm.customers",
        ["CREATE POLICY customers__sales_rep__own__select ON crm.customers", "COMMENT ON POLICY"],
    ),
    "loosened policy": (
        "ALTER POLICY customers__sales_rep__own__select ON crm.customers USING (true)",
        [
            "DROP POLICY customers__sales_rep__own__select ON crm.customers;",
            "CREATE POLICY customers__sales_rep__own__select ON crm.customers",
            "COMMENT ON POLICY",
        ],
    ),
    "hand-made extra policy": (
        "CREATE POLICY backdoor ON crm.customers FOR SELECT TO crmdb_employee USING (true)",
        ["DROP POLICY backdoor ON crm.customers;"],
    ),
    "extra grant": (
        "GRANT DELETE ON crm.customers TO crmdb_tpl_sales_rep",
        ["REVOKE DELETE ON crm.customers FROM crmdb_tpl_sales_rep;"],
    ),
    "row-level security not forced": (
        "ALTER TABLE crm.customers NO FORCE ROW LEVEL SECURITY",
        ["ALTER TABLE crm.customers FORCE ROW LEVEL SECURITY;"],
    ),
    "template membership revoked": (
        None,  # REVOKE crmdb_tpl_sales_rep FROM rep_a, in the test
        ["SELECT crm_private.sync_roles(e.id) FROM crm.employees AS e ORDER BY e.id;"],
    ),
}


@pytest.mark.parametrize(("drift", "expected"), DRIFTS.values(), ids=DRIFTS.keys())
def test_plan_shows_and_apply_repairs_drift(
    applied: tuple[ScratchDatabase, LoadedFixture], drift: str | None, expected: list[str]
) -> None:
    db, loaded = applied
    rep_a = loaded.roles["rep_a"]
    mine = visible(db, rep_a)
    # Expect the shared database to start in step with the templates
    assert crmdb(db, "policy", "plan").exit_code == 0
    with db.connect() as conn:
        if drift is None:
            # As the grantor: on PostgreSQL 16+ a superuser's plain REVOKE only removes
            # a grant the superuser made (and warns)
            conn.execute("SET ROLE crmdb_owner")
            conn.execute(
                sql.SQL("REVOKE crmdb_tpl_sales_rep FROM {}").format(sql.Identifier(rep_a))
            )
            conn.execute("RESET ROLE")
        else:
            conn.execute(drift)
    plan = crmdb(db, "policy", "plan")
    # Expect exit 3 and exactly the statements that undo the drift
    assert plan.exit_code == 3, plan.output
    assert f"-- {len(expected)} statement(s) to apply" in plan.stderr
    for statement in expected:
        assert statement in plan.stdout, plan.stdout
    assert crmdb(db, "policy", "apply", "--yes").exit_code == 0
    # Expect it repaired: an empty plan, and rep_a sees what they saw before
    assert crmdb(db, "policy", "plan").exit_code == 0
    assert visible(db, rep_a) == mine


# test -------------------------------------------------------------------------------


def test_policy_test_passes(db: ScratchDatabase) -> None:
    with db.connect() as conn:
        databases = conn.execute("SELECT count(*) FROM pg_database").fetchone()
    result = crmdb(db, "policy", "test")
    # Expect exit 0 and a last line "N passed, 0 failed (N checks in 8 templates, DIR)"
    assert result.exit_code == 0, result.output
    summary = SUMMARY.match(result.output.splitlines()[-1])
    assert summary is not None, result.output
    passed, failed, checks, templates, _ = summary.groups()
    assert int(passed) == int(checks) > 50 and failed == "0" and templates == "8"
    with db.connect() as conn:
        # Expect its scratch database to be gone
        assert conn.execute("SELECT count(*) FROM pg_database").fetchone() == databases


def test_policy_test_reports_a_wrong_inline_test(db: ScratchDatabase, tmp_path: Path) -> None:
    directory = edited_policies(
        tmp_path,
        "sales_rep.yaml",
        "- as: rep_a\n    can: [select customers:c1,",
        "- as: rep_a\n    can: [select customers:c3, select customers:c1,",
    )
    line = line_of(directory / "sales_rep.yaml", "- as: rep_a")
    result = crmdb(db, "policy", "test", str(directory))
    # Expect exit 1, the failed check with file:line, and the count of failures
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"FAILED: sales_rep.yaml:{line}: rep_a can select customers:c3"
    summary = SUMMARY.match(lines[-1])
    assert summary is not None and summary[2] == "1", result.output
