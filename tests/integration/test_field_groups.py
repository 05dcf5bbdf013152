"""Field groups enforced, as the employees (policies/fields.yaml, the shipped templates).

Hidden fields live in side tables whose row policies decide (crm.customers__contact,
__financial, __internal_notes; crm.contracts__financial); employees read and write
through crm_api's views. Each test asserts what an employee may read or write and what
they must not, and the leak paths of issue 5: filtering, sorting, joins, COPY,
RETURNING, errors, the base tables.

Values (set by the superuser; the fixture org, policies/fixture.yaml):
  c1  rep_a's, web form lead   phone PHONE, bank BANK, notes NOTE
  c2  rep_b's (mgr_hn's team)  phone PHONE2, bank BANK
  c5  unowned chat lead, unit hn (the director sees it through his unit, not his team)
  c6  rep_c's, shared to rep_a with edit
  k1  rep_a's contract on c1, k2 rep_b's on c2, kx rep_c's on c6 (rep_a sees it through
      the customer, not as its owner)
Every write test runs in a transaction that is rolled back.
"""

from collections.abc import Iterator

import pytest
from policy_org import PolicyOrg, shared_policy_org
from psycopg import errors

PHONE, PHONE2, BANK, NOTE = "0912345678", "0987654321", "1903 0000 1234", "VIP, call after 5pm"
MASKED = "*******678"
CUSTOMER = "SELECT {} FROM crm_api.customers WHERE id = %s"


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[PolicyOrg]:
    for shared in shared_policy_org(scratch, extras=False):
        c = {k: shared.id(k) for k in ("c1", "c2", "c5", "c6")}
        with shared.db.connect() as conn:
            for key, phone in (("c1", PHONE), ("c2", PHONE2), ("c5", PHONE), ("c6", PHONE2)):
                conn.execute(
                    "UPDATE crm.customers__contact SET phone = %s, email = %s WHERE id = %s",
                    (phone, f"{key}@example.vn", c[key]),
                )
            conn.execute(
                "UPDATE crm.customers__financial SET bank_account = %s WHERE id = ANY (%s)",
                (BANK, list(c.values())),
            )
            conn.execute(
                "UPDATE crm.customers__internal_notes SET notes = %s WHERE id = ANY (%s)",
                (NOTE, list(c.values())),
            )
            conn.execute("UPDATE crm.contracts__financial SET amount = 250000000")
            kx = conn.execute(
                "INSERT INTO crm.contracts (customer_id, project_id, owner_id, title)"
                " SELECT id, project_id, owner_id, 'kx' FROM crm.customers WHERE id = %s"
                " RETURNING id",
                (c["c6"],),
            ).fetchone()
            assert kx is not None
            conn.execute("UPDATE crm.contracts__financial SET amount = 7 WHERE id = %s", kx)
            shared.loaded.ids[("contracts", "kx")] = kx[0]
        yield shared


def read(org: PolicyOrg, key: str, columns: str, customer: str) -> tuple:
    with org.connect_as(key) as conn:
        row = conn.execute(CUSTOMER.format(columns), (org.id(customer),)).fetchone()
    assert row is not None, f"{key} does not see {customer}"
    return tuple(row)


# Reading ------------------------------------------------------------------------------


def test_owner_reads_every_group_of_their_customer(org):
    # Expect rep_a to read c1's contact, financial and internal notes in full
    assert read(org, "rep_a", "phone, email, bank_account, notes", "c1") == (
        PHONE,
        "c1@example.vn",
        BANK,
        NOTE,
    )


def test_shared_customer_shows_contact_and_notes_not_money(org):
    # Expect rep_a's edit share on c6 to show contact and notes, the bank account as NULL
    assert read(org, "rep_a", "phone, email, bank_account, notes", "c6") == (
        PHONE2,
        "c6@example.vn",
        None,
        NOTE,
    )


def test_marketing_reads_contact_fields_only(org):
    # Expect mkt (project scope: contact) to see c2's phone and email, nothing else
    assert read(org, "mkt", "phone, email, bank_account, tax_code, notes", "c2") == (
        PHONE2,
        "c2@example.vn",
        None,
        None,
        None,
    )


def test_director_reads_money_and_a_masked_phone_outside_his_team(org):
    # c5 is in boss's unit (org_unit scope: financial only), not in his team
    assert read(org, "boss", "phone, email, bank_account, notes", "c5") == (
        MASKED,
        None,
        BANK,
        None,
    )
    # ... and in full where his sales_manager scope (subordinates) reaches
    assert read(org, "boss", "phone, bank_account, notes", "c2") == (PHONE2, BANK, NOTE)


def test_sharing_rule_shows_the_fields_it_names(org):
    # web_leads_to_care shares web-form customers (c1) with the care team: contact only
    assert read(org, "care", "phone, bank_account, notes", "c1") == (PHONE, None, None)


def test_contract_money_only_for_its_owner_and_the_allowed(org):
    contract = "SELECT amount FROM crm_api.contracts WHERE id = %s"
    with org.connect_as("rep_a") as conn:
        own = conn.execute(contract, (org.id("k1", "contracts"),)).fetchone()
        through_customer = conn.execute(contract, (org.id("kx", "contracts"),)).fetchone()
    # Expect rep_a to read k1's amount (own), and kx (seen through c6) without it
    assert own == (250000000,)
    assert through_customer == (None,)
    with org.connect_as("mgr_hn") as conn:
        team = conn.execute(contract, (org.id("k2", "contracts"),)).fetchone()
    # Expect the manager, explicitly allowed, to read the team's contract money
    assert team == (250000000,)


def test_marketing_has_no_contracts_at_all(org):
    with org.connect_as("mkt") as conn:
        for table in ("crm_api.contracts", "crm.contracts", "crm.contracts__financial"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM {table}")


# Leak paths ---------------------------------------------------------------------------


def test_filtering_sorting_joining_on_a_hidden_field_sees_only_the_mask(org):
    c5 = org.id("c5")
    with org.connect_as("boss") as conn:
        found = [
            conn.execute(q, (c5,)).fetchall()
            for q in (
                "SELECT id FROM crm_api.customers WHERE id = %s AND phone LIKE '0912%%'",
                "SELECT id FROM crm_api.customers WHERE id = %s AND email IS NOT NULL",
                "SELECT id FROM crm_api.customers WHERE id = %s AND notes LIKE 'VIP%%'",
                "SELECT c.id FROM crm_api.customers AS c"
                " JOIN (VALUES ('0912345678')) AS v (p) ON v.p = c.phone WHERE c.id = %s",
            )
        ]
        ordered = conn.execute(
            "SELECT phone FROM crm_api.customers WHERE id = %s ORDER BY phone", (c5,)
        ).fetchall()
    # Expect no match on the real value, and the mask where the value would be
    assert found == [[], [], [], []]
    assert ordered == [(MASKED,)]


def test_side_tables_read_directly_show_only_what_the_view_shows(org):
    c5 = org.id("c5")
    with org.connect_as("boss") as conn:
        rows = [
            conn.execute(f"SELECT * FROM crm.customers__{g} WHERE id = %s", (c5,)).fetchall()
            for g in ("contact", "internal_notes")
        ]
        # A division by zero on a hidden row would tell it exists: never evaluated
        probe = conn.execute(
            "SELECT 1 / (CASE WHEN phone LIKE '09%%' THEN 0 ELSE 1 END)"
            " FROM crm.customers__contact WHERE id = %s",
            (c5,),
        ).fetchall()
        mask = conn.execute("SELECT phone_mask FROM crm.customers WHERE id = %s", (c5,)).fetchone()
        with pytest.raises(errors.UndefinedColumn):
            conn.execute("SELECT phone FROM crm.customers")
    # Expect no row of the groups boss may not read, and only the mask in the core row
    assert rows == [[], []]
    assert probe == []
    assert mask == (MASKED,)


def test_copy_returns_what_select_returns(org):
    with org.connect_as("mkt") as conn, conn.cursor() as cur:
        query = "COPY (SELECT phone, bank_account, notes FROM crm_api.customers WHERE id = {})"
        with cur.copy(query.format(org.id("c2")) + " TO STDOUT") as copy:
            data = b"".join(bytes(block) for block in copy)
    assert data.decode() == f"{PHONE2}\t\\N\t\\N\n"


def test_returning_shows_the_row_as_the_writer_reads_it(org):
    with org.rolled_back("rep_a") as conn:
        row = conn.execute(
            "UPDATE crm_api.customers SET province = 'Hà Nội' WHERE id = %s"
            " RETURNING province, phone, bank_account",
            (org.id("c6"),),
        ).fetchone()
        conn.rollback()
    # Expect the update through the share, and no bank account in what came back
    assert row == ("Hà Nội", PHONE2, None)


# Writing ------------------------------------------------------------------------------


def test_writing_allowed_fields_through_the_view(org):
    c1 = org.id("c1")
    with org.rolled_back("rep_a") as conn:
        conn.execute(
            "UPDATE crm_api.customers SET phone = '0900000123', bank_account = '42', notes = 'x'"
            " WHERE id = %s",
            (c1,),
        )
        row = conn.execute(CUSTOMER.format("phone, bank_account, notes"), (c1,)).fetchone()
        mask = conn.execute("SELECT phone_mask FROM crm.customers WHERE id = %s", (c1,)).fetchone()
        conn.rollback()
    # Expect the new values, and the stored mask following the phone
    assert row == ("0900000123", "42", "x")
    assert mask == ("*******123",)


@pytest.mark.parametrize(
    ("key", "customer", "assignment", "group"),
    [
        ("rep_a", "c6", "bank_account = '1'", "financial"),  # shared: no money
        ("mkt", "c2", "phone = '1'", "contact"),  # reads contact, writes nothing here
        ("boss", "c5", "notes = 'x'", "internal_notes"),  # cannot even read it
        ("boss", "c5", "phone = '0912345678'", "contact"),  # the mask is not a value
    ],
)
def test_writing_a_field_one_may_not_write_is_a_clear_error(org, key, customer, assignment, group):
    with org.rolled_back(key) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute(
                f"UPDATE crm_api.customers SET {assignment} WHERE id = %s", (org.id(customer),)
            )
        conn.rollback()
    # Expect an error naming the group and its fields
    assert f"may not write customers field group {group} (" in str(info.value)


def test_manager_reads_team_money_but_may_not_change_it(org):
    with org.rolled_back("mgr_hn") as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="field group financial"):
            conn.execute(
                "UPDATE crm_api.contracts SET amount = 1 WHERE id = %s",
                (org.id("k2", "contracts"),),
            )
        conn.rollback()


def test_inserting_through_the_view(org):
    with org.rolled_back("cc") as conn:
        # The call centre takes a chat lead with its phone (contact: written)
        row = conn.execute(
            "INSERT INTO crm_api.customers (project_id, full_name, source, phone)"
            " VALUES (crm_private.project_id('saoviet.crm'), 'Khách chat', 'chat', '0911222333')"
            " RETURNING stage, phone, bank_account",
        ).fetchone()
        # ... but not a bank account
        with pytest.raises(errors.InsufficientPrivilege, match="field group financial"):
            conn.execute(
                "INSERT INTO crm_api.customers (project_id, full_name, source, bank_account)"
                " VALUES (crm_private.project_id('saoviet.crm'), 'Khách chat 2', 'chat', '1')"
            )
        conn.rollback()
    # Expect the table's defaults (stage lead) and the phone back, no money
    assert row == ("lead", "0911222333", None)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE crm.customers__contact SET id = id + 1000000 WHERE id = %s",
        "UPDATE crm.customers__contact SET owner_id = NULL WHERE id = %s",
        "UPDATE crm.customers__contact SET project_id = project_id + 1 WHERE id = %s",
        "UPDATE crm.customers SET phone_mask = '*' WHERE id = %s",
    ],
)
def test_copies_and_masks_are_crmdb_s_to_write(org, statement):
    with org.rolled_back("rep_a") as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="kept by crmdb"):
            conn.execute(statement, (org.id("c1"),))
        conn.rollback()


def test_employees_cannot_create_or_delete_group_rows(org):
    with org.rolled_back("adm") as conn:
        for statement in (
            "INSERT INTO crm.customers__contact (id, project_id) VALUES (%s, 1)",
            "DELETE FROM crm.customers__contact WHERE id = %s",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement, (org.id("c1"),))
            conn.rollback()


def test_groups_follow_their_customer_to_a_new_owner(org):
    c2 = org.id("c2")
    with org.db.connect(autocommit=False) as admin:
        admin.execute(
            "UPDATE crm.customers SET owner_id = %s WHERE id = %s", (org.emp("rep_a"), c2)
        )
        admin.commit()
    try:
        # Expect rep_a, c2's new owner, to read its money and notes right away
        assert read(org, "rep_a", "bank_account, notes", "c2") == (BANK, NOTE)
    finally:
        with org.db.connect() as admin:
            admin.execute(
                "UPDATE crm.customers SET owner_id = %s WHERE id = %s", (org.emp("rep_b"), c2)
            )
    # ... and rep_b none of it while it was not theirs? (restored: theirs again)
    assert read(org, "rep_b", "bank_account", "c2") == (BANK,)


def test_explain_fields_answers_with_the_employee_s_own_policies(org):
    with org.connect_as("rep_a") as conn:
        rows = conn.execute(
            "SELECT field_group, readable, writable FROM crm.explain_fields('customers', %s)",
            (org.id("c6"),),
        ).fetchall()
    assert rows == [
        ("contact", True, True),
        ("financial", False, False),
        ("internal_notes", True, True),
    ]


def test_the_helpers_the_views_binary_search_return_sorted_ids(org):
    # crm_api tests membership in these helpers' ids with width_bucket (a binary
    # search, crmdb/policies/vault.py): expect them ascending, without NULLs or repeats
    helpers = (
        "crm_private.subordinate_ids(%(role)s)",
        "crm_private.org_unit_ids(%(role)s, true)",
        "crm_private.org_unit_ids(%(role)s, false)",
        "crm_private.shared_customer_ids(%(role)s, false)",
        "crm_private.shared_customer_ids(%(role)s, true)",
    )
    longest = 0
    with org.db.connect() as conn:
        for key in org.loaded.roles:
            for helper in helpers:
                row = conn.execute(f"SELECT {helper}", {"role": org.role(key)}).fetchone()
                assert row is not None
                ids = row[0]
                assert ids == sorted(set(ids)), f"{helper} for {key}: {ids}"
                longest = max(longest, len(ids))
    assert longest >= 3  # the fixture has a subtree to sort
