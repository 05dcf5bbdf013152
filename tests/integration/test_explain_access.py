"""Explaining access: crm.explain_access(table, id) called as the employee, and the
`crmdb explain-access EMPLOYEE ID` command a DBA runs.

One row per template scope or sharing rule that reaches the record, naming the
template, the scope, the actions and why; no rows means no access. The last tests
check it against row-level security itself, for every employee and record.
"""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from policy_org import PolicyOrg, shared_policy_org
from psycopg import errors, sql

from crmdb.cli import main
from crmdb.policies.tables import TABLES

EXPLAIN = "SELECT * FROM crm.explain_access(%s, %s) ORDER BY template, scope"
ALL_CUSTOMER_ACTIONS = ["select", "insert", "update", "export"]
# Tables whose records have an id (explain_access takes one)
# Field groups are explained by crm.explain_fields (tests/integration/test_field_groups.py)
ID_TABLES = sorted(name for name, t in TABLES.items() if "id" in t.columns and not t.parent)
EXPLAINED = (
    "SELECT i FROM unnest(%s::bigint[]) AS i WHERE EXISTS"
    " (SELECT FROM crm.explain_access(%s, i) AS p WHERE 'select' = ANY (p.actions))"
)


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[PolicyOrg]:
    yield from shared_policy_org(scratch)


def explain(
    org: PolicyOrg, key: str, record: str, table: str = "customers"
) -> list[tuple[Any, ...]]:
    """crm.explain_access as the employee, logged in directly."""
    with org.connect_as(key) as conn:
        return conn.execute(EXPLAIN, (table, org.id(record, table))).fetchall()


def cli(org: PolicyOrg, *args: str) -> Result:
    return CliRunner().invoke(main, ["explain-access", *args, "--dsn", org.db.target.conninfo])


def cli_lines(org: PolicyOrg, *args: str, part: int = 0) -> list[str]:
    """One table of the output: the access paths (0) or the field groups (1)."""
    result = cli(org, *args)
    assert result.exit_code == 0, result.output
    return result.output.split("\n\n")[part].splitlines()


# Paths, as the employee (SQL) -------------------------------------------------------


def test_owner_path(org):
    # Expect exactly one path: rep_a owns c1 (sales_rep, scope own)
    assert explain(org, "rep_a", "c1") == [("sales_rep", "own", ALL_CUSTOMER_ACTIONS, "owner")]


def test_manager_chain_is_named(org):
    chain = " -> ".join(org.role(k) for k in ("intern", "rep_a", "mgr_hn"))
    # Expect the subordinates path naming the chain from intern up to mgr_hn
    assert explain(org, "mgr_hn", "x_deep") == [
        ("sales_manager", "subordinates", ALL_CUSTOMER_ACTIONS, f"manager chain: {chain}")
    ]
    # Expect one level more for boss; x_deep is in hcm, outside boss's org unit
    assert explain(org, "boss", "x_deep") == [
        (
            "director",
            "subordinates",
            ALL_CUSTOMER_ACTIONS,
            f"manager chain: {chain} -> {org.role('boss')}",
        )
    ]


def test_several_paths_are_all_listed(org):
    chain = " -> ".join(org.role(k) for k in ("rep_a", "mgr_hn", "boss"))
    # Expect both ways boss reaches c1: rep_a's manager chain, and the org unit hn_sales
    assert explain(org, "boss", "c1") == [
        ("director", "org_unit", ["select", "export"], "org unit hn_sales (sub-units included)"),
        ("director", "subordinates", ALL_CUSTOMER_ACTIONS, f"manager chain: {chain}"),
    ]


def test_share_path_names_share_grantor_and_expiry(org):
    s1 = org.id("s1", "shares")
    # Expect the edit share s1, granted by rep_c, with no end
    assert explain(org, "rep_a", "c6") == [
        ("sales_rep", "shared", ["select", "update"], f"share #{s1} by {org.role('rep_c')} (edit)")
    ]
    until = org.id("x_until", "shares")
    with org.connect_as("rep_c") as conn:
        expires = conn.execute("SELECT expires_at::text FROM crm.shares WHERE id = %s", (until,))
        row = expires.fetchone()
        assert row is not None
        rows = conn.execute(EXPLAIN, ("customers", org.id("c2"))).fetchall()
    # Expect the share x_until, by rep_b, and when it ends
    assert rows == [
        (
            "sales_rep",
            "shared",
            ["select", "update"],
            f"share #{until} by {org.role('rep_b')} (edit until {row[0]})",
        )
    ]


def test_read_shares_are_explained(org):
    # Expect a path for the read share x_read of c4 to rep_b (rep_b sees c4 through RLS)
    assert [r[:3] for r in explain(org, "rep_b", "c4")] == [("sales_rep", "shared", ["select"])]
    # Expect a path for the read share x_unit of c7 to the unit hcm (rep_c works there)
    assert ("sales_rep", "shared") in [r[:2] for r in explain(org, "rep_c", "c7")]


def test_sharing_rule_path(org):
    # Expect the rule, read only, with its condition
    assert explain(org, "care", "c1") == [
        (
            "sharing rule",
            "web_leads_to_care",
            ["select"],
            "rule web_leads_to_care: source = 'web_form'",
        )
    ]


def test_template_and_scope_names(org):
    # Expect the scope names of each template: org_unit, project, criteria (by name), all
    assert explain(org, "boss", "c5") == [
        ("director", "org_unit", ["select", "export"], "org unit hn (sub-units included)")
    ]
    assert explain(org, "mkt", "c1") == [
        ("marketing", "project", ["select", "export"], "project saoviet.crm")
    ]
    assert explain(org, "cc", "c5") == [
        (
            "call_center",
            "inbound_leads",
            ["select", "insert", "update"],
            "matches source IN ('chat', 'call_center') AND stage = 'lead'",
        )
    ]
    assert explain(org, "care", "c4") == [
        (
            "customer_care",
            "bought",
            ["select", "update"],
            "matches stage IN ('customer', 'after_sales')",
        )
    ]
    # Expect rows of other tables too: a contract through its customer, the directory
    assert explain(org, "rep_a", "k1", "contracts") == [
        ("sales_rep", "customer", ["select"], f"customer #{org.id('c1')} is visible"),
        ("sales_rep", "own", ["select", "insert", "update"], "owner"),
    ]
    assert explain(org, "rep_a", "rep_b", "employees") == [
        ("sales_rep", "all", ["select"], "all rows")
    ]


def test_no_access_is_no_rows(org):
    # Expect no rows: rep_a has no way to c2 (rep_b's, not shared to rep_a)
    assert explain(org, "rep_a", "c2") == []
    # Expect no rows: marketing has no contracts at all
    assert explain(org, "mkt", "k1", "contracts") == []
    # Expect no rows for a record that does not exist
    with org.connect_as("rep_a") as conn:
        assert conn.execute(EXPLAIN, ("customers", -1)).fetchall() == []


def test_colleagues_access_cannot_be_explained(org):
    with org.connect_as("rep_a") as conn:
        paths = "SELECT * FROM crm_private.access_paths(%s, 'customers', %s)"
        # Expect rep_a's own paths through the private function
        assert conn.execute(paths, (org.role("rep_a"), org.id("c1"))).fetchall() != []
        # Expect permission denied: rep_a may not ask about rep_b
        with pytest.raises(
            errors.InsufficientPrivilege, match="permission denied to explain the access of role"
        ):
            conn.execute(paths, (org.role("rep_b"), org.id("c2")))
        # Expect permission denied for a manager's role as well
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(paths, (org.role("mgr_hn"), org.id("c1")))


def test_tables_without_id_and_unknown_tables_are_refused_clearly(org):
    with org.connect_as("rep_a") as conn:
        for table in ("project_members", "project_solutions", "no_such_table"):
            # Expect a refusal naming the table and listing the tables that can be asked
            with pytest.raises(errors.InvalidParameterValue, match=f"no table {table} with an id"):
                conn.execute(EXPLAIN, (table, 1)).fetchall()


# The command ----------------------------------------------------------------------


def test_cli_owner_and_header(org):
    lines = cli_lines(org, org.role("rep_a"), str(org.id("c1")))
    # Expect a table: a header and one row for the owner path
    assert lines[0].split() == ["template", "scope", "actions", "why"]
    assert lines[1].split() == [
        "sales_rep",
        "own",
        "select,",
        "insert,",
        "update,",
        "export",
        "owner",
    ]
    assert len(lines) == 2


def test_cli_manager_chain_share_and_rule(org):
    chain = " -> ".join(org.role(k) for k in ("intern", "rep_a", "mgr_hn"))
    [_, row] = cli_lines(org, org.role("mgr_hn"), str(org.id("x_deep")))
    # Expect the subordinates path with the chain
    assert row.startswith("sales_manager") and f"manager chain: {chain}" in row
    [_, row] = cli_lines(org, org.role("rep_a"), str(org.id("c6")))
    # Expect the share, by rep_c
    assert "shared" in row and f"by {org.role('rep_c')} (edit)" in row
    [_, row] = cli_lines(org, org.role("care"), str(org.id("c1")))
    # Expect the sharing rule
    assert row.startswith("sharing rule") and "web_leads_to_care" in row


def test_cli_other_table(org):
    lines = cli_lines(
        org, org.role("mgr_hn"), str(org.id("k2", "contracts")), "--table", "contracts"
    )
    # Expect the contract paths of mgr_hn: through its customer and rep_b below mgr_hn
    assert [line.split()[:2] for line in lines[1:]] == [
        ["sales_manager", "customer"],
        ["sales_manager", "subordinates"],
    ]


def test_cli_field_groups(org):
    lines = cli_lines(org, org.role("rep_a"), str(org.id("c6")), part=1)
    # Expect the groups of c6 rep_a may read and write through the edit share: contact and
    # notes, not the money
    assert [line.split()[:1] + line.split()[-2:] for line in lines] == [
        ["field", "read", "write"],
        ["contact", "yes", "yes"],
        ["financial", "masked)", "no"],
        ["internal_notes", "yes", "yes"],
    ]
    assert "bank_account, bank_name, tax_code, financial_notes" in lines[2]


def test_cli_no_access(org):
    result = cli(org, org.role("rep_a"), str(org.id("c2")))
    # Expect one line saying so, and success: no access is an answer, not an error
    assert result.exit_code == 0, result.output
    assert result.output == f"{org.role('rep_a')}: no access to customers #{org.id('c2')}\n"


def test_cli_unknown_employee(org):
    result = cli(org, org.db.role("nobody"), "1")
    # Expect one error line naming the unknown employee
    assert result.exit_code == 1
    assert result.output.strip() == f'Error: unknown employee "{org.db.role("nobody")}"'


# Consistency with row-level security -------------------------------------------------


def all_ids(conn: psycopg.Connection) -> dict[str, list[int]]:
    """Every record id of every table, read by the superuser."""
    ids = {}
    for table in ID_TABLES:
        query = sql.SQL("SELECT id FROM {} ORDER BY id").format(sql.Identifier("crm", table))
        ids[table] = [r[0] for r in conn.execute(query)]
    return ids


def disagreements(
    conn: psycopg.Connection, org: PolicyOrg, key: str, ids: dict[str, list[int]]
) -> list[str]:
    """Records where RLS (SELECT) and explain_access (a path with select) disagree, for
    the current role of `conn` (inside a transaction)."""
    found = []
    for table in ID_TABLES:
        try:
            with conn.transaction():
                query = sql.SQL("SELECT id FROM {}").format(sql.Identifier("crm", table))
                visible = {r[0] for r in conn.execute(query)}
        except errors.InsufficientPrivilege:
            visible = set()  # no privilege on the table: no row is visible
        explained = {r[0] for r in conn.execute(EXPLAINED, (ids[table], table))}
        for i in sorted(visible ^ explained):
            found.append(
                f"{key} {table}:{org.key(table, i)} rls={i in visible} explain={i in explained}"
            )
    return found


def test_explain_agrees_with_rls_for_every_employee_and_record(org):
    with org.db.connect() as conn:
        ids = all_ids(conn)
    found = []
    for key in sorted(org.loaded.roles):
        with org.connect_as(key, autocommit=False) as conn, conn.transaction(force_rollback=True):
            found += disagreements(conn, org, key, ids)
    # Expect none: what an employee selects is exactly what explain_access explains
    assert found == []


def test_explain_agrees_with_rls_with_edit_shares_only(org):
    """The same check, with every read share turned into an edit share (in a transaction
    that is rolled back), so that the bug above does not hide other disagreements."""
    found = []
    with org.db.connect(autocommit=False) as conn, conn.transaction(force_rollback=True):
        changed = conn.execute("UPDATE crm.shares SET access = 'edit' WHERE access = 'read'")
        assert changed.rowcount == 3  # s2 (expired), x_read, x_unit
        ids = all_ids(conn)  # after the update: it wrote to the change log
        for key in sorted(org.loaded.roles):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(org.role(key))))
            found += disagreements(conn, org, key, ids)
            conn.execute("RESET ROLE")
    # Expect none, for every employee, table and record
    assert found == []
    # Expect the check to have covered every fixture customer and employee
    assert len(ids["customers"]) == 9 and len(ids["employees"]) == 11
