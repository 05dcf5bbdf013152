"""Field groups: which columns of a table travel together, and how a field is masked.

Declared once in policies/fields.yaml (`field_groups:`); templates name groups per scope
(`fields: {read: [...], write: [...]}`). Everything not in a group is the table's `core`
group, visible wherever the row is. Design and the enforcement plan:
docs/field-security.md.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crmdb.policies.tables import TABLES
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


def core_columns(table: str, groups: dict[str, FieldGroup]) -> tuple[str, ...]:
    """The columns of `table` that belong to no declared group."""
    grouped = {c for g in groups.values() for c in g.columns}
    return tuple(c for c in TABLES[table].columns if c not in grouped)


def read_field_groups(r: Reporter, doc: Mapping) -> dict[str, dict[str, FieldGroup]]:
    """Parse `field_groups: {table: {group: {columns, masks}}}`; problems go to r.error."""
    result: dict[str, dict[str, FieldGroup]] = {}
    node = doc.get("field_groups")
    if not isinstance(node, Mapping):
        r.error(doc.line_of("field_groups"), "'field_groups' must map table names to groups")
        return result
    for table, groups in node.items():
        line = node.line_of(table)
        if table not in TABLES:
            r.error(line, f"unknown table {table!r} (expected: {', '.join(TABLES)})")
            continue
        if not isinstance(groups, Mapping) or not groups:
            r.error(line, f"table {table}: give each field group a mapping with 'columns'")
            continue
        result[table] = _groups(r, table, groups)
    return result


def _groups(r: Reporter, table: str, node: Mapping) -> dict[str, FieldGroup]:
    spec = TABLES[table]
    # Columns that place or identify a row stay in core: a row policy needs them.
    placing = {"id", *spec.anchors, spec.touch}
    seen: dict[str, str] = {}
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
        where = body.line_of("columns")
        for column in columns:
            if column not in spec.columns:
                r.error(where, f"table {table} has no column {column!r}")
            elif column in placing:
                r.error(
                    where,
                    f"{table}.{column} places or identifies the row; it stays in core",
                )
            elif column in seen:
                r.error(where, f"{table}.{column} is already in field group {seen[column]!r}")
            else:
                seen[column] = name
        masks = _masks(r, table, name, body, columns)
        groups[name] = FieldGroup(table, name, tuple(columns), masks, r.path, line)
    return groups


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
        masks[column] = Mask(keep)
    return masks
