"""Field groups (policies/fields.yaml) and templates' `fields:`: loading and errors."""

from pathlib import Path

import pytest

from crmdb.policies.fields import CORE, Mask, core_columns
from crmdb.policies.model import PolicyError, load_policies
from crmdb.resources import resource_dir

GROUPS = """\
field_groups:
  customers:
    contact:
      columns: [phone, email, address]
      masks:
        phone: {keep_last: 3}
    financial:
      columns: [bank_account, bank_name, tax_code, financial_notes]
    internal_notes:
      columns: [notes]
  contracts:
    financial:
      columns: [amount, payment_method, bank_account, bank_name]
"""

TEMPLATE = """\
template: rep
description: x
tables:
  customers:
    rows:
      - scope: own
        actions: [select, update]
        fields: {fields}
"""


def write(directory: Path, groups: str = GROUPS, fields: str = "{read: [contact]}") -> None:
    (directory / "fields.yaml").write_text(groups, encoding="utf-8")
    (directory / "rep.yaml").write_text(TEMPLATE.format(fields=fields), encoding="utf-8")


def problems(directory: Path) -> list[tuple[str, int, str]]:
    with pytest.raises(PolicyError) as info:
        load_policies(directory)
    return [(p.path.name, p.line, p.message) for p in info.value.problems]


def test_shipped_groups_load_and_leave_anchors_in_core():
    policies = load_policies(resource_dir("policies"))
    groups = policies.field_groups
    # Expect the seeds' split: contact and financial on customers, money on contracts
    assert set(groups["customers"]) == {"contact", "financial", "internal_notes"}
    assert "amount" in groups["contracts"]["financial"].columns
    assert groups["customers"]["contact"].masks == {"phone": Mask(3)}
    core = core_columns("customers", groups["customers"])
    assert {"id", "owner_id", "project_id", "org_unit_id", "full_name"} <= set(core)
    # ... and masks are not core columns: they stand in for their field
    assert not {"phone", "bank_account", "notes", "phone_mask"} & set(core)


def test_a_scope_names_its_readable_and_writable_groups(tmp_path):
    write(tmp_path, fields="{read: [core, contact, financial], write: [contact]}")
    scope = load_policies(tmp_path).templates["rep"].tables["customers"][0]
    # Expect core implied (dropped), the rest kept as declared
    assert scope.read_groups == {"contact", "financial"}
    assert scope.write_groups == {"contact"}
    assert CORE not in scope.read_groups


def test_scopes_without_fields_read_core_only(tmp_path):
    write(tmp_path, fields="{}")
    scope = load_policies(tmp_path).templates["rep"].tables["customers"][0]
    assert scope.read_groups == frozenset() and scope.write_groups == frozenset()


@pytest.mark.parametrize(
    ("fields", "line", "message"),
    [
        ("{read: [salary]}", 8, "table customers has no field group 'salary'"),
        ("{read: [contact], write: [financial]}", 8, "fields written but not read: financial"),
        ("{read: [contact], hide: [x]}", 8, "unknown key 'hide'"),
        ("[contact]", 8, "'fields' must be {read: [...], write: [...]}"),
    ],
)
def test_template_field_errors_name_file_and_line(tmp_path, fields, line, message):
    write(tmp_path, fields=fields)
    found = problems(tmp_path)
    assert any(f == "rep.yaml" and ln == line and message in m for f, ln, m in found), found


def test_fields_need_select_and_writes_need_a_write_action(tmp_path):
    (tmp_path / "fields.yaml").write_text(GROUPS, encoding="utf-8")
    (tmp_path / "rep.yaml").write_text(
        TEMPLATE.replace("[select, update]", "[delete]").format(
            fields="{read: [contact], write: [contact]}"
        ),
        encoding="utf-8",
    )
    messages = [m for _, _, m in problems(tmp_path)]
    assert any("'fields' needs the select action" in m for m in messages), messages
    assert any("writable fields need the update action" in m for m in messages), messages


def test_writable_fields_need_update_not_only_insert(tmp_path):
    # A group's values are written by updating its row: with insert alone the group
    # would be writable on every row the scope reaches (found by tests/security)
    (tmp_path / "fields.yaml").write_text(GROUPS, encoding="utf-8")
    (tmp_path / "rep.yaml").write_text(
        TEMPLATE.replace("[select, update]", "[select, insert]").format(
            fields="{read: [contact], write: [contact]}"
        ),
        encoding="utf-8",
    )
    assert [(f, ln, m) for f, ln, m in problems(tmp_path)] == [
        ("rep.yaml", 8, "scope own of customers: writable fields need the update action")
    ]


@pytest.mark.parametrize(
    ("groups", "line", "message"),
    [
        (
            GROUPS.replace("[phone, email, address]", "[phone, email, address, fax]"),
            4,
            "crm.customers__contact has no column 'fax' (it holds: phone, email, address)",
        ),
        (
            GROUPS.replace("[phone, email, address]", "[phone, email, address, owner_id]"),
            4,
            "owner_id is a core column",
        ),
        (
            GROUPS.replace("[phone, email, address]", "[phone, address]"),
            4,
            "list every field of crm.customers__contact; missing: email",
        ),
        (
            GROUPS.replace("internal_notes:", "notes:"),
            9,
            "field group customers.notes has no table crm.customers__notes",
        ),
        (
            GROUPS.replace("    internal_notes:\n      columns: [notes]\n", ""),
            2,
            "crm.customers__internal_notes holds field group 'internal_notes'",
        ),
        (GROUPS.replace("keep_last: 3", "keep_last: 30"), 6, "keep_last must be 0..8"),
        (
            GROUPS.replace("phone: {keep", "fax: {keep"),
            6,
            "not in field group 'contact'",
        ),
        (
            GROUPS.replace("phone: {keep", "email: {keep"),
            6,
            "crm.customers has no column email_mask to hold it",
        ),
        (GROUPS.replace("  customers:\n", "  clients:\n", 1), 2, "unknown table 'clients'"),
        (
            GROUPS.replace(
                "    internal_notes:\n      columns: [notes]\n",
                "    core:\n      columns: [notes]\n",
            ),
            9,
            "'core' is every column",
        ),
    ],
)
def test_group_errors_name_file_and_line(tmp_path, groups, line, message):
    write(tmp_path, groups=groups)
    found = problems(tmp_path)
    assert any(f == "fields.yaml" and ln == line and message in m for f, ln, m in found), found


def test_groups_are_declared_once(tmp_path):
    write(tmp_path)
    (tmp_path / "more_fields.yaml").write_text(GROUPS, encoding="utf-8")
    found = problems(tmp_path)
    assert any("already declared in fields.yaml" in m for _, _, m in found), found


def test_a_template_without_tests_loads(tmp_path):
    # Expect `tests:` to be optional (it was once refused as "'tests' must be a list")
    write(tmp_path)
    assert load_policies(tmp_path).templates["rep"].tests == ()
