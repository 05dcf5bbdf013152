"""Custom fields (crm.custom_fields): add and drop them, and regenerate crm_api's views
in the same transaction, so a field and its column appear (or vanish) together.

Validation lives in the database (crm_private.check_custom_field and
check_custom_values, migrations/0009.custom-fields.sql): the CLI and SQL clients get the
same rules and the same errors.
"""

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from crmdb.db import Target, connect, server_error
from crmdb.errors import CrmdbError
from crmdb.policies.apply import apply_in
from crmdb.policies.compile import Desired
from crmdb.queries import query

SQL_FILE = "fields.sql"
TYPES = ("text", "integer", "numeric", "boolean", "date", "timestamptz")


@dataclass(frozen=True)
class Rules:
    """What a custom field's values must satisfy (None: no rule)."""

    min_value: float | None = None
    max_value: float | None = None
    max_length: int | None = None
    pattern: str | None = None
    choices: tuple[str, ...] | None = None


def _in_one_transaction(target: Target, what: str, work: Any) -> Any:
    with connect(target) as conn:
        try:
            with conn.transaction():
                return work(conn)
        except psycopg.Error as exc:
            raise CrmdbError(f"{what} failed, nothing was changed: {server_error(exc)}") from None


def add(
    target: Target,
    desired: Desired,
    table: str,
    group: str,
    name: str,
    data_type: str,
    rules: Rules,
    label: str | None = None,
) -> int:
    """Register a field and regenerate the views; returns the number of statements
    the policy apply ran (the view of `table` among them)."""

    def work(conn: psycopg.Connection) -> int:
        conn.execute(
            query("add_custom_field", SQL_FILE),
            {
                "table": table,
                "group": group,
                "name": name,
                "type": data_type,
                "label": label,
                "min": rules.min_value,
                "max": rules.max_value,
                "max_length": rules.max_length,
                "pattern": rules.pattern,
                "choices": list(rules.choices) if rules.choices else None,
            },
        )
        return len(apply_in(conn, desired).statements)

    return int(_in_one_transaction(target, f"adding custom field {table}.{name}", work))


def drop(target: Target, desired: Desired, table: str, name: str) -> int:
    """Remove a field, its values (the audit trail keeps their history) and its column;
    returns how many rows held a value."""

    def work(conn: psycopg.Connection) -> int:
        row = conn.execute(
            query("drop_custom_field", SQL_FILE), {"table": table, "name": name}
        ).fetchone()
        if row is None:
            raise CrmdbError(f"{table} has no custom field {name!r} (crmdb field list)")
        (side,) = row
        purged = conn.execute(
            query("purge_custom_values", SQL_FILE).format(side=sql.Identifier("crm", side)),
            {"name": name},
        ).rowcount
        apply_in(conn, desired)
        return purged

    return int(_in_one_transaction(target, f"dropping custom field {table}.{name}", work))


def listing(target: Target) -> list[tuple[Any, ...]]:
    with connect(target) as conn:
        return conn.execute(query("list_custom_fields", SQL_FILE)).fetchall()
