"""Custom fields: `crmdb field add|drop|list`, validation on every write, a column of
crm_api.<table> shown and hidden with its field group, admin-only SQL, audited.

The module's org (policies/fixture.yaml, shipped templates) gets two fields at the start:
customers.zalo_id (group contact, digits only) and customers.credit_limit (group
financial, numeric 0..1e9). Tests that change more roll their work back or undo it.
"""

from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from policy_org import PolicyOrg, shared_policy_org
from psycopg import errors

from crmdb.cli import main

ZALO = "0912345678"


def field(org: PolicyOrg, *args: str) -> Result:
    return CliRunner().invoke(main, ["field", *args, "--dsn", org.db.target.conninfo])


def columns(org: PolicyOrg, view: str = "customers") -> list[str]:
    with org.db.connect() as conn:
        rows = conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 ORDER BY attnum",
            (f"crm_api.{view}",),
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[PolicyOrg]:
    for shared in shared_policy_org(scratch, extras=False):
        for args in (
            ("add", "customers", "contact", "zalo_id", "--pattern", "^[0-9]{9,12}$"),
            (
                "add",
                "customers",
                "financial",
                "credit_limit",
                "--type",
                "numeric",
                "--min",
                "0",
                "--max",
                "1e9",
                "--label",
                "Hạn mức tín dụng",
            ),
        ):
            result = field(shared, *args)
            assert result.exit_code == 0, result.output
        with shared.db.connect() as conn:
            conn.execute(
                "UPDATE crm.customers__contact SET custom = %s WHERE id = %s",
                (f'{{"zalo_id": "{ZALO}"}}', shared.id("c1")),
            )
        yield shared


def test_a_field_is_a_column_of_its_view_after_add(org):
    cols = columns(org)
    # Expect both fields as typed columns, each after its group's own fields
    assert cols.index("zalo_id") == cols.index("address") + 1
    assert cols.index("credit_limit") == cols.index("financial_notes") + 1
    listed = field(org, "list")
    assert listed.exit_code == 0
    assert "credit_limit" in listed.output and ">= 0, <= 1000000000" in listed.output


def test_custom_fields_are_shown_and_hidden_with_their_group(org):
    c1 = org.id("c1")
    query = "SELECT zalo_id, credit_limit FROM crm_api.customers WHERE id = %s"
    seen = {}
    for key in ("rep_a", "mkt", "care"):
        with org.connect_as(key) as conn:
            seen[key] = conn.execute(query, (c1,)).fetchone()
    # Expect the owner to read both; marketing and care (contact) the Zalo id only
    assert seen == {"rep_a": (ZALO, None), "mkt": (ZALO, None), "care": (ZALO, None)}


def test_writing_custom_fields_through_the_view(org):
    c1 = org.id("c1")
    with org.rolled_back("rep_a") as conn:
        row = conn.execute(
            "UPDATE crm_api.customers SET credit_limit = 50000000, zalo_id = '0987654321'"
            " WHERE id = %s RETURNING zalo_id, credit_limit",
            (c1,),
        ).fetchone()
        stored = conn.execute(
            "SELECT custom FROM crm.customers__financial WHERE id = %s", (c1,)
        ).fetchone()
    # Expect typed values back, stored as jsonb in the group's row
    assert row == ("0987654321", 50000000)
    assert stored == ({"credit_limit": 50000000},)


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("UPDATE crm_api.customers SET zalo_id = 'abc' WHERE id = %s", "must match"),
        ("UPDATE crm_api.customers SET credit_limit = -1 WHERE id = %s", "must be between"),
        (
            'UPDATE crm.customers__financial SET custom = \'{"credit_limit": "lots"}\''
            " WHERE id = %s",
            "must be of type numeric",
        ),
        (
            'UPDATE crm.customers__contact SET custom = \'{"facebook": "x"}\' WHERE id = %s',
            "customers has no custom field facebook in group contact",
        ),
        (
            "UPDATE crm.customers__contact SET custom = '{\"credit_limit\": 1}' WHERE id = %s",
            "customers has no custom field credit_limit in group contact",
        ),
    ],
)
def test_values_are_validated_on_every_write(org, statement, message):
    with org.rolled_back("rep_a") as conn, pytest.raises(errors.CheckViolation, match=message):
        conn.execute(statement, (org.id("c1"),))


def test_a_custom_field_follows_its_group_s_write_rules(org):
    # c6 is shared to rep_a: contact yes, financial no
    with org.rolled_back("rep_a") as conn:
        conn.execute(
            "UPDATE crm_api.customers SET zalo_id = '123456789' WHERE id = %s", (org.id("c6"),)
        )
        with pytest.raises(errors.InsufficientPrivilege, match=r"group financial .*credit_limit"):
            conn.execute(
                "UPDATE crm_api.customers SET credit_limit = 1 WHERE id = %s", (org.id("c6"),)
            )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("customers", "salary", "bonus"), "customers has no field group salary"),
        (("customers", "contact", "phone"), "customers already has a field named phone"),
        (("customers", "contact", "Bad-Name"), "custom_fields_name_check"),
        (("customers", "contact", "x", "--pattern", "(["), "invalid regular expression"),
        (("customers", "contact", "x", "--type", "date", "--min", "1"), "custom_fields_check"),
    ],
)
def test_bad_definitions_are_refused_and_change_nothing(org, args, message):
    before = columns(org)
    result = field(org, "add", *args)
    # Expect a clear error naming the problem, and the view as it was
    assert result.exit_code != 0
    assert "nothing was changed" in result.output and message in result.output, result.output
    assert columns(org) == before


def test_only_admin_templates_manage_fields_in_sql(org):
    insert = (
        "INSERT INTO crm.custom_fields (table_name, field_group, name, data_type)"
        " VALUES ('contracts', 'financial', 'vat_rate', 'numeric') RETURNING id"
    )
    with org.rolled_back("rep_a") as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(insert)
    with org.rolled_back("adm") as conn:
        added = conn.execute(insert).fetchone()
        logged = conn.execute(
            "SELECT action FROM crm.change_log WHERE table_name = 'custom_fields'"
        ).fetchall()
    # Expect the admin's insert to work (the audit trail of definitions is the DBA's:
    # it belongs to no project, and admins read their projects' history)
    assert added is not None
    assert logged == []


def test_drop_removes_values_and_column_and_keeps_the_history(org):
    assert (
        field(org, "add", "contracts", "financial", "vat_rate", "--type", "numeric").exit_code == 0
    )
    k1 = org.id("k1", "contracts")
    with org.connect_as("rep_a") as conn:
        conn.execute("UPDATE crm_api.contracts SET vat_rate = 8 WHERE id = %s", (k1,))
    assert "vat_rate" in columns(org, "contracts")
    result = field(org, "drop", "contracts", "vat_rate")
    assert result.exit_code == 0, result.output
    with org.db.connect() as conn:
        custom = conn.execute(
            "SELECT custom FROM crm.contracts__financial WHERE id = %s", (k1,)
        ).fetchone()
        history = conn.execute(
            "SELECT table_name, action, old_values -> 'custom' FROM crm.change_log"
            " WHERE table_name IN ('custom_fields', 'contracts__financial')"
            " AND (record_id = %s OR table_name = 'custom_fields') ORDER BY id",
            (k1,),
        ).fetchall()
    # Expect the value gone, the column gone, and the history: defined, set, dropped, purged
    assert "removed its value from 1 row(s)" in result.output
    assert custom == ({},)
    assert "vat_rate" not in columns(org, "contracts")
    assert [(t, a) for t, a, _ in history][-4:] == [
        ("custom_fields", "INSERT"),
        ("contracts__financial", "UPDATE"),
        ("custom_fields", "DELETE"),
        ("contracts__financial", "UPDATE"),
    ]
    assert history[-1][2] == {"vat_rate": 8}


def test_dropping_an_unknown_field_is_a_clear_error(org):
    result = field(org, "drop", "customers", "nothing_here")
    assert result.exit_code != 0
    assert "customers has no custom field 'nothing_here'" in result.output
