"""Writes: changing what one may see into what one could not create, or beyond it.

Each attacker tries on a customer they may update (WRITABLE; marketing first creates
its own): give it away, move it to a project they are not in, take a shared one,
delete without the delete action, and bulk writes that would reach hidden rows.
A write is blocked when it is refused or changes no row.
"""

import pytest
from attack_org import NEVER_USED_ID, Attacker, attacker_session, column, outcome, refused, touched
from psycopg import errors

pytestmark = pytest.mark.attack("writes")

# A customer each attacker may update (None: marketing creates one; gone: none at all).
WRITABLE = {"rep_a": "c1", "mgr_hn": "c2", "mkt": None, "away": "x_away", "gone": "x_gone"}
NEW_OWN = (
    "INSERT INTO crm.customers (project_id, owner_id, full_name)"
    " VALUES (crm_private.project_id('saoviet.crm'), %s, 'probe') RETURNING id"
)
SET = "UPDATE crm.customers SET {} = %s WHERE id = %s"


def writable(attacker: Attacker) -> int:
    key = WRITABLE[attacker.key]
    if key is not None:
        return attacker.org.id(key)
    created = column(attacker.conn, NEW_OWN, (attacker.me,))
    assert len(created) == 1
    return int(created[0])


def blocked(attacker: Attacker, query: str, params: tuple[object, ...]) -> bool:
    try:
        return refused(attacker.conn, query, params) or touched(attacker.conn, query, params) == 0
    except errors.ForeignKeyViolation:  # e.g. a contract out of its customer's project
        return True


def test_give_customer_to_someone_out_of_reach(attacker):
    # rep_c reports to boss: out of every attacker's reach
    assert blocked(
        attacker, SET.format("owner_id"), (attacker.org.emp("rep_c"), writable(attacker))
    )


def test_give_customer_to_nobody(attacker):
    # An unowned customer is one a rep could not have created
    assert blocked(attacker, SET.format("owner_id"), (None, writable(attacker)))


def test_move_customer_to_foreign_project(attacker):
    p2 = attacker.org.superuser("SELECT crm_private.project_id('p2')")[0][0]
    assert blocked(attacker, SET.format("project_id"), (p2, writable(attacker)))


def test_take_edit_shared_customer(attack_org):
    # c6 is rep_c's, shared to rep_a for editing: an edit share does not give it away
    with attacker_session(attack_org, "rep_a") as rep:
        c6 = attack_org.id("c6")
        assert (
            touched(
                rep.conn, "UPDATE crm.customers SET product_interest = 'ok' WHERE id = %s", (c6,)
            )
            == 1
        )
        assert blocked(rep, SET.format("owner_id"), (rep.me, c6))
        assert blocked(rep, SET.format("org_unit_id"), (None, c6))


def test_take_read_shared_customer(attack_org):
    # x_read: c4 (rep_a's) shared to rep_b for reading only
    with attacker_session(attack_org, "rep_b") as rep:
        assert blocked(rep, SET.format("product_interest"), ("edited", attack_org.id("c4")))


def test_delete_without_delete_action(attacker):
    # None of the attackers' templates may delete customers
    assert blocked(attacker, "DELETE FROM crm.customers WHERE id = %s", (writable(attacker),))


def test_delete_hidden_customer(attacker):
    assert blocked(attacker, "DELETE FROM crm.customers WHERE id = %s", (attacker.target,))


def test_bulk_update_reaches_visible_rows_only(attacker):
    changed = column(
        attacker.conn, "UPDATE crm.customers SET product_interest = 'bulk' RETURNING id"
    )
    assert attacker.leaked(changed) == set()


def test_bulk_update_by_id_list_with_hidden_rows(attacker):
    everyone = list(attacker.visible | attacker.hidden)
    changed = column(
        attacker.conn,
        "UPDATE crm.customers SET score = 1 WHERE id = ANY (%s) RETURNING id",
        (everyone,),
    )
    assert attacker.leaked(changed) == set()


def test_bulk_delete_activities(attacker):
    gone = column(attacker.conn, "DELETE FROM crm.activities RETURNING customer_id, employee_id")
    assert attacker.leaked(gone) == set()


def test_update_from_join_with_hidden_rows(attacker):
    changed = column(
        attacker.conn,
        "UPDATE crm.customers AS c SET product_interest = k.title FROM crm.contracts AS k"
        " WHERE k.customer_id = c.id RETURNING c.id",
    )
    assert attacker.leaked(changed) == set()


def test_insert_customer_for_someone_else(attacker):
    query = NEW_OWN.replace(" RETURNING id", "")
    assert refused(attacker.conn, query, (attacker.org.emp("rep_c"),))


def test_insert_customer_into_foreign_project(attacker):
    query = "INSERT INTO crm.customers (project_id, owner_id, full_name) VALUES (%s, %s, 'probe')"
    p2 = attacker.org.superuser("SELECT id FROM crm.projects WHERE code = 'p2'")[0][0]
    assert refused(attacker.conn, query, (p2, attacker.me))


def test_point_contract_at_hidden_customer(attack_org):
    # mgr_hn may update k2 (rep_b's contract): not move it to a customer they cannot see
    with attacker_session(attack_org, "mgr_hn") as mgr:
        query = "UPDATE crm.contracts SET customer_id = %s WHERE id = %s"
        assert blocked(mgr, query, (mgr.target, attack_org.id("k2", "contracts")))


def test_point_activity_at_hidden_customer(attack_org):
    with attacker_session(attack_org, "rep_a") as rep:
        query = "UPDATE crm.activities SET customer_id = %s WHERE id = %s"
        assert blocked(rep, query, (rep.target, attack_org.id("a1", "activities")))


def test_share_customer_shared_to_me(attack_org):
    # c6 is shared to rep_a: shares are handed out by those who may change the customer
    # through their own templates, not through a share
    with attacker_session(attack_org, "rep_a") as rep:
        query = (
            "INSERT INTO crm.shares (customer_id, grantee_employee_id, access, granted_by)"
            " VALUES (%s, %s, 'edit', %s)"
        )
        assert refused(rep.conn, query, (attack_org.id("c6"), attack_org.emp("rep_b"), rep.me))


def test_share_in_someone_elses_name(attack_org):
    with attacker_session(attack_org, "rep_a") as rep:
        query = (
            "INSERT INTO crm.shares (customer_id, grantee_employee_id, access, granted_by)"
            " VALUES (%s, %s, 'read', %s)"
        )
        boss = attack_org.emp("boss")
        assert refused(rep.conn, query, (attack_org.id("c1"), attack_org.emp("rep_b"), boss))


@pytest.mark.parametrize("column_name", ["owner_id", "project_id", "customer_id"])
def test_move_own_contract(attack_org, column_name):
    values = {
        "owner_id": attack_org.emp("rep_b"),
        "project_id": attack_org.superuser("SELECT crm_private.project_id('p2')")[0][0],
        "customer_id": attack_org.id("c2"),
    }
    with attacker_session(attack_org, "rep_a") as rep:
        query = f"UPDATE crm.contracts SET {column_name} = %s WHERE id = %s"
        assert blocked(rep, query, (values[column_name], attack_org.id("k1", "contracts")))


# Scopes that do not bound the owner (issue 8) -------------------------------------
# A criteria scope (call_center's inbound_leads: insert, update) or a project scope
# (admin) reaches rows whoever owns them. Through them an employee must not choose
# who gets a row: new customers are unowned (the routing engine assigns them) or the
# writer's; an update keeps the owner; activities and shares are in the writer's name.

NEW_LEAD = (
    "INSERT INTO crm.customers (project_id, owner_id, full_name, source, stage)"
    " VALUES (%s, %s, 'probe', 'chat', 'lead')"
)


def project(org, code: str) -> int:
    """A project's id as the superuser knows it (crm_private.project_id tells employees
    only their own projects')."""
    return int(org.superuser("SELECT id FROM crm.projects WHERE code = %s", (code,))[0][0])


def test_call_center_inserts_a_lead_owned_by_a_rep(attack_org):
    with attacker_session(attack_org, "cc") as cc:
        # the routing engine must be the one to pick the rep
        assert touched(cc.conn, NEW_LEAD, (project(attack_org, "saoviet.crm"), None)) == 1
        assert refused(
            cc.conn, NEW_LEAD, (project(attack_org, "saoviet.crm"), attack_org.emp("rep_a"))
        )


def test_call_center_gives_an_inbound_lead_to_a_rep(attack_org):
    with attacker_session(attack_org, "cc") as cc:
        c5 = attack_org.id("c5")  # an unowned chat lead: cc may update it
        update = "UPDATE crm.customers SET product_interest = 'ok' WHERE id = %s"
        assert touched(cc.conn, update, (c5,)) == 1
        assert blocked(cc, SET.format("owner_id"), (attack_org.emp("rep_a"), c5))


def test_call_center_takes_an_inbound_lead(attack_org):
    with attacker_session(attack_org, "cc") as cc:
        assert blocked(cc, SET.format("owner_id"), (cc.me, attack_org.id("c5")))


def test_call_center_moves_a_lead_to_a_foreign_project(attack_org):
    p2 = attack_org.superuser("SELECT crm_private.project_id('p2')")[0][0]
    with attacker_session(attack_org, "cc") as cc:
        assert blocked(cc, SET.format("project_id"), (p2, attack_org.id("c5")))
        assert refused(cc.conn, NEW_LEAD, (project(attack_org, "p2"), None))


def test_call_center_moves_a_lead_out_of_the_criteria(attack_org):
    with attacker_session(attack_org, "cc") as cc:
        assert blocked(cc, SET.format("stage"), ("qualified", attack_org.id("c5")))
        assert blocked(cc, SET.format("source"), ("web_form", attack_org.id("c5")))


def test_admin_inserts_a_customer_owned_by_a_rep(attack_org):
    with attacker_session(attack_org, "adm") as adm:
        assert refused(adm.conn, NEW_OWN, (attack_org.emp("rep_b"),))


def test_admin_gives_a_customer_away(attack_org):
    with attacker_session(attack_org, "adm") as adm:
        assert blocked(adm, SET.format("owner_id"), (attack_org.emp("rep_a"), attack_org.id("c2")))
        assert blocked(adm, SET.format("owner_id"), (None, attack_org.id("c2")))


def test_admin_logs_an_activity_in_a_reps_name(attack_org):
    query = (
        "INSERT INTO crm.activities (customer_id, employee_id, kind, subject)"
        " VALUES (%s, %s, 'call', 'probe')"
    )
    with attacker_session(attack_org, "adm") as adm:
        assert refused(adm.conn, query, (attack_org.id("c2"), attack_org.emp("rep_b")))
        a2 = attack_org.id("a2", "activities")
        moved = "UPDATE crm.activities SET employee_id = %s WHERE id = %s"
        assert blocked(adm, moved, (attack_org.emp("rep_a"), a2))


def test_admin_shares_in_a_reps_name(attack_org):
    query = (
        "INSERT INTO crm.shares (customer_id, grantee_employee_id, access, granted_by)"
        " VALUES (%s, %s, 'read', %s)"
    )
    with attacker_session(attack_org, "adm") as adm:
        c2, rep_a = attack_org.id("c2"), attack_org.emp("rep_a")
        assert not refused(adm.conn, query, (c2, rep_a, adm.me))
        assert refused(adm.conn, query, (c2, rep_a, attack_org.emp("rep_b")))


# Who created a row (issue 8) ---------------------------------------------------------------
# created_by (customers) and added_by (campaign audiences) are the inserting employee's,
# whatever the statement says, and employees cannot change them afterwards.

NEW_CREATED_BY = (
    "INSERT INTO {} (project_id, owner_id, full_name, created_by)"
    " VALUES (%s, %s, 'probe', %s) RETURNING created_by"
)


@pytest.mark.parametrize("table", ["crm.customers", "crm_api.customers"])
def test_insert_customer_created_by_someone_else(attacker, table):
    p1 = attacker.org.superuser("SELECT id FROM crm.projects WHERE code = 'saoviet.crm'")[0][0]
    query = NEW_CREATED_BY.format(table)
    found = column(attacker.conn, query, (p1, attacker.me, attacker.org.emp("rep_c")))
    # Expect the row (every attacker but the departed may create customers) to name the
    # attacker as its creator, not rep_c
    assert found == ([] if attacker.key == "gone" else [attacker.me])


@pytest.mark.parametrize("table", ["crm.customers", "crm_api.customers"])
def test_change_created_by(attacker, table):
    customer = writable(attacker)
    query = f"UPDATE {table} SET created_by = %s WHERE id = %s"
    assert blocked(attacker, query, (attacker.org.emp("rep_c"), customer))
    # Nor claim it (or disown it): whichever differs from what it holds
    now = column(attacker.conn, "SELECT created_by FROM crm.customers WHERE id = %s", (customer,))
    assert blocked(attacker, query, (attacker.me if now in ([None], []) else None, customer))
    # Expect the other fields of the same row to stay writable (the departed: none)
    other = f"UPDATE {table} SET product_interest = 'still mine' WHERE id = %s"
    assert touched(attacker.conn, other, (customer,)) == (0 if attacker.key == "gone" else 1)


def test_add_audience_in_someone_elses_name(attack_org):
    query = (
        "INSERT INTO crm.campaign_audiences (campaign_id, customer_id, added_by)"
        " VALUES (%s, %s, %s) RETURNING added_by"
    )
    with attacker_session(attack_org, "mkt") as mkt:
        m1, c5, adm = attack_org.id("m1", "campaigns"), attack_org.id("c5"), attack_org.emp("adm")
        # Expect the row to be mkt's (and so in mkt's own scope), not adm's
        assert column(mkt.conn, query, (m1, c5, adm)) == [mkt.me]
        au1 = attack_org.id("au1", "campaign_audiences")
        moved = "UPDATE crm.campaign_audiences SET added_by = %s WHERE id = %s"
        assert blocked(mkt, moved, (adm, au1))
        status = "UPDATE crm.campaign_audiences SET status = 'failed' WHERE id = %s"
        assert touched(mkt.conn, status, (au1,)) == 1


# A contract is in its customer's project (issue 8) ----------------------------------------

NEW_CONTRACT = (
    "INSERT INTO crm.contracts (customer_id, project_id, owner_id, title)"
    " VALUES (%s, %s, %s, 'probe') RETURNING project_id"
)


def test_contract_in_another_project_than_its_customers(attack_org):
    # Regression: rep_c works in both projects; a contract of c6 (saoviet.crm) could be
    # put in p2, where p2's people saw a contract of a customer they cannot see
    p1, p2 = project(attack_org, "saoviet.crm"), project(attack_org, "p2")
    with attacker_session(attack_org, "rep_c") as rep:
        c6, kx = attack_org.id("c6"), attack_org.id("kx", "contracts")
        assert outcome(rep.conn, NEW_CONTRACT, (c6, p2, rep.me)).startswith(
            "N: crmdb: a contract of customer N is in the customer's project (N), not in"
        )
        assert blocked(rep, "UPDATE crm.contracts SET project_id = %s WHERE id = %s", (p2, kx))
        # Expect the customer's project, given or left out, to work
        assert column(rep.conn, NEW_CONTRACT, (c6, p1, rep.me)) == [p1]
        assert column(rep.conn, NEW_CONTRACT, (c6, None, rep.me)) == [p1]


def test_plant_contract_in_a_hidden_project(attacker):
    # A visible customer (their own where they have one), a project hidden from them
    # (p2) or none at all: the same refusal, and no contract
    customer = attacker.org.id(WRITABLE[attacker.key] or "c1")
    hidden = outcome(
        attacker.conn, NEW_CONTRACT, (customer, project(attacker.org, "p2"), attacker.me)
    )
    absent = outcome(attacker.conn, NEW_CONTRACT, (customer, NEVER_USED_ID, attacker.me))
    assert hidden == absent
    assert "rows" not in hidden


def test_moving_a_customer_takes_its_contracts(attack_org):
    # Legitimate: rep_c may move c6 (their own) to p2, where they also work; its
    # contract kx (and kx's money, field group anchors included) follows it
    p2 = project(attack_org, "p2")
    with attacker_session(attack_org, "rep_c") as rep:
        c6, kx = attack_org.id("c6"), attack_org.id("kx", "contracts")
        assert touched(rep.conn, SET.format("project_id"), (p2, c6)) == 1
        assert column(rep.conn, "SELECT project_id FROM crm.contracts WHERE id = %s", (kx,)) == [p2]
        assert column(
            rep.conn, "SELECT project_id FROM crm.contracts__financial WHERE id = %s", (kx,)
        ) == [p2]
