"""Automation emails (automations/*.yaml), validated, planned and applied like the
routing rules: the rules' reader (errors at file:line), their plan output (statements,
exit 3 on changes) and one transaction under a lock.

  project: CODE
  automations:
    - name: welcome                    # unique in the project
      event: customer_created          # or contract_won
      when: {source: [web_form], province: [Hà Nội], stage: [lead]}   # optional
      template: welcome                # emails/welcome.vi.j2 and .en.j2 must exist
      enabled: true

A file owns its project's automations: those it does not declare are deleted.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from crmdb.db import Target, connect, server_error
from crmdb.errors import CrmdbError
from crmdb.outbox.render import LANGUAGES, available
from crmdb.policies.model import Problem
from crmdb.policies.yamlload import Mapping, Sequence, YamlError, load
from crmdb.queries import query
from crmdb.routing.model import SOURCES, STAGES, RulesError, _Reader
from crmdb.routing.plan import RulesPlan, _project

EVENTS = ("customer_created", "contract_won")
EMAIL = "email.sql"
CASTS = {
    "event": "crm_private.automation_event",
    "sources": "crm.source_channel[]",
    "provinces": "text[]",
    "stages": "crm.customer_stage[]",
}


class AutomationsError(RulesError):
    """Automation files that do not validate; str() lists every problem, one per line."""


@dataclass(frozen=True)
class Automation:
    """One row of crm_private.email_automations, by project code."""

    project: str
    name: str
    event: str
    template: str
    enabled: bool
    sources: tuple[str, ...] | None
    provinces: tuple[str, ...] | None
    stages: tuple[str, ...] | None
    path: Path = field(compare=False)
    line: int = field(compare=False)


FIELDS = [f.name for f in fields(Automation) if f.name not in ("project", "name", "path", "line")]


@dataclass
class AutomationSet:
    projects: dict[str, tuple[Path, int]] = field(default_factory=dict)
    automations: list[Automation] = field(default_factory=list)


def _automation(
    r: _Reader, project: str, node: Mapping, line: int, templates: dict[str, set[str]]
) -> Automation | None:
    r.keys(node, {"name", "event", "when", "template", "enabled"}, "an automation")
    name = r.name(node.get("name"), node.line_of("name"), "automation name")
    event = r.choice(node.get("event"), node.line_of("event"), "event", EVENTS)
    template = node.get("template")
    template_line = node.line_of("template")
    if not isinstance(template, str) or not template:
        r.error(template_line, "template must name an email template (emails/NAME.LANG.j2)")
        template = None
    else:
        missing = sorted(set(LANGUAGES) - templates.get(template, set()))
        if missing:
            r.error(
                template_line,
                f"template {template!r} has no emails/{template}.{missing[0]}.j2"
                + (f" (nor {', '.join(missing[1:])})" if missing[1:] else ""),
            )
            template = None
    enabled = r.flag(node.get("enabled", True), node.line_of("enabled"), "enabled")
    when = node.get("when")
    conditions: dict[str, Any] = {"sources": None, "provinces": None, "stages": None}
    if when is not None:
        if not isinstance(when, Mapping):
            r.error(node.line_of("when"), "'when' must map conditions (source, province, stage)")
        else:
            r.keys(when, {"source", "province", "stage"}, "'when'")
            at = when.line_of
            conditions["sources"] = r.strings(when.get("source"), at("source"), "source", SOURCES)
            conditions["provinces"] = r.strings(when.get("province"), at("province"), "province")
            conditions["stages"] = r.strings(when.get("stage"), at("stage"), "stage", STAGES)
    if name is None or event is None or template is None:
        return None
    return Automation(project, name, event, template, enabled, path=r.path, line=line, **conditions)


def _file(r: _Reader, doc: Any, result: AutomationSet, templates: dict[str, set[str]]) -> None:
    if not isinstance(doc, Mapping):
        r.error(1, "an automations file is a mapping with 'project' and 'automations'")
        return
    r.keys(doc, {"project", "automations"}, "an automations file")
    project = r.name(doc.get("project"), doc.line_of("project"), "project")
    if project is None:
        return
    if project in result.projects:
        first = result.projects[project]
        r.error(doc.line_of("project"), f"project {project} is already in {first[0]}:{first[1]}")
        return
    result.projects[project] = (r.path, doc.line_of("project"))
    items = doc.get("automations", [])
    if not isinstance(items, Sequence):
        r.error(doc.line_of("automations"), "'automations' must be a list")
        return
    names: dict[str, int] = {}
    for item, line in zip(items, items.item_lines, strict=True):
        if not isinstance(item, Mapping):
            r.error(line, "each automation must be a mapping with name, event, template")
            continue
        automation = _automation(r, project, item, line, templates)
        if automation is None:
            continue
        if automation.name in names:
            r.error(
                line,
                f"automation {automation.name} is already defined at line {names[automation.name]}",
            )
            continue
        names[automation.name] = line
        result.automations.append(automation)


def load_automations(directory: Path, templates_dir: Path | None = None) -> AutomationSet:
    """Every *.yaml file in `directory`; AutomationsError lists every problem."""
    if not directory.is_dir():
        raise AutomationsError([Problem(directory, 0, "no such directory")])
    templates = available(templates_dir)
    result = AutomationSet()
    problems: list[Problem] = []
    for path in sorted(directory.glob("*.yaml")):
        r = _Reader(path)
        try:
            _file(r, load(path), result, templates)
        except YamlError as exc:
            r.error(exc.line, exc.message)
        problems += r.problems
    if problems:
        raise AutomationsError(problems)
    return result


def _value(name: str, value: Any) -> sql.Composable:
    literal = sql.Literal(list(value) if isinstance(value, tuple) else value)
    if name in CASTS and value is not None:
        return sql.SQL("{}::{}").format(literal, sql.SQL(CASTS[name]))
    return literal


def make_plan(conn: psycopg.Connection, automations: AutomationSet) -> RulesPlan:
    """The statements that bring crm_private.email_automations to the files."""
    projects = sorted(automations.projects)
    unknown = [
        r[0]
        for r in conn.execute(query("automations_unknown_projects", EMAIL), {"projects": projects})
    ]
    if unknown:
        raise AutomationsError(
            [Problem(*automations.projects[p], f"unknown project {p!r}") for p in unknown]
        )
    current: dict[tuple[str, str], tuple[Any, ...]] = {}
    for found in conn.execute(query("automations_current", EMAIL), {"projects": projects}):
        current[(found[0], found[1])] = tuple(
            tuple(v) if isinstance(v, list) else v for v in found[2:]
        )
    wanted = {(a.project, a.name): a for a in automations.automations}
    statements = [
        sql.SQL("DELETE FROM crm_private.email_automations WHERE project_id = {} AND name = {};")
        .format(_project(project), sql.Literal(name))
        .as_string(conn)
        for project, name in sorted(set(current) - set(wanted))
    ]
    for key, automation in sorted(wanted.items()):
        values = tuple(getattr(automation, n) for n in FIELDS)
        have = current.get(key)
        if have is None:
            statement = sql.SQL(
                "INSERT INTO crm_private.email_automations (project_id, name, {})"
                " VALUES ({}, {}, {});"
            ).format(
                sql.SQL(", ").join(sql.Identifier(n) for n in FIELDS),
                _project(automation.project),
                sql.Literal(automation.name),
                sql.SQL(", ").join(_value(n, v) for n, v in zip(FIELDS, values, strict=True)),
            )
        elif have != values:
            statement = sql.SQL(
                "UPDATE crm_private.email_automations SET {} WHERE project_id = {} AND name = {};"
            ).format(
                sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(n), _value(n, v))
                    for n, v, old in zip(FIELDS, values, have, strict=True)
                    if v != old
                ),
                _project(automation.project),
                sql.Literal(automation.name),
            )
        else:
            continue
        statements.append(statement.as_string(conn))
    return RulesPlan(statements)


def plan(target: Target, automations: AutomationSet) -> RulesPlan:
    with connect(target) as conn:
        try:
            return make_plan(conn, automations)
        except psycopg.Error as exc:
            raise CrmdbError(f"planning failed: {server_error(exc)}") from None
        finally:
            conn.rollback()


def apply(target: Target, automations: AutomationSet) -> RulesPlan:
    """Plan and apply in one transaction under a lock; on any error nothing changes."""
    with connect(target) as conn:
        try:
            with conn.transaction():
                conn.execute(query("automations_lock", EMAIL))
                result = make_plan(conn, automations)
                for statement in result.statements:
                    conn.execute(statement)  # generated here; every value a quoted literal
                return result
        except psycopg.Error as exc:
            raise CrmdbError(
                f"automations apply failed, nothing was changed: {server_error(exc)}"
            ) from None
