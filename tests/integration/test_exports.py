"""Audited exports (issue 7): `crmdb export` and crm.export, as the employees.

The policy fixture org with the shipped templates and field values on c1 and c2
(tests/integration/test_field_groups.py sets the same kind). Who may export customers:
sales_rep own, sales_manager own and subordinates, director, marketing (project),
admin; not call_center, customer_care or shares.
"""

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from policy_org import PolicyOrg, shared_policy_org
from psycopg import errors

from crmdb.cli import main

PHONE, BANK = "0912345678", "1903 0000 1234"
NOTIFIED = "SELECT n.details ->> 'export_id' FROM crm.notifications AS n WHERE n.kind = 'export'"


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[PolicyOrg]:
    for shared in shared_policy_org(scratch, extras=False):
        with shared.db.connect() as conn:
            for key in ("c1", "c2", "c4"):
                conn.execute(
                    "UPDATE crm.customers__contact SET phone = %s WHERE id = %s",
                    (PHONE, shared.id(key)),
                )
                conn.execute(
                    "UPDATE crm.customers__financial SET bank_account = %s WHERE id = %s",
                    (BANK, shared.id(key)),
                )
        yield shared


def export(org: PolicyOrg, out: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["export", *args, "-o", str(out), "--dsn", org.db.target.conninfo]
    )


def audit(org: PolicyOrg, export_id: int) -> tuple:
    with org.db.connect() as conn:
        row = conn.execute(
            "SELECT e.role_name, x.table_name, x.filter, x.fields, x.row_count, x.refused,"
            " x.record_ids::text FROM crm.exports AS x LEFT JOIN crm.employees AS e"
            " ON e.id = x.employee_id WHERE x.id = %s",
            (export_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def last_export_id(result: Result) -> int:
    found = re.search(r"export #(\d+)", result.output)
    assert found, result.output
    return int(found.group(1))


def test_rep_exports_own_customers_as_csv_and_it_is_audited(org, tmp_path):
    out = tmp_path / "mine.csv"
    result = export(
        org, out, "--as", org.role("rep_a"), "--fields", "id,full_name,phone,bank_account"
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    c1, c4 = org.id("c1"), org.id("c4")
    # Expect rep_a's own customers (c6 is only shared to rep_a: no export), in full
    assert rows[0] == ["id", "full_name", "phone", "bank_account"]
    assert sorted(int(r[0]) for r in rows[1:]) == [c1, c4]
    assert {(r[2], r[3]) for r in rows[1:]} == {(PHONE, BANK)}
    role, table, filt, fields, count, refused, ids = audit(org, last_export_id(result))
    # ... and one audit row: who, what, which fields, how many, which ids
    assert (role, table, filt, fields, count, refused) == (
        org.role("rep_a"),
        "customers",
        None,
        ["id", "full_name", "phone", "bank_account"],
        2,
        False,
    )
    assert ids in (f"{{[{c1},{c1 + 1}),[{c4},{c4 + 1})}}", f"{{[{c1},{c4 + 1})}}")


def test_each_related_account_is_told_once_per_export(org, tmp_path):
    result = export(org, tmp_path / "x.csv", "--as", org.role("rep_a"))
    assert result.exit_code == 0, result.output
    export_id = str(last_export_id(result))
    told = {}
    for key in ("rep_a", "mgr_hn", "adm", "sadm", "rep_b", "mkt"):
        with org.connect_as(key) as conn:
            told[key] = [r[0] for r in conn.execute(NOTIFIED)].count(export_id)
    # Expect the owner's manager and the project's admins told once each; the exporter
    # (who owns the records) and the uninvolved not at all
    assert told == {"rep_a": 0, "mgr_hn": 1, "adm": 1, "sadm": 1, "rep_b": 0, "mkt": 0}
    with org.db.connect() as conn:
        emails = conn.execute(
            "SELECT e.role_name FROM crm_private.email_outbox AS o"
            " JOIN crm.notifications AS n ON n.id = o.notification_id"
            " JOIN crm.employees AS e ON e.id = o.recipient_employee_id"
            " WHERE n.details ->> 'export_id' = %s ORDER BY 1",
            (export_id,),
        ).fetchall()
    # ... and each by email too, queued in the export's transaction
    assert emails == sorted((org.role(k),) for k in ("mgr_hn", "adm", "sadm"))


def test_export_shows_only_the_fields_the_exporter_may_read(org, tmp_path):
    out = tmp_path / "mkt.jsonl"
    result = export(
        org, out, "--as", org.role("mkt"), "--format", "jsonl", "--where", f"id = {org.id('c2')}"
    )
    assert result.exit_code == 0, result.output
    [doc] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # Expect marketing (contact fields only) to export c2's phone, not its bank account
    assert (doc["id"], doc["phone"], doc["bank_account"], doc["notes"]) == (
        org.id("c2"),
        PHONE,
        None,
        None,
    )
    assert audit(org, last_export_id(result))[2] == f"id = {org.id('c2')}"


def test_exporting_without_the_export_action_is_refused_and_recorded(org, tmp_path):
    out = tmp_path / "cc.csv"
    result = export(org, out, "--as", org.role("cc"))
    # Expect a clear refusal ...
    assert result.exit_code != 0
    assert "may not export customers" in result.output and "recorded as export #" in result.output
    # ... no data, and the refusal in the audit trail
    assert out.read_text(encoding="utf-8") == ""
    role, _, _, _, count, refused, _ = audit(org, last_export_id(result))
    assert (role, count, refused) == (org.role("cc"), 0, True)


def test_sql_export_for_apps(org):
    with org.connect_as("boss", autocommit=False) as conn:
        docs = [
            r[0]
            for r in conn.execute(
                "SELECT * FROM crm.export('customers', 'stage = ''lead''', ARRAY['id', 'phone'])"
            )
        ]
        with pytest.raises(errors.UndefinedColumn, match="customers has no field salary"):
            conn.execute("SELECT * FROM crm.export('customers', NULL, ARRAY['salary'])")
        conn.rollback()
    # Expect the director's export of leads, with only the asked fields
    assert docs and all(set(d) == {"id", "phone"} for d in docs)


def test_the_audit_trail_is_append_only_for_everyone(org):
    for key in ("adm", "rep_a"):
        with org.connect_as(key) as conn:
            for statement in ("UPDATE crm.exports SET row_count = 0", "DELETE FROM crm.exports"):
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(statement)
    # Expect even the owner refused (only a superuser disabling triggers gets past)
    with (
        org.db.connect() as conn,
        pytest.raises(errors.InsufficientPrivilege, match="append-only"),
    ):
        conn.execute("SET ROLE crmdb_owner; DELETE FROM crm.exports")


def test_who_reads_the_audit_trail(org, tmp_path):
    assert export(org, tmp_path / "a.csv", "--as", org.role("rep_a")).exit_code == 0
    seen = {}
    for key in ("rep_a", "rep_b", "adm"):
        with org.connect_as(key) as conn:
            seen[key] = conn.execute(
                "SELECT count(*) > 0 FROM crm.exports AS x JOIN crm.employees AS e"
                " ON e.id = x.employee_id WHERE e.role_name = %s",
                (org.role("rep_a"),),
            ).fetchone()
    # Expect the exporter and the project's admin to read it, a colleague not
    assert seen == {"rep_a": (True,), "rep_b": (False,), "adm": (True,)}
