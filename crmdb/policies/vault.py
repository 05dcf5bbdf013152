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
            for group in sorted(scope.read_groups):
                if expr is not None:
                    terms[group].append(Term(role, expr))
    for rule in policies.sharing_rules:
        if rule.table != table.name:
            continue
        role, expr = using[f"{table.name}__rule__{rule.name}__select"]
        for group in rule.fields:
            if expr is not None:
                terms[group].append(Term(role, expr))
    return terms


def vault_reads(terms: dict[str, list[Term]]) -> VaultReads:
    """Hoists the helper calls of every term into the scope subquery."""
    roles: dict[str, str] = {}  # role -> scope column saying the caller holds it
    helpers: dict[str, tuple[str, set[str]]] = {}  # call -> (column, roles needing it)

    def hoist(term: Term) -> str:
        role_column = roles.setdefault(term.role, f"crmdb_r{len(roles) + 1}")

        def replace(m: re.Match[str]) -> str:
            column, needed = helpers.setdefault(m.group(1), (f"crmdb_h{len(helpers) + 1}", set()))
            needed.add(role_column)
            return f"{SCOPE_ALIAS}.{column}"

        return f"({SCOPE_ALIAS}.{role_column} AND ({_HELPER.sub(replace, term.using)}))"

    predicates = {
        group: " OR ".join(hoist(t) for t in group_terms) if group_terms else "false"
        for group, group_terms in terms.items()
    }
    role_sql = {column: role for role, column in roles.items()}
    columns = [
        f"pg_catalog.pg_has_role(current_user, {_literal(role)}, 'USAGE') AS {column}"
        for column, role in role_sql.items()
    ]
    for call, (column, needed) in helpers.items():
        # Only for whoever holds a role whose policy calls it (an employee of one
        # template pays for that template's helpers, as with the policies).
        held = " OR ".join(
            f"pg_catalog.pg_has_role(current_user, {_literal(role_sql[c])}, 'USAGE')"
            for c in sorted(needed)
        )
        columns.append(f"CASE WHEN {held} THEN {call} END AS {column}")
    if not columns:
        columns = ["true AS crmdb_none"]
    # HAVING true: a grouped query without GROUP BY is one row, so the planner neither
    # pulls it up (which would copy each call into every reference) nor keeps the join
    # where no column of it is read (a count(*)).
    scope = "SELECT " + ",\n       ".join(columns) + "\n HAVING true"
    return VaultReads(scope, predicates)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
