"""The small org that templates' inline tests run against (policies/fixture.yaml).

Employees get role names prefix + key, so a fixture can be loaded next to others on a
shared cluster; org unit and project codes are per database and used as written.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from crmdb import admin
from crmdb.policies.model import PolicyError, Problem
from crmdb.policies.yamlload import Mapping
from crmdb.queries import query


@dataclass
class LoadedFixture:
    roles: dict[str, str] = field(default_factory=dict)  # employee key -> role name
    ids: dict[tuple[str, str], int] = field(default_factory=dict)  # (table, key) -> id

    def row_id(self, table: str, key: str) -> int:
        if table == "employees" and key in self.roles:
            return self.ids[("employees", key)]
        return self.ids[(table, key)]


def _items(node: Any, name: str, path: Path, line: int) -> list[Mapping]:
    if node is None:
        return []
    if not isinstance(node, list) or not all(isinstance(i, Mapping) for i in node):
        raise PolicyError([Problem(path, line, f"fixture {name} must be a list of mappings")])
    return node


def _one(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> int:
    row = conn.execute(query(name, "fixture.sql"), params).fetchone()
    assert row is not None
    return int(row[0])


def load_fixture(
    conn: psycopg.Connection,
    fixture: Mapping,
    path: Path,
    prefix: str,
    solutions: dict[str, str | None],
    password: str | None = None,
) -> LoadedFixture:
    """Create the fixture's org, employees (LOGIN, with `password`) and records.

    `solutions` maps each template to the solution it declares; a membership goes to
    that solution of the project, or the project's first solution.
    """
    loaded = LoadedFixture()

    def ref(kind: str, key: Any, item: Mapping, attr: str) -> Any:
        table = {
            "employee": "employees",
            "customer": "customers",
            "segment": "segments",
            "campaign": "campaigns",
        }[kind]
        if (table, key) not in loaded.ids:
            raise PolicyError(
                [Problem(path, item.line_of(attr), f"fixture: unknown {kind} {key!r}")]
            )
        return loaded.roles[key] if kind == "employee" else loaded.ids[(table, key)]

    def section(name: str) -> list[Mapping]:
        return _items(fixture.get(name), name, path, fixture.line_of(name))

    for unit in section("org_units"):
        admin.add_org_unit(
            conn, unit["code"], unit.get("name", unit["code"]), unit["kind"], unit.get("parent")
        )
    for project in section("projects"):
        admin.add_project(
            conn, project["code"], project.get("name", project["code"]), list(project["solutions"])
        )
    for emp in section("employees"):
        role = prefix + emp["key"]
        manager = ref("employee", emp["manager"], emp, "manager") if "manager" in emp else None
        employee_id = admin.add_employee(
            conn,
            role,
            emp.get("name", emp["key"]),
            f"{role.lower()}@fixture.test",
            emp["unit"],
            manager,
            login=True,
            password=password,
        )
        loaded.roles[emp["key"]] = role
        loaded.ids[("employees", emp["key"])] = employee_id
    for emp in section("employees"):
        for project, template in (emp.get("member") or {}).items():
            have = [
                r[0]
                for r in conn.execute(query("project_solutions", "fixture.sql"), {"code": project})
            ]
            if not have:
                raise PolicyError(
                    [Problem(path, emp.line_of("member"), f"fixture: unknown project {project!r}")]
                )
            declared = solutions.get(template)
            admin.add_project_member(
                conn,
                project,
                loaded.roles[emp["key"]],
                declared if declared is not None and declared in have else have[0],
                template,
            )
    for c in section("customers"):
        loaded.ids[("customers", c["key"])] = _one(
            conn,
            "fixture_customer",
            {
                "project": c["project"],
                "unit": c.get("unit"),
                "owner": ref("employee", c["owner"], c, "owner") if "owner" in c else None,
                "name": c.get("name", f"Customer {c['key']}"),
                "stage": c.get("stage", "lead"),
                "source": c.get("source", "manual"),
            },
        )
    for k in section("contracts"):
        loaded.ids[("contracts", k["key"])] = _one(
            conn,
            "fixture_contract",
            {
                "customer": ref("customer", k["customer"], k, "customer"),
                "owner": ref("employee", k["owner"], k, "owner"),
                "title": f"Contract {k['key']}",
                "status": k.get("status", "draft"),
            },
        )
    for a in section("activities"):
        loaded.ids[("activities", a["key"])] = _one(
            conn,
            "fixture_activity",
            {
                "customer": ref("customer", a["customer"], a, "customer"),
                "employee": ref("employee", a["employee"], a, "employee"),
                "kind": a.get("kind", "call"),
                "subject": f"Activity {a['key']}",
            },
        )
    for s in section("shares"):
        loaded.ids[("shares", s["key"])] = _one(
            conn,
            "fixture_share",
            {
                "customer": ref("customer", s["customer"], s, "customer"),
                "to": ref("employee", s["to"], s, "to"),
                "by": ref("employee", s["by"], s, "by"),
                "access": s.get("access", "read"),
                "expired": bool(s.get("expired")),
            },
        )
    for g in section("segments"):
        loaded.ids[("segments", g["key"])] = _one(
            conn,
            "fixture_segment",
            {
                "project": g["project"],
                "owner": ref("employee", g["owner"], g, "owner") if "owner" in g else None,
                "name": g.get("name", f"Segment {g['key']}"),
                "description": g.get("description", f"Segment {g['key']}"),
            },
        )
    for m in section("campaigns"):
        loaded.ids[("campaigns", m["key"])] = _one(
            conn,
            "fixture_campaign",
            {
                "project": m["project"],
                "owner": ref("employee", m["owner"], m, "owner") if "owner" in m else None,
                "name": m.get("name", f"Campaign {m['key']}"),
                "channel": m.get("channel", "email"),
                "segment": ref("segment", m["segment"], m, "segment") if "segment" in m else None,
            },
        )
    for au in section("campaign_audiences"):
        loaded.ids[("campaign_audiences", au["key"])] = _one(
            conn,
            "fixture_audience",
            {
                "campaign": ref("campaign", au["campaign"], au, "campaign"),
                "customer": ref("customer", au["customer"], au, "customer"),
                "by": ref("employee", au["by"], au, "by") if "by" in au else None,
            },
        )
    return loaded
