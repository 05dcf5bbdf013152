"""Organisation administration: thin calls into the crm_admin SQL API.

Every function runs on a connection the caller owns; the caller decides the
transaction, so a command either does all of its work or none.
"""

import secrets
from typing import Any

import psycopg

from crmdb.queries import query


def _one(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> Any:
    row = conn.execute(query(name), params).fetchone()
    return row[0] if row else None


def add_org_unit(
    conn: psycopg.Connection,
    code: str,
    name: str,
    kind: str,
    parent: str | None = None,
    timezone: str = "Asia/Ho_Chi_Minh",
) -> int:
    return int(
        _one(
            conn,
            "add_org_unit",
            {"code": code, "name": name, "kind": kind, "parent": parent, "timezone": timezone},
        )
    )


def new_password() -> str:
    return secrets.token_urlsafe(18)


def add_employee(
    conn: psycopg.Connection,
    role: str,
    full_name: str,
    email: str,
    org_unit: str,
    manager: str | None = None,
    title: str | None = None,
    login: bool = False,
    password: str | None = None,
) -> int:
    return int(
        _one(
            conn,
            "add_employee",
            {
                "role": role,
                "full_name": full_name,
                "email": email,
                "org_unit": org_unit,
                "manager": manager,
                "title": title,
                "login": login,
                "password": password,
            },
        )
    )


def move_employee(
    conn: psycopg.Connection,
    role: str,
    manager: str | None = None,
    org_unit: str | None = None,
    clear_manager: bool = False,
) -> None:
    _one(
        conn,
        "move_employee",
        {"role": role, "manager": manager, "org_unit": org_unit, "clear_manager": clear_manager},
    )


def set_employee_status(conn: psycopg.Connection, role: str, status: str) -> None:
    _one(conn, "set_employee_status", {"role": role, "status": status})


def offboard_employee(conn: psycopg.Connection, role: str, successor: str | None = None) -> None:
    """Mark departed; the routing worker hands their open work to `successor` or the rules."""
    _one(conn, "offboard_employee", {"role": role, "successor": successor})


def unowned_customers(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Open customers without an active owner: (id, project, stage, owner, owner status,
    pending event, its tries, when it is due)."""
    return conn.execute(query("unowned_customers")).fetchall()


def offboarding_report(conn: psycopg.Connection, role: str) -> list[tuple[Any, ...]]:
    """Where a departed employee's customers went: (customer, new owner, strategy, rule)."""
    return conn.execute(query("offboarding_report"), {"role": role}).fetchall()


def end_sessions(conn: psycopg.Connection, role: str) -> int:
    """End the role's open sessions; call after the departure is committed."""
    return int(_one(conn, "end_sessions", {"role": role}))


def add_gateway(conn: psycopg.Connection, role: str, password: str) -> None:
    _one(conn, "add_gateway", {"role": role, "password": password})


def add_project(conn: psycopg.Connection, code: str, name: str, solutions: list[str]) -> int:
    return int(_one(conn, "add_project", {"code": code, "name": name, "solutions": solutions}))


def add_project_member(
    conn: psycopg.Connection, project: str, role: str, solution: str, template: str
) -> None:
    _one(
        conn,
        "add_project_member",
        {"project": project, "role": role, "solution": solution, "template": template},
    )


def list_employees(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(query("list_employees")).fetchall()


def employee_id(conn: psycopg.Connection, role: str) -> int:
    """The id of the employee bound to `role`; an error naming it if there is none."""
    return int(_one(conn, "employee_id_by_role", {"role": role}))
