"""Every migration rolls back to exactly the state before it, and applies again.

States are compared with crmdb.catalog snapshots, which also cover crmdb's
cluster-wide roles and this database's default privileges. crmdb_owner and
crmdb_employee are shared by every database on the cluster (the session template
among them), so rollback must keep them while another database uses them.
"""

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from yoyo import read_migrations
from yoyo.migrations import MigrationList

from crmdb import migrate
from crmdb.catalog import CATEGORIES, Snapshot, diff, snapshot
from crmdb.resources import resource_dir
from crmdb.testing.scratch import ScratchDatabase, ScratchFactory

CRMDB_ROLES = ("crmdb_owner", "crmdb_employee")
# PostgreSQL appends the columns a rollback adds back: these rollbacks restore every
# column and value, but not the columns' order in these tables.
REORDERED_BY_ROLLBACK = {"0006.field-groups": ("crm.customers.", "crm.contracts.")}


def all_migrations() -> MigrationList:
    return read_migrations(str(resource_dir("migrations")))


def migration_ids() -> list[str]:
    return [m.id for m in all_migrations()]


def apply_first(database: ScratchDatabase, count: int) -> list[str]:
    """Apply the first `count` migrations; migrate.apply can only apply them all."""
    with migrate._backend(database.target) as backend:
        pending = backend.to_apply(all_migrations()[:count])
        backend.apply_migrations(pending)
        return [m.id for m in pending]


def take(database: ScratchDatabase) -> Snapshot:
    with database.connect() as conn:
        return snapshot(conn)


def assert_same(expected: Snapshot, actual: Snapshot, what: str) -> None:
    drift = diff(expected, actual, left="expected", right="actual")
    assert not drift, f"{what}:\n" + "\n".join(drift)
    assert expected == actual


def without_positions(snap: Snapshot, tables: tuple[str, ...]) -> Snapshot:
    """`snap` with the column positions of `tables` (key prefixes) left out."""
    columns = [r._replace(position=None) if r[0].startswith(tables) else r for r in snap["columns"]]
    return {**snap, "columns": columns}


def crm_schemas(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname LIKE 'crm%' ORDER BY 1"
    ).fetchall()
    return [name for (name,) in rows]


def existing_roles(conn: psycopg.Connection, names: list[str]) -> set[str]:
    rows = conn.execute(
        "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY (%s)", [names]
    ).fetchall()
    return {name for (name,) in rows}


@pytest.fixture
def template(scratch: ScratchFactory) -> str:
    """The session's migrated template: another database that uses crmdb's roles."""
    return scratch.template()


def test_there_are_migrations() -> None:
    ids = migration_ids()
    assert ids, "no migrations found"
    assert ids[0] == "0001.crm-core-schema"
    assert len(set(ids)) == len(ids)


def test_each_migration_rolls_back_to_the_state_before_it(
    empty_db: ScratchDatabase, template: str
) -> None:
    # With the template using crmdb's roles they exist throughout, whatever ran before:
    # rollback of 0001 would otherwise drop them, and the snapshot includes them.
    assert template
    states = [take(empty_db)]  # states[i]: after the first i migrations
    for count, migration_id in enumerate(migration_ids(), start=1):
        assert apply_first(empty_db, count) == [migration_id]
        applied = take(empty_db)
        assert applied != states[-1], f"{migration_id} changed nothing the snapshot sees"

        assert migrate.rollback(empty_db.target, 1) == [migration_id]
        before, after = states[-1], take(empty_db)
        if reordered := REORDERED_BY_ROLLBACK.get(migration_id):
            # Expect the columns there, but allow them in another order
            assert before != after
            before, after = (
                without_positions(before, reordered),
                without_positions(after, reordered),
            )
        assert_same(before, after, f"rolling back {migration_id} left drift")

        assert apply_first(empty_db, count) == [migration_id]
        assert_same(applied, take(empty_db), f"re-applying {migration_id} differs")
        states.append(applied)


def test_rollback_of_everything_leaves_no_crm_schemas(db: ScratchDatabase) -> None:
    ids = migration_ids()
    before = take(db)

    assert migrate.rollback(db.target, None) == list(reversed(ids))
    with db.connect() as conn:
        assert crm_schemas(conn) == []
    after = take(db)
    leftovers = {c: after[c] for c in CATEGORIES if c != "roles" and after[c]}
    assert not leftovers, f"rollback left objects behind: {leftovers}"
    assert [s.applied_at for s in migrate.status(db.target)] == [None] * len(ids)
    assert migrate.rollback(db.target, None) == []

    assert migrate.apply(db.target) == ids
    assert_same(before, take(db), "apply after a full rollback differs from the first apply")


def test_rollback_drops_employee_roles_and_keeps_shared_roles(
    db: ScratchDatabase, template: str
) -> None:
    # Mixed case: the rollback must quote role names.
    rep, gateway = db.role("Rep"), db.role("gateway")
    with db.connect() as conn:
        conn.execute("SELECT crm_admin.add_org_unit('hq', 'Head office', 'company')")
        conn.execute("SELECT crm_admin.add_employee(%s, 'Rep One', 'rep@example.com', 'hq')", [rep])
        conn.execute("SELECT crm_admin.add_gateway(%s, 'gateway-password')", [gateway])
        assert existing_roles(conn, [rep, gateway]) == {rep, gateway}

    migrate.rollback(db.target, None)

    with db.connect() as conn:
        assert existing_roles(conn, [rep, gateway]) == set()
        # The template still has its schemas, so the shared roles must survive.
        assert existing_roles(conn, list(CRMDB_ROLES)) == set(CRMDB_ROLES)
    with psycopg.connect(db.cluster.uri(template)) as conn:
        # (crmdb_guard: the statement cache, where the test server has the library)
        cache = ["crmdb_guard"] if db.cluster.guard_library is not None else []
        assert crm_schemas(conn) == [
            "crm",
            "crm_admin",
            "crm_api",
            "crm_private",
            "crm_vault",
            *cache,
        ]


def test_rollback_drops_employee_roles_that_hold_privileges(db: ScratchDatabase) -> None:
    granted, in_policy = db.role("granted"), db.role("in_policy")
    with db.connect() as conn:
        conn.execute("SELECT crm_admin.add_org_unit('hq', 'Head office', 'company')")
        for number, role in enumerate((granted, in_policy)):
            conn.execute(
                "SELECT crm_admin.add_employee(%s, 'Rep', %s, 'hq')",
                [role, f"rep{number}@example.com"],
            )
        conn.execute(sql.SQL("GRANT SELECT ON crm.customers TO {}").format(sql.Identifier(granted)))
        conn.execute(
            sql.SQL("CREATE POLICY per_role ON crm.customers TO {} USING (true)").format(
                sql.Identifier(in_policy)
            )
        )

    migrate.rollback(db.target, None)

    with db.connect() as conn:
        assert existing_roles(conn, [granted, in_policy]) == set()


def test_apply_is_idempotent_and_status_lists_migrations(empty_db: ScratchDatabase) -> None:
    ids = migration_ids()
    pending = migrate.status(empty_db.target)
    assert [s.id for s in pending] == ids
    assert all(s.applied_at is None for s in pending)

    assert migrate.apply(empty_db.target) == ids
    assert migrate.apply(empty_db.target) == []

    applied = migrate.status(empty_db.target)
    assert [s.id for s in applied] == ids
    assert all(s.applied_at is not None for s in applied)


@pytest.fixture
def second_empty(scratch: ScratchFactory) -> Iterator[ScratchDatabase]:
    database = scratch.empty()
    try:
        yield database
    finally:
        database.drop()


def test_rollback_in_one_database_leaves_another_intact(
    db: ScratchDatabase, second_empty: ScratchDatabase
) -> None:
    migrate.apply(second_empty.target)
    before = take(second_empty)
    migrate.rollback(db.target, None)
    assert_same(before, take(second_empty), "rollback elsewhere changed this database")
