"""The closure tables crm_private.manager_tree and org_unit_tree stay exact; cycles are refused.

After every step of a seeded random sequence of adds and moves, each closure table
must equal the transitive closure computed in Python from employees.manager_id and
org_units.parent_id, depth included. Cycle probes share one database and run in a
transaction that is rolled back.
"""

import random
from collections.abc import Iterator

import psycopg
import pytest
from org_fixture import ADD_EMPLOYEE, Org, shared_org

Closure = set[tuple[int, int, int]]  # (ancestor, descendant, depth)

EMPLOYEE_PARENTS = "SELECT id, manager_id FROM crm.employees"
UNIT_PARENTS = "SELECT id, parent_id FROM crm.org_units"
MANAGER_TREE = "SELECT manager_id, employee_id, depth FROM crm_private.manager_tree"
UNIT_TREE = "SELECT ancestor_id, descendant_id, depth FROM crm_private.org_unit_tree"
MOVE_EMPLOYEE = "SELECT crm_admin.move_employee(%s, %s, %s, %s)"


def closure_of(parents: dict[int, int | None]) -> Closure:
    """Every (ancestor, node, distance), including (node, node, 0)."""
    result: Closure = set()
    for node in parents:
        ancestor: int | None = node
        depth = 0
        while ancestor is not None:
            result.add((ancestor, node, depth))
            ancestor = parents[ancestor]
            depth += 1
            assert depth <= len(parents), "cycle in the parent column"
    return result


def rows(conn: psycopg.Connection, query: str) -> set[tuple[int, ...]]:
    return {tuple(r) for r in conn.execute(query)}


def parents(conn: psycopg.Connection, query: str) -> dict[int, int | None]:
    return dict(conn.execute(query).fetchall())


def assert_closures_exact(conn: psycopg.Connection, step: str = "") -> None:
    # Expect each closure table to be exactly the closure of its parent column
    assert rows(conn, MANAGER_TREE) == closure_of(parents(conn, EMPLOYEE_PARENTS)), step
    assert rows(conn, UNIT_TREE) == closure_of(parents(conn, UNIT_PARENTS)), step


def snapshot(conn: psycopg.Connection) -> tuple[object, ...]:
    return (
        parents(conn, EMPLOYEE_PARENTS),
        parents(conn, UNIT_PARENTS),
        rows(conn, MANAGER_TREE),
        rows(conn, UNIT_TREE),
    )


def subtree(parent_of: dict[int, int | None], root: int) -> set[int]:
    """root and everything below it."""
    return {d for a, d, _ in closure_of(parent_of) if a == root}


# Random sequence ------------------------------------------------------------------

OPS = ["add_unit", "add_employee", "move_employee", "clear_manager", "move_unit"]
WEIGHTS = [2, 3, 3, 1, 2]


@pytest.mark.parametrize("seed", [1, 5])
def test_closures_exact_after_random_adds_and_moves(db, seed):
    rng = random.Random(seed)
    stats = dict.fromkeys(["subtree_moves", "clears", "unit_subtree_moves", "unit_to_root"], 0)
    with db.connect() as conn:
        conn.execute("SELECT crm_admin.add_org_unit('u0', 'Company', 'company')")
        units = ["u0"]
        people: list[str] = []
        for step in range(32):
            emp_parents = parents(conn, EMPLOYEE_PARENTS)
            unit_parents = parents(conn, UNIT_PARENTS)
            unit_ids = dict(conn.execute("SELECT code, id FROM crm.org_units").fetchall())
            emp_ids = dict(conn.execute("SELECT role_name, id FROM crm.employees").fetchall())
            op = rng.choices(OPS, WEIGHTS)[0]
            if op == "add_unit" or (op == "move_unit" and len(units) < 3):
                code = f"u{len(units)}"
                conn.execute(
                    "SELECT crm_admin.add_org_unit(%s, %s, 'team', %s)",
                    (code, code.upper(), rng.choice(units)),
                )
                units.append(code)
                desc = f"add unit {code}"
            elif op == "add_employee" or not people:
                name = f"e{len(people)}" if len(people) % 3 else f"E_{len(people)}"
                role = db.role(name)
                manager = rng.choice([*people, None]) if people else None
                conn.execute(
                    ADD_EMPLOYEE,
                    {
                        "role": role,
                        "name": name,
                        "email": f"{name}@example.test",
                        "unit": rng.choice(units),
                        "manager": manager,
                        "login": False,
                        "pw": None,
                    },
                )
                people.append(role)
                desc = f"add {role} under {manager}"
            elif op == "clear_manager":
                role = rng.choice(people)
                conn.execute(MOVE_EMPLOYEE, (role, None, None, True))
                stats["clears"] += emp_parents[emp_ids[role]] is not None
                desc = f"clear manager of {role}"
            elif op == "move_employee":
                role = rng.choice(people)
                below = subtree(emp_parents, emp_ids[role])
                targets = [p for p in people if emp_ids[p] not in below]
                if not targets:
                    continue
                manager = rng.choice(targets)
                conn.execute(MOVE_EMPLOYEE, (role, manager, rng.choice([*units, None]), False))
                stats["subtree_moves"] += len(below) > 1
                desc = f"move {role} (subtree {len(below)}) under {manager}"
            else:
                code = rng.choice(units[1:])
                below = subtree(unit_parents, unit_ids[code])
                targets = [u for u in units if unit_ids[u] not in below]
                parent = rng.choice([*targets, None])
                conn.execute(
                    "UPDATE crm.org_units SET parent_id = %s WHERE code = %s",
                    (unit_ids[parent] if parent else None, code),
                )
                stats["unit_subtree_moves"] += len(below) > 1
                stats["unit_to_root"] += parent is None
                desc = f"move unit {code} (subtree {len(below)}) under {parent}"
            assert_closures_exact(conn, f"step {step}: {desc}")
        # Expect the sequence to have exercised the interesting moves
        assert all(stats.values()), stats
        # Expect a real hierarchy, not a flat list
        assert max(d for _, _, d in rows(conn, MANAGER_TREE)) >= 2


# Cycles ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[Org]:
    for shared in shared_org(scratch):
        shared.add_employee("Sub_1", "team-a", "Rep_A", login=False)  # boss > Rep_A > Sub_1
        yield shared


@pytest.fixture
def conn(org) -> Iterator[psycopg.Connection]:
    """A superuser transaction, rolled back after the test."""
    with org.db.connect(autocommit=False) as c:
        c.execute("SELECT 1")
        yield c
        c.rollback()


def refused_unchanged(conn: psycopg.Connection, match: str, query: str, params: tuple) -> None:
    before = snapshot(conn)
    with pytest.raises(psycopg.errors.CheckViolation, match=match), conn.transaction():
        conn.execute(query, params)
    # Expect nothing changed: parent columns and closures as before
    assert snapshot(conn) == before


def test_shared_org_closures_are_exact(conn):
    assert_closures_exact(conn)


def test_employee_under_direct_subordinate_is_refused(org, conn):
    # Expect a cycle error: Rep_A reports to boss
    refused_unchanged(
        conn,
        f"employee {org.role('boss')} cannot report to .* cycle",
        MOVE_EMPLOYEE,
        (org.role("boss"), org.role("Rep_A"), None, False),
    )


def test_employee_under_indirect_subordinate_is_refused(org, conn):
    # Expect a cycle error: Sub_1 is two levels below boss
    refused_unchanged(
        conn,
        "that would make a cycle",
        MOVE_EMPLOYEE,
        (org.role("boss"), org.role("Sub_1"), None, False),
    )


def test_employee_under_themselves_is_refused(org, conn):
    # Expect a refusal from the named CHECK (manager_id <> id)
    refused_unchanged(
        conn,
        "employees_not_own_manager",
        MOVE_EMPLOYEE,
        (org.role("Rep_A"), org.role("Rep_A"), None, False),
    )


def test_unit_under_its_sub_unit_is_refused(conn):
    # Expect a cycle error: team-a is below sales, which is below hq
    refused_unchanged(
        conn,
        "org unit hq cannot move under .* cycle",
        "UPDATE crm.org_units SET parent_id = (SELECT id FROM crm.org_units"
        " WHERE code = %s) WHERE code = %s",
        ("team-a", "hq"),
    )


def test_unit_under_itself_is_refused(conn):
    # Expect a refusal from the named CHECK (parent_id <> id)
    refused_unchanged(
        conn,
        "org_units_not_own_parent",
        "UPDATE crm.org_units SET parent_id = id WHERE code = %s",
        ("sales",),
    )


def test_moves_in_one_statement_keep_closure_exact(org, conn):
    # Two moves in one UPDATE: rep_b under Rep_A and Sub_1 to the top
    conn.execute(
        "UPDATE crm.employees SET manager_id = CASE role_name WHEN %s THEN %s::bigint END"
        " WHERE role_name IN (%s, %s)",
        (org.role("rep_b"), org.id("Rep_A"), org.role("rep_b"), org.role("Sub_1")),
    )
    assert_closures_exact(conn)


def test_swap_in_one_statement_is_refused(org, conn):
    # Expect a cycle error: boss under Rep_A while Rep_A stays under boss, in one UPDATE
    refused_unchanged(
        conn,
        "cycle",
        "UPDATE crm.employees SET manager_id = CASE role_name WHEN %s THEN %s::bigint"
        " ELSE %s::bigint END WHERE role_name IN (%s, %s)",
        (org.role("boss"), org.id("Rep_A"), org.id("boss"), org.role("boss"), org.role("Rep_A")),
    )


INSERT_EMPLOYEES = (
    "INSERT INTO crm.employees (id, role_name, full_name, email, org_unit_id, manager_id)"
    " OVERRIDING SYSTEM VALUE SELECT v.id, v.role, 'Bulk', v.role || '@example.test',"
    " (SELECT id FROM crm.org_units WHERE code = 'hq'), v.manager"
    " FROM (VALUES (1001, %s, 1000::bigint), (1000, %s, NULL)) AS v (id, role, manager)"
)


def test_bulk_insert_child_before_parent_keeps_closure_exact(org, conn):
    conn.execute(INSERT_EMPLOYEES, (org.db.role("bulk_child"), org.db.role("bulk_parent")))
    # Expect (1000, 1001, 1) in manager_tree like any other manager link
    assert_closures_exact(conn)


def test_bulk_insert_cycle_is_refused(org, conn):
    # Expect a refusal: 2001 and 2002 would manage each other
    refused_unchanged(
        conn,
        "cycle",
        "INSERT INTO crm.employees (id, role_name, full_name, email, org_unit_id, manager_id)"
        " OVERRIDING SYSTEM VALUE SELECT v.id, v.role, 'Bulk', v.role || '@example.test',"
        " (SELECT id FROM crm.org_units WHERE code = 'hq'), v.manager"
        " FROM (VALUES (2001, %s, 2002::bigint), (2002, %s, 2001::bigint))"
        " AS v (id, role, manager)",
        (org.db.role("loop_1"), org.db.role("loop_2")),
    )
