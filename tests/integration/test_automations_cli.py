"""`crmdb automations check | plan | apply`, as the routing rules: errors name file:line,
plan exits 0 with nothing to change and 3 with changes, apply is one transaction that
changes nothing on error, a second apply finds nothing to do."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from routing_org import RoutingOrg, routing_org

from crmdb.cli import main
from crmdb.testing.scratch import ScratchDatabase

FILE = """\
project: p1
automations:
  - name: welcome
    event: customer_created
    when: {source: [web_form], province: [Hà Nội, "O'Mon"]}
    template: welcome
  - name: order
    event: contract_won
    template: order_confirmation
    enabled: false
"""
STATE = (
    "SELECT name, event::text, template, enabled, sources::text[], provinces"
    " FROM crm_private.email_automations ORDER BY name"
)


@pytest.fixture
def org(db: ScratchDatabase) -> Iterator[RoutingOrg]:
    with routing_org(db) as routing:
        yield routing


def crmdb(org: RoutingOrg, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--dsn", org.db.target.conninfo])


def folder(tmp_path: Path, text: str = FILE, name: str = "p1.yaml") -> Path:
    directory = tmp_path / "automations"
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_the_shipped_automations_check():
    result = CliRunner().invoke(main, ["automations", "check"])
    assert result.exit_code == 0, result.output
    assert "1 project(s), 2 automations; ok" in result.output


def test_plan_apply_and_nothing_left_to_do(org, tmp_path):
    directory = str(folder(tmp_path))
    planned = crmdb(org, "automations", "plan", directory)
    # Expect the SQL on stdout and exit 3, nothing applied yet
    assert planned.exit_code == 3
    assert planned.stdout.count("INSERT INTO crm_private.email_automations") == 2
    assert org.conn.execute(STATE).fetchall() == []
    applied = crmdb(org, "automations", "apply", directory, "--yes")
    assert applied.exit_code == 0, applied.output
    assert org.conn.execute(STATE).fetchall() == [
        ("order", "contract_won", "order_confirmation", False, None, None),
        ("welcome", "customer_created", "welcome", True, ["web_form"], ["Hà Nội", "O'Mon"]),
    ]
    # Expect nothing to change after apply; a changed file updates one row, drops one
    assert crmdb(org, "automations", "plan", directory).exit_code == 0
    changed = FILE.split("  - name: order")[0].replace("web_form", "chat")
    folder(tmp_path, changed)
    again = crmdb(org, "automations", "plan", directory)
    assert again.exit_code == 3
    assert again.stdout.splitlines() == [
        "DELETE FROM crm_private.email_automations WHERE project_id ="
        " (SELECT id FROM crm.projects WHERE code = 'p1') AND name = 'order';",
        "UPDATE crm_private.email_automations SET \"sources\" = '{chat}'::crm.source_channel[]"
        " WHERE project_id = (SELECT id FROM crm.projects WHERE code = 'p1') AND name = 'welcome';",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            FILE.replace("customer_created", "customer_deleted"),
            ":4: unknown event 'customer_deleted'",
        ),
        (FILE.replace("template: welcome", "template: farewell"), ":6: template 'farewell' has no"),
        (FILE.replace("web_form", "fax"), ":5: unknown source 'fax'"),
        (FILE.replace("    enabled: false", "    enable: false"), ":10: unknown key 'enable'"),
        (FILE.replace("name: order", "name: welcome"), ":7: automation welcome is already defined"),
    ],
)
def test_check_names_file_and_line(tmp_path, text, error):
    result = CliRunner().invoke(main, ["automations", "check", str(folder(tmp_path, text))])
    assert result.exit_code == 1
    assert f"p1.yaml{error}" in result.output


def test_an_unknown_project_changes_nothing(org, tmp_path):
    directory = folder(tmp_path)
    folder(tmp_path, FILE.replace("project: p1", "project: nope"), "nope.yaml")
    result = crmdb(org, "automations", "apply", str(directory), "--yes")
    assert result.exit_code == 1
    assert "nope.yaml:1: unknown project 'nope'" in result.output
    assert org.conn.execute(STATE).fetchall() == []
