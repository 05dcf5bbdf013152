"""Role templates, sharing rules and the test fixture, loaded and validated.

Every file in the policies folder is YAML with one top-level kind:
  template: NAME        a role template (one per file)
  sharing_rules: [...]  criteria-based sharing rules
  fixture: {...}        the small org that templates' `tests:` run against
  field_groups: {...}   which columns travel together, and masks (crmdb/policies/fields.py)
Errors are collected, not raised one by one, and each names file and line.

Feature clusters: a template names only tables and reports of its own solution and the
directories (tables of no solution); management templates oversee every solution. What a
template extends counts as its own (crmdb/policies/tables.py).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmdb.policies.criteria import check_criteria
from crmdb.policies.fields import CORE, FieldGroup, read_field_groups
from crmdb.policies.tables import ACTIONS, OVERSIGHT, REPORTS, SCOPES, SOLUTIONS, TABLES
from crmdb.policies.yamlload import Mapping, Sequence, YamlError, load

NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class PolicyError(Exception):
    """Templates that do not validate; str() lists every problem, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Scope:
    kind: str
    actions: frozenset[str]
    where: str | None = None  # criteria only
    include_sub_units: bool = False  # org_unit only
    name: str = ""  # distinguishes several criteria scopes on one table
    line: int = 0
    path: Path | None = None  # the template file that declared it (for errors)
    where_line: int = 0
    # Field groups (besides core) this scope shows and lets write; see fields.py.
    read_groups: frozenset[str] = frozenset()
    write_groups: frozenset[str] = frozenset()
    fields_line: int = 0

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass
class Template:
    name: str
    description: str
    solution: str | None
    extends: tuple[str, ...]
    tables: dict[str, tuple[Scope, ...]]
    tests: tuple["TemplateTest", ...]
    path: Path
    line: int = 1
    reports: tuple[str, ...] = ()  # report functions granted (tables.REPORTS)
    reports_line: int = 0
    extends_line: int = 0
    table_lines: dict[str, int] = field(default_factory=dict)  # table -> its line


@dataclass(frozen=True)
class Check:
    action: str
    table: str
    key: str  # fixture key of the row, e.g. c1


@dataclass(frozen=True)
class TemplateTest:
    as_: str
    can: tuple[Check, ...]
    cannot: tuple[Check, ...]
    path: Path
    line: int


@dataclass(frozen=True)
class SharingRule:
    name: str
    table: str
    where: str
    access: str  # read or edit
    project: str | None
    org_unit: str | None
    include_sub_units: bool
    employees: tuple[str, ...]
    path: Path
    line: int
    # Field groups the audience reads on matching rows (and writes, with access edit)
    fields: tuple[str, ...] = ()
    fields_line: int = 0


@dataclass
class PolicySet:
    templates: dict[str, Template]
    sharing_rules: list[SharingRule]
    fixture: Mapping | None
    fixture_path: Path | None
    directory: Path
    field_groups: dict[str, dict[str, FieldGroup]] = field(default_factory=dict)

    def effective(self, name: str) -> dict[str, tuple[Scope, ...]]:
        """A template's tables with everything it extends merged in (parents first)."""
        merged: dict[str, list[Scope]] = {}
        for ancestor in [*self.ancestors(name), name]:
            for table, scopes in self.templates[ancestor].tables.items():
                present = merged.setdefault(table, [])
                for scope in scopes:
                    same = [s for s in present if s.label == scope.label]
                    if same:  # a child re-declaring a scope replaces the parent's
                        present[present.index(same[0])] = scope
                    else:
                        present.append(scope)
        return {t: tuple(s) for t, s in merged.items()}

    def reports(self, name: str) -> tuple[str, ...]:
        """A template's reports with those of everything it extends."""
        merged: list[str] = []
        for ancestor in [*self.ancestors(name), name]:
            merged += [r for r in self.templates[ancestor].reports if r not in merged]
        return tuple(merged)

    def ancestors(self, name: str) -> list[str]:
        """Templates `name` extends, transitively, most distant first."""
        order: list[str] = []
        for parent in self.templates[name].extends:
            for a in [*self.ancestors(parent), parent]:
                if a not in order:
                    order.append(a)
        return order


@dataclass
class _Reader:
    path: Path
    problems: list[Problem] = field(default_factory=list)

    def error(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def keys(self, node: Mapping, allowed: set[str], what: str) -> None:
        for key in node:
            if key not in allowed:
                self.error(
                    node.line_of(key),
                    f"unknown key {key!r} in {what} (expected: {', '.join(sorted(allowed))})",
                )

    def name(self, value: Any, line: int, what: str) -> str | None:
        if not isinstance(value, str) or not NAME.match(value):
            self.error(line, f"{what} {value!r} must match {NAME.pattern}")
            return None
        return value

    def str_list(self, value: Any, line: int, what: str) -> list[str]:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(line, f"{what} must be a list of names")
            return []
        return list(value)


def _scopes(r: _Reader, table: str, node: Any, line: int) -> tuple[Scope, ...]:
    spec = TABLES[table]
    if isinstance(node, Mapping):
        r.keys(node, {"rows"}, f"table {table}")
        line, node = node.line_of("rows"), node.get("rows")
    if not isinstance(node, Sequence) or not node:
        r.error(line, f"table {table}: 'rows' must be a non-empty list of scopes")
        return ()
    scopes: list[Scope] = []
    for item, item_line in zip(node, node.item_lines, strict=True):
        if not isinstance(item, Mapping):
            r.error(
                item_line, f"table {table}: each scope must be a mapping with 'scope' and 'actions'"
            )
            continue
        r.keys(
            item,
            {"scope", "actions", "where", "include_sub_units", "name", "fields"},
            f"a scope of {table}",
        )
        kind = item.get("scope")
        if kind not in SCOPES:
            r.error(
                item.line_of("scope"),
                f"unknown scope {kind!r} (expected one of: {', '.join(SCOPES)})",
            )
            continue
        if kind not in spec.scopes():
            r.error(
                item.line_of("scope"),
                f"scope {kind!r} does not apply to table {table} "
                f"(it has: {', '.join(spec.scopes())})",
            )
            continue
        actions = r.str_list(item.get("actions"), item.line_of("actions"), "actions")
        if not actions:
            r.error(item.line_of("actions"), f"scope {kind} of {table} needs 'actions'")
        for action in actions:
            if action not in ACTIONS:
                r.error(
                    item.line_of("actions"),
                    f"unknown action {action!r} (expected: {', '.join(ACTIONS)})",
                )
        where = item.get("where")
        if kind == "criteria":
            for problem in check_criteria(where, spec.columns):
                r.error(item.line_of("where"), f"table {table}: {problem}")
        elif where is not None:
            r.error(item.line_of("where"), f"'where' belongs to scope criteria, not {kind}")
        sub_units = item.get("include_sub_units", False)
        if sub_units and kind != "org_unit":
            r.error(
                item.line_of("include_sub_units"), "'include_sub_units' belongs to scope org_unit"
            )
        name = item.get("name", "")
        if name:
            name = r.name(name, item.line_of("name"), "scope name") or ""
        read, write = _fields(r, table, kind, set(actions), item)
        scopes.append(
            Scope(
                kind,
                frozenset(a for a in actions if a in ACTIONS),
                where if kind == "criteria" else None,
                bool(sub_units),
                name,
                item_line,
                r.path,
                item.line_of("where") if where is not None else item_line,
                read,
                write,
                item.line_of("fields"),
            )
        )
    labels = [s.label for s in scopes]
    for scope in scopes:
        if labels.count(scope.label) > 1:
            r.error(
                scope.line,
                f"table {table}: scope {scope.label!r} appears twice; give "
                "criteria scopes distinct 'name's",
            )
            break
    return tuple(scopes)


def _fields(
    r: _Reader, table: str, kind: str, actions: set[str], item: Mapping
) -> tuple[frozenset[str], frozenset[str]]:
    """A scope's `fields: {read: [...], write: [...]}` (groups are checked against
    policies/fields.yaml once every file is read)."""
    node = item.get("fields")
    if node is None:
        return frozenset(), frozenset()
    line = item.line_of("fields")
    if not isinstance(node, Mapping):
        r.error(line, f"scope {kind} of {table}: 'fields' must be {{read: [...], write: [...]}}")
        return frozenset(), frozenset()
    r.keys(node, {"read", "write"}, f"'fields' of scope {kind} of {table}")
    read = set(r.str_list(node.get("read", []), node.line_of("read"), "fields read"))
    write = set(r.str_list(node.get("write", []), node.line_of("write"), "fields write"))
    read.discard(CORE)  # core is implied wherever the row is visible
    write.discard(CORE)
    if (read or write) and "select" not in actions:
        r.error(line, f"scope {kind} of {table}: 'fields' needs the select action")
    if write and "update" not in actions:
        # A group's values are written by an update of its row (right after the insert,
        # for a new row), so a group writable without update would be writable on
        # every row the scope reaches.
        r.error(
            node.line_of("write"),
            f"scope {kind} of {table}: writable fields need the update action",
        )
    if write - read:
        r.error(
            node.line_of("write"),
            f"scope {kind} of {table}: fields written but not read: "
            f"{', '.join(sorted(write - read))} (add them to 'read')",
        )
    return frozenset(read), frozenset(write)


def _check_groups(
    templates: dict[str, Template],
    rules: list[SharingRule],
    registry: dict[str, dict[str, FieldGroup]],
    problems: list[Problem],
) -> None:
    """Every group a template or sharing rule names is declared for its table."""
    for rule in rules:
        declared = registry.get(rule.table, {})
        for group in sorted(set(rule.fields) - set(declared)):
            known = ", ".join(sorted(declared)) or "none declared"
            problems.append(
                Problem(
                    rule.path,
                    rule.fields_line,
                    f"sharing rule {rule.name}: table {rule.table} has no field group "
                    f"{group!r} ({known})",
                )
            )
    for template in templates.values():
        for table, scopes in template.tables.items():
            declared = registry.get(table, {})
            for scope in scopes:
                for group in sorted((scope.read_groups | scope.write_groups) - set(declared)):
                    known = ", ".join(sorted(declared)) or "none declared"
                    problems.append(
                        Problem(
                            scope.path or template.path,
                            scope.fields_line or scope.line,
                            f"table {table} has no field group {group!r} ({known})",
                        )
                    )


def _checks(r: _Reader, node: Any, line: int, what: str) -> tuple[Check, ...]:
    checks: list[Check] = []
    for text in r.str_list(node if node is not None else [], line, what):
        match = re.fullmatch(r"(\w+)\s+(\w+):(\w+)", text.strip())
        if not match:
            r.error(
                line, f"{what}: {text!r} must read 'ACTION TABLE:KEY', e.g. 'select customers:c1'"
            )
            continue
        action, table, key = match.groups()
        if action not in ACTIONS:
            r.error(line, f"{what}: unknown action {action!r}")
        elif table not in TABLES:
            r.error(line, f"{what}: unknown table {table!r}")
        else:
            checks.append(Check(action, table, key))
    return tuple(checks)


def _template(r: _Reader, doc: Mapping) -> Template | None:
    r.keys(
        doc,
        {"template", "description", "solution", "extends", "tables", "reports", "tests"},
        "a template",
    )
    name = r.name(doc.get("template"), doc.line_of("template"), "template name")
    if name is None:
        return None
    if r.path.stem != name:
        r.error(doc.line_of("template"), f"template {name!r} must live in {name}.yaml")
    solution = doc.get("solution")
    if solution is not None and solution not in SOLUTIONS:
        r.error(
            doc.line_of("solution"),
            f"unknown solution {solution!r} (expected: {', '.join(SOLUTIONS)})",
        )
    extends = r.str_list(doc.get("extends", []), doc.line_of("extends"), "extends")
    tables: dict[str, tuple[Scope, ...]] = {}
    node = doc.get("tables")
    if node is not None and not isinstance(node, Mapping):
        r.error(doc.line_of("tables"), "'tables' must map table names to scopes")
    elif node is not None:
        for table, body in node.items():
            if table not in TABLES:
                r.error(
                    node.line_of(table), f"unknown table {table!r} (expected: {', '.join(TABLES)})"
                )
                continue
            if not TABLES[table].templates:
                r.error(
                    node.line_of(table),
                    f"table {table!r} has fixed policies of its own (sql/schema.sql); "
                    "templates cannot grant it",
                )
                continue
            tables[table] = _scopes(r, table, body, node.line_of(table))
    reports = r.str_list(doc.get("reports", []), doc.line_of("reports"), "reports")
    for report in reports:
        if report not in REPORTS:
            r.error(
                doc.line_of("reports"),
                f"unknown report {report!r} (expected: {', '.join(REPORTS)})",
            )
    tests: list[TemplateTest] = []
    test_node = doc.get("tests")
    if test_node is None:  # tests are optional
        pass
    elif not isinstance(test_node, Sequence):
        r.error(doc.line_of("tests"), "'tests' must be a list")
    else:
        for item, line in zip(test_node, test_node.item_lines, strict=True):
            if not isinstance(item, Mapping) or "as" not in item:
                r.error(line, "each test needs 'as' (a fixture employee) and 'can'/'cannot'")
                continue
            r.keys(item, {"as", "can", "cannot"}, "a test")
            tests.append(
                TemplateTest(
                    str(item["as"]),
                    _checks(r, item.get("can"), item.line_of("can"), "can"),
                    _checks(r, item.get("cannot"), item.line_of("cannot"), "cannot"),
                    r.path,
                    line,
                )
            )
    return Template(
        name,
        str(doc.get("description", "")).strip(),
        solution,
        tuple(extends),
        tables,
        tuple(tests),
        r.path,
        doc.line_of("template"),
        tuple(rp for rp in reports if rp in REPORTS),
        doc.line_of("reports"),
        doc.line_of("extends"),
        {t: node.line_of(t) for t in tables} if isinstance(node, Mapping) else {},
    )


def _sharing_rules(r: _Reader, doc: Mapping) -> list[SharingRule]:
    rules: list[SharingRule] = []
    node = doc.get("sharing_rules")
    if not isinstance(node, Sequence):
        r.error(doc.line_of("sharing_rules"), "'sharing_rules' must be a list")
        return rules
    for item, line in zip(node, node.item_lines, strict=True):
        if not isinstance(item, Mapping):
            r.error(line, "each sharing rule must be a mapping")
            continue
        r.keys(
            item, {"name", "table", "where", "access", "project", "to", "fields"}, "a sharing rule"
        )
        name = r.name(item.get("name"), item.line_of("name"), "sharing rule name")
        table = item.get("table", "customers")
        if table != "customers":
            r.error(item.line_of("table"), f"sharing rules apply to customers, not {table!r}")
            continue
        where = item.get("where")
        for problem in check_criteria(where, TABLES[table].columns):
            r.error(item.line_of("where"), problem)
        access = item.get("access", "read")
        if access not in ("read", "edit"):
            r.error(item.line_of("access"), f"access must be read or edit, not {access!r}")
        to = item.get("to")
        if not isinstance(to, Mapping) or not ({"org_unit", "employees"} & set(to)):
            r.error(
                item.line_of("to"), "'to' needs org_unit (a code) and/or employees (role names)"
            )
            continue
        r.keys(to, {"org_unit", "include_sub_units", "employees"}, "'to'")
        employees = r.str_list(to.get("employees", []), to.line_of("employees"), "employees")
        fields = r.str_list(item.get("fields", []), item.line_of("fields"), "fields")
        if name:
            rules.append(
                SharingRule(
                    name,
                    table,
                    str(where),
                    access,
                    item.get("project"),
                    to.get("org_unit"),
                    bool(to.get("include_sub_units")),
                    tuple(employees),
                    r.path,
                    line,
                    tuple(f for f in fields if f != CORE),
                    item.line_of("fields") or line,
                )
            )
    names = [rule.name for rule in rules]
    for rule in rules:
        if names.count(rule.name) > 1:
            r.error(rule.line, f"sharing rule {rule.name!r} is defined twice")
    return rules


def _check_extends(templates: dict[str, Template], problems: list[Problem]) -> None:
    for template in templates.values():
        for parent in template.extends:
            if parent not in templates:
                problems.append(
                    Problem(
                        template.path,
                        template.line,
                        f"template {template.name!r} extends unknown template {parent!r}",
                    )
                )
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done" or name not in templates:
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            t = templates[name]
            problems.append(Problem(t.path, t.line, f"cycle in extends: {cycle}"))
            raise _Cycle
        state[name] = "visiting"
        for parent in templates[name].extends:
            visit(parent, [*trail, name])
        state[name] = "done"

    for name in templates:
        try:
            visit(name, [])
        except _Cycle:
            return


class _Cycle(Exception):
    pass


def may_name(template_solution: str | None, solution: str | None) -> bool:
    """Whether a template of `template_solution` may name a table or report of
    `solution` (None: a directory every template may name)."""
    return solution is None or template_solution in (solution, OVERSIGHT)


def _cluster(template: Template, subject: str) -> str:
    mine = f"solution {template.solution}" if template.solution else "no solution"
    rule = (
        "a template names only its own solution's tables and reports, and directories"
        if template.solution
        else "a template without a 'solution' names only directories (tables of no solution)"
    )
    return (
        f"template {template.name} ({mine}) {subject}; {rule} ({OVERSIGHT} ones: every solution's)"
    )


def _check_clusters(policies: "PolicySet", problems: list[Problem]) -> None:
    """Feature clusters: every table and report a template holds, its own or through
    `extends`, is of its solution, a directory, or the template oversees (management).
    A report also needs select on each table it reads (it runs as the caller)."""
    for name, template in sorted(policies.templates.items()):
        effective = policies.effective(name)
        for table in effective:
            solution = TABLES[table].solution
            if may_name(template.solution, solution):
                continue
            if table in template.tables:
                line = template.table_lines.get(table, template.line)
                subject = f"names {table}, a table of the {solution} solution"
                problems.append(Problem(template.path, line, _cluster(template, subject)))
            else:
                via = next(
                    a for a in policies.ancestors(name) if table in policies.templates[a].tables
                )
                problems.append(
                    Problem(
                        template.path,
                        template.extends_line or template.line,
                        _cluster(
                            template,
                            f"extends {via}, which names {table}, a table of the {solution} "
                            "solution",
                        ),
                    )
                )
        # Rows may point only at rows the writer sees (tables.Table.references): the
        # policies ask the referenced table as the writer, who must be granted it.
        readable = {
            t for t, scopes in effective.items() if any("select" in s.actions for s in scopes)
        }
        for table, scopes in effective.items():
            if not any(s.actions & {"insert", "update"} for s in scopes):
                continue
            for column, target in TABLES[table].references:
                if target not in readable:
                    problems.append(
                        Problem(
                            template.path,
                            template.table_lines.get(table, template.line),
                            f"template {name}: {table}.{column} points at {target}, and a "
                            f"written row may point only at {target} the writer sees; "
                            f"the template writes {table} but does not select {target}",
                        )
                    )
        for report in policies.reports(name):
            spec = REPORTS[report]
            own = report in template.reports
            line = (template.reports_line if own else template.extends_line) or template.line
            if not may_name(template.solution, spec.solution):
                problems.append(
                    Problem(
                        template.path,
                        line,
                        _cluster(
                            template, f"names report {report} of the {spec.solution} solution"
                        ),
                    )
                )
                continue
            readable = {
                t
                for t, scopes in effective.items()
                if any(s.actions & {"select", "export"} for s in scopes)
            }
            missing = [t for t in spec.reads if t not in readable]
            if missing:
                problems.append(
                    Problem(
                        template.path,
                        line,
                        f"template {name}: report {report} reads {', '.join(spec.reads)} as the "
                        f"caller; the template does not select {', '.join(missing)}",
                    )
                )


def load_policies(directory: Path) -> PolicySet:
    """Load and validate every YAML file in `directory`; PolicyError lists all problems."""
    if not directory.is_dir():
        raise PolicyError([Problem(directory, 0, "policies directory not found")])
    problems: list[Problem] = []
    templates: dict[str, Template] = {}
    rules: list[SharingRule] = []
    fixture: Mapping | None = None
    fixture_path: Path | None = None
    registry: dict[str, dict[str, FieldGroup]] = {}
    registry_path: Path | None = None
    for path in sorted(directory.glob("*.yaml")):
        reader = _Reader(path)
        try:
            doc = load(path)
        except YamlError as exc:
            problems.append(Problem(path, exc.line, exc.message))
            continue
        kinds = [
            k
            for k in ("template", "sharing_rules", "fixture", "field_groups")
            if isinstance(doc, Mapping) and k in doc
        ]
        if len(kinds) != 1:
            problems.append(
                Problem(
                    path,
                    1,
                    "a policy file holds exactly one of 'template', "
                    "'sharing_rules', 'fixture' or 'field_groups' at the top",
                )
            )
            continue
        if kinds == ["template"]:
            template = _template(reader, doc)
            if template and template.name in templates:
                reader.error(template.line, f"template {template.name!r} is defined twice")
            elif template:
                templates[template.name] = template
        elif kinds == ["sharing_rules"]:
            rules += _sharing_rules(reader, doc)
        elif kinds == ["field_groups"]:
            reader.keys(doc, {"field_groups"}, "a field groups file")
            if registry_path is not None:
                reader.error(1, f"field groups are already declared in {registry_path.name}")
            else:
                registry, registry_path = read_field_groups(reader, doc), path
        else:
            reader.keys(doc, {"fixture"}, "a fixture file")
            fixture, fixture_path = doc["fixture"], path
        problems += reader.problems
    before = len(problems)
    _check_extends(templates, problems)
    resolved = len(problems) == before  # extends resolve: clusters are checked through them
    _check_groups(templates, rules, registry, problems)
    policies = PolicySet(templates, rules, fixture, fixture_path, directory, registry)
    if resolved:
        _check_clusters(policies, problems)
    if problems:
        raise PolicyError(problems)
    return policies
