"""The difference between the compiled templates and what the database holds.

Expressions are compared as PostgreSQL normalises them (pg_get_expr), never as
template text: the desired policies are first created on temporary copies of their
tables (CREATE TEMP TABLE ... LIKE, dropped at commit), read back, and compared with
the real ones. No real table is locked by planning.
"""

from collections import defaultdict
from dataclasses import dataclass, field

import psycopg

from crmdb.db import server_error
from crmdb.policies.compile import CustomField, Desired, PolicyDef, api_script
from crmdb.policies.model import PolicyError, Problem
from crmdb.policies.render import ddl
from crmdb.policies.statement_cache import for_database
from crmdb.policies.tables import VAULT
from crmdb.queries import query


@dataclass
class Plan:
    statements: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.statements

    def sql(self) -> str:
        return "\n".join(self.statements)


def _normalise(
    conn: psycopg.Connection, desired: Desired
) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    """(table, name) -> (using, check) for the desired policies, as PostgreSQL prints them."""
    by_table: dict[str, list[PolicyDef]] = defaultdict(list)
    for policy in desired.policies.values():
        by_table[policy.table].append(policy)
    normalised: dict[tuple[str, str], tuple[str | None, str | None]] = {}
    # crm_vault.<table> has the select policies of crm.<table>, which print the same.
    vault = {v: source for source, v in VAULT.items()}
    with conn.transaction(force_rollback=True):
        for table, policies in sorted(by_table.items()):
            if table in vault:
                continue
            # Named like the real table: pg_get_expr qualifies outer references in
            # sub-selects with the table's name, so any other name never compares equal.
            temp = table.split(".")[-1]
            conn.execute(ddl("normalise_table", temp, table))
            for policy in policies:
                copy = PolicyDef(
                    f"pg_temp.{temp}",
                    policy.name,
                    policy.command,
                    "public",
                    policy.using,
                    policy.check,
                    policy.comment,
                )
                try:
                    conn.execute(ddl("create_policy", copy))
                except psycopg.Error as exc:
                    # The criteria text is the only user input in a policy: name its line.
                    if policy.origin is None:
                        raise
                    path, line = policy.origin
                    raise PolicyError(
                        [
                            Problem(
                                path,
                                line,
                                f"{policy.comment.removeprefix('crmdb: ')}: PostgreSQL "
                                f"rejects the policy {policy.name}: {server_error(exc)}",
                            )
                        ]
                    ) from None
            rows = conn.execute(
                query("normalised_policies"), {"temp_table": f"pg_temp.{temp}"}
            ).fetchall()
            for name, using_expr, check_expr in rows:
                normalised[(table, name)] = (using_expr, check_expr)
    for table, policies in by_table.items():
        if table in vault:
            for policy in policies:
                normalised[(table, policy.name)] = normalised[(vault[table], policy.name)]
    return normalised


@dataclass(frozen=True)
class PolicyChange:
    """A policy on a crm table that differs from what the templates generate."""

    table: str
    name: str
    kind: str  # "extra" (no template generates it), "differs", "missing" or "comment"
    statements: tuple[str, ...]  # what brings it in line, in order


def policy_changes(conn: psycopg.Connection, desired: Desired) -> list[PolicyChange]:
    """Every template policy that is missing, differs or has another comment, and every
    policy no template generates (crmdb lint reports them as drift)."""
    existing = {(r[0], r[1]): r for r in conn.execute(query("managed_policies"))}
    normalised = _normalise(conn, desired)
    changes = [
        PolicyChange(table, name, "extra", (ddl("drop_policy", name, table),))
        for table, name in sorted(set(existing) - set(desired.policies))
    ]
    for key, policy in sorted(desired.policies.items()):
        create = (ddl("create_policy", policy), ddl("comment_policy", policy))
        current = existing.get(key)
        if current is None:
            changes.append(PolicyChange(*key, "missing", create))
            continue
        _, _, command, permissive, pol_roles, using_expr, check_expr, comment = current
        same = (
            command == policy.command
            and permissive
            and pol_roles == [policy.role]
            and (using_expr, check_expr) == normalised[key]
        )
        if not same:
            drop = ddl("drop_policy", policy.name, policy.table)
            changes.append(PolicyChange(*key, "differs", (drop, *create)))
        elif comment != policy.comment:
            changes.append(PolicyChange(*key, "comment", create[1:]))
    return changes


def check_rules(conn: psycopg.Connection, desired: Desired) -> None:
    """Sharing rules must name what exists and reach somebody; PolicyError otherwise."""
    problems: list[Problem] = []
    for rule in desired.rules:
        row = conn.execute(
            query("sharing_rule_audience"),
            {
                "org_unit": rule.org_unit,
                "project": rule.project,
                "employees": list(rule.employees),
                "sub_units": rule.include_sub_units,
            },
        ).fetchone()
        assert row is not None
        unit_ok, project_ok, unknown, audience = row
        where = f"sharing rule {rule.name}"
        if not unit_ok:
            problems.append(
                Problem(rule.path, rule.line, f"{where}: unknown org unit {rule.org_unit!r}")
            )
        if not project_ok:
            problems.append(
                Problem(rule.path, rule.line, f"{where}: unknown project {rule.project!r}")
            )
        for employee in unknown:
            problems.append(
                Problem(rule.path, rule.line, f"{where}: unknown employee {employee!r}")
            )
        if unit_ok and not unknown and audience == 0:
            problems.append(
                Problem(
                    rule.path,
                    rule.line,
                    f"{where} matches nobody: no active employee is in its audience",
                )
            )
    if problems:
        raise PolicyError(problems)


def make_plan(conn: psycopg.Connection, desired: Desired) -> Plan:
    """The statements that would bring the database to `desired`, in a safe order."""
    desired = for_database(conn, desired)
    check_rules(conn, desired)
    plan = Plan()
    out = plan.statements

    # Roles first: grants and policies name them.
    roles = {
        r: (comment, admin, used) for r, comment, admin, used in conn.execute(query("group_roles"))
    }
    for role, comment in sorted(desired.roles.items()):
        if role not in roles:
            out += [
                ddl("create_role", role),
                ddl("grant_admin_to_owner", role),
                ddl("comment_role", role, comment),
            ]
            continue
        if not roles[role][1]:
            out.append(ddl("grant_admin_to_owner", role))
        if roles[role][0] != comment:
            out.append(ddl("comment_role", role, comment))
    for role in sorted(set(roles) - set(desired.roles)):
        if not roles[role][2]:
            continue  # another database's template or rule, or already cleared here
        plan.warnings.append(
            f"role {role} belongs to no template any more; its grants and "
            "policies are removed, the role is left for DROP ROLE by hand"
        )

    for table, enabled, forced in conn.execute(query("rls_flags")):
        if table in desired.tables and not enabled:
            out.append(ddl("enable_rls", table))
        if table in desired.tables and not forced:
            out.append(ddl("force_rls", table))

    held: dict[tuple[str, str], set[str]] = defaultdict(set)
    for table, role, privilege in conn.execute(query("template_grants")):
        held[(table, role)].add(privilege)
    readable: dict[str, list[str]] = {}  # table -> its columns but the read copies
    for key in sorted(set(held) | set(desired.grants)):
        want, have = desired.grants.get(key, frozenset()), held.get(key, set())
        if have - want:
            # 'select (every column)' is revoked as SELECT, which takes the column
            # privileges with it
            revoke = sorted({p.removesuffix(" (every column)") for p in have - want})
            out.append(ddl("revoke_table", revoke, *key))
        grant = want - have
        if key[0] in VAULT and "select" in grant:
            # Every column but the read copies (crm_vault's views show those)
            if key[0] not in readable:
                row = conn.execute(query("readable_columns"), {"table": key[0]}).fetchone()
                assert row is not None and row[0], key[0]
                readable[key[0]] = row[0]
            out.append(ddl("grant_columns", "select", readable[key[0]], *key))
            grant = grant - {"select"}
        if grant:
            out.append(ddl("grant_table", sorted(grant), *key))

    # Reports: EXECUTE on their functions, as the templates' `reports:` say.
    have_executes = {(f, r) for f, r in conn.execute(query("template_executes"))}
    for function, role in sorted(have_executes - desired.executes):
        out.append(ddl("revoke_execute", function, role))
    for function, role in sorted(desired.executes - have_executes):
        out.append(ddl("grant_execute", function, role))

    for change in policy_changes(conn, desired):
        out += change.statements

    # crm_api's views after the grants they mirror; a view is re-created when its
    # script changed (the comment carries the script's hash).
    have_views: dict[str, str | None] = dict(conn.execute(query("api_views")).fetchall())
    for view in sorted(set(have_views) - set(desired.api)):
        out.append(ddl("drop_api_view", view))
    custom = [CustomField(*row) for row in conn.execute(query("custom_fields"))]
    scripts = {name: api_script(view, custom) for name, view in desired.api.items()}
    changed_views = [
        script
        for view, script in sorted(scripts.items())
        if (current := have_views.get(view)) is None or current not in script
    ]
    if changed_views:
        out += [ddl("as_owner"), *changed_views, ddl("reset_role")]

    have_masks = {(t, c): k for t, c, k in conn.execute(query("field_masks"))}
    for (table, column), (group, keep) in sorted(desired.masks.items()):
        if have_masks.get((table, column)) != keep:
            out.append(ddl("set_mask", table, group, column, keep))
    for table, column in sorted(set(have_masks) - set(desired.masks)):
        out.append(ddl("drop_mask", table, column))

    body = desired.access_paths.split("$function$")[1]
    current_body = conn.execute(query("access_paths_source")).fetchone()
    if current_body is None or current_body[0] != body:
        out += [ddl("as_owner"), desired.access_paths, ddl("reset_role")]

    # Audiences, then membership, last: the roles exist by now.
    have_audiences = {
        (role, unit, sub, tuple(employees), project)
        for role, unit, sub, employees, project in conn.execute(query("sharing_rule_audiences"))
    }
    want_audiences = {
        (role, r.org_unit, r.include_sub_units, tuple(r.employees), r.project)
        for role, r in desired.audiences.items()
    }
    if have_audiences != want_audiences:
        out.append(ddl("clear_audiences"))
        out += [ddl("add_audience", role, r) for role, r in sorted(desired.audiences.items())]

    have_members = {
        (r, m) for r, m in conn.execute(query("group_memberships")) if r in desired.roles
    }
    want_members = {
        (r, m) for r, m in conn.execute(query("wanted_memberships")) if r in desired.roles
    }
    for role, rule in desired.audiences.items():
        members = conn.execute(
            query("audience_members"),
            {
                "org_unit": rule.org_unit,
                "sub_units": rule.include_sub_units,
                "employees": list(rule.employees),
            },
        )
        want_members |= {(role, m) for (m,) in members}
    if have_members != want_members:
        out.append(ddl("sync_memberships"))
    for role, member in sorted(conn.execute(query("wanted_memberships"))):
        if role not in desired.roles:
            plan.warnings.append(
                f"{member} holds template {role.removeprefix('crmdb_tpl_')} "
                "in a project, but no policy file defines it"
            )
    return plan
