"""What crm_api's views read from crm_vault: per field group, the predicate that says
whether the caller may read the group of a row (migrations/0017.vault-reads.sql).

A group's predicate is the OR of the row policies that show it: the select policies of
the parent's scopes whose `fields.read` names the group, and of the sharing rules whose
`fields` do, each ANDed with "the caller holds the policy's role" (a view cannot say
`TO role` as a policy does). They are the same expressions as the side tables' policies,
evaluated on the parent row, which carries the anchors.

The helper calls in those expressions, `(SELECT crm_private.f(...))`, would each be an
InitPlan per column of the view. They move into one single-row subquery joined to the
view (`crmdb_scope`), so each runs once per statement, and only for an employee who
holds a role that needs it.
"""

import re
from dataclasses import dataclass

from crmdb.policies.model import PolicySet
from crmdb.policies.tables import Table

# A helper call as scopes.sql.j2 renders it: uncorrelated, arguments without parentheses.
_HELPER = re.compile(r"\(SELECT (crm_private\.\w+\([^()]*\))\)")
SCOPE_ALIAS = "crmdb_scope"


@dataclass(frozen=True)
class Term:
    role: str  # the policy's role: the term holds only for those who hold it
    using: str  # the policy's USING


@dataclass(frozen=True)
class VaultReads:
    """The scope subquery and each group's predicate, for sql/policy/api.sql.j2."""

    scope: str  # SELECT ... HAVING true: one row, columns named crmdb_*
    predicates: dict[str, str]  # group -> SQL on the parent row and crmdb_scope


def group_terms(
    policies: PolicySet,
    table: Table,
    using: dict[str, tuple[str, str | None]],
) -> dict[str, list[Term]]:
    """The policies that show each group of `table`. `using` maps a parent policy's name
    to (role, USING)."""
    terms: dict[str, list[Term]] = {g: [] for g in policies.field_groups.get(table.name, {})}
    for name in sorted(policies.templates):
        for scope in policies.effective(name).get(table.name, []):
            policy = f"{table.name}__{name}__{scope.label}__select"
            if policy not in using:
                continue
            role, expr = using[policy]
            if expr is None:
                continue
            for group in sorted(scope.read_groups):
                terms[group].append(Term(role, expr))
    for rule in policies.sharing_rules:
        if rule.table != table.name:
            continue
        role, expr = using[f"{table.name}__rule__{rule.name}__select"]
        if expr is None:
            continue
        for group in rule.fields:
            terms[group].append(Term(role, expr))
    return terms


# A template policy's USING as scopes.sql.j2 renders it: the template's guard, then the
# scope's predicate.
_PROJECT_GUARD = re.compile(
    r"^(?P<column>\w+) = ANY \(\(SELECT crm_private\.project_ids\(current_user, "
    r"(?P<template>'(?:[^']|'')*')\)\)::bigint\[\]\) AND (?P<predicate>.*)$",
    re.S,
)
_TEMPLATE_GUARD = re.compile(
    r"^\(SELECT crm_private\.has_template\(current_user, (?P<template>'(?:[^']|'')*')\)\)"
    r" AND (?P<predicate>.*)$",
    re.S,
)


def vault_reads(terms: dict[str, list[Term]]) -> VaultReads:
    """Merges the terms that differ only in their template's guard, and hoists every
    helper call into the scope subquery.

    Templates share scope kinds ("own", "shared"...), so most of a group's terms say
    "<the template's projects> AND <the same predicate>". Merged, the predicate is
    written once, after the projects of every template whose scope has it (each
    template's projects are a column of the scope row: NULL unless the caller holds
    the template): a handful of terms whatever the number of templates. PostgreSQL
    plans each group column's copy of the predicate, so its size is planning time."""
    columns: dict[str, str] = {}  # SQL computed once per statement -> scope column

    def scope_column(expr: str, prefix: str) -> str:
        return columns.setdefault(expr, f"crmdb_{prefix}{len(columns) + 1}")

    def holds(roles: set[str]) -> str:
        return " OR ".join(
            f"pg_catalog.pg_has_role(current_user, {_literal(r)}, 'USAGE')" for r in sorted(roles)
        )

    def hoist(predicate: str, roles: set[str]) -> str:
        # A helper runs only for whoever holds a role whose term calls it (an employee
        # of one template pays for that template's helpers, as with the policies).
        def replace(m: re.Match[str]) -> str:
            column = scope_column(m.group(1), "h")
            needed.setdefault(column, set()).update(roles)
            return f"{SCOPE_ALIAS}.{column}"

        return _HELPER.sub(replace, predicate)

    needed: dict[str, set[str]] = {}  # helper column -> roles whose terms call it
    predicates: dict[str, str] = {}
    for group, group_terms in terms.items():
        # (column, predicate) -> {role: template literal}, predicate -> roles, and terms
        # kept whole (sharing rules, any other shape)
        by_projects: dict[tuple[str, str], dict[str, str]] = {}
        by_template: dict[str, dict[str, str]] = {}
        whole: list[Term] = []
        for term in group_terms:
            if m := _PROJECT_GUARD.match(term.using):
                key = (m["column"], m["predicate"])
                by_projects.setdefault(key, {})[term.role] = m["template"]
            elif m := _TEMPLATE_GUARD.match(term.using):
                by_template.setdefault(m["predicate"], {})[term.role] = m["template"]
            else:
                whole.append(term)
        parts: list[str] = []
        for (column, predicate), templates in by_projects.items():
            # Each template's projects once per statement (a column per template), the
            # projects of every template with this predicate ORed
            projects = " OR ".join(
                f"{column} = ANY ({SCOPE_ALIAS}."
                + scope_column(
                    f"CASE WHEN {holds({role})}"
                    f" THEN crm_private.project_ids(current_user, {tpl}) END",
                    "p",
                )
                + ")"
                for role, tpl in sorted(templates.items())
            )
            body = hoist(predicate, set(templates))
            if len(templates) > 1:
                projects = f"({projects})"
            parts.append(f"({projects}" + ("" if body == "true" else f" AND ({body})") + ")")
        for predicate, templates in by_template.items():
            held = " OR ".join(
                f"({holds({role})} AND crm_private.has_template(current_user, {tpl}))"
                for role, tpl in sorted(templates.items())
            )
            flag = scope_column(f"coalesce({held}, false)", "t")
            body = hoist(predicate, set(templates))
            rest = "" if body == "true" else f" AND ({body})"
            parts.append(f"({SCOPE_ALIAS}.{flag}{rest})")
        for term in whole:
            flag = scope_column(holds({term.role}), "r")
            parts.append(f"({SCOPE_ALIAS}.{flag} AND ({hoist(term.using, {term.role})}))")
        predicates[group] = " OR ".join(parts) if parts else "false"

    select = []
    for expr, column in columns.items():
        if column in needed:  # a helper: only for the roles that need it
            expr = f"CASE WHEN {holds(needed[column])} THEN {expr} END"
        select.append(f"{expr} AS {column}")
    if not select:
        select = ["true AS crmdb_none"]
    # HAVING true: a grouped query without GROUP BY is one row, so the planner neither
    # pulls it up (which would copy each call into every reference) nor keeps the join
    # where no column of it is read (a count(*)).
    scope = "SELECT " + ",\n       ".join(select) + "\n HAVING true"
    return VaultReads(scope, predicates)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
