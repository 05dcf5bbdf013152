"""Broken role templates and sharing rules: every error names its file and line, and
nothing in the database changes.

Each case edits a copy of the shipped policies/ (policy_dir) and checks the error
twice: from load_policies (file, line, message) and from `crmdb policy apply --yes`
against a database that holds the fixture org with the shipped templates applied,
comparing what apply may change (policy_org.state) before and after.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner, Result
from policy_org import (
    PolicyOrg,
    build_policy_org,
    line_of,
    policy_dir,
    shared_policy_org,
    state,
    state_diff,
)
from psycopg import errors

from crmdb.cli import main
from crmdb.errors import CrmdbError
from crmdb.policies import apply as policy_apply
from crmdb.policies.apply import apply_in, load_desired
from crmdb.policies.compile import compile_policies
from crmdb.policies.model import PolicyError, load_policies
from crmdb.resources import resource_dir

CARE_WHERE = "where: \"stage IN ('customer', 'after_sales')\""
CC_WHERE = "where: \"source IN ('chat', 'call_center') AND stage = 'lead'\""


@dataclass(frozen=True)
class Case:
    file: str  # the file the error must name
    edits: dict[str, list[tuple[str, str]]]
    needle: str  # text on the line the error must name
    message: str  # part of the message


def cc_where(where: str) -> dict[str, list[tuple[str, str]]]:
    return {"call_center.yaml": [(CC_WHERE, f'where: "{where}"')]}


SALES_REP = (resource_dir("policies") / "sales_rep.yaml").read_text(encoding="utf-8")
TEMPLATE_ERRORS = {
    "unknown table": Case(
        "marketing.yaml",
        {"marketing.yaml": [("  activities:\n", "  activity_log:\n")]},
        "activity_log:",
        "unknown table 'activity_log'",
    ),
    "unknown column in criteria": Case(
        "customer_care.yaml",
        {"customer_care.yaml": [(CARE_WHERE, CARE_WHERE[:-1] + ' AND colour = 1"')]},
        "colour",
        "table customers: criteria: unknown column 'colour'",
    ),
    "unknown scope": Case(
        "sales_rep.yaml",
        {"sales_rep.yaml": [("- scope: shared", "- scope: team_mates")]},
        "team_mates",
        "unknown scope 'team_mates'",
    ),
    "scope not applicable to the table": Case(
        "admin.yaml",
        {
            "admin.yaml": [
                (
                    "  contracts:\n    rows:\n      - scope: project",
                    "  contracts:\n    rows:\n      - scope: org_unit",
                )
            ]
        },
        "scope: org_unit",
        "scope 'org_unit' does not apply to table contracts",
    ),
    "unknown action": Case(
        "marketing.yaml",
        {"marketing.yaml": [("actions: [select, export]", "actions: [select, export, approve]")]},
        "approve",
        "unknown action 'approve'",
    ),
    "unknown template in extends": Case(
        "director.yaml",
        {"director.yaml": [("extends: [sales_manager]", "extends: [sales_boss]")]},
        "template: director",
        "template 'director' extends unknown template 'sales_boss'",
    ),
    "cycle in extends": Case(
        "director.yaml",
        {"sales_rep.yaml": [("solution: sales\n", "solution: sales\nextends: [director]\n")]},
        "template: director",
        "cycle in extends: director -> sales_manager -> sales_rep -> director",
    ),
    "function call in criteria": Case(
        "call_center.yaml",
        cc_where("source = 'chat' AND pg_sleep(1) IS NULL"),
        "pg_sleep",
        "criteria: function pg_sleep() is not allowed",
    ),
    "subquery in criteria": Case(
        "call_center.yaml",
        cc_where("id IN (SELECT owner_id FROM customers)"),
        "SELECT owner_id",
        "criteria: unknown column 'SELECT'",
    ),
    "qualified name in criteria": Case(
        "call_center.yaml",
        cc_where("id IN (SELECT id FROM crm.customers)"),
        "crm.customers",
        "criteria: unexpected character '.'",
    ),
    "unbalanced ( in criteria": Case(
        "call_center.yaml",
        cc_where("(source = 'chat'"),
        "(source",
        "criteria: unbalanced '('",
    ),
    "unbalanced ) in criteria": Case(
        "call_center.yaml",
        cc_where("source = 'chat') OR (true"),
        "OR (true",
        "criteria: unbalanced ')'",
    ),
    "double quotes in criteria": Case(
        "call_center.yaml",
        cc_where('source = \\"chat\\"'),
        "source =",
        "(quote strings with ')",
    ),
    "invalid YAML": Case(
        "sales_rep.yaml",
        {
            "sales_rep.yaml": [
                (
                    "      - scope: own\n        actions: [select, insert, update, export]",
                    "      - scope: own\n       actions: [select, insert, update, export]",
                )
            ]
        },
        "actions: [select, insert, update, export]",
        "invalid YAML",
    ),
    "duplicate YAML key": Case(
        "marketing.yaml",
        {"marketing.yaml": [("solution: marketing\n", "solution: marketing\nsolution: sales\n")]},
        "solution: sales",
        "invalid YAML: duplicate key 'solution'",
    ),
    "duplicate template name": Case(
        "sales_rep_v2.yaml",
        {"sales_rep_v2.yaml": [("", SALES_REP)]},
        "template: sales_rep",
        "template 'sales_rep' is defined twice",
    ),
    "template name not matching the file": Case(
        "marketing.yaml",
        {"marketing.yaml": [("template: marketing", "template: marketer")]},
        "template: marketer",
        "template 'marketer' must live in marketer.yaml",
    ),
    "unknown key in a template": Case(
        "sales_rep.yaml",
        {"sales_rep.yaml": [("description: >", "descripton: >")]},
        "descripton",
        "unknown key 'descripton' in a template",
    ),
    "unknown key in a scope": Case(
        "director.yaml",
        {"director.yaml": [("include_sub_units: true", "include_subunits: true")]},
        "include_subunits",
        "unknown key 'include_subunits' in a scope of customers",
    ),
    "where on a scope that is not criteria": Case(
        "marketing.yaml",
        {
            "marketing.yaml": [
                (
                    "      - scope: own\n        actions: [select, insert, update]",
                    "      - scope: own\n        where: \"stage = 'lead'\"\n"
                    "        actions: [select, insert, update]",
                )
            ]
        },
        "where:",
        "'where' belongs to scope criteria, not own",
    ),
    "unknown solution": Case(
        "marketing.yaml",
        {"marketing.yaml": [("solution: marketing", "solution: growth")]},
        "solution: growth",
        "unknown solution 'growth'",
    ),
    # Feature clusters: a template names its own solution's tables and reports only
    "marketing names contracts": Case(
        "marketing.yaml",
        {
            "marketing.yaml": [
                (
                    "  activities:\n",
                    "  contracts:\n    rows:\n      - scope: customer\n"
                    "        actions: [select]\n  activities:\n",
                )
            ]
        },
        "  contracts:",
        "template marketing (solution marketing) names contracts, a table of the sales solution",
    ),
    "sales names campaigns": Case(
        "sales_rep.yaml",
        {
            "sales_rep.yaml": [
                (
                    "  employees:\n",
                    "  campaigns:\n    rows:\n      - scope: project\n"
                    "        actions: [select]\n  employees:\n",
                )
            ]
        },
        "  campaigns:",
        "template sales_rep (solution sales) names campaigns, a table of the marketing solution",
    ),
    "another solution's table through extends": Case(
        "marketing.yaml",
        {
            "marketing.yaml": [
                ("solution: marketing\n", "solution: marketing\nextends: [sales_rep]\n")
            ]
        },
        "extends: [sales_rep]",
        "extends sales_rep, which names contracts, a table of the sales solution",
    ),
    "a directory-only template names a marketing table": Case(
        "helper.yaml",
        {
            "helper.yaml": [
                (
                    "",
                    "template: helper\ntables:\n  segments:\n    rows:\n"
                    "      - scope: own\n        actions: [select]\n",
                )
            ]
        },
        "  segments:",
        "template helper (no solution) names segments, a table of the marketing solution",
    ),
    "report of another solution": Case(
        "sales_manager.yaml",
        {
            "sales_manager.yaml": [
                ("extends: [sales_rep]\n", "extends: [sales_rep]\nreports: [pipeline]\n")
            ]
        },
        "reports: [pipeline]",
        "names report pipeline of the management solution",
    ),
    "unknown report": Case(
        "director.yaml",
        {"director.yaml": [("reports: [pipeline]", "reports: [funnel]")]},
        "reports: [funnel]",
        "unknown report 'funnel' (expected: pipeline)",
    ),
    "report reading what the template cannot select": Case(
        "auditor.yaml",
        {
            "auditor.yaml": [
                (
                    "",
                    "template: auditor\nsolution: management\nreports: [pipeline]\ntables:\n"
                    "  customers:\n    rows:\n      - scope: project\n        actions: [select]\n",
                )
            ]
        },
        "reports: [pipeline]",
        "report pipeline reads customers, contracts, projects, employees as the caller; "
        "the template does not select contracts, projects, employees",
    ),
    "writing rows that point at a table the template cannot select": Case(
        "junior.yaml",
        {
            "junior.yaml": [
                (
                    "",
                    "template: junior\nsolution: marketing\ntables:\n"
                    "  campaigns:\n    rows:\n      - scope: own\n"
                    "        actions: [select, insert]\n",
                )
            ]
        },
        "  campaigns:",
        "template junior: campaigns.segment_id points at segments, and a written row may "
        "point only at segments the writer sees; the template writes campaigns but does "
        "not select segments",
    ),
    "malformed inline test": Case(
        "director.yaml",
        {"director.yaml": [("select customers:c3,", "see customers:c3,")]},
        "see customers:c3",
        "cannot: unknown action 'see'",
    ),
}
RULE = "sharing_rules.yaml"
RULE_ERRORS = {
    "unknown org unit": (
        [("org_unit: saoviet.hn.cskh", "org_unit: hn_nowhere")],
        "unknown org unit 'hn_nowhere'",
    ),
    "unknown project": ([("project: saoviet.crm", "project: p9")], "unknown project 'p9'"),
    "unknown employee": (
        [("org_unit: saoviet.hn.cskh\n      include_sub_units: true", "employees: [nobody_here]")],
        "unknown employee 'nobody_here'",
    ),
    "matching nobody": (
        [("org_unit: saoviet.hn.cskh", "org_unit: hn_empty")],
        "matches nobody: no active employee is in its audience",
    ),
}


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[PolicyOrg]:
    yield from shared_policy_org(scratch)


@pytest.fixture(scope="module")
def baseline(org) -> dict[str, Any]:
    """What apply may change, as the module's database holds it (nothing may change it)."""
    with org.db.connect() as conn:
        return state(conn)


def unchanged(org: PolicyOrg, baseline: dict[str, Any]) -> list[str]:
    with org.db.connect() as conn:
        return state_diff(baseline, state(conn))


def policy(org: PolicyOrg, command: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["policy", command, *args, "--dsn", org.db.target.conninfo])


# Template errors ------------------------------------------------------------------


@pytest.mark.parametrize("case", TEMPLATE_ERRORS.values(), ids=TEMPLATE_ERRORS.keys())
def test_template_error_names_file_and_line(org, baseline, tmp_path, case):
    directory = policy_dir(tmp_path, case.edits)
    path = directory / case.file
    line = line_of(path, case.needle)
    with pytest.raises(PolicyError) as info:
        load_policies(directory)
    problems = [(p.path, p.line, p.message) for p in info.value.problems]
    # Expect one problem at the broken file and line, saying what is wrong
    assert [p for p in problems if p[0] == path and p[1] == line and case.message in p[2]], problems

    result = policy(org, "apply", str(directory), "--yes")
    # Expect apply to refuse with file:line: message, and nothing changed
    assert result.exit_code == 1
    assert f"{path}:{line}: " in result.output and case.message in result.output, result.output
    assert "Traceback" not in result.output
    assert unchanged(org, baseline) == []


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("/* ( */ source = 'chat' ) OR ( true /* ) */", "comments are not allowed"),
        ("source = 'chat' ) OR ( true --", "comments are not allowed"),
        ("source = E'\\\\'' ) OR ( true OR source = '", "prefixed string literals"),
        ("source = '\\\\' ) OR ( true OR source = '", "backslashes in strings"),
        ("source = 'chat' ) OR ( true", "unbalanced ')'"),
        ("source = 'chat' ||/ 'x'", "operator '||/' is not allowed"),
    ],
    ids=["block comment", "line comment", "E string", "backslash", "paren", "operator"],
)
def test_criteria_cannot_escape_the_wrapping_parenthesis(tmp_path, where, message):
    directory = policy_dir(tmp_path, cc_where(where))
    # Expect an error at the where line (what could close the compiler's parenthesis
    # and OR in every row of every project is refused before any SQL is built)
    with pytest.raises(PolicyError, match=re.escape(message)) as info:
        load_policies(directory)
    line = line_of(directory / "call_center.yaml", "source = ")
    assert [p.line for p in info.value.problems] == [line]


def test_several_errors_are_all_listed(tmp_path):
    directory = policy_dir(
        tmp_path,
        {
            "marketing.yaml": [("  activities:\n", "  activity_log:\n")],
            "sales_rep.yaml": [("- scope: shared", "- scope: team_mates")],
        },
    )
    with pytest.raises(PolicyError) as info:
        load_policies(directory)
    # Expect both problems in one report, one per line, each with its file
    names = sorted(p.path.name for p in info.value.problems)
    assert names == ["marketing.yaml", "sales_rep.yaml"]
    assert len(str(info.value).splitlines()) == 2


# Sharing rules (checked against the database) ------------------------------------


@pytest.mark.parametrize(("edits", "message"), RULE_ERRORS.values(), ids=RULE_ERRORS.keys())
def test_sharing_rule_error_from_plan_and_apply(org, baseline, tmp_path, edits, message):
    directory = policy_dir(tmp_path, {RULE: edits})
    path = directory / RULE
    where = f"{path}:{line_of(path, 'name: web_leads_to_care')}: sharing rule web_leads_to_care"
    # Expect the files to load: only the database can tell
    desired = compile_policies(load_policies(directory))
    for command in ("plan", "apply"):
        result = policy(org, command, str(directory), *(["--yes"] if command == "apply" else []))
        # Expect exit 1 and the rule's file:line with what is wrong
        assert result.exit_code == 1, result.output
        assert where in result.output and message in result.output, result.output
    # Expect the library to refuse as well, before running any statement
    with (
        org.db.connect(autocommit=False) as conn,
        conn.transaction(force_rollback=True),
        pytest.raises(PolicyError, match=message),
    ):
        apply_in(conn, desired)
    # Expect nothing changed
    assert unchanged(org, baseline) == []


# Failures inside PostgreSQL ----------------------------------------------------------


def test_criteria_postgresql_rejects_changes_nothing(org, baseline, tmp_path):
    # score is an integer: the static check cannot know 'abc' is not one
    directory = policy_dir(tmp_path, cc_where("score = 'abc'"))
    desired = compile_policies(load_policies(directory))
    # Expect apply to fail with PostgreSQL's message and say nothing was changed
    with pytest.raises(PolicyError, match="invalid input syntax for type integer"):
        policy_apply.apply(org.db.target, desired)
    result = policy(org, "apply", str(directory), "--yes")
    assert result.exit_code == 1 and "invalid input syntax for type integer" in result.output
    # Expect nothing changed
    assert unchanged(org, baseline) == []


def test_criteria_postgresql_rejects_names_file_and_line(org, tmp_path):
    directory = policy_dir(tmp_path, cc_where("score = 'abc'"))
    line = line_of(directory / "call_center.yaml", "score = 'abc'")
    result = policy(org, "plan", str(directory))
    # Expect the file and line of the where, as for every other template error
    assert f"call_center.yaml:{line}" in result.output, result.output


def test_failure_in_the_middle_of_apply_changes_nothing(db, monkeypatch):
    # The fixture org without policies: apply has hundreds of statements to run
    org = build_policy_org(db, apply=False)
    desired = load_desired()
    with db.connect() as conn:
        before = state(conn)
    real_make_plan = policy_apply.make_plan
    ran: list[int] = []

    def make_plan_then_fail(conn: Any, desired: Any) -> Any:
        plan = real_make_plan(conn, desired)
        ran.append(len(plan.statements))
        plan.statements.append("SELECT 1 / 0;")  # fails after every real statement ran
        return plan

    monkeypatch.setattr(policy_apply, "make_plan", make_plan_then_fail)
    # Expect the error, and the promise that nothing was changed
    with pytest.raises(CrmdbError, match="nothing was changed: division by zero"):
        policy_apply.apply(db.target, desired)
    assert ran and ran[0] > 300
    with db.connect() as conn:
        # Expect it kept: no policy, grant, role, membership or function body changed
        assert state_diff(before, state(conn)) == []
    monkeypatch.undo()
    with db.connect(autocommit=False) as conn, conn.transaction(force_rollback=True):
        # Expect the same work still to do
        assert len(real_make_plan(conn, desired).statements) == ran[0]
    with (
        org.connect_as("rep_a") as conn,
        pytest.raises(errors.InsufficientPrivilege, match="permission denied for table customers"),
    ):
        # Expect rep_a still without any privilege
        conn.execute("SELECT id FROM crm.customers")
