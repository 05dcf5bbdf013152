"""A comparable description of crmdb's schemas, read from the system catalogs.

snapshot() runs the queries in sql/catalog.sql and returns, per category (tables,
columns, functions, policies...), a sorted list of rows whose first field is the
object's name. Names only, never OIDs, so two databases built different ways (from
sql/schema.sql, from migrations/) compare equal exactly when their schemas match.
diff() turns two snapshots into lines a failing test can show.
"""

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

from crmdb.queries import query

CATALOG_FILE = "catalog.sql"
DEFAULT_SCHEMAS: tuple[str, ...] = ("crm", "crm_private", "crm_admin", "crm_api", "crm_vault")

# Query names in sql/catalog.sql, one per category, in the order diff() reports them.
CATEGORIES: tuple[str, ...] = (
    "roles",
    "schemas",
    "default_privileges",
    "objects",
    "types",
    "enums",
    "relations",
    "sequences",
    "columns",
    "constraints",
    "indexes",
    "triggers",
    "functions",
    "policies",
    "comments",
)

Row = tuple[Any, ...]
Snapshot = dict[str, list[Row]]


def snapshot(conn: psycopg.Connection[Any], schemas: Sequence[str] = DEFAULT_SCHEMAS) -> Snapshot:
    """Every object in `schemas`, plus crmdb's roles and this database's default ACLs.

    Each row is a named tuple whose first field, `key`, names the object uniquely in
    its category. Nothing is changed: the work runs in a transaction (or savepoint)
    that is rolled back, which also undoes its search_path setting.
    """
    params = {"schemas": list(schemas)}
    result: Snapshot = {}
    with conn.transaction(force_rollback=True), conn.cursor(row_factory=namedtuple_row) as cur:
        cur.execute(query("snapshot_settings", CATALOG_FILE))
        for category in CATEGORIES:
            cur.execute(query(category, CATALOG_FILE), params)
            rows: list[Row] = sorted(cur.fetchall(), key=lambda row: str(row[0]))
            keys = [row[0] for row in rows]
            if len(set(keys)) != len(keys):
                # diff() pairs rows by key; a duplicate would hide a difference.
                raise ValueError(f"catalog query {category!r} returned duplicate keys")
            result[category] = rows
    return result


def diff(
    a: Mapping[str, Sequence[Row]],
    b: Mapping[str, Sequence[Row]],
    *,
    left: str = "left",
    right: str = "right",
) -> list[str]:
    """What differs between two snapshots, one line per object or field; [] if equal."""
    lines: list[str] = []
    known = [c for c in CATEGORIES if c in a or c in b]
    extra = sorted((a.keys() | b.keys()) - set(CATEGORIES))
    for category in known + extra:
        rows_a = {row[0]: row for row in a.get(category, ())}
        rows_b = {row[0]: row for row in b.get(category, ())}
        for key in sorted(rows_a.keys() | rows_b.keys(), key=str):
            row_a, row_b = rows_a.get(key), rows_b.get(key)
            where = f"{category} {key}"
            if row_b is None:
                lines.append(f"{where}: only in {left}: {_describe(row_a)}")
            elif row_a is None:
                lines.append(f"{where}: only in {right}: {_describe(row_b)}")
            elif row_a != row_b:
                lines.extend(_diff_fields(where, row_a, row_b, left, right))
    return lines


def as_dict(row: Row) -> dict[str, Any]:
    """A snapshot row as {column: value}."""
    return dict(zip(_field_names(row), row, strict=True))


def _field_names(row: Row) -> tuple[str, ...]:
    fields = getattr(row, "_fields", None)  # rows from snapshot() are named tuples
    return tuple(fields) if fields else tuple(f"field {i}" for i in range(len(row)))


def _describe(row: Row | None) -> str:
    if row is None:
        return "-"
    fields = list(as_dict(row).items())[1:]  # the key is already on the line
    return ", ".join(f"{name}={value!r}" for name, value in fields)


def _diff_fields(where: str, row_a: Row, row_b: Row, left: str, right: str) -> list[str]:
    if len(row_a) != len(row_b):
        return [f"{where}: {left} {_describe(row_a)} vs {right} {_describe(row_b)}"]
    lines = []
    for name, value_a, value_b in zip(_field_names(row_a), row_a, row_b, strict=True):
        if value_a == value_b:
            continue
        if isinstance(value_a, str) and isinstance(value_b, str) and "\n" in value_a + value_b:
            # Function bodies and view definitions: show only the lines that differ.
            changed = difflib.unified_diff(
                value_a.splitlines(), value_b.splitlines(), left, right, lineterm="", n=1
            )
            lines.append(f"{where}: {name} differs:")
            lines.extend(f"    {line}" for line in changed)
        else:
            lines.append(f"{where}: {name}: {left} {value_a!r} vs {right} {value_b!r}")
    return lines
