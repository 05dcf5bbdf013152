"""`crmdb export`: an employee's export, streamed with COPY, audited by the database.

The work is crm.export's (migrations/0011.exports.sql): this module acts as the
employee (SET LOCAL ROLE, in one transaction), streams the rows crm.export hands out
and writes them as CSV or JSON lines. The audit row and the notifications commit with
the transaction; a refused export commits its refusal, then fails.
"""

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from psycopg import sql

from crmdb import admin
from crmdb.db import Target, as_role, connect
from crmdb.errors import CrmdbError
from crmdb.queries import query

SQL_FILE = "export.sql"
FORMATS = ("csv", "jsonl")


@dataclass(frozen=True)
class ExportResult:
    export_id: int
    rows: int


def _value(value: Any) -> Any:
    """A CSV cell: nested values (jsonb) as JSON, NULL as empty."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def export(
    target: Target,
    employee: str,
    table: str,
    out: IO[str],
    *,
    where: str | None = None,
    fields: list[str] | None = None,
    fmt: str = "csv",
    progress: Callable[[int], Any] | None = None,
    total: Callable[[int], Any] | None = None,
) -> ExportResult:
    """Export as `employee`; `progress(n)` after each n rows, `total(count)` first."""
    if fmt not in FORMATS:
        raise CrmdbError(f"unknown format {fmt!r} (expected: {', '.join(FORMATS)})")
    params = {"table": table, "filter": where, "fields": fields}
    refused = False
    with connect(target) as conn:
        admin.employee_id(conn, employee)
        with as_role(conn, employee):
            allowed = conn.execute(query("export_allowed", SQL_FILE), params).fetchone()
            if not allowed or not allowed[0]:
                conn.execute(query("refuse_export", SQL_FILE), params)
                refused = True
            else:
                columns = [r[0] for r in conn.execute(query("export_columns", SQL_FILE), params)]
                chosen = fields or columns
                if total is not None:
                    count = conn.execute(
                        query("export_count", SQL_FILE).format(
                            view=sql.Identifier("crm_private", f"export_{table}"),
                            filter=sql.SQL(
                                where or "true"
                            ),  # the caller's own SQL, as the employee
                        )
                    ).fetchone()
                    total(int(count[0]) if count else 0)
                writer = csv.writer(out) if fmt == "csv" else None
                if writer:
                    writer.writerow(chosen)
                with conn.cursor() as cur, cur.copy(query("export_rows", SQL_FILE), params) as copy:
                    copy.set_types(["jsonb"])
                    for (doc,) in copy.rows():
                        if writer:
                            writer.writerow([_value(doc.get(c)) for c in chosen])
                        else:
                            out.write(json.dumps(doc, ensure_ascii=False, sort_keys=False) + "\n")
                        if progress is not None:
                            progress(1)
            row = conn.execute(query("last_export", SQL_FILE)).fetchone()
    assert row is not None, "crm.export wrote no audit row"
    export_id, rows, _ = row
    if refused:
        raise CrmdbError(
            f"{employee} may not export {table}: no template gives them the export action "
            f"(the refusal is recorded as export #{export_id})"
        )
    return ExportResult(int(export_id), int(rows))
