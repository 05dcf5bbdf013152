"""`crmdb lint`: what a deployed database must not hold, each finding with its fix.

The catalog checks are named queries in sql/lint.sql, one per kind of finding; policy
drift reuses crmdb/policies/plan.py's comparison with what the templates generate.
Nothing is changed: everything runs in one transaction that is rolled back.
"""

from dataclasses import asdict, dataclass

import psycopg

from crmdb.catalog import DEFAULT_SCHEMAS
from crmdb.policies.compile import Desired
from crmdb.policies.plan import policy_changes
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
    return findings
