"""The policy fixture org (policies/fixture.yaml) with the shipped role templates applied.

On top of the shipped fixture, a few rows for probes it does not cover (EXTRAS):

  intern    sales_rep in p1, unit hcm, reports to rep_a: mgr_hn -> rep_a -> intern is a
            depth-2 chain, boss -> mgr_hn -> rep_a -> intern a depth-3 one
  x_deep    saoviet.crm customer owned by intern, unit hcm (outside boss's unit subtree)
  x_care    saoviet.crm customer in unit saoviet.hn.cskh, no owner: reachable only through boss's
            org_unit scope with sub-units
  x_read    c4 (rep_a's) shared to rep_b, read
  x_unit    c7 (rep_b's) shared to the org unit hcm (rep_c, intern), read
  x_until   c2 (rep_b's) shared to rep_c, edit, expiring in 30 days
  hn_empty  an org unit under hn with nobody in it

Employees log in with TEST_PASSWORD as prefix + key, e.g. db.role("rep_a").
"""

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from crmdb import admin, catalog
from crmdb.policies.apply import apply_in
from crmdb.policies.compile import compile_policies
from crmdb.policies.fixture import LoadedFixture, load_fixture
from crmdb.policies.model import PolicySet, load_policies
from crmdb.resources import resource_dir
from crmdb.testing.scratch import TEST_PASSWORD, ScratchDatabase, ScratchFactory

CUSTOMER = (
    "INSERT INTO crm.customers (project_id, org_unit_id, owner_id, full_name)"
    " VALUES (crm_private.project_id(%(project)s),"
    " (SELECT id FROM crm.org_units WHERE code = %(unit)s), %(owner)s, %(name)s) RETURNING id"
)
SHARE = (
    "INSERT INTO crm.shares (customer_id, grantee_employee_id, grantee_org_unit_id, access,"
    " reason, granted_by, expires_at)"
    " VALUES (%(customer)s, %(employee)s, (SELECT id FROM crm.org_units WHERE code = %(unit)s),"
    " %(access)s, 'policy_org', %(by)s, now() + %(days)s * interval '1 day') RETURNING id"
)
# Which customers each employee sees in the org with EXTRAS (the scopes that give them
# are spelled out in tests/integration/test_policy_scopes.py).
P1 = {"c1", "c2", "c4", "c5", "c6", "c7", "x_deep", "x_care"}
VISIBLE_CUSTOMERS: dict[str, set[str]] = {
    "rep_a": {"c1", "c4", "c6"},
    "rep_b": {"c2", "c4", "c7"},
    "rep_c": {"c2", "c3", "c6", "c7"},
    "intern": {"x_deep", "c7"},
    "mgr_hn": {"c1", "c2", "c4", "c7", "x_deep"},
    "boss": P1,
    "mkt": P1,
    "care": {"c1", "c4"},
    "cc": {"c5"},
    "adm": P1,
    "sadm": P1,
}


@dataclass
class PolicyOrg:
    """A scratch database holding the fixture org, by fixture key."""

    db: ScratchDatabase
    policies: PolicySet
    loaded: LoadedFixture

    def role(self, key: str) -> str:
        return self.loaded.roles[key]

    def id(self, key: str, table: str = "customers") -> int:
        return self.loaded.ids[(table, key)]

    def emp(self, key: str) -> int:
        return self.loaded.ids[("employees", key)]

    def key(self, table: str, row_id: int) -> str:
        """The fixture key of a row, or #id for rows made by a test."""
        for (t, k), i in self.loaded.ids.items():
            if t == table and i == row_id:
                return k
        return f"#{row_id}"

    def keys(self, table: str, ids: Iterable[int]) -> set[str]:
        return {self.key(table, int(i)) for i in ids}

    def connect_as(self, key: str, *, autocommit: bool = True) -> psycopg.Connection:
        """A direct login as a fixture employee."""
        return self.db.connect_as(self.role(key), autocommit=autocommit)

    @contextmanager
    def rolled_back(self, key: str) -> Iterator[psycopg.Connection]:
        """A connection as a fixture employee whose work is rolled back."""
        with self.connect_as(key, autocommit=False) as conn:
            try:
                yield conn
            finally:
                conn.rollback()

    def visible(self, conn: psycopg.Connection, table: str = "customers") -> set[str]:
        """Keys of the rows of crm.<table> the connection's current role sees."""
        rows = conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier("crm", table)))
        return self.keys(table, [r[0] for r in rows])


def policy_dir(tmp: Path, edits: dict[str, list[tuple[str, str]]] | None = None) -> Path:
    """A copy of the shipped policies/ with text replacements {file: [(old, new)]}.

    Each `old` must occur exactly once, so an edit cannot silently miss. A file whose
    only edit is ("", text) is created with that text.
    """
    directory = tmp / "policies"
    shutil.copytree(resource_dir("policies"), directory)
    for name, replacements in (edits or {}).items():
        path = directory / name
        if replacements and replacements[0][0] == "" and not path.exists():
            path.write_text(replacements[0][1], encoding="utf-8")
            continue
        text = path.read_text(encoding="utf-8")
        for old, new in replacements:
            assert text.count(old) == 1, f"{name}: {old!r} occurs {text.count(old)} times"
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
    return directory


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the first line of `path` containing `needle`."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def _one(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def _extras(conn: psycopg.Connection, db: ScratchDatabase, loaded: LoadedFixture) -> None:
    admin.add_org_unit(conn, "hn_empty", "Ha Noi (empty)", "team", "hn")
    intern = db.role("intern")
    loaded.roles["intern"] = intern
    loaded.ids[("employees", "intern")] = admin.add_employee(
        conn,
        intern,
        "intern",
        f"{intern.lower()}@fixture.test",
        "hcm",
        loaded.roles["rep_a"],
        login=True,
        password=TEST_PASSWORD,
    )
    admin.add_project_member(conn, "saoviet.crm", intern, "sales", "sales_rep")
    ids = loaded.ids
    for key, unit, owner in (("x_deep", "hcm", "intern"), ("x_care", "saoviet.hn.cskh", None)):
        ids[("customers", key)] = _one(
            conn,
            CUSTOMER,
            {
                "project": "saoviet.crm",
                "unit": unit,
                "owner": ids[("employees", owner)] if owner else None,
                "name": f"Customer {key}",
            },
        )
    shares = (
        ("x_read", "c4", "rep_b", None, "read", "rep_a", None),
        ("x_unit", "c7", None, "hcm", "read", "rep_b", None),
        ("x_until", "c2", "rep_c", None, "edit", "rep_b", 30),
    )
    for key, customer, to, unit, access, by, days in shares:
        ids[("shares", key)] = _one(
            conn,
            SHARE,
            {
                "customer": ids[("customers", customer)],
                "employee": ids[("employees", to)] if to else None,
                "unit": unit,
                "access": access,
                "by": ids[("employees", by)],
                "days": days,
            },
        )


def load_org(
    conn: psycopg.Connection, db: ScratchDatabase, policies: PolicySet, *, extras: bool = True
) -> LoadedFixture:
    """The fixture (and EXTRAS) in the caller's transaction; no policies applied."""
    assert policies.fixture is not None and policies.fixture_path is not None
    solutions = {name: t.solution for name, t in policies.templates.items()}
    loaded = load_fixture(
        conn, policies.fixture, policies.fixture_path, db.role(""), solutions, TEST_PASSWORD
    )
    if extras:
        _extras(conn, db, loaded)
    return loaded


def build_policy_org(
    db: ScratchDatabase,
    directory: Path | None = None,
    *,
    extras: bool = True,
    apply: bool = True,
) -> PolicyOrg:
    """Load the fixture org (first: sharing rules are checked against it), then apply."""
    policies = load_policies(directory or resource_dir("policies"))
    with db.connect(autocommit=False) as conn, conn.transaction():
        loaded = load_org(conn, db, policies, extras=extras)
        if apply:
            apply_in(conn, compile_policies(policies))
    return PolicyOrg(db, policies, loaded)


def shared_policy_org(scratch: ScratchFactory, **options: Any) -> Iterator[PolicyOrg]:
    """build_policy_org in a database of its own, for a module-scoped fixture: only for
    tests that change nothing lasting (probes, or writes rolled back)."""
    database = scratch.migrated()
    try:
        yield build_policy_org(database, **options)
    finally:
        database.drop()


STATE_QUERIES = {
    "template_roles": (
        "SELECT r.rolname::text, shobj_description(r.oid, 'pg_authid') FROM pg_roles AS r"
        " WHERE r.rolname LIKE 'crmdb\\_tpl\\_%' ORDER BY 1"
    ),
    "memberships": (
        "SELECT t.rolname::text, m.rolname::text FROM pg_auth_members AS am"
        " JOIN pg_roles AS t ON t.oid = am.roleid JOIN pg_roles AS m ON m.oid = am.member"
        " WHERE t.rolname LIKE 'crmdb\\_tpl\\_%' ORDER BY 1, 2"
    ),
    "grants": (
        "SELECT table_name::text, grantee::text, privilege_type::text"
        " FROM information_schema.role_table_grants WHERE table_schema = 'crm' ORDER BY 1, 2, 3"
    ),
}


def state(conn: psycopg.Connection) -> dict[str, Any]:
    """What policy apply may change: the catalog snapshot (policies, ACLs, functions,
    comments, RLS flags) plus template roles, their comments and members."""
    result: dict[str, Any] = dict(catalog.snapshot(conn))
    for name, query in STATE_QUERIES.items():
        result[name] = conn.execute(query).fetchall()
    return result


def state_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    lines = catalog.diff(
        {k: v for k, v in before.items() if k in catalog.CATEGORIES},
        {k: v for k, v in after.items() if k in catalog.CATEGORIES},
        left="before",
        right="after",
    )
    for name in STATE_QUERIES:
        if before[name] != after[name]:
            lines.append(f"{name}: {before[name]} -> {after[name]}")
    return lines
