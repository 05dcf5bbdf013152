"""Role templates -> the desired database state: roles, grants, policies.

Nothing here touches the database; crmdb/policies/plan.py compares the result with
the catalog. Policy names are predictable: {table}__{template}__{scope}__{command},
and each carries a COMMENT saying which template and scope produced it.
"""

from dataclasses import dataclass, field
from pathlib import Path

from crmdb.policies.model import PolicySet, Scope, SharingRule
from crmdb.policies.render import render, sections
from crmdb.policies.tables import ACTIONS, COMMANDS, TABLES, Table

MAX_NAME = 63  # PostgreSQL's NAMEDATALEN - 1


@dataclass(frozen=True)
class PolicyDef:
    table: str  # qualified, e.g. crm.customers
    name: str
    command: str
    role: str
    using: str | None
    check: str | None
    comment: str
    origin: tuple[Path, int] | None = None  # where in policies/ it comes from, for errors


@dataclass(frozen=True)
class AccessPath:
    """One (template, table, scope) for explain_access."""

    template: str
    role: str
    table: Table
    scope: Scope

    @property
    def actions(self) -> list[str]:
        return [a for a in ACTIONS if a in self.scope.actions]

    @property
    def read_actions(self) -> list[str]:
        """The actions a read-only share still gives."""
        return [a for a in self.actions if a not in ("update", "delete")]

    @property
    def edit(self) -> bool:
        return bool({"update", "delete"} & self.scope.actions)


@dataclass
class Desired:
    """What the database should hold for a set of templates."""

    roles: dict[str, str] = field(default_factory=dict)  # template role -> comment
    grants: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    policies: dict[tuple[str, str], PolicyDef] = field(default_factory=dict)
    tables: tuple[str, ...] = ()  # every table that must have RLS forced
    access_paths: str = ""  # CREATE OR REPLACE FUNCTION crm_private.access_paths ...
    rules: tuple[SharingRule, ...] = ()  # checked against the database when planning
    audiences: dict[str, SharingRule] = field(default_factory=dict)  # rule role -> rule


def template_role(template: str) -> str:
    return f"crmdb_tpl_{template}"


def rule_role(rule: str) -> str:
    return f"crmdb_rule_{rule}"


@dataclass(frozen=True)
class RuleRole:
    """A sharing rule and the role its audience holds (for explain_access)."""

    rule: SharingRule
    role: str


class CompileError(Exception):
    pass


def _add(desired: Desired, policy: PolicyDef) -> None:
    if len(policy.name.encode()) > MAX_NAME:
        raise CompileError(
            f"policy name {policy.name!r} is longer than {MAX_NAME} bytes; "
            "shorten the template or scope name"
        )
    desired.policies[(policy.table, policy.name)] = policy


def _scope_policies(
    desired: Desired, template: str, table: Table, scope: Scope, movers: list[Scope]
) -> None:
    for command in COMMANDS:
        if command not in scope.actions:
            continue
        parts = sections(
            render(
                "policies.sql.j2", t=table, s=scope, tpl=template, command=command, movers=movers
            )
        )
        actions = ", ".join(
            a for a in ("select", "insert", "update", "delete", "export") if a in scope.actions
        )
        _add(
            desired,
            PolicyDef(
                table=table.qualified,
                name=f"{table.name}__{template}__{scope.label}__{command}",
                command=command,
                role=template_role(template),
                using=parts.get("using"),
                check=parts.get("check"),
                comment=f"crmdb: template {template}, scope {scope.label} ({actions})",
                origin=(scope.path, scope.where_line) if scope.path else None,
            ),
        )


def _rule_policies(desired: Desired, rule: SharingRule) -> None:
    table = TABLES[rule.table]
    for command in ("select", "update") if rule.access == "edit" else ("select",):
        parts = sections(render("sharing_rule.sql.j2", rule=rule, command=command, table=table))
        _add(
            desired,
            PolicyDef(
                table=table.qualified,
                name=f"{table.name}__rule__{rule.name}__{command}",
                command=command,
                role=rule_role(rule.name),
                using=parts.get("using"),
                check=parts.get("check"),
                comment=f"crmdb: sharing rule {rule.name} ({rule.access}): {rule.where}",
                origin=(rule.path, rule.line),
            ),
        )


def compile_policies(policies: PolicySet) -> Desired:
    desired = Desired(tables=tuple(t.qualified for t in TABLES.values()))
    paths: list[AccessPath] = []
    for name, template in sorted(policies.templates.items()):
        role = template_role(name)
        desired.roles[role] = f"crmdb role template {name}: {template.description}".strip()
        for table_name, scopes in policies.effective(name).items():
            table = TABLES[table_name]
            privileges = set()
            movers = [s for s in scopes if {"insert", "update"} <= s.actions]
            for scope in scopes:
                privileges |= {a for a in scope.actions if a in COMMANDS}
                if "export" in scope.actions:
                    privileges.add("select")
                _scope_policies(desired, name, table, scope, movers)
                paths.append(AccessPath(name, role, table, scope))
            if privileges:
                desired.grants[(table.qualified, role)] = frozenset(privileges)
    for rule in policies.sharing_rules:
        role = rule_role(rule.name)
        desired.roles[role] = f"crmdb sharing rule {rule.name}: {rule.where}"
        desired.audiences[role] = rule
        _rule_policies(desired, rule)
    desired.rules = tuple(policies.sharing_rules)
    desired.access_paths = render(
        "access_paths.sql.j2",
        paths=paths,
        explainable=[t.name for t in TABLES.values() if "id" in t.columns],
        rules=[RuleRole(r, rule_role(r.name)) for r in policies.sharing_rules],
    ).strip()
    return desired
