"""The difference between rules files and the database, as SQL; applying it.

A rules file owns its project's rules and queues, and the business hours of the teams
it names: rows of those that the files do not declare are deleted. Other projects'
rules (an admin may manage some in SQL) are left alone.
"""

from dataclasses import dataclass, field, fields
from typing import Any

import psycopg
from psycopg import sql

from crmdb import plans
from crmdb.db import Target
from crmdb.policies.model import Problem
from crmdb.queries import query
from crmdb.routing.model import Hours, QueueMember, Rule, RulesError, RuleSet

# Rule fields in the column order of the `rules_current` query, with the SQL each
# value needs: a cast, or a lookup of an org unit's id by code.
CASTS = {
    "kind": "crm.routing_rule_kind",
    "on_stage": "crm.customer_stage",
    "sources": "crm.source_channel[]",
    "provinces": "text[]",
    "product_interests": "text[]",
    "stages": "crm.customer_stage[]",
    "strategy": "crm.routing_strategy",
}
UNIT_COLUMNS = {"target_org_unit": "target_org_unit_id", "hours_org_unit": "hours_org_unit_id"}
RULE_FIELDS = [f.name for f in fields(Rule) if f.name not in ("project", "name", "path", "line")]


@dataclass
class RulesPlan:
    statements: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.statements

    def sql(self) -> str:
        return "\n".join(self.statements)


def _project(code: str) -> sql.Composable:
    return sql.SQL("(SELECT id FROM crm.projects WHERE code = {})").format(sql.Literal(code))


def _unit(code: str | None) -> sql.Composable:
    if code is None:
        return sql.NULL
    return sql.SQL("(SELECT id FROM crm.org_units WHERE code = {})").format(sql.Literal(code))


def _employee(role: str) -> sql.Composable:
    return sql.SQL("(SELECT id FROM crm.employees WHERE role_name = {})").format(sql.Literal(role))


def _value(name: str, value: Any) -> sql.Composable:
    if name in UNIT_COLUMNS:
        return _unit(value)
    literal = sql.Literal(list(value) if isinstance(value, tuple) else value)
    if name in CASTS and value is not None:
        return sql.SQL("{}::{}").format(literal, sql.SQL(CASTS[name]))
    return literal


def _column(name: str) -> sql.Identifier:
    return sql.Identifier(UNIT_COLUMNS.get(name, name))


def _rule_key(rule: Rule) -> sql.Composable:
    return sql.SQL("project_id = {} AND name = {}").format(
        _project(rule.project), sql.Literal(rule.name)
    )


def _rule_values(rule: Rule) -> tuple[Any, ...]:
    return tuple(getattr(rule, name) for name in RULE_FIELDS)


def _rule_statements(conn: psycopg.Connection, rules: RuleSet) -> tuple[list[str], list[str]]:
    """(deletes, upserts) bringing crm.routing_rules to the files."""
    current: dict[tuple[str, str], tuple[Any, ...]] = {}
    for found in conn.execute(query("rules_current"), {"projects": list(rules.projects)}):
        values = tuple(tuple(v) if isinstance(v, list) else v for v in found[2:])
        current[(found[0], found[1])] = values
    wanted = {(r.project, r.name): r for r in rules.rules}
    deletes = [
        sql.SQL("DELETE FROM crm.routing_rules WHERE project_id = {} AND name = {};")
        .format(_project(project), sql.Literal(name))
        .as_string(conn)
        for project, name in sorted(set(current) - set(wanted))
    ]
    upserts = []
    for key, rule in sorted(wanted.items()):
        values = _rule_values(rule)
        have = current.get(key)
        if have is None:
            columns = [sql.Identifier("project_id"), sql.Identifier("name")]
            columns += [_column(n) for n in RULE_FIELDS]
            cells: list[sql.Composable] = [_project(rule.project), sql.Literal(rule.name)]
            cells += [_value(n, v) for n, v in zip(RULE_FIELDS, values, strict=True)]
            statement = sql.SQL("INSERT INTO crm.routing_rules ({}) VALUES ({});").format(
                sql.SQL(", ").join(columns), sql.SQL(", ").join(cells)
            )
        elif have != values:
            changes = [
                sql.SQL("{} = {}").format(_column(n), _value(n, v))
                for n, v, old in zip(RULE_FIELDS, values, have, strict=True)
                if v != old
            ]
            statement = sql.SQL("UPDATE crm.routing_rules SET {} WHERE {};").format(
                sql.SQL(", ").join(changes), _rule_key(rule)
            )
        else:
            continue
        upserts.append(statement.as_string(conn))
    return deletes, upserts


def _member_statements(conn: psycopg.Connection, rules: RuleSet) -> tuple[list[str], list[str]]:
    current = {
        (p, q, e): w
        for p, q, e, w in conn.execute(
            query("queue_members_current"), {"projects": list(rules.projects)}
        )
    }
    wanted: dict[tuple[str, str, str], QueueMember] = {
        (m.project, m.queue, m.employee): m for m in rules.members
    }
    deletes = [
        sql.SQL(
            "DELETE FROM crm.routing_queue_members"
            " WHERE project_id = {} AND queue = {} AND employee_id = {};"
        )
        .format(_project(p), sql.Literal(q), _employee(e))
        .as_string(conn)
        for p, q, e in sorted(set(current) - set(wanted))
    ]
    upserts = []
    for key, member in sorted(wanted.items()):
        if current.get(key) == member.weight:
            continue
        statement = sql.SQL(
            "INSERT INTO crm.routing_queue_members (project_id, queue, employee_id, weight)"
            " VALUES ({}, {}, {}, {})"
            " ON CONFLICT (project_id, queue, employee_id) DO UPDATE SET weight = EXCLUDED.weight;"
        ).format(
            _project(member.project),
            sql.Literal(member.queue),
            _employee(member.employee),
            sql.Literal(member.weight),
        )
        upserts.append(statement.as_string(conn))
    return deletes, upserts


def _hours_statements(conn: psycopg.Connection, rules: RuleSet) -> list[str]:
    units = sorted(rules.hour_units())
    current: dict[str, set[tuple[Any, ...]]] = {u: set() for u in units}
    for unit, weekday, opens, closes in conn.execute(
        query("business_hours_current"), {"units": units}
    ):
        current[unit].add((weekday, opens, closes))
    wanted: dict[str, list[Hours]] = {u: [] for u in units}
    for h in rules.hours:
        wanted[h.org_unit].append(h)
    out = []
    for unit in units:
        rows = sorted((h.weekday, h.opens, h.closes) for h in wanted[unit])
        if set(rows) == current[unit]:
            continue
        out.append(
            sql.SQL("DELETE FROM crm.business_hours WHERE org_unit_id = {};")
            .format(_unit(unit))
            .as_string(conn)
        )
        for weekday, opens, closes in rows:
            out.append(
                sql.SQL(
                    "INSERT INTO crm.business_hours (org_unit_id, weekday, opens, closes)"
                    " VALUES ({}, {}, {}, {});"
                )
                .format(_unit(unit), sql.Literal(weekday), sql.Literal(opens), sql.Literal(closes))
                .as_string(conn)
            )
    return out


def check_references(conn: psycopg.Connection, rules: RuleSet) -> None:
    """Projects, org units and employees the files name must exist: RulesError names
    the line of each reference that does not."""
    where: dict[tuple[str, str], list[tuple[Any, int]]] = {}
    for project, (path, line) in rules.projects.items():
        where.setdefault(("project", project), []).append((path, line))
    for rule in rules.rules:
        for unit in {rule.target_org_unit, rule.hours_org_unit} - {None}:
            where.setdefault(("org unit", str(unit)), []).append((rule.path, rule.line))
    for h in rules.hours:
        where.setdefault(("org unit", h.org_unit), []).append((h.path, h.line))
    for m in rules.members:
        where.setdefault(("employee", m.employee), []).append((m.path, m.line))
    labels = (("projects", "project"), ("units", "org unit"), ("employees", "employee"))
    params = {kind: sorted(name for k, name in where if k == label) for kind, label in labels}
    departed = {"employee": " (or departed)"}
    problems = [
        Problem(path, line, f"unknown {kind} {name!r}{departed.get(kind, '')}")
        for kind, name in conn.execute(query("rules_unknown"), params)
        for path, line in sorted(set(where[(kind, name)]))
    ]
    if problems:
        raise RulesError(sorted(problems, key=lambda p: (str(p.path), p.line, p.message)))


def check_targets(conn: psycopg.Connection, rules: RuleSet) -> None:
    """Every rule must reach somebody: RulesError names the line of each queue member
    who is not in the project, and of each rule whose target (org unit, queue, list of
    employees) holds no employee of the project who has not departed."""
    problems: list[Problem] = []
    units = [r for r in rules.rules if r.target_org_unit is not None]
    counts: dict[int, int] = dict(
        conn.execute(
            query("rules_target_members"),
            {
                "projects": [r.project for r in units],
                "units": [r.target_org_unit for r in units],
                "subs": [r.include_sub_units for r in units],
            },
        ).fetchall()
    )
    for i, rule in enumerate(units, start=1):
        if not counts.get(i):
            scope = " or the units below it" if rule.include_sub_units else ""
            problems.append(
                Problem(
                    rule.path,
                    rule.line,
                    f"rule {rule.name} matches nobody: no employee of org unit"
                    f" {rule.target_org_unit}{scope} is a member of project {rule.project}",
                )
            )
    outside = set(
        conn.execute(
            query("rules_non_members"),
            {
                "projects": [m.project for m in rules.members],
                "employees": [m.employee for m in rules.members],
            },
        ).fetchall()
    )
    for m in rules.members:
        if (m.project, m.employee) in outside:
            problems.append(
                Problem(
                    m.path,
                    m.line,
                    f"{m.employee} in queue {m.queue} is not a member of project {m.project}:"
                    " routing never picks them",
                )
            )
    for rule in rules.rules:
        queue = [
            m
            for m in rules.members
            if (m.project, m.queue) == (rule.project, rule.target_queue)
            and (m.project, m.employee) not in outside
        ]
        if rule.target_queue is not None and not queue:
            problems.append(
                Problem(
                    rule.path,
                    rule.line,
                    f"rule {rule.name} matches nobody: no employee of queue"
                    f" {rule.target_queue} is a member of project {rule.project}",
                )
            )
    if problems:
        raise RulesError(sorted(problems, key=lambda p: (str(p.path), p.line, p.message)))


def make_plan(conn: psycopg.Connection, rules: RuleSet) -> RulesPlan:
    """The statements that bring the database to the files, in a safe order."""
    check_references(conn, rules)
    check_targets(conn, rules)
    rule_deletes, rule_upserts = _rule_statements(conn, rules)
    member_deletes, member_upserts = _member_statements(conn, rules)
    hours = _hours_statements(conn, rules)
    return RulesPlan(member_deletes + rule_deletes + rule_upserts + member_upserts + hours)


def plan(target: Target, rules: RuleSet) -> RulesPlan:
    return plans.plan(target, lambda conn: make_plan(conn, rules))


def apply_in(conn: psycopg.Connection, rules: RuleSet) -> RulesPlan:
    """Lock, plan and run the plan inside the caller's open transaction."""
    conn.execute(query("rules_lock"))
    return plans.run(conn, make_plan(conn, rules))


def apply(target: Target, rules: RuleSet) -> RulesPlan:
    """Plan and apply in one transaction under a lock; on any error nothing changes."""
    return plans.apply(target, "rules", lambda conn: apply_in(conn, rules))


__all__ = ["RulesPlan", "apply", "apply_in", "make_plan", "plan"]
