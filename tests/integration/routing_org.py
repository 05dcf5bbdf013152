"""A small org for routing tests, built with the admin API, and helpers around it.

  co (company)           boss
    sales (team)         lead (reports to boss), s1 s2 s3 (report to lead)
    care (team)          c1 c2 (report to boss)
    other (team)         o1: in project p2 only, never eligible for p1's rules
  projects p1 (sales, management) and p2 (sales): everyone in p1 as sales_rep except o1

The routing worker runs as the superuser (a DBA login), as `crmdb worker` would.
Times are pinned: MONDAY is 2030-01-07 09:00 in Ho Chi Minh City; events recorded at the
real now() are due long before it.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from crmdb import admin
from crmdb.queries import query
from crmdb.testing.scratch import TEST_PASSWORD, ScratchDatabase
from crmdb.worker.batch import BatchResult, drain

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
MONDAY = datetime(2030, 1, 7, 9, 0, tzinfo=TZ)
SATURDAY = datetime(2030, 1, 5, 10, 0, tzinfo=TZ)
PEOPLE = {
    "boss": ("co", None),
    "lead": ("sales", "boss"),
    "s1": ("sales", "lead"),
    "s2": ("sales", "lead"),
    "s3": ("sales", "lead"),
    "c1": ("care", "boss"),
    "c2": ("care", "boss"),
    "o1": ("other", "boss"),
}
RULE_DEFAULTS: dict[str, Any] = {"project": "p1", "priority": 100}


@dataclass
class RoutingOrg:
    db: ScratchDatabase
    conn: psycopg.Connection  # superuser, autocommit
    ids: dict[str, int]

    def role(self, key: str) -> str:
        return self.db.role(key)

    def key(self, employee_id: int | None) -> str | None:
        for key, i in self.ids.items():
            if i == employee_id:
                return key
        return None

    def rule(self, name: str, **columns: Any) -> int:
        """A routing rule; target_org_unit / hours_org_unit by code, the rest as columns."""
        values = {**RULE_DEFAULTS, **columns}
        project = values.pop("project")
        units = {c: values.pop(c) for c in ("target_org_unit", "hours_org_unit") if c in values}
        names = ["project_id", "name"] + [f"{c}_id" for c in units] + list(values)
        cells = ["(SELECT id FROM crm.projects WHERE code = %s)", "%s"]
        cells += ["(SELECT id FROM crm.org_units WHERE code = %s)"] * len(units) + ["%s"] * len(
            values
        )
        row = self.conn.execute(
            f"INSERT INTO crm.routing_rules ({', '.join(names)}) VALUES ({', '.join(cells)})"
            " RETURNING id",
            [project, name, *units.values(), *values.values()],
        ).fetchone()
        assert row is not None
        return int(row[0])

    def queue(self, name: str, members: dict[str, int], project: str = "p1") -> None:
        for key, weight in members.items():
            self.conn.execute(
                "INSERT INTO crm.routing_queue_members (project_id, queue, employee_id, weight)"
                " VALUES ((SELECT id FROM crm.projects WHERE code = %s), %s, %s, %s)",
                [project, name, self.ids[key], weight],
            )

    def customers(self, count: int, project: str = "p1", **columns: Any) -> list[int]:
        """New customers (unowned unless owner_id is given), inserted in one statement."""
        names = ", ".join(columns)
        extra = "".join(f", %({c})s" for c in columns)
        rows = self.conn.execute(
            f"INSERT INTO crm.customers (project_id, full_name{', ' + names if names else ''})"
            f" SELECT (SELECT id FROM crm.projects WHERE code = %(project)s),"
            f" 'Customer ' || g{extra} FROM generate_series(1, %(count)s) AS g RETURNING id",
            {"project": project, "count": count, **columns},
        ).fetchall()
        return [r[0] for r in rows]

    def route(self, now: datetime = MONDAY, limit: int = 500) -> BatchResult:
        return drain(self.conn, limit, now)

    def owners(self, ids: list[int]) -> list[str | None]:
        rows = self.conn.execute(
            "SELECT owner_id FROM crm.customers WHERE id = ANY (%s) ORDER BY id", [ids]
        ).fetchall()
        return [self.key(r[0]) for r in rows]

    def counts(self, ids: list[int]) -> dict[str | None, int]:
        result: dict[str | None, int] = {}
        for owner in self.owners(ids):
            result[owner] = result.get(owner, 0) + 1
        return result

    def history(self, customer_id: int) -> list[tuple[Any, ...]]:
        """(from, to, rule, strategy, reason, hop) of a customer's assignments, oldest first."""
        rows = self.conn.execute(
            "SELECT from_employee_id, to_employee_id, rule_name, strategy, reason, hop"
            " FROM crm.assignment_history WHERE customer_id = %s ORDER BY id",
            [customer_id],
        ).fetchall()
        return [(self.key(r[0]), self.key(r[1]), *r[2:]) for r in rows]

    def pending_events(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM crm_private.routing_events").fetchone()
        assert row is not None
        return int(row[0])

    def set_status(self, key: str, status: str) -> None:
        admin.set_employee_status(self.conn, self.role(key), status)

    def make_admin(self, key: str, project: str = "p1", solution: str = "management") -> None:
        """`key` holds the admin template in `project` (for one of its solutions)."""
        admin.add_project_member(self.conn, project, self.role(key), solution, "admin")

    def unowned(self) -> dict[int, tuple[Any, ...]]:
        """crmdb unowned: customer -> (owner, owner status, pending event, attempts)."""
        rows = self.conn.execute(query("unowned_customers")).fetchall()
        return {r[0]: (self.key_of_role(r[3]), r[4], r[5], r[6]) for r in rows}

    def key_of_role(self, role: str | None) -> str | None:
        return next((k for k in self.ids if self.role(k) == role), None)

    def notifications(self, customer_id: int) -> list[tuple[Any, ...]]:
        """(to, kind, subject) of a customer's notifications, oldest first."""
        rows = self.conn.execute(
            "SELECT employee_id, kind, subject FROM crm.notifications"
            " WHERE customer_id = %s ORDER BY id",
            [customer_id],
        ).fetchall()
        return [(self.key(r[0]), r[1], r[2]) for r in rows]


def build_routing_org(db: ScratchDatabase) -> RoutingOrg:
    conn = db.connect()
    admin.add_org_unit(conn, "co", "Company", "company")
    for unit in ("sales", "care", "other"):
        admin.add_org_unit(conn, unit, unit.title(), "team", "co")
    admin.add_project(conn, "p1", "Project 1", ["sales", "management"])
    admin.add_project(conn, "p2", "Project 2", ["sales"])
    ids: dict[str, int] = {}
    for key, (unit, manager) in PEOPLE.items():
        role = db.role(key)
        ids[key] = admin.add_employee(
            conn,
            role,
            key,
            f"{key}@routing.test",
            unit,
            db.role(manager) if manager else None,
            login=True,
            password=TEST_PASSWORD,
        )
        project = "p2" if key == "o1" else "p1"
        admin.add_project_member(conn, project, role, "sales", "sales_rep")
    return RoutingOrg(db, conn, ids)


@contextmanager
def routing_org(db: ScratchDatabase) -> Iterator[RoutingOrg]:
    """build_routing_org, closing its connection afterwards (for a fixture)."""
    org = build_routing_org(db)
    try:
        yield org
    finally:
        org.conn.close()


def at(day: datetime, hours: float) -> datetime:
    return day + timedelta(hours=hours)
