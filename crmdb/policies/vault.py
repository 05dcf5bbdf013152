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

PostgreSQL evaluates a group's predicate once per column of the group, row by row (it
shares no subexpression between columns). Most callers see a group on every row they
see at all (a rep: contact on own and shared customers; an admin: everything): the
scope row says so once (`crmdb_all*`: the caller holds no select policy that hides the
group), the predicate starts with that flag, and the helpers only its terms need are
not called.
"""

import re
from dataclasses import dataclass, field

from crmdb.policies.model import PolicySet
from crmdb.policies.tables import Table

# A helper call as scopes.sql.j2 renders it: uncorrelated, arguments without parentheses.
_HELPER = re.compile(r"\(SELECT (crm_private\.\w+\([^()]*\))\)")
SCOPE_ALIAS = "crmdb_scope"
OWNER_POLICY = "crmdb_owner_all"  # every crm and crm_vault table's, made by migrations


@dataclass(frozen=True)
class Term:
    policy: str  # the parent's select policy
    role: str  # the policy's role: the term holds only for those who hold it
    using: str  # the policy's USING


@dataclass(frozen=True)
class GroupTerms:
    """Per group, the policies that show it, and the roles of those that do not."""

    shown_by: dict[str, list[Term]]
    hidden_by: dict[str, frozenset[str]]  # group -> roles of select policies hiding it


@dataclass(frozen=True)
class VaultReads:
    """The scope subquery and each group's predicate, for sql/policy/api.sql.j2."""

    scope: str  # a query of one row, columns named crmdb_*
    predicates: dict[str, str]  # group -> SQL on the parent row and crmdb_scope
    # the scope's columns in order, with their types (boolean, bigint or bigint[])
    columns: tuple[tuple[str, str], ...] = ()
    # With crmdb_guard's statement cache (crmdb/policies/statement_cache.py): the
    # crm_private view that holds the scope query; the predicates read it per row
    scope_view: str | None = None


def group_terms(
    policies: PolicySet,
    table: Table,
    using: dict[str, tuple[str, str | None]],
) -> GroupTerms:
    """The policies that show each group of `table`, and the roles of every other select
    policy (a row one of them shows may hide the group). `using` maps each select policy
    of the parent (the same as crm_vault's) to (role, USING)."""
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
                terms[group].append(Term(policy, role, expr))
    for rule in policies.sharing_rules:
        if rule.table != table.name:
            continue
        policy = f"{table.name}__rule__{rule.name}__select"
        role, expr = using[policy]
        if expr is None:
            continue
        for group in rule.fields:
            terms[group].append(Term(policy, role, expr))
    hidden_by = {}
    for group, shown in terms.items():
        showing = {t.policy for t in shown}
        hidden_by[group] = frozenset(
            role
            for name, (role, expr) in using.items()
            if expr is not None and name not in showing  # no USING: shows no row
        )
    return GroupTerms(terms, hidden_by)


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


@dataclass
class _Call:
    """A helper call of the scope row (crmdb_calls), made only when a term needs it."""

    column: str
    otherwise: str  # its value when no term of the caller needs it
    roles: set[str] = field(default_factory=set)  # whose terms need it
    groups: set[str] = field(default_factory=set)  # in which groups' predicates


# What each helper the policies call returns: the scope row's column types
HELPER_TYPES = {
    "crm_private.employee_id_for": "bigint",
    "crm_private.project_id": "bigint",
    "crm_private.subordinate_ids": "bigint[]",
    "crm_private.org_unit_ids": "bigint[]",
    "crm_private.shared_customer_ids": "bigint[]",
    "crm_private.project_ids": "bigint[]",
    "crm_private.has_template": "boolean",
}


def vault_reads(groups: GroupTerms) -> VaultReads:
    """Merges the terms that differ only in their template's guard, and hoists every
    helper call into the scope subquery.

    Templates share scope kinds ("own", "shared"...), so most of a group's terms say
    "<the template's projects> AND <the same predicate>". Merged, the predicate is
    written once, after the union of the projects of every template whose scope has
    it: one array test per scope kind, whatever the number of templates. PostgreSQL
    plans, initialises and evaluates a copy of the predicate for each column of the
    group, so its size is time at every step.

    The scope row is three single-row levels, each computed once per statement:
    crmdb_roles, which of the policies' roles the caller holds (one pg_has_role each);
    crmdb_calls, the helper calls, each made only when the caller holds a role whose
    term needs it, for a group not shown on every row anyway; and the row itself, the
    unions of projects and the flags. Every level is aggregated without GROUP BY (one
    row): not pulled up into the view (which would copy each call into every
    reference), and the join is dropped where no column of it is read (a count(*))."""
    roles: dict[str, str] = {}  # role -> its crmdb_roles column
    calls: dict[str, _Call] = {}  # helper call -> its crmdb_calls column
    outputs: dict[str, str] = {}  # aggregate over the levels -> scope column
    types: dict[str, str] = {}  # scope column -> its type

    def held(names: set[str] | frozenset[str]) -> str:
        if _everyone(names):
            return "true"
        columns = [roles.setdefault(r, f"crmdb_role{len(roles) + 1}") for r in sorted(names)]
        return " OR ".join(f"crmdb_roles.{c}" for c in columns)

    def call(expr: str, prefix: str, group: str, needed_by: set[str], otherwise: str) -> str:
        c = calls.setdefault(expr, _Call(f"crmdb_call_{prefix}{len(calls) + 1}", otherwise))
        c.roles.update(needed_by)
        c.groups.add(group)
        return f"crmdb_calls.{c.column}"

    def output(aggregate: str, prefix: str, sql_type: str) -> str:
        column = outputs.setdefault(aggregate, f"crmdb_{prefix}{len(outputs) + 1}")
        types[column] = sql_type
        return f"{SCOPE_ALIAS}.{column}"

    def hoist(predicate: str, needed_by: set[str], group: str) -> str:
        # A helper runs only for whoever holds a role whose term calls it (an employee
        # of one template pays for that template's helpers, as with the policies).
        def helper(expr: str) -> str:
            name = expr.split("(", 1)[0]
            if name not in HELPER_TYPES:
                raise ValueError(f"vault_reads: unknown helper {name} (add it to HELPER_TYPES)")
            # The scope row passes a helper's result up with an aggregate (one row: any
            # keeps it); PostgreSQL has min() for ids and arrays of them, not for boolean
            boolean = HELPER_TYPES[name] == "boolean"
            value = call(expr, "h", group, needed_by, "false" if boolean else "NULL")
            aggregate = f"{'bool_or' if boolean else 'min'}({value})"
            return output(aggregate, "h", HELPER_TYPES[name])

        def member(m: re.Match[str]) -> str:
            ids, x = helper(m["call"]), m["x"]
            return f"{ids}[pg_catalog.width_bucket({x}, {ids})] = {x}"

        predicate = _SORTED_TEST.sub(member, predicate)
        return _HELPER.sub(lambda m: helper(m.group(1)), predicate)

    predicates: dict[str, str] = {}
    for group, group_terms in groups.shown_by.items():
        hidden = groups.hidden_by[group]
        if not hidden:  # every select policy shows the group: so does every row
            predicates[group] = "true"
            continue
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
            # Each template's projects once per statement ('{}' unless the caller holds
            # it), the union of those of every template with this predicate
            projects = " || ".join(
                call(
                    f"crm_private.project_ids(current_user, {tpl})",
                    "p",
                    group,
                    {role},
                    "'{}'::bigint[]",
                )
                for role, tpl in sorted(templates.items())
            )
            union = output(f"min({projects})", "u", "bigint[]")
            body = hoist(predicate, set(templates), group)
            rest = "" if body == "true" else f" AND ({body})"
            parts.append(f"({column} = ANY ({union}){rest})")
        for predicate, templates in by_template.items():
            held_templates = " OR ".join(
                call(f"crm_private.has_template(current_user, {tpl})", "t", group, {role}, "false")
                for role, tpl in sorted(templates.items())
            )
            flag = output(f"bool_or({held_templates})", "t", "boolean")
            body = hoist(predicate, set(templates), group)
            rest = "" if body == "true" else f" AND ({body})"
            parts.append(f"({flag}{rest})")
        for term in whole:
            flag = output(f"bool_or({held({term.role})})", "r", "boolean")
            parts.append(f"({flag} AND ({hoist(term.using, {term.role}, group)}))")
        if not parts:
            predicates[group] = "false"
            continue
        # OR stops at the first true term: the caller's "every row" flag, then the
        # terms that search no helper's ids
        parts.sort(key=_cost)
        if not _everyone(hidden):
            parts.insert(0, output(f"bool_and(NOT ({held(hidden)}))", "all", "boolean"))
        predicates[group] = " OR ".join(parts)

    if not outputs:
        return VaultReads(
            "SELECT true AS crmdb_none HAVING true", predicates, (("crmdb_none", "boolean"),)
        )
    made = []
    for expr, c in calls.items():
        # when: a role of the caller's needs it, for a group not shown on every row
        when = [held(c.roles)]
        hiding = [groups.hidden_by[g] for g in sorted(c.groups)]
        if not any(_everyone(h) for h in hiding):
            when.append(held(frozenset().union(*hiding)))
        otherwise = "" if c.otherwise == "NULL" else f" ELSE {c.otherwise}"
        condition = " AND ".join(f"({w})" for w in when)
        made.append(f"CASE WHEN {condition} THEN {expr}{otherwise} END AS {c.column}")
    checks = [
        f"pg_catalog.pg_has_role(current_user, {_literal(r)}, 'USAGE') AS {column}"
        for r, column in roles.items()
    ] or ["true AS crmdb_none"]
    scope = "SELECT " + ",\n       ".join(f"{a} AS {c}" for a, c in outputs.items())
    scope += (
        "\n  FROM (SELECT "
        + ",\n               ".join(checks)
        + "\n        HAVING true) AS crmdb_roles"
    )
    if made:
        scope += (
            "\n  CROSS JOIN LATERAL (SELECT "
            + ",\n                            ".join(made)
            + "\n                     HAVING true) AS crmdb_calls"
        )
    columns = tuple((c, types[c]) for c in outputs.values())
    return VaultReads(scope, predicates, columns)


def _everyone(roles: set[str] | frozenset[str]) -> bool:
    """A policy TO public applies to every caller."""
    return any(r.lower() == "public" for r in roles)


# `x = ANY (<helper's ids>)` scans the array at each row and column: hundreds of ids
# for a director's subordinates, ~1.5 us a row each time. These helpers return their ids
# sorted, without NULLs, so the view tests membership by binary search instead:
# `ids[width_bucket(x, ids)] = x` (NULL, not false, where x is not there: the same to
# the predicate's OR and AND, which it never negates).
_SORTED_TEST = re.compile(
    r"(?P<x>[\w.]+) = ANY \(\(SELECT (?P<call>crm_private\."
    r"(?:subordinate_ids|org_unit_ids|shared_customer_ids)\([^()]*\))\)::bigint\[\]\)"
)

# A membership test against a helper's ids: a binary search, or a scan of an array the
# helper does not sort; a template's projects are a handful.
_ARRAY_TEST = re.compile(
    rf"(?:= ANY \({SCOPE_ALIAS}\.crmdb_h\d+(?:::bigint\[\])?\)"
    rf"|{SCOPE_ALIAS}\.crmdb_h\d+\[pg_catalog\.width_bucket\()"
)


def _cost(part: str) -> int:
    """Orders a group's terms: those that search a helper's ids last (a stable sort)."""
    return len(_ARRAY_TEST.findall(part))


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
