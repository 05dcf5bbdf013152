"""A small org for integration tests, built through the admin API.

    hq (company)
    └── sales (department)
        ├── team-a (team)   boss ─┬─ Rep_A   (mixed case: catches quoting bugs)
        └── team-b (team)         └─ rep_b

Every employee can log in with TEST_PASSWORD. Logical names ("Rep_A") map to the
test's namespaced role names (db.role("Rep_A")); emails are unique per database.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

from crmdb.testing.scratch import TEST_PASSWORD, ScratchDatabase, ScratchFactory

ADD_ORG_UNIT = "SELECT crm_admin.add_org_unit(%(code)s, %(name)s, %(kind)s, %(parent)s)"
ADD_EMPLOYEE = (
    "SELECT crm_admin.add_employee(%(role)s, %(name)s, %(email)s, %(unit)s, %(manager)s,"
    " p_login => %(login)s, p_password => %(pw)s)"
)
ADD_GATEWAY = "SELECT crm_admin.add_gateway(%(role)s, %(pw)s)"
SET_STATUS = "SELECT crm_admin.set_employee_status(%(role)s, %(status)s)"
ADD_CUSTOMER = (
    "INSERT INTO crm.customers (project_id, full_name, owner_id)"
    " VALUES (%(project)s, %(name)s, %(owner)s) RETURNING id"
)


@dataclass
class Org:
    """Employees and units of one scratch database, by logical name."""

    db: ScratchDatabase
    ids: dict[str, int] = field(default_factory=dict)

    def role(self, name: str) -> str:
        """The namespaced role of a logical employee name."""
        return self.db.role(name)

    def id(self, name: str) -> int:
        return self.ids[name]

    def add_unit(self, code: str, kind: str, parent: str | None = None) -> int:
        with self.db.connect() as conn:
            row = conn.execute(
                ADD_ORG_UNIT, {"code": code, "name": code.title(), "kind": kind, "parent": parent}
            ).fetchone()
        assert row is not None
        return int(row[0])

    def add_employee(
        self, name: str, unit: str = "sales", manager: str | None = None, *, login: bool = True
    ) -> int:
        params = {
            "role": self.role(name),
            "name": name.replace("_", " ").title(),
            "email": f"{name}@example.test",
            "unit": unit,
            "manager": self.role(manager) if manager else None,
            "login": login,
            "pw": TEST_PASSWORD if login else None,
        }
        with self.db.connect() as conn:
            row = conn.execute(ADD_EMPLOYEE, params).fetchone()
        assert row is not None
        self.ids[name] = int(row[0])
        return self.ids[name]

    def add_gateway(self, name: str) -> str:
        role = self.db.role(name)
        with self.db.connect() as conn:
            conn.execute(ADD_GATEWAY, {"role": role, "pw": TEST_PASSWORD})
        return role

    def set_status(self, name: str, status: str) -> None:
        with self.db.connect() as conn:
            conn.execute(SET_STATUS, {"role": self.role(name), "status": status})

    def add_project(self, code: str = "p1", solutions: tuple[str, ...] = ("sales",)) -> int:
        with self.db.connect() as conn:
            row = conn.execute(
                "SELECT crm_admin.add_project(%(code)s, %(name)s, %(solutions)s::crm.solution[])",
                {"code": code, "name": code.upper(), "solutions": list(solutions)},
            ).fetchone()
        assert row is not None
        return int(row[0])

    def add_customer(self, project_id: int, name: str, owner: str | None = None) -> int:
        """A customer inserted by the superuser (employees have no table grants yet)."""
        with self.db.connect() as conn:
            row = conn.execute(
                ADD_CUSTOMER,
                {"project": project_id, "name": name, "owner": self.ids[owner] if owner else None},
            ).fetchone()
        assert row is not None
        return int(row[0])

    def connect_as(self, name: str) -> psycopg.Connection:
        """A direct login as an employee (autocommit)."""
        return self.db.connect_as(self.role(name))


def shared_org(scratch: ScratchFactory) -> Iterator[Org]:
    """The standard org in a database of its own, for a module-scoped fixture.

    Cheaper than one database per test; only for tests that change nothing lasting
    (probes, SET ROLE in their own sessions, or work rolled back in a transaction).
    Its roles are dropped with the database.
    """
    database = scratch.migrated()
    try:
        yield build_org(database)
    finally:
        database.drop()


def build_org(db: ScratchDatabase) -> Org:
    """The standard small org (see the module docstring)."""
    org = Org(db)
    org.add_unit("hq", "company")
    org.add_unit("sales", "department", "hq")
    org.add_unit("team-a", "team", "sales")
    org.add_unit("team-b", "team", "sales")
    org.add_employee("boss", "sales")
    org.add_employee("Rep_A", "team-a", "boss")
    org.add_employee("rep_b", "team-b", "boss")
    return org
