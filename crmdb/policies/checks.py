"""Running templates' inline tests: `as: EMPLOYEE, can: [...], cannot: [...]`.

Each probe runs as the employee's role (SET LOCAL ROLE) in a transaction that is
rolled back, so probes never change the fixture.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from crmdb import migrate
from crmdb.db import Target, as_role
from crmdb.policies.apply import apply_in
from crmdb.policies.compile import compile_policies
from crmdb.policies.fixture import LoadedFixture, load_fixture
from crmdb.policies.model import Check, PolicyError, PolicySet, Problem, TemplateTest
from crmdb.policies.tables import TABLES
from crmdb.queries import query


@dataclass(frozen=True)
class Outcome:
    template: str
    test: TemplateTest
    check: Check
    expected: bool
    allowed: bool
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.allowed == self.expected

    def __str__(self) -> str:
        verb = "can" if self.expected else "cannot"
        c = self.check
        status = "ok" if self.passed else "FAILED"
        why = f" (error: {self.error})" if self.error else ""
        return (
            f"{status}: {self.test.path.name}:{self.test.line}: {self.test.as_} {verb} "
            f"{c.action} {c.table}:{c.key}{why}"
        )


def _q(name: str) -> sql.SQL:
    return query(name, "fixture.sql")


def probe(conn: psycopg.Connection, role: str, table: str, row_id: int, action: str) -> bool:
    """Whether `role` may do `action` on one row. Raises on unexpected errors."""
    spec = TABLES[table]
    ident = sql.Identifier("crm", table)
    row = None
    if action == "insert":
        found = conn.execute(_q("row_as_json").format(table=ident), {"id": row_id}).fetchone()
        row = found[0] if found else None
    try:
        with conn.transaction(force_rollback=True), as_role(conn, role):
            return _run_probe(conn, spec.touch, ident, table, row_id, action, row)
    except errors.InsufficientPrivilege:
        # no table privilege, or a new row outside every WITH CHECK
        return False
    except errors.ForeignKeyViolation:
        # the policies allowed it; the data's integrity did not (e.g. a deleted
        # customer still has contracts): allowed as far as permissions go
        return True


def _run_probe(
    conn: psycopg.Connection,
    touch: str,
    ident: sql.Identifier,
    table: str,
    row_id: int,
    action: str,
    row: object,
) -> bool:
    if action == "select":
        found = conn.execute(_q("probe_select").format(table=ident), {"id": row_id}).fetchone()
        return bool(found and found[0] == 1)
    if action == "export":
        found = conn.execute(_q("probe_export"), {"table": table, "id": row_id}).fetchone()
        return bool(found and found[0])
    if action == "update":
        cur = conn.execute(
            _q("probe_update").format(table=ident, column=sql.Identifier(touch)), {"id": row_id}
        )
        return cur.rowcount == 1
    if action == "delete":
        cur = conn.execute(_q("probe_delete").format(table=ident), {"id": row_id})
        return cur.rowcount == 1
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in TABLES[table].columns if c != "id")
    cur = conn.execute(
        _q("probe_insert").format(table=ident, columns=columns),
        {"row": Jsonb(row)},
    )
    return cur.rowcount == 1


def run_tests(
    conn: psycopg.Connection, policies: PolicySet, loaded: LoadedFixture
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for name, template in sorted(policies.templates.items()):
        for test in template.tests:
            if test.as_ not in loaded.roles:
                raise PolicyError(
                    [Problem(test.path, test.line, f"test: {test.as_!r} is not a fixture employee")]
                )
            for expected, checks in ((True, test.can), (False, test.cannot)):
                for check in checks:
                    try:
                        row_id = loaded.row_id(check.table, check.key)
                    except KeyError:
                        raise PolicyError(
                            [
                                Problem(
                                    test.path,
                                    test.line,
                                    f"test: no fixture row {check.table}:{check.key}",
                                )
                            ]
                        ) from None
                    try:
                        allowed = probe(
                            conn, loaded.roles[test.as_], check.table, row_id, check.action
                        )
                        outcomes.append(Outcome(name, test, check, expected, allowed))
                    except psycopg.Error as exc:
                        outcomes.append(
                            Outcome(name, test, check, expected, False, str(exc).splitlines()[0])
                        )
    return outcomes


@contextmanager
def fixture_database(
    target: Target, policies: PolicySet, password: str | None = None
) -> Iterator[tuple[Target, LoadedFixture]]:
    """A scratch database on target's server, migrated, with the policies applied and
    the fixture loaded; dropped afterwards, with its roles."""
    from crmdb.testing.cluster import Cluster
    from crmdb.testing.scratch import ScratchFactory

    if policies.fixture is None or policies.fixture_path is None:
        raise PolicyError(
            [
                Problem(
                    policies.directory,
                    0,
                    "no fixture file (a YAML file with 'fixture:') to run tests against",
                )
            ]
        )
    cluster = Cluster("dsn", target.with_params(dbname="postgres").conninfo, lambda: None)
    factory = ScratchFactory(cluster)
    scratch = factory.empty()
    try:
        migrate.apply(scratch.target)
        solutions = {n: t.solution for n, t in policies.templates.items()}
        with psycopg.connect(scratch.target.conninfo) as conn, conn.transaction():
            # fixture first: sharing rules must find their org units and projects
            loaded = load_fixture(
                conn, policies.fixture, policies.fixture_path, scratch.prefix, solutions, password
            )
            apply_in(conn, compile_policies(policies))
        yield scratch.target, loaded
    finally:
        scratch.drop()


def run_policy_tests(target: Target, policies: PolicySet) -> list[Outcome]:
    """Every inline test of every template, against a fresh fixture database."""
    with (
        fixture_database(target, policies) as (scratch_target, loaded),
        psycopg.connect(scratch_target.conninfo, autocommit=True) as conn,
    ):
        return run_tests(conn, policies, loaded)


def describe(outcomes: list[Outcome], directory: Path) -> str:
    failed = [o for o in outcomes if not o.passed]
    lines = [str(o) for o in failed]
    templates = len({o.template for o in outcomes})
    lines.append(
        f"{len(outcomes) - len(failed)} passed, {len(failed)} failed "
        f"({len(outcomes)} checks in {templates} templates, {directory})"
    )
    return "\n".join(lines)
