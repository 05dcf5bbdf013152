"""`crmdb rules check | plan | apply` against a real server.

As with the templates: errors name file:line, plan exits 0 with nothing to change and 3
with changes, apply runs in one transaction and changes nothing on error, and a second
apply finds nothing to do. Files own their project's rules and queues only.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from routing_org import RoutingOrg, routing_org

from crmdb.cli import main
from crmdb.testing.scratch import ScratchDatabase

FILE = """\
project: p1
business_hours:
  sales:
    mon-fri: "08:00-17:00"
queues:
  care: [{c1}, {{employee: {c2}, weight: 2}}]
rules:
  - name: web
    priority: 10
    when: {{source: [web_form], province: [Hà Nội, "O'Mon"]}}
    target: {{org_unit: sales}}
    business_hours: true
    sla: {{minutes: 30, max_hops: 1}}
  - name: rest
    priority: 900
    target: {{queue: care}}
  - name: won
    on_stage: customer
    target: {{queue: care}}
    strategy: weighted
"""
STATE = (
    "SELECT name, kind::text, priority, sources::text[], provinces, strategy::text,"
    " target_queue, sla_minutes FROM crm.routing_rules ORDER BY name"
)


@pytest.fixture
def org(db: ScratchDatabase) -> Iterator[RoutingOrg]:
    with routing_org(db) as routing:
        yield routing


def crmdb(db: ScratchDatabase, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--dsn", db.target.conninfo])


def rules_dir(tmp_path: Path, org: RoutingOrg, text: str = FILE) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir(exist_ok=True)
    (directory / "p1.yaml").write_text(
        text.format(c1=org.role("c1"), c2=org.role("c2")), encoding="utf-8"
    )
    return directory


def state(org: RoutingOrg) -> list[tuple[object, ...]]:
    return [
        *org.conn.execute(STATE).fetchall(),
        *org.conn.execute(
            "SELECT queue, employee_id, weight FROM crm.routing_queue_members ORDER BY 1, 2"
        ).fetchall(),
        *org.conn.execute(
            "SELECT org_unit_id, weekday, opens, closes FROM crm.business_hours ORDER BY 1, 2"
        ).fetchall(),
    ]


def test_plan_apply_plan_round_trip(org, db, tmp_path):
    directory = str(rules_dir(tmp_path, org))
    plan = crmdb(db, "rules", "plan", directory)
    # Expect changes to apply: exit 3, the SQL on stdout, nothing changed yet
    assert plan.exit_code == 3, plan.output
    assert "INSERT INTO crm.routing_rules" in plan.stdout and "O''Mon" in plan.stdout
    assert state(org) == []

    applied = crmdb(db, "rules", "apply", directory, "--yes")
    assert applied.exit_code == 0, applied.output
    assert org.conn.execute(STATE).fetchall() == [
        ("rest", "assign", 900, None, None, "round_robin", "care", None),
        ("web", "assign", 10, ["web_form"], ["Hà Nội", "O'Mon"], "round_robin", None, 30),
        ("won", "handoff", 100, None, None, "weighted", "care", None),
    ]
    # Expect a second plan to find nothing: exit 0
    again = crmdb(db, "rules", "plan", directory)
    assert again.exit_code == 0, again.output
    assert "nothing to change" in again.output


def test_edits_become_updates_and_deletes(org, db, tmp_path):
    crmdb(db, "rules", "apply", str(rules_dir(tmp_path, org)), "--yes")
    edited = FILE.replace("priority: 10", "priority: 5").split("  - name: won")[0]
    edited = edited.replace("{c1}, {{employee: {c2}, weight: 2}}", "{c1}")
    plan = crmdb(db, "rules", "plan", str(rules_dir(tmp_path, org, edited)))
    assert plan.exit_code == 3
    # Expect exactly: the member and the rule gone, the priority changed
    assert plan.stdout.splitlines() == [
        "DELETE FROM crm.routing_queue_members WHERE project_id = (SELECT id FROM crm.projects"
        f" WHERE code = 'p1') AND queue = 'care' AND employee_id = (SELECT id FROM crm.employees"
        f" WHERE role_name = '{org.role('c2')}');",
        "DELETE FROM crm.routing_rules WHERE project_id = (SELECT id FROM crm.projects"
        " WHERE code = 'p1') AND name = 'won';",
        'UPDATE crm.routing_rules SET "priority" = 5 WHERE project_id = (SELECT id FROM'
        " crm.projects WHERE code = 'p1') AND name = 'web';",
    ]


def test_other_projects_rules_are_left_alone(org, db, tmp_path):
    org.rule("by-sql", project="p2", target_org_unit="other")
    crmdb(db, "rules", "apply", str(rules_dir(tmp_path, org)), "--yes")
    # Expect p2's rule (managed in SQL) kept: the files name only p1
    names = [r[0] for r in org.conn.execute("SELECT name FROM crm.routing_rules ORDER BY 1")]
    assert names == ["by-sql", "rest", "web", "won"]


def test_unknown_references_name_their_line_and_change_nothing(org, db, tmp_path):
    text = FILE.replace("org_unit: sales}", "org_unit: nowhere}").replace("{c1}", "ghost")
    directory = str(rules_dir(tmp_path, org, text))
    for command in (["plan"], ["apply", "--yes"]):
        result = crmdb(db, "rules", *command, directory)
        # Expect exit 1 and one line per unknown name, at its file:line
        assert result.exit_code == 1
        lines = result.output.strip().removeprefix("Error: ").splitlines()
        assert lines == [
            f"{directory}/p1.yaml:6: unknown employee 'ghost' (or departed)",
            f"{directory}/p1.yaml:8: unknown org unit 'nowhere'",
        ]
    assert state(org) == []


def test_a_departed_employee_cannot_be_in_a_queue(org, db, tmp_path):
    org.set_status("c2", "departed")
    result = crmdb(db, "rules", "plan", str(rules_dir(tmp_path, org)))
    assert result.exit_code == 1
    assert f"p1.yaml:6: unknown employee '{org.role('c2')}' (or departed)" in result.output


def test_a_failing_statement_rolls_everything_back(org, db, tmp_path):
    # A rule the database refuses (SLA in business hours without a team is a CHECK):
    # only the database knows, so the plan is fine and apply must fail whole.
    org.conn.execute(
        "ALTER TABLE crm.routing_rules ADD CONSTRAINT test_no_won CHECK (name <> 'won')"
    )
    result = crmdb(db, "rules", "apply", str(rules_dir(tmp_path, org)), "--yes")
    assert result.exit_code == 1
    assert result.output.startswith("Error: rules apply failed, nothing was changed:")
    assert state(org) == []


def test_a_rule_that_matches_nobody_names_its_line_and_changes_nothing(org, db, tmp_path):
    # o1 is in p2 only; unit care has nobody in p1 once c1 and c2 leave the project
    text = FILE.replace("{c1}, {{employee: {c2}, weight: 2}}", "{o1}")
    org.conn.execute("DELETE FROM crm.project_members WHERE employee_id = ANY (%s)",
                     [[org.ids["c1"], org.ids["c2"]]])  # fmt: skip
    text = text.replace("org_unit: sales}", "org_unit: care}")
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "p1.yaml").write_text(text.format(o1=org.role("o1")), encoding="utf-8")
    for command in (["plan"], ["apply", "--yes"]):
        result = crmdb(db, "rules", *command, str(directory))
        # Expect exit 1 and a line for the member and for each rule that reaches nobody
        assert result.exit_code == 1, result.output
        lines = result.output.strip().removeprefix("Error: ").splitlines()
        assert lines == [
            f"{directory}/p1.yaml:6: {org.role('o1')} in queue care is not a member of"
            " project p1: routing never picks them",
            f"{directory}/p1.yaml:8: rule web matches nobody: no employee of org unit care"
            " is a member of project p1",
            f"{directory}/p1.yaml:14: rule rest matches nobody: no employee of queue care"
            " is a member of project p1",
            f"{directory}/p1.yaml:17: rule won matches nobody: no employee of queue care"
            " is a member of project p1",
        ]
    assert state(org) == []


def test_check_needs_no_database(tmp_path):
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "p.yaml").write_text("project: p\nrules:\n  - name: x\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["rules", "check", str(directory)])
    assert result.exit_code == 1
    assert f"{directory}/p.yaml:3: target must be exactly one of" in result.output
    shipped = CliRunner().invoke(main, ["rules", "check"])
    assert shipped.exit_code == 0 and shipped.output.endswith("; ok\n")
