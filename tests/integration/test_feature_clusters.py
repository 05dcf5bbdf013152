"""Feature clusters (issue 5), as the employees: each solution's tables and reports are
granted only to its templates (and management's), so marketing holds no privilege on
contracts and sales none on campaigns; within a solution the row policies decide.

The fixture org (policies/fixture.yaml, without the policy_org extras):
  mkt   marketing in saoviet.crm: sees every customer of it (c1 c2 c4 c5 c6 c7), not c3 (p2)
  g1    mkt's segment; m1 mkt's email campaign on it; m2 adm's SMS campaign (saoviet.crm);
        m3 an unowned campaign in p2
  au1   c1 in m1's audience, added by mkt; au2 c2 in m1's, added by adm
  boss  director: the pipeline report; contract money of his team (sales_manager), not
        of kc, an unowned contract on c5 he sees through his org unit (added here)
Writes run in transactions that are rolled back unless a test says otherwise.
"""

from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from policy_org import PolicyOrg, build_policy_org, shared_policy_org
from psycopg import errors

from crmdb import migrate
from crmdb.policies.apply import load_desired
from crmdb.policies.compile import template_role
from crmdb.policies.plan import make_plan

AMOUNT, HIDDEN_AMOUNT = Decimal(100), Decimal(999)
NEW_CAMPAIGN = (
    "INSERT INTO crm_api.campaigns (project_id, owner_id, name, channel)"
    " VALUES (crm_private.project_id(%s), crm.current_employee_id(), %s, 'email') RETURNING id"
)
ADD_AUDIENCE = (
    "INSERT INTO crm_api.campaign_audiences (campaign_id, customer_id, added_by)"
    " VALUES (%s, %s, crm.current_employee_id()) RETURNING id, project_id, status::text"
)
REPORT = (
    "SELECT coalesce(sum(customers), 0), sum(open_amount), sum(won_amount),"
    " sum(hidden_amounts), sum(open_contracts + won_contracts) FROM crm.report_pipeline()"
)


@pytest.fixture(scope="module")
def org(scratch) -> Iterator[PolicyOrg]:
    for shared in shared_policy_org(scratch, extras=False):
        with shared.db.connect() as conn:
            conn.execute("UPDATE crm.contracts__financial SET amount = %s", (AMOUNT,))
            kc = conn.execute(
                "INSERT INTO crm.contracts (customer_id, project_id, title)"
                " SELECT id, project_id, 'kc' FROM crm.customers WHERE id = %s RETURNING id",
                (shared.id("c5"),),
            ).fetchone()
            assert kc is not None
            conn.execute(
                "UPDATE crm.contracts__financial SET amount = %s WHERE id = %s",
                (HIDDEN_AMOUNT, kc[0]),
            )
            shared.loaded.ids[("contracts", "kc")] = kc[0]
        yield shared


def keys(org: PolicyOrg, conn: psycopg.Connection, table: str) -> set[str]:
    return org.keys(table, [r[0] for r in conn.execute(f"SELECT id FROM crm_api.{table}")])


# Marketing works its campaigns -------------------------------------------------------


def test_marketing_creates_a_campaign_and_adds_customers_it_sees(org):
    with org.rolled_back("mkt") as conn:
        row = conn.execute(NEW_CAMPAIGN, ("saoviet.crm", "Tet 2027")).fetchone()
        assert row is not None
        campaign = row[0]
        added = [conn.execute(ADD_AUDIENCE, (campaign, org.id(c))).fetchone() for c in ("c5", "c7")]
        project = conn.execute("SELECT crm_private.project_id('saoviet.crm')").fetchone()
        # Expect both customers queued, in the campaign's (and the customers') project
        assert [(p, s) for _, p, s in added] == [(project[0], "queued")] * 2
        # Expect mkt to read the audience back, and the change in the audit trail
        assert org.keys(
            "customers",
            [
                r[0]
                for r in conn.execute(
                    "SELECT customer_id FROM crm.campaign_audiences WHERE campaign_id = %s",
                    (campaign,),
                )
            ],
        ) == {"c5", "c7"}
    with org.db.connect() as conn:
        # (rolled back: nothing stays)
        assert conn.execute("SELECT count(*) FROM crm.campaigns").fetchone() == (3,)


def test_marketing_changes_are_audited_with_their_project(org):
    with org.connect_as("mkt", autocommit=False) as conn:
        conn.execute(
            "UPDATE crm_api.campaigns SET status = 'paused' WHERE id = %s",
            (org.id("m1", "campaigns"),),
        )
        txid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        conn.commit()
    try:
        with org.db.connect() as conn:
            row = conn.execute(
                "SELECT table_name, changed_fields, actor_employee_id,"
                " project_id = crm_private.project_id('saoviet.crm')"
                " FROM crm.change_log WHERE txid::text = %s",
                txid,
            ).fetchall()
        # Expect one audit row: the campaign's status, by mkt, in saoviet.crm
        assert row == [("campaigns", ["status"], org.emp("mkt"), True)]
    finally:
        with org.db.connect() as conn:
            conn.execute(
                "UPDATE crm.campaigns SET status = 'draft' WHERE id = %s",
                (org.id("m1", "campaigns"),),
            )


def test_marketing_cannot_add_a_customer_it_cannot_see(org):
    m1 = org.id("m1", "campaigns")
    for customer in (org.id("c3"), 10**9):  # c3 is in p2; the other does not exist
        # Expect the row policies to refuse a hidden and a missing customer alike
        with (
            org.rolled_back("mkt") as conn,
            pytest.raises(errors.InsufficientPrivilege, match="row-level security"),
        ):
            conn.execute(ADD_AUDIENCE, (m1, customer))


def test_marketing_cannot_change_what_others_added_or_own(org):
    with org.rolled_back("mkt") as conn:
        # Expect 0 rows: m2 is adm's campaign, au2 adm's audience row (mkt reads both)
        assert keys(org, conn, "campaigns") == {"m1", "m2"}
        for table, key in (("campaigns", "m2"), ("campaign_audiences", "au2")):
            cur = conn.execute(
                f"UPDATE crm_api.{table} SET updated_at = now() WHERE id = %s",
                (org.id(key, table),),
            )
            assert cur.rowcount == 0, table
            cur = conn.execute(f"DELETE FROM crm_api.{table} WHERE id = %s", (org.id(key, table),))
            assert cur.rowcount == 0, table


def test_marketing_cannot_give_its_campaign_away(org):
    # Expect the new row refused: own scope only
    with (
        org.rolled_back("mkt") as conn,
        pytest.raises(errors.InsufficientPrivilege, match="row-level security"),
    ):
        conn.execute(
            "UPDATE crm_api.campaigns SET owner_id = %s WHERE id = %s",
            (org.emp("adm"), org.id("m1", "campaigns")),
        )


def test_marketing_cannot_reach_another_projects_campaigns(org):
    m3 = org.id("m3", "campaigns")
    with org.rolled_back("mkt") as conn:
        # Expect m3 (p2) invisible, unchangeable, and no campaign of mkt's in p2
        assert conn.execute(
            "SELECT count(*) FROM crm_api.campaigns WHERE id = %s", (m3,)
        ).fetchone() == (0,)
        assert (
            conn.execute("UPDATE crm.campaigns SET name = 'x' WHERE id = %s", (m3,)).rowcount == 0
        )
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(NEW_CAMPAIGN, ("p2", "Elsewhere"))
    # Expect m3's audience closed to mkt, even for a customer mkt sees: refused by the
    # policies (a campaign mkt cannot see), as a campaign that does not exist would be
    with org.rolled_back("mkt") as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(ADD_AUDIENCE, (m3, org.id("c1")))


def test_a_campaign_targets_a_segment_of_its_own_project(org):
    with org.db.connect() as conn:
        row = conn.execute(
            "INSERT INTO crm.segments (project_id, name, description)"
            " VALUES (crm_private.project_id('p2'), 'p2 leads', 'p2 leads') RETURNING id"
        ).fetchone()
    assert row is not None
    try:
        for segment in (row[0], 10**9):  # another project's; a missing one
            # Expect the same error for both: nothing learnt about p2 (the policies refuse
            # a segment mkt cannot see before the foreign key is asked)
            with (
                org.rolled_back("mkt") as conn,
                pytest.raises(errors.InsufficientPrivilege, match="row-level security"),
            ):
                conn.execute(
                    "UPDATE crm_api.campaigns SET segment_id = %s WHERE id = %s",
                    (segment, org.id("m1", "campaigns")),
                )
    finally:
        with org.db.connect() as conn:
            conn.execute("DELETE FROM crm.segments WHERE id = %s", row)


def test_explain_access_names_the_marketing_paths(org):
    with org.connect_as("mkt") as conn:
        paths = conn.execute(
            "SELECT template, scope FROM crm.explain_access('campaigns', %s) ORDER BY 2",
            (org.id("m1", "campaigns"),),
        ).fetchall()
    # Expect m1 through mkt's project and own scopes
    assert paths == [("marketing", "own"), ("marketing", "project")]


# No privilege at all on another solution's tables -----------------------------------

SALES_TABLES = ("crm.contracts", "crm_api.contracts", "crm.contracts__financial")
MARKETING_TABLES = (
    "crm.campaigns",
    "crm_api.campaigns",
    "crm.segments",
    "crm_api.segments",
    "crm.campaign_audiences",
    "crm_api.campaign_audiences",
)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT count(*) FROM {}",
        "SELECT 1 FROM {} WHERE false",
        "UPDATE {} SET id = id WHERE false",
        "DELETE FROM {} WHERE false",
    ],
    ids=["select", "select nothing", "update", "delete"],
)
@pytest.mark.parametrize("table", SALES_TABLES)
def test_marketing_has_no_privilege_on_contracts(org, table, statement):
    # Expect permission denied, not an empty answer: the table is not marketing's
    with (
        org.connect_as("mkt") as conn,
        pytest.raises(errors.InsufficientPrivilege, match="permission denied"),
    ):
        conn.execute(statement.format(table))


def test_marketing_cannot_insert_a_contract(org):
    with (
        org.rolled_back("mkt") as conn,
        pytest.raises(errors.InsufficientPrivilege, match="permission denied"),
    ):
        conn.execute(
            "INSERT INTO crm.contracts (customer_id, project_id, title)"
            " VALUES (%s, crm_private.project_id('saoviet.crm'), 'x')",
            (org.id("c1"),),
        )


@pytest.mark.parametrize("key", ["rep_a", "mgr_hn", "care", "cc"])
@pytest.mark.parametrize("table", MARKETING_TABLES)
def test_sales_templates_have_no_privilege_on_marketing(org, key, table):
    # Expect permission denied for every sales template
    with (
        org.connect_as(key) as conn,
        pytest.raises(errors.InsufficientPrivilege, match="permission denied"),
    ):
        conn.execute(f"SELECT count(*) FROM {table}")


def test_template_roles_hold_grants_only_in_their_clusters(org):
    with org.db.connect() as conn:
        grants = conn.execute(
            "SELECT DISTINCT grantee::text, table_name::text"
            " FROM information_schema.role_table_grants"
            " WHERE table_schema IN ('crm', 'crm_api') AND grantee::text LIKE 'crmdb\\_tpl\\_%'"
        ).fetchall()
    held: dict[str, set[str]] = {}
    for role, table in grants:
        held.setdefault(role, set()).add(table)
    marketing = {"campaigns", "segments", "campaign_audiences"}
    sales = {"contracts", "contracts__financial"}
    # Expect marketing without sales tables, every sales template without marketing's
    assert not held[template_role("marketing")] & sales
    assert held[template_role("marketing")] >= marketing
    for name in ("sales_rep", "sales_manager", "customer_care", "call_center"):
        assert not held[template_role(name)] & marketing, name


# The management report ---------------------------------------------------------------


def test_director_reads_the_pipeline_with_money_only_where_allowed(org):
    with org.connect_as("boss") as conn:
        customers, open_amount, won_amount, hidden, contracts = conn.execute(REPORT).fetchone()
        seen = conn.execute("SELECT count(*) FROM crm.customers").fetchone()
    # Expect every customer boss sees, counted once
    assert seen is not None and customers == seen[0]
    # k1, k2 open and k4 won are his team's (financial); kc on c5 he sees without it:
    # counted as a contract with a hidden amount, its 999 in no sum
    assert (open_amount, won_amount, hidden, contracts) == (2 * AMOUNT, AMOUNT, 1, 4)


def test_admin_reads_every_amount_of_the_project(org):
    with org.connect_as("adm") as conn:
        _, open_amount, won_amount, hidden, contracts = conn.execute(REPORT).fetchone()
    # Expect kc's amount too: admin reads every contract's financial group
    assert (open_amount, won_amount, hidden, contracts) == (
        2 * AMOUNT + HIDDEN_AMOUNT,
        AMOUNT,
        0,
        4,
    )


def test_report_rows_carry_names_and_stages(org):
    with org.connect_as("boss") as conn:
        rows = conn.execute(
            "SELECT project_code, stage::text, owner_name, customers FROM crm.report_pipeline()"
            " WHERE owner_id = %s",
            (org.emp("rep_a"),),
        ).fetchall()
    # Expect rep_a's customers by stage: c1 (lead) and c4 (after_sales)
    assert sorted(rows) == [
        ("saoviet.crm", "after_sales", "rep_a", 1),
        ("saoviet.crm", "lead", "rep_a", 1),
    ]


@pytest.mark.parametrize("key", ["mkt", "rep_a", "mgr_hn", "care", "cc"])
def test_the_report_is_managements(org, key):
    # Expect permission denied for the function itself
    with (
        org.connect_as(key) as conn,
        pytest.raises(errors.InsufficientPrivilege, match="permission denied for function"),
    ):
        conn.execute("SELECT * FROM crm.report_pipeline()")


# plan / apply ------------------------------------------------------------------------


def test_apply_leaves_nothing_to_do_and_repairs_report_grants(org):
    desired = load_desired()
    director, rep = template_role("director"), template_role("sales_rep")
    with org.db.connect(autocommit=False) as conn:
        # Expect a second apply to have nothing to do
        assert make_plan(conn, desired).statements == []
        conn.execute(f"REVOKE EXECUTE ON FUNCTION crm.report_pipeline() FROM {director}")
        conn.execute(f"GRANT EXECUTE ON FUNCTION crm.report_pipeline() TO {rep}")
        plan = make_plan(conn, desired)
        # Expect the drift undone, exactly
        assert plan.statements == [
            f"REVOKE EXECUTE ON FUNCTION crm.report_pipeline() FROM {rep};",
            f"GRANT EXECUTE ON FUNCTION crm.report_pipeline() TO {director};",
        ]
        for statement in plan.statements:
            conn.execute(statement)
        assert make_plan(conn, desired).statements == []
        conn.rollback()


# Migration 0010 rolls back under applied templates ---------------------------------


def test_rollback_of_0010_with_templates_applied_and_rows(scratch):
    db = scratch.migrated()
    try:
        build_policy_org(db, extras=False)  # crm_api views, policies, rows, report grants
        # Expect 0010 (after the migrations that follow it) to roll back past its
        # generated views, policies and rows ...
        ids = [state.id for state in migrate.status(db.target)]
        since = ids[ids.index("0010.feature-clusters") :]
        assert migrate.rollback(db.target, len(since)) == since[::-1]
        with db.connect() as conn:
            left = conn.execute(
                "SELECT count(*) FROM pg_class WHERE relname LIKE ANY"
                " (ARRAY['campaign%', 'segment%'])"
            ).fetchone()
        assert left == (0,)
        # ... and to apply again
        assert migrate.apply(db.target) == since
    finally:
        db.drop()
