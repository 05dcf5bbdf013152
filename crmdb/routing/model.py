"""Routing rules files (rules/*.yaml), loaded and validated.

One file per project:

  project: CODE
  business_hours: {TEAM: {mon-fri: "08:00-12:00, 13:30-17:30", sat: "08:00-12:00"}}
  queues: {NAME: [ROLE, {employee: ROLE, weight: 2}]}
  rules: [{name, priority, on_stage, when, target, strategy, load, max_open,
           business_hours, sla: {minutes, business_hours, max_hops}, enabled}]

Errors are collected, each naming file and line, as for the role templates; what the
database must confirm (projects, units, employees exist) is checked by the plan.
"""

import re
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

from crmdb.policies.model import PolicyError, Problem
from crmdb.policies.model import _Reader as PolicyReader
from crmdb.policies.yamlload import Mapping, Sequence, YamlError, load

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
SOURCES = ("chat", "call_center", "web_form", "email", "referral", "event", "import", "manual")
STAGES = ("lead", "qualified", "opportunity", "customer", "after_sales", "lost")
STRATEGIES = ("round_robin", "least_loaded", "weighted", "keep_with_team")
LOADS = ("customers", "tasks")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class RulesError(PolicyError):
    """Rules files that do not validate; str() lists every problem, one per line."""


@dataclass(frozen=True)
class Rule:
    """One row of crm.routing_rules, with names where the table holds ids."""

    project: str
    name: str
    kind: str
    on_stage: str | None
    priority: int
    enabled: bool
    sources: tuple[str, ...] | None
    provinces: tuple[str, ...] | None
    product_interests: tuple[str, ...] | None
    stages: tuple[str, ...] | None
    min_score: int | None
    max_score: int | None
    target_org_unit: str | None
    include_sub_units: bool
    target_queue: str | None
    strategy: str
    load_measure: str
    max_open: int | None
    hours_org_unit: str | None
    sla_minutes: int | None
    sla_business_hours: bool
    sla_max_hops: int
    path: Path = field(compare=False)
    line: int = field(compare=False)


@dataclass(frozen=True)
class QueueMember:
    project: str
    queue: str
    employee: str
    weight: int
    path: Path = field(compare=False)
    line: int = field(compare=False)


@dataclass(frozen=True)
class Hours:
    org_unit: str
    weekday: int  # ISO, 1 = Monday
    opens: time
    closes: time
    path: Path = field(compare=False)
    line: int = field(compare=False)


@dataclass
class RuleSet:
    projects: dict[str, tuple[Path, int]] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    members: list[QueueMember] = field(default_factory=list)
    hours: list[Hours] = field(default_factory=list)

    def hour_units(self) -> set[str]:
        return {h.org_unit for h in self.hours}


class _Reader(PolicyReader):
    """The role templates' reader (errors at file:line), with rules files' value kinds."""

    def name(self, value: Any, line: int, what: str) -> str | None:
        # Codes of projects, units, rules and queues allow digits, dots and dashes.
        if not isinstance(value, str) or not NAME.match(value):
            self.error(line, f"{what} {value!r} must match {NAME.pattern}")
            return None
        return value

    def choice(self, value: Any, line: int, what: str, allowed: tuple[str, ...]) -> str | None:
        if value not in allowed:
            self.error(line, f"unknown {what} {value!r} (expected one of: {', '.join(allowed)})")
            return None
        return str(value)

    def integer(self, value: Any, line: int, what: str, low: int, high: int) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.error(line, f"{what} must be a whole number from {low} to {high}, not {value!r}")
            return None
        return value

    def flag(self, value: Any, line: int, what: str) -> bool:
        if not isinstance(value, bool):
            self.error(line, f"{what} must be true or false, not {value!r}")
            return False
        return value

    def strings(
        self, value: Any, line: int, what: str, allowed: tuple[str, ...] | None = None
    ) -> tuple[str, ...] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
            self.error(line, f"{what} must be a value or a non-empty list of values")
            return None
        for item in items:
            if allowed is not None and item not in allowed:
                self.error(line, f"unknown {what} {item!r} (expected: {', '.join(allowed)})")
        return tuple(items)


def _empty(line: int) -> Mapping:
    """An empty mapping standing in for an optional one, at `line`."""
    node = Mapping()
    node.line, node.key_lines = line, {}
    return node


def _days(r: _Reader, spec: str, line: int) -> list[int]:
    days: list[int] = []
    for part in spec.split(","):
        ends = [d.strip() for d in part.split("-")]
        if len(ends) > 2 or any(d not in DAYS for d in ends):
            r.error(line, f"days {spec!r}: use mon..sun, ranges like mon-fri, commas")
            return []
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        if last < first:
            r.error(line, f"days {spec!r}: {ends[0]}-{ends[-1]} runs backwards")
            return []
        days += range(first + 1, last + 2)
    return days


def _ranges(r: _Reader, spec: Any, line: int) -> list[tuple[time, time]]:
    if not isinstance(spec, str):
        r.error(line, f"hours must be a string like '08:00-17:30', not {spec!r}")
        return []
    ranges = []
    for part in spec.split(","):
        match = _RANGE.match(part)
        if not match:
            r.error(line, f"hours {part.strip()!r} must read HH:MM-HH:MM")
            continue
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
            r.error(line, f"hours {part.strip()!r}: no such time")
            continue
        opens, closes = time(h1, m1), time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
        if opens >= closes:
            r.error(line, f"hours {part.strip()!r}: closes before it opens")
            continue
        ranges.append((opens, closes))
    return ranges


def _hours(r: _Reader, node: Any, line: int) -> list[Hours]:
    if not isinstance(node, Mapping):
        r.error(line, "business_hours must map team codes to {days: hours}")
        return []
    result = []
    for unit, days in node.items():
        unit_line = node.line_of(unit)
        if r.name(unit, unit_line, "org unit") is None:
            continue
        if not isinstance(days, Mapping):
            r.error(unit_line, f"business hours of {unit} must map days to hours")
            continue
        for spec, ranges in days.items():
            day_line = days.line_of(spec)
            intervals = _ranges(r, ranges, day_line)
            for day in _days(r, str(spec), day_line):
                for opens, closes in intervals:
                    result.append(Hours(unit, day, opens, closes, r.path, day_line))
    return result


def _members(r: _Reader, project: str, node: Any, line: int) -> list[QueueMember]:
    if not isinstance(node, Mapping):
        r.error(line, "queues must map queue names to lists of employees")
        return []
    result = []
    for queue, people in node.items():
        queue_line = node.line_of(queue)
        if r.name(queue, queue_line, "queue name") is None:
            continue
        result += _people(r, project, queue, people, queue_line)
    return result


def _people(r: _Reader, project: str, queue: str, node: Any, line: int) -> list[QueueMember]:
    if not isinstance(node, Sequence) or not node:
        r.error(line, f"queue {queue}: list its employees (a role, or {{employee, weight}})")
        return []
    result = []
    for item, item_line in zip(node, node.item_lines, strict=True):
        weight: Any = 1
        if isinstance(item, Mapping):
            r.keys(item, {"employee", "weight"}, f"a member of queue {queue}")
            employee, weight = item.get("employee"), item.get("weight", 1)
        else:
            employee = item
        if not isinstance(employee, str) or not employee:
            r.error(item_line, f"queue {queue}: {employee!r} is not an employee role")
            continue
        checked = r.integer(weight, item_line, "weight", 1, 1000)
        if checked is not None:
            result.append(QueueMember(project, queue, employee, checked, r.path, item_line))
    return result


def _rule(r: _Reader, project: str, node: Mapping, line: int) -> tuple[Rule | None, list[Any]]:
    r.keys(
        node,
        {"name", "priority", "on_stage", "when", "target", "strategy", "load", "max_open"}
        | {"business_hours", "sla", "enabled"},
        "a rule",
    )
    name = r.name(node.get("name"), node.line_of("name"), "rule name")
    at = node.line_of
    on_stage = node.get("on_stage")
    if on_stage is not None:
        on_stage = r.choice(on_stage, at("on_stage"), "stage", STAGES)
    when = node.get("when", _empty(line))
    conditions: dict[str, Any] = {}
    if not isinstance(when, Mapping):
        r.error(at("when"), "'when' must map conditions (source, province, ...) to values")
        when = _empty(at("when"))
    r.keys(when, {"source", "province", "product_interest", "stage", "score"}, "'when'")
    conditions["sources"] = r.strings(when.get("source"), when.line_of("source"), "source", SOURCES)
    conditions["provinces"] = r.strings(when.get("province"), when.line_of("province"), "province")
    conditions["product_interests"] = r.strings(
        when.get("product_interest"), when.line_of("product_interest"), "product_interest"
    )
    conditions["stages"] = r.strings(when.get("stage"), when.line_of("stage"), "stage", STAGES)
    score = when.get("score", _empty(when.line))
    score_line = when.line_of("score")
    if not isinstance(score, Mapping):
        r.error(score_line, "score must be {min: N, max: N}")
        score = _empty(score_line)
    r.keys(score, {"min", "max"}, "score")
    low = r.integer(score.get("min"), score_line, "score min", 0, 100)
    high = r.integer(score.get("max"), score_line, "score max", 0, 100)
    if low is not None and high is not None and low > high:
        r.error(score_line, f"score min {low} is above max {high}")

    target = node.get("target")
    unit = queue = None
    sub_units = False
    extra: list[Any] = []
    kinds = {"org_unit", "queue", "employees"}
    if not isinstance(target, Mapping) or len(kinds & set(target)) != 1:
        r.error(at("target"), "target must be exactly one of {org_unit}, {queue} or {employees}")
    else:
        r.keys(target, {"org_unit", "include_sub_units", "queue", "employees"}, "target")
        if "org_unit" in target:
            unit = r.name(target["org_unit"], target.line_of("org_unit"), "org unit")
            sub_units = r.flag(
                target.get("include_sub_units", False),
                target.line_of("include_sub_units"),
                "include_sub_units",
            )
        elif "queue" in target:
            queue = r.name(target["queue"], target.line_of("queue"), "queue")
        elif name is not None:  # a list of employees: the rule's own queue, named after it
            queue = name
            extra = _people(r, project, name, target["employees"], target.line_of("employees"))

    hours = node.get("business_hours", False)
    hours_unit: str | None = None
    if hours is True:
        if unit is None:
            r.error(
                at("business_hours"), "business_hours: true needs an org_unit target; name a team"
            )
        hours_unit = unit
    elif isinstance(hours, str):
        hours_unit = r.name(hours, at("business_hours"), "business_hours team")
    elif hours is not False:
        r.error(at("business_hours"), "business_hours must be true, false or a team code")

    sla = node.get("sla", _empty(line))
    if not isinstance(sla, Mapping):
        r.error(at("sla"), "sla must be {minutes, business_hours, max_hops}")
        sla = _empty(at("sla"))
    r.keys(sla, {"minutes", "business_hours", "max_hops"}, "sla")
    sla_minutes = r.integer(sla.get("minutes"), sla.line_of("minutes"), "sla minutes", 1, 525600)
    sla_hours_line = sla.line_of("business_hours")
    sla_hours = r.flag(sla.get("business_hours", False), sla_hours_line, "sla business_hours")
    if sla_hours and hours_unit is None:
        r.error(sla_hours_line, "sla business_hours needs the rule's business_hours team")
    if sla and "minutes" not in sla:
        r.error(at("sla"), "sla needs minutes")
    hops = r.integer(sla.get("max_hops", 2), sla.line_of("max_hops"), "sla max_hops", 0, 100)
    strategy = r.choice(node.get("strategy", "round_robin"), at("strategy"), "strategy", STRATEGIES)
    load = r.choice(node.get("load", "customers"), at("load"), "load", LOADS)
    priority = r.integer(node.get("priority", 100), at("priority"), "priority", -100000, 100000)
    max_open = r.integer(node.get("max_open"), at("max_open"), "max_open", 1, 10_000_000)
    enabled = r.flag(node.get("enabled", True), at("enabled"), "enabled")
    if None in (name, strategy, load, priority, hops) or (unit is None and queue is None):
        return None, extra
    assert name and strategy and load and priority is not None and hops is not None
    return Rule(
        project=project,
        name=name,
        kind="handoff" if on_stage else "assign",
        on_stage=on_stage,
        priority=priority,
        enabled=enabled,
        min_score=low,
        max_score=high,
        target_org_unit=unit,
        include_sub_units=sub_units,
        target_queue=queue,
        strategy=strategy,
        load_measure=load,
        max_open=max_open,
        hours_org_unit=hours_unit,
        sla_minutes=sla_minutes,
        sla_business_hours=sla_hours,
        sla_max_hops=hops,
        path=r.path,
        line=line,
        **conditions,
    ), extra


def _file(r: _Reader, doc: Any, result: RuleSet) -> None:
    if not isinstance(doc, Mapping):
        r.error(1, "a rules file is a mapping with 'project' and 'rules'")
        return
    r.keys(doc, {"project", "business_hours", "queues", "rules"}, "a rules file")
    project = r.name(doc.get("project"), doc.line_of("project"), "project")
    if project is None:
        return
    if project in result.projects:
        first = result.projects[project]
        r.error(doc.line_of("project"), f"project {project} is already in {first[0]}:{first[1]}")
        return
    result.projects[project] = (r.path, doc.line_of("project"))
    if "business_hours" in doc:
        result.hours += _hours(r, doc["business_hours"], doc.line_of("business_hours"))
    queues = _members(r, project, doc.get("queues", _empty(doc.line)), doc.line_of("queues"))
    rules = doc.get("rules")
    if rules is None:
        rules = Sequence()
        rules.item_lines = []
    if not isinstance(rules, Sequence):
        r.error(doc.line_of("rules"), "'rules' must be a list")
        return
    names: dict[str, int] = {}
    for item, line in zip(rules, rules.item_lines, strict=True):
        if not isinstance(item, Mapping):
            r.error(line, "each rule must be a mapping with name, target, ...")
            continue
        rule, own = _rule(r, project, item, line)
        if rule is None:
            continue
        if rule.name in names:
            r.error(line, f"rule {rule.name} is already defined at line {names[rule.name]}")
            continue
        names[rule.name] = line
        if own and any(m.queue == rule.name for m in queues):
            r.error(line, f"rule {rule.name} lists employees, and a queue of that name exists")
        queues += own
        result.rules.append(rule)
    _check_targets(r, project, [x for x in result.rules if x.project == project], queues)
    _check_catch_all(r, project, [x for x in result.rules if x.project == project], doc)
    seen: set[tuple[str, str]] = set()
    for member in queues:
        key = (member.queue, member.employee)
        if key in seen:
            r.error(member.line, f"{member.employee} is twice in queue {member.queue}")
        seen.add(key)
    result.members += queues


def _check_targets(r: _Reader, project: str, rules: list[Rule], queues: list[QueueMember]) -> None:
    """A queue target must be one of the file's queues: the file owns its project's
    queues, so any other would be empty once applied (a rule that matches nobody)."""
    defined = {m.queue for m in queues}
    for rule in rules:
        if rule.target_queue is not None and rule.target_queue not in defined:
            r.error(
                rule.line,
                f"rule {rule.name} targets queue {rule.target_queue}, which this file does"
                " not define: the rule would match nobody",
            )


def is_catch_all(rule: Rule) -> bool:
    """An enabled assignment rule without conditions: it matches every new customer."""
    conditions = (rule.sources, rule.provinces, rule.product_interests, rule.stages)
    return (
        rule.enabled
        and rule.kind == "assign"
        and all(c is None for c in conditions)
        and rule.min_score is None
        and rule.max_score is None
    )


def _check_catch_all(r: _Reader, project: str, rules: list[Rule], doc: Mapping) -> None:
    """Every project's assignment rules end in a catch-all, so that the rules place every
    new customer (what still finds no rule goes to the project's triage at run time)."""
    assign = [x for x in rules if x.kind == "assign" and x.enabled]
    catch_alls = [x for x in assign if is_catch_all(x)]
    if not catch_alls:
        line = doc.line_of("rules") if "rules" in doc else doc.line_of("project")
        r.error(
            line,
            f"project {project} has no catch-all rule: end its rules with an assignment rule"
            " without 'when' (e.g. target: {queue: triage}), or new customers no rule"
            " matches are left to the project's triage",
        )
        return
    first = min(catch_alls, key=lambda x: x.priority)
    for rule in assign:
        if rule is first:
            continue
        if rule.priority > first.priority:
            r.error(
                rule.line,
                f"rule {rule.name} (priority {rule.priority}) comes after the catch-all"
                f" {first.name} (priority {first.priority}): it can never match",
            )
        elif rule.priority == first.priority:
            r.error(
                rule.line,
                f"rule {rule.name} has the priority of the catch-all {first.name}"
                f" ({first.priority}): give the catch-all the highest priority number",
            )


def load_rules(directory: Path) -> RuleSet:
    """Every *.yaml file in `directory`; RulesError lists every problem."""
    result = RuleSet()
    problems: list[Problem] = []
    files = sorted(directory.glob("*.yaml"))
    if not directory.is_dir():
        raise RulesError([Problem(directory, 0, "no such directory")])
    for path in files:
        r = _Reader(path)
        try:
            _file(r, load(path), result)
        except YamlError as exc:
            r.error(exc.line, exc.message)
        problems += r.problems
    hours: dict[tuple[str, int, time], Hours] = {}
    for h in result.hours:
        other = hours.get((h.org_unit, h.weekday, h.opens))
        if other is not None:
            problems.append(
                Problem(
                    h.path,
                    h.line,
                    f"{h.org_unit}: hours given twice (also {other.path}:{other.line})",
                )
            )
        hours[(h.org_unit, h.weekday, h.opens)] = h
    if problems:
        raise RulesError(problems)
    return result
