"""Role templates -> the desired database state: roles, grants, policies.

Nothing here touches the database; crmdb/policies/plan.py compares the result with
the catalog. Policy names are predictable: {table}__{template}__{scope}__{command},
and each carries a COMMENT saying which template and scope produced it.
"""

import dataclasses
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from crmdb.policies.fields import core_columns, mask_column, side_table
from crmdb.policies.model import PolicySet, Scope, SharingRule
from crmdb.policies.render import ddl, render, sections
from crmdb.policies.tables import ACTIONS, COMMANDS, REPORTS, TABLES, VAULT, Table
from crmdb.policies.vault import OWNER_POLICY, VaultReads, group_terms, vault_reads

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
    # (function, role): EXECUTE on a report (a template's `reports:`)
    executes: set[tuple[str, str]] = field(default_factory=set)
    policies: dict[tuple[str, str], PolicyDef] = field(default_factory=dict)
    tables: tuple[str, ...] = ()  # every table that must have RLS forced
    access_paths: str = ""  # CREATE OR REPLACE FUNCTION crm_private.access_paths ...
    rules: tuple[SharingRule, ...] = ()  # checked against the database when planning
    audiences: dict[str, SharingRule] = field(default_factory=dict)  # rule role -> rule
    # crm_api.<table> -> how to (re)create the view, its triggers and grants
    api: dict[str, "ApiView"] = field(default_factory=dict)
    # (table, column) -> (group, characters kept) of every masked field
    masks: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    # compiled for crmdb_guard's statement cache (crmdb/policies/statement_cache.py)
    statement_cache: bool = False


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


def _group_policies(
    desired: Desired, template: str, table: Table, scope: Scope
) -> dict[str, set[str]]:
    """Policies on the side tables of the groups `scope` names; returns the privileges
    they need, by side table."""
    privileges: dict[str, set[str]] = {}
    for group in sorted(scope.read_groups):
        side = TABLES[side_table(table.name, group)]
        commands = ["select", "update"] if group in scope.write_groups else ["select"]
        privileges[side.qualified] = set(commands)
        for command in commands:
            parts = sections(
                render("field_group.sql.j2", t=side, s=scope, tpl=template, command=command)
            )
            _add(
                desired,
                PolicyDef(
                    table=side.qualified,
                    name=f"{side.name}__{template}__{scope.label}__{command}",
                    command=command,
                    role=template_role(template),
                    using=parts.get("using"),
                    check=parts.get("check"),
                    comment=(
                        f"crmdb: template {template}, scope {scope.label} "
                        f"({'reads and writes' if command == 'update' else 'reads'} "
                        f"{table.name} field group {group})"
                    ),
                    origin=(scope.path, scope.fields_line or scope.line) if scope.path else None,
                ),
            )
    return privileges


def _rule_group_policies(desired: Desired, rule: SharingRule) -> None:
    for group in rule.fields:
        side = TABLES[side_table(rule.table, group)]
        for command in ("select", "update") if rule.access == "edit" else ("select",):
            parts = sections(render("field_group_rule.sql.j2", rule=rule, t=side, command=command))
            _add(
                desired,
                PolicyDef(
                    table=side.qualified,
                    name=f"{side.name}__rule__{rule.name}__{command}",
                    command=command,
                    role=rule_role(rule.name),
                    using=parts.get("using"),
                    check=parts.get("check"),
                    comment=f"crmdb: sharing rule {rule.name} ({rule.access}), field group {group}",
                    origin=(rule.path, rule.fields_line),
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


@dataclass(frozen=True)
class ApiView:
    """crm_api.<table> as the templates shape it; custom fields are added when the plan
    reads them from the database (api_script)."""

    table: Table
    core: tuple[str, ...]
    groups: tuple[tuple[str, Table, tuple[str, ...]], ...]  # (group, side table, columns)
    masks: dict[str, str]  # masked column -> the table's column holding the mask
    grants: tuple[tuple[str, tuple[str, ...]], ...]  # (role, privileges)
    # crm_private.export_<table>: which rows may be exported (sql/policy/export.sql.j2),
    # by whom; None where no template exports the table
    export_filter: str | None = None
    export_roles: tuple[str, ...] = ()
    # Tables with field groups: the view reads crm_vault.<table> (crmdb/policies/vault.py)
    vault: VaultReads | None = None

    @property
    def name(self) -> str:
        return f"crm_api.{self.table.name}"

    @property
    def scope_name(self) -> str:
        """The view of the caller's scope with crmdb_guard's statement cache."""
        return f"crm_private.api_{self.table.name}_scope"


@dataclass(frozen=True)
class CustomField:
    table: str
    group: str
    name: str
    type: str


def api_script(view: ApiView, custom: list[CustomField]) -> str:
    """The SQL that (re)creates a view, its write trigger and grants, ending with a
    comment that carries the script's hash (the plan compares it)."""
    script = render(
        "api.sql.j2",
        t=view.table,
        core=view.core,
        fields=[c for c in view.core if c != "id"],
        groups=[
            (
                g,
                side,
                list(columns),
                [(f.name, f.type) for f in custom if (f.table, f.group) == (view.table.name, g)],
            )
            for g, side, columns in view.groups
        ],
        masks=view.masks,
        vault=view.vault,
        scope_view=view.scope_name,
        grants=view.grants,
        export_filter=view.export_filter,
        export_roles=view.export_roles,
    ).strip()
    digest = hashlib.sha256(script.encode()).hexdigest()[:16]
    comment = (
        f"crmdb: {view.table.name} as each employee may read and write it; generated by "
        f"crmdb policy apply from the templates (edits are overwritten) [{digest}]"
    )
    return script + "\n" + ddl("comment_api_view", view.name, comment)


def _api_views(desired: Desired, policies: PolicySet, paths: list[AccessPath]) -> None:
    """crm_api.<table> for every table templates govern (sql/policy/api.sql.j2), and
    crm_private.export_<table> where some template may export it."""
    for table in TABLES.values():
        if not table.templates:
            continue
        declared = policies.field_groups.get(table.name, {})
        for group in declared.values():
            for column, mask in group.masks.items():
                desired.masks[(table.name, column)] = (group.name, mask.keep_last)
        grants = tuple(
            sorted(
                (role, tuple(sorted(privileges)))
                for (qualified, role), privileges in desired.grants.items()
                if qualified == table.qualified
            )
        )
        view = ApiView(
            table,
            core_columns(table.name, declared),
            tuple(
                (g.name, TABLES[side_table(table.name, g.name)], g.columns)
                for g in declared.values()
            ),
            {c: mask_column(c) for g in declared.values() for c in g.masks},
            grants,
        )
        if table.qualified in VAULT:
            using = {
                p.name: (p.role, p.using)
                for p in desired.policies.values()
                if p.table == table.qualified and p.command == "select"
            }
            # and the migrations' owner policy (every row to crmdb_owner): it shows rows,
            # not groups
            using[OWNER_POLICY] = ("crmdb_owner", "true")
            view = dataclasses.replace(view, vault=vault_reads(group_terms(policies, table, using)))
        exporting = [p for p in paths if p.table.name == table.name and "export" in p.actions]
        if exporting:
            view = dataclasses.replace(
                view,
                export_filter=" ".join(render("export.sql.j2", paths=exporting).split()),
                export_roles=tuple(sorted({p.role for p in exporting})),
            )
        desired.api[view.name] = view


def _vault(desired: Desired) -> None:
    """crm_vault.<table> shows the rows of crm.<table> (its only partition) to those who
    select crm.<table>, under the same select policies; crm_api's view reads it."""
    for source, vault in VAULT.items():
        for policy in list(desired.policies.values()):
            if policy.table == source and policy.command == "select":
                _add(desired, dataclasses.replace(policy, table=vault))
        for (qualified, role), privileges in list(desired.grants.items()):
            if qualified == source and "select" in privileges:
                desired.grants[(vault, role)] = frozenset({"select"})


def compile_policies(policies: PolicySet) -> Desired:
    desired = Desired(
        tables=(
            *(t.qualified for t in TABLES.values()),
            *sorted(VAULT.values()),
        )
    )
    paths: list[AccessPath] = []
    for name, template in sorted(policies.templates.items()):
        role = template_role(name)
        desired.roles[role] = f"crmdb role template {name}: {template.description}".strip()
        desired.executes |= {(REPORTS[r].function, role) for r in policies.reports(name)}
        for table_name, scopes in policies.effective(name).items():
            table = TABLES[table_name]
            privileges = set()
            side_privileges: dict[str, set[str]] = defaultdict(set)
            movers = [s for s in scopes if {"insert", "update"} <= s.actions]
            for scope in scopes:
                privileges |= {a for a in scope.actions if a in COMMANDS}
                if "export" in scope.actions:
                    privileges.add("select")
                _scope_policies(desired, name, table, scope, movers)
                for qualified, needed in _group_policies(desired, name, table, scope).items():
                    side_privileges[qualified] |= needed
                paths.append(AccessPath(name, role, table, scope))
            if privileges:
                desired.grants[(table.qualified, role)] = frozenset(privileges)
            if "select" in privileges:
                # crm_api's view joins every group of the table, and a security_invoker
                # view needs SELECT on all it reads: each side table is granted, and its
                # row policies (none without a scope naming the group) decide.
                for group_table in TABLES.values():
                    if group_table.parent == table.name:
                        qualified = group_table.qualified
                        needed = side_privileges.get(qualified, set()) | {"select"}
                        desired.grants[(qualified, role)] = frozenset(needed)
    for rule in policies.sharing_rules:
        role = rule_role(rule.name)
        desired.roles[role] = f"crmdb sharing rule {rule.name}: {rule.where}"
        desired.audiences[role] = rule
        _rule_policies(desired, rule)
        _rule_group_policies(desired, rule)
    desired.rules = tuple(policies.sharing_rules)
    _vault(desired)
    _api_views(desired, policies, paths)
    desired.access_paths = render(
        "access_paths.sql.j2",
        paths=paths,
        explainable=[t.name for t in TABLES.values() if "id" in t.columns and not t.parent],
        rules=[RuleRole(r, rule_role(r.name)) for r in policies.sharing_rules],
    ).strip()
    return desired
