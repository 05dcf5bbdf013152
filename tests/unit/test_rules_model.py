"""Rules files: what validates, and that every problem names file and line."""

from datetime import time
from pathlib import Path

import pytest

from crmdb.resources import resource_dir
from crmdb.routing.model import RulesError, load_rules

GOOD = """\
project: p1
business_hours:
  sales:
    mon-fri: "08:00-12:00, 13:30-17:30"
    sat: "08:00-12:00"
queues:
  care: [c1, {employee: c2, weight: 3}]
rules:
  - name: web
    priority: 10
    when: {source: [web_form, chat], province: Hà Nội, score: {min: 50}}
    target: {org_unit: sales, include_sub_units: true}
    business_hours: true
    sla: {minutes: 60, business_hours: true, max_hops: 1}
  - name: won
    on_stage: customer
    target: {queue: care}
    strategy: weighted
  - name: vip
    target: {employees: [s1, s2]}
    strategy: least_loaded
    load: tasks
"""


def write(tmp_path: Path, text: str, name: str = "p1.yaml") -> Path:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RulesError) as info:
        load_rules(write(tmp_path, text))
    return [f"{p.line}: {p.message}" for p in info.value.problems]


def test_a_good_file_loads(tmp_path):
    rules = load_rules(write(tmp_path, GOOD))
    web, won, vip = rules.rules
    assert (web.kind, web.sources, web.provinces, web.min_score) == (
        "assign",
        ("web_form", "chat"),
        ("Hà Nội",),
        50,
    )
    assert (web.target_org_unit, web.include_sub_units, web.hours_org_unit) == (
        "sales",
        True,
        "sales",
    )
    assert (web.sla_minutes, web.sla_business_hours, web.sla_max_hops) == (60, True, 1)
    assert (won.kind, won.on_stage, won.target_queue, won.strategy) == (
        "handoff",
        "customer",
        "care",
        "weighted",
    )
    # Expect an employee list to become the rule's own queue
    assert vip.target_queue == "vip" and vip.load_measure == "tasks"
    assert {(m.queue, m.employee, m.weight) for m in rules.members} == {
        ("care", "c1", 1),
        ("care", "c2", 3),
        ("vip", "s1", 1),
        ("vip", "s2", 1),
    }
    # Expect mon-fri twice a day, Saturday mornings: 11 intervals
    assert len(rules.hours) == 11
    assert {(h.weekday, h.opens, h.closes) for h in rules.hours if h.weekday == 6} == {
        (6, time(8), time(12))
    }


def test_the_shipped_rules_validate():
    assert load_rules(resource_dir("rules")).rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("project: p1\nrules:\n  - name: x\n", ["3: target must be exactly one of"]),
        (
            "project: p1\nrules:\n  - name: x\n    target: {org_unit: a, queue: b}\n",
            ["4: target must be exactly one of"],
        ),
        (
            "project: p1\nrules:\n  - name: x\n    target: {queue: q}\n    strategy: random\n",
            ["5: unknown strategy 'random'"],
        ),
        (
            "project: p1\nrules:\n  - name: x\n    target: {queue: q}\n"
            "    when:\n      source: [fax]\n",
            ["6: unknown source 'fax'"],
        ),
        (
            "project: p1\nrules:\n  - name: x\n    target: {queue: q}\n    on_stage: won\n",
            ["5: unknown stage 'won'"],
        ),
        (
            "project: p1\nrules:\n  - name: x\n    target: {queue: q}\n    business_hours: true\n",
            ["5: business_hours: true needs an org_unit target"],
        ),
        (
            "project: p1\nrules:\n  - name: x\n    target: {queue: q}\n    sla: {minutes: 0}\n",
            ["5: sla minutes must be a whole number from 1"],
        ),
        (
            "project: p1\nrules:\n  - name: x\n    target: {queue: q}\n"
            "  - name: x\n    target: {queue: q}\n",
            ["5: rule x is already defined at line 3"],
        ),
        (
            "project: p1\nrules:\n  - name: Bad Name\n    target: {queue: q}\n",
            ["3: rule name 'Bad Name' must match"],
        ),
        (
            "project: p1\nrules:\n  - name: x\n    target: {queue: q}\n    colour: red\n",
            ["5: unknown key 'colour' in a rule"],
        ),
        (
            "project: p1\nbusiness_hours:\n  sales:\n    mon-fri: '17:00-08:00'\n",
            ["4: hours '17:00-08:00': closes before it opens"],
        ),
        (
            "project: p1\nbusiness_hours:\n  sales:\n    fri-mon: '08:00-17:00'\n",
            ["4: days 'fri-mon': fri-mon runs backwards"],
        ),
        (
            "project: p1\nqueues:\n  q: [a, {employee: b, weight: -1}]\n",
            ["3: weight must be a whole number from 1 to 1000"],
        ),
        ("project: p1\nrules: [\n", ["3: invalid YAML"]),
    ],
)
def test_errors_name_the_line(tmp_path, text, expected):
    # These files are about one key each; what a whole file lacks is tested below.
    found = [p for p in problems(tmp_path, text) if not whole_file(p)]
    assert len(found) == len(expected), found
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(want), found


def whole_file(problem: str) -> bool:
    return "no catch-all" in problem or "does not define" in problem


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(
        tmp_path,
        "project: p1\nrules:\n  - name: a\n    target: {queue: q}\n    strategy: x\n"
        "  - name: b\n    target: {queue: q}\n    priority: high\n",
    )
    assert [f.split(":")[0] for f in found] == ["5", "8", "2"]
    assert "no catch-all" in found[2]


def test_a_project_in_two_files_is_refused(tmp_path):
    write(tmp_path, "project: p1\n", "a.yaml")
    with pytest.raises(RulesError, match=r"b.yaml:1: project p1 is already in .*a.yaml:1"):
        load_rules(write(tmp_path, "project: p1\n", "b.yaml"))


CATCH_ALL = """\
project: p1
queues:
  triage: [t1]
rules:
  - name: web
    priority: 10
    when: {source: web_form}
    target: {queue: triage}
  - name: %s
    priority: %d
    target: {queue: triage}%s
"""


def test_a_project_ends_in_a_catch_all(tmp_path):
    rules = load_rules(write(tmp_path, CATCH_ALL % ("rest", 100, "")))
    assert [r.name for r in rules.rules] == ["web", "rest"]


@pytest.mark.parametrize(
    ("name", "priority", "extra", "expected"),
    [
        # conditions on the last rule: nothing catches the rest
        ("rest", 100, "\n    when: {score: {min: 1}}", "4: project p1 has no catch-all rule"),
        # a disabled catch-all catches nothing
        ("rest", 100, "\n    enabled: false", "4: project p1 has no catch-all rule"),
        # a catch-all before a rule: that rule can never match
        ("rest", 5, "", "5: rule web (priority 10) comes after the catch-all rest"),
        ("rest", 10, "", "5: rule web has the priority of the catch-all rest (10)"),
    ],
)
def test_a_missing_or_misplaced_catch_all_names_its_line(tmp_path, name, priority, extra, expected):
    found = problems(tmp_path, CATCH_ALL % (name, priority, extra))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_a_project_without_rules_needs_a_catch_all(tmp_path):
    assert problems(tmp_path, "project: p1\n") == [
        "1: project p1 has no catch-all rule: end its rules with an assignment rule without"
        " 'when' (e.g. target: {queue: triage}), or new customers no rule matches are left"
        " to the project's triage"
    ]


def test_a_queue_target_the_file_does_not_define_matches_nobody(tmp_path):
    text = CATCH_ALL.replace("queue: triage}\n  - name", "queue: care}\n  - name") % (
        "rest",
        100,
        "",
    )
    assert problems(tmp_path, text) == [
        "5: rule web targets queue care, which this file does not define: the rule would"
        " match nobody"
    ]
