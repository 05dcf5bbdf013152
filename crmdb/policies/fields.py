"""Field groups: which columns of a table travel together, and how a field is masked.

Declared once in policies/fields.yaml (`field_groups:`); templates name groups per scope
(`fields: {read: [...], write: [...]}`). Everything not in a group is the table's `core`
group, visible wherever the row is. A group is stored in its own table,
crm.<table>__<group> (tables.SIDE_TABLES, made by a migration), whose row policies
decide who reads it: the declaration must match that table. Design:
docs/field-security.md.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crmdb.policies.tables import SIDE_TABLES, TABLES, Table
from crmdb.policies.yamlload import Mapping

CORE = "core"
MAX_KEEP = 8  # a mask that keeps more than this many characters hides little


@dataclass(frozen=True)
class Mask:
    """A masked reader sees the last `keep_last` characters, the rest as '*'."""

    keep_last: int


@dataclass(frozen=True)
class FieldGroup:
    table: str
    name: str
    columns: tuple[str, ...]
    masks: dict[str, Mask]
    path: Path
    line: int


class Reporter(Protocol):
    """What the policy file reader offers (crmdb.policies.model._Reader)."""

    path: Path

    def error(self, line: int, message: str) -> None: ...
    def keys(self, node: Mapping, allowed: set[str], what: str) -> None: ...
    def name(self, value: Any, line: int, what: str) -> str | None: ...
    def str_list(self, value: Any, line: int, what: str) -> list[str]: ...


def side_table(table: str, group: str) -> str:
    return f"{table}__{group}"


def mask_column(column: str) -> str:
    """The parent's column holding a masked field's mask."""
    return f"{column}_mask"


def core_columns(table: str, groups: dict[str, FieldGroup]) -> tuple[str, ...]:
    """The columns of `table` every reader of a row sees (not masks: they stand in
    for their field)."""
    masks = {mask_column(c) for g in groups.values() for c in g.masks}
    return tuple(c for c in TABLES[table].columns if c not in masks)


def read_field_groups(r: Reporter, doc: Mapping) -> dict[str, dict[str, FieldGroup]]:
    """Parse `field_groups: {table: {group: {columns, masks}}}`; problems go to r.error."""
    result: dict[str, dict[str, FieldGroup]] = {}
    node = doc.get("field_groups")
    if not isinstance(node, Mapping):
        r.error(doc.line_of("field_groups"), "'field_groups' must map table names to groups")
        return result
    tables = [t.name for t in TABLES.values() if t.templates]
    for table, groups in node.items():
        line = node.line_of(table)
        if table not in tables:
            r.error(line, f"unknown table {table!r} (expected: {', '.join(tables)})")
            continue
        if not isinstance(groups, Mapping) or not groups:
            r.error(line, f"table {table}: give each field group a mapping with 'columns'")
            continue
        result[table] = _groups(r, table, groups, line)
    return result


def _groups(r: Reporter, table: str, node: Mapping, table_line: int) -> dict[str, FieldGroup]:
    spec = TABLES[table]
    groups: dict[str, FieldGroup] = {}
    for name, body in node.items():
        line = node.line_of(name)
        if r.name(name, line, "field group name") is None:
            continue
        if name == CORE:
            r.error(
                line, f"table {table}: 'core' is every column not in a group; do not declare it"
            )
            continue
        if not isinstance(body, Mapping):
            r.error(line, f"field group {table}.{name} must be a mapping with 'columns'")
            continue
        r.keys(body, {"columns", "masks"}, f"field group {table}.{name}")
        columns = r.str_list(body.get("columns"), body.line_of("columns"), "columns")
        if not columns:
            r.error(body.line_of("columns"), f"field group {table}.{name} needs 'columns'")
        storage = SIDE_TABLES.get(side_table(table, name))
        if storage is None:
            r.error(
                line,
                f"field group {table}.{name} has no table crm.{side_table(table, name)}: a "
                "group's fields live in a table of their own, made by a migration "
                "(docs/field-security.md)",
            )
            continue
        _check_columns(r, storage.name, spec.columns, storage, columns, body.line_of("columns"))
        masks = _masks(r, table, name, body, columns)
        groups[name] = FieldGroup(table, name, tuple(columns), masks, r.path, line)
    for storage in SIDE_TABLES.values():
        if storage.parent == table and storage.group not in groups:
            r.error(
                table_line,
                f"crm.{storage.name} holds field group {storage.group!r} of {table}; "
                "declare it here, or nobody can read it",
            )
    return groups


def _check_columns(
    r: Reporter,
    side: str,
    core: tuple[str, ...],
    storage: Table,
    columns: list[str],
    line: int,
) -> None:
    """A group lists exactly the fields its table stores (not its anchors, not custom)."""
    fields = [c for c in storage.values if c != "custom"]
    for column in columns:
        if column in core:
            r.error(
                line, f"{column} is a core column (stored in the row itself), not in crm.{side}"
            )
        elif column not in fields:
            r.error(line, f"crm.{side} has no column {column!r} (it holds: {', '.join(fields)})")
    missing = [c for c in fields if c not in columns]
    if missing:
        r.error(line, f"list every field of crm.{side}; missing: {', '.join(missing)}")


def _masks(
    r: Reporter, table: str, group: str, body: Mapping, columns: list[str]
) -> dict[str, Mask]:
    node = body.get("masks")
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        r.error(body.line_of("masks"), "'masks' must map columns to e.g. {keep_last: 3}")
        return {}
    masks: dict[str, Mask] = {}
    for column, spec in node.items():
        line = node.line_of(column)
        if column not in columns:
            r.error(line, f"mask on {table}.{column}, which is not in field group {group!r}")
            continue
        keep = None
        if isinstance(spec, Mapping):
            r.keys(spec, {"keep_last"}, f"the mask of {table}.{column}")
            keep = spec.get("keep_last")
        if not isinstance(keep, int) or isinstance(keep, bool) or not 0 <= keep <= MAX_KEEP:
            r.error(line, f"mask of {table}.{column}: keep_last must be 0..{MAX_KEEP}")
            continue
        if mask_column(column) not in TABLES[table].columns:
            r.error(
                line,
                f"mask of {table}.{column}: crm.{table} has no column {mask_column(column)} "
                "to hold it (a migration adds it)",
            )
            continue
        masks[column] = Mask(keep)
    return masks
