"""`crmdb lint`: what a deployed database must not hold, each finding with its fix.

The catalog checks are named queries in sql/lint.sql, one per kind of finding; policy
drift reuses crmdb/policies/plan.py's comparison with what the templates generate, and
crm_api drift the scripts `crmdb policy apply` runs (compiled views are created as
temporary views and compared as PostgreSQL prints them). Field groups: anchor copies
and stored masks are compared with their rows. Nothing is changed: everything runs in
one transaction that is rolled back.
"""

import re
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from crmdb.catalog import DEFAULT_SCHEMAS
from crmdb.policies.compile import CustomField, Desired, api_script
from crmdb.policies.plan import policy_changes
from crmdb.policies.render import ddl
from crmdb.policies.statement_cache import for_database
from crmdb.policies.tables import SIDE_TABLES
from crmdb.queries import query

LINT_FILE = "lint.sql"
# Kinds of finding from sql/lint.sql, in the order they are reported.
CATALOG_CHECKS: tuple[str, ...] = (
    "rls_disabled",
    "rls_not_forced",
    "view_not_security_invoker",
    "function_search_path",
    "privileged_role",
    "role_owns_objects",
    "public_grants",
    "owner_policy_drift",
    "template_grants_nothing",
    "read_copies_exposed",
    "derived_columns_writable",
    "audit_reader_without_groups",
    "explain_guard",
)
DRIFT = {
    "extra": "no template generates this policy",
    "differs": "the policy differs from what its template generates",
    "missing": "a policy the templates generate is missing",
}


@dataclass(frozen=True)
class Finding:
    kind: str
    object: str
    problem: str
    fix: str  # SQL that mends it

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.kind}] {self.object}: {self.problem}\n    fix: {self.fix}"


def lint(conn: psycopg.Connection, desired: Desired) -> list[Finding]:
    """Every finding on the connection's database, against the compiled templates."""
    findings: list[Finding] = []
    desired = for_database(conn, desired)
    with conn.transaction(force_rollback=True):
        # Drift first: plan compares expressions as printed under the session's path.
        for change in policy_changes(conn, desired):
            if change.kind in DRIFT:  # a changed comment alone grants nothing
                where = f"{change.name} on {change.table}"
                fix = " ".join(change.statements)
                findings.append(Finding("policy_drift", where, DRIFT[change.kind], fix))
        conn.execute(query("lint_settings", LINT_FILE))
        params = {"schemas": list(DEFAULT_SCHEMAS)}
        for kind in CATALOG_CHECKS:
            for obj, problem, fix in conn.execute(query(kind, LINT_FILE), params):
                findings.append(Finding(kind, obj, problem, fix))
        findings += api_drift(conn, desired)
        findings += side_rows_out_of_step(conn)
        findings += copies_out_of_step(conn)
        findings += masks_out_of_step(conn, desired)
    return findings


# crm_api ----------------------------------------------------------------------------

# crm_api.<table>'s definition in its script (not the crm_private scope view's before it)
_VIEW = re.compile(
    r"^CREATE VIEW crm_api\.\S+ WITH \(security_invoker = true\) AS\n(.*?);$", re.M | re.S
)
_SCOPE_VIEW = re.compile(
    r"^CREATE VIEW crm_private\.api_\w+_scope WITH \(security_invoker = true\) AS\n(.*?);$",
    re.M | re.S,
)


def _generated(
    conn: psycopg.Connection, view: str, script: str, grants: list[str]
) -> dict[str, Any]:
    """What `script` (crm_api.<table> as policy apply makes it) would leave in the catalog."""
    match = _VIEW.search(script)
    assert match is not None, f"no view in the script of {view}"
    definitions: list[str | None] = []
    for suffix, found in (("", match), ("_scope", _SCOPE_VIEW.search(script))):
        if found is None:  # no scope view: plain SQL, or a table without field groups
            definitions.append(None)
            continue
        temp = sql.Identifier("pg_temp", f"crmdb_lint_{view.split('.')[1]}{suffix}")
        conn.execute(sql.SQL("CREATE TEMP VIEW {} AS ").format(temp) + sql.SQL(found[1]))
        row = conn.execute(
            query("api_view_definition", LINT_FILE), {"view": temp.as_string(conn)}
        ).fetchone()
        assert row is not None
        definitions.append(row[0])
    writer = script.split("$fn$")[1] if "$fn$" in script else None
    return {
        "definition": definitions[0],
        "scope": definitions[1],
        "writer_source": writer,
        "writer_definer": False if writer else None,
        "writer_enabled": True if writer else None,
        "grants": sorted(grants) or None,
    }


def api_drift(conn: psycopg.Connection, desired: Desired) -> list[Finding]:
    """crm_api views missing, made by hand, or differing from what the templates generate
    (definition, INSTEAD OF writer, its trigger, grants), each with the script that
    `crmdb policy plan` would run. `desired`: for conn's database (lint() gives it)."""
    params = {"schemas": list(DEFAULT_SCHEMAS)}  # every check's parameters (%% is %)
    have = {r[0]: r for r in conn.execute(query("api_views", LINT_FILE), params)}
    fields = ("definition", "writer_source", "writer_definer", "writer_enabled", "grants", "scope")
    found: list[Finding] = []
    for view in sorted(set(have) - set(desired.api)):
        found.append(
            Finding(
                "api_view_drift",
                view,
                "no template generates this view",
                ddl("drop_api_view", view),
            )
        )
    custom = [CustomField(*row) for row in conn.execute(query("custom_fields"))]
    scripts = {name: api_script(view, custom) for name, view in desired.api.items()}
    for view, script in sorted(scripts.items()):
        recreate = "\n".join([ddl("as_owner"), script, ddl("reset_role")])
        current = have.get(view)
        if current is None:
            problem = "missing: employees cannot read or write the table through crm_api"
            found.append(Finding("api_view_drift", view, problem, recreate))
            continue
        table = "crm." + view.split(".")[1]
        grants = [
            f"{role}:{privilege.upper()}"
            for (qualified, role), privileges in desired.grants.items()
            if qualified == table
            for privilege in privileges
        ]
        want = _generated(conn, view, script, grants)
        have_now = dict(zip(fields, current[2:], strict=True))
        have_now["grants"] = sorted(have_now["grants"] or []) or None
        differ = [name for name in fields if have_now[name] != want[name]]
        if current[1] is None or current[1] not in script:
            differ.insert(0, "comment (not made by crmdb policy apply from these templates)")
        if differ:
            problem = "differs from what the templates generate: " + ", ".join(differ)
            found.append(Finding("api_view_drift", view, problem, recreate))
    return found


# Field groups -----------------------------------------------------------------------


def side_rows_out_of_step(conn: psycopg.Connection) -> list[Finding]:
    """Field-group rows whose anchor copies differ from their row's (their policies
    then answer for where the row was), and rows without their group row."""
    found: list[Finding] = []
    params = {"schemas": list(DEFAULT_SCHEMAS)}
    for side, parent, anchors in conn.execute(query("side_tables", LINT_FILE), params).fetchall():
        names = {
            "side": sql.Identifier("crm", side),
            "parent": sql.Identifier("crm", parent),
            "anchors": sql.SQL(", ").join(map(sql.Identifier, anchors)),
            "side_anchors": sql.SQL(", ").join(sql.Identifier("s", a) for a in anchors),
            "parent_anchors": sql.SQL(", ").join(sql.Identifier("p", a) for a in anchors),
        }
        row = conn.execute(query("side_rows_out_of_step", LINT_FILE).format(**names)).fetchone()
        assert row is not None
        moved, missing = row
        where = f"crm.{side}"
        if moved:
            problem = (
                f"{moved} row(s) whose copies of {', '.join(anchors)} differ from crm.{parent}'s:"
                " the group's policies answer for where the row was, not where it is"
            )
            fix = query("fix_side_anchors", LINT_FILE).format(**names).as_string(conn)
            found.append(Finding("side_rows_out_of_step", where, problem, fix))
        if missing:
            problem = (
                f"{missing} row(s) of crm.{parent} without their row here: their"
                f" {side.split('__', 1)[1]} fields read as NULL and cannot be written"
            )
            fix = query("fix_side_rows", LINT_FILE).format(**names).as_string(conn)
            found.append(Finding("side_rows_out_of_step", where, problem, fix))
    return found


def copies_out_of_step(conn: psycopg.Connection) -> list[Finding]:
    """Rows whose read copy of a group differs from the group's row: crm_api shows the
    copy (a load with the side tables' triggers disabled leaves it behind)."""
    found: list[Finding] = []
    for side in SIDE_TABLES.values():
        assert side.parent and side.group
        names = {
            "parent": sql.Identifier("crm", side.parent),
            "side": sql.Identifier("crm", side.name),
            "copy": sql.Identifier(f"{side.group}_copy"),
        }
        row = conn.execute(query("copies_out_of_step", LINT_FILE).format(**names)).fetchone()
        if row is not None and row[0]:
            problem = (
                f"{row[0]} row(s) of crm.{side.parent} whose {side.group}_copy differs from"
                f" crm.{side.name}: crm_api shows the copy"
            )
            fix = query("fix_copies", LINT_FILE).format(**names).as_string(conn)
            found.append(Finding("copies_out_of_step", f"crm.{side.name}", problem, fix))
    return found


def masks_out_of_step(conn: psycopg.Connection, desired: Desired) -> list[Finding]:
    """Stored masks that are not the mask of their value as the templates declare it."""
    found: list[Finding] = []
    for (table, column), (group, keep) in sorted(desired.masks.items()):
        names = {
            "parent": sql.Identifier("crm", table),
            "side": sql.Identifier("crm", f"{table}__{group}"),
            "column": sql.Identifier(column),
            "mask": sql.Identifier(f"{column}_mask"),
        }
        row = conn.execute(
            query("masks_out_of_step", LINT_FILE).format(**names), {"keep": keep}
        ).fetchone()
        if row is not None and row[0]:
            problem = (
                f"{row[0]} stored mask(s) differ from the last {keep} character(s) of"
                f" {table}.{column} (policies/fields.yaml): masked readers see another value"
            )
            fix = ddl("set_mask", table, group, column, keep)
            found.append(Finding("masks_out_of_step", f"crm.{table}.{column}_mask", problem, fix))
    return found
