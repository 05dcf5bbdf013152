"""Feature clusters: probing the marketing tables (migration 0010) through their keys.

Campaigns point at a segment of their project, audience rows at a campaign of their
customer's project (foreign keys). A row that points at a hidden segment, campaign,
customer or project must be refused exactly as one that points at nothing: otherwise
the foreign key's error tells "exists" from "does not exist", and a row can be planted
on something the writer cannot see. Each attempt compares the two (`outcome`) and checks
that nothing was written; marketing then does the same with its own rows (it works).

With the shipped templates every marketer sees the segments and campaigns of their
projects, so the same-project case is attacked with a narrower marketing template
(`narrow`: segments and campaigns only their own), in an org of its own.
"""

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from attack_org import NEVER_USED_ID, Attacker, attacker_session, column, outcome
from policy_org import PolicyOrg, build_policy_org, policy_dir

from crmdb.testing.scratch import ScratchFactory

pytestmark = pytest.mark.attack("feature clusters")

NEW_CAMPAIGN = (
    "INSERT INTO crm.campaigns (project_id, owner_id, name, channel, segment_id)"
    " VALUES (%s, %s, 'probe', 'email', %s) RETURNING id"
)
NEW_AUDIENCE = (
    "INSERT INTO crm.campaign_audiences (campaign_id, customer_id) VALUES (%s, %s) RETURNING id"
)


def p1(attacker: Attacker) -> int:
    return int(
        attacker.org.superuser("SELECT id FROM crm.projects WHERE code = 'saoviet.crm'")[0][0]
    )


def p2(attacker: Attacker) -> int:
    return int(attacker.org.superuser("SELECT id FROM crm.projects WHERE code = 'p2'")[0][0])


def same_answer(conn: psycopg.Connection, query: str, hidden: tuple, absent: tuple) -> None:
    """The hidden row and the missing one teach the same (a write that went through
    would answer "1 rows" against the missing one's error)."""
    assert outcome(conn, query, hidden) == outcome(conn, query, absent)


# Shipped templates: what is hidden is in another project -------------------------------


def test_campaign_in_hidden_project(attacker):
    conn = attacker.conn
    same_answer(
        conn, NEW_CAMPAIGN, (p2(attacker), attacker.me, None), (NEVER_USED_ID, attacker.me, None)
    )


def test_campaign_on_hidden_segment(attacker):
    g3 = attacker.org.id("g3", "segments")  # p2's
    params = (p1(attacker), attacker.me)
    same_answer(attacker.conn, NEW_CAMPAIGN, (*params, g3), (*params, NEVER_USED_ID))


def test_point_own_campaign_at_hidden_segment(attacker):
    query = "UPDATE crm.campaigns SET segment_id = %s WHERE owner_id = %s RETURNING id"
    g3 = attacker.org.id("g3", "segments")
    same_answer(attacker.conn, query, (g3, attacker.me), (NEVER_USED_ID, attacker.me))


def test_audience_on_hidden_campaign(attacker):
    m3 = attacker.org.id("m3", "campaigns")  # p2's
    customer = attacker.org.id("c1")  # seen by rep_a, mkt and mgr_hn
    same_answer(attacker.conn, NEW_AUDIENCE, (m3, customer), (NEVER_USED_ID, customer))


def test_audience_of_hidden_customer(attacker):
    m1 = attacker.org.id("m1", "campaigns")
    same_answer(attacker.conn, NEW_AUDIENCE, (m1, attacker.target), (m1, NEVER_USED_ID))


def test_marketing_still_builds_its_campaigns(attack_org):
    # What the attempts above refuse, done right: a campaign on a segment of the project,
    # an audience of a customer mkt sees on a campaign of the same project
    with attacker_session(attack_org, "mkt") as mkt:
        g1 = attack_org.id("g1", "segments")
        made = column(mkt.conn, NEW_CAMPAIGN, (p1(mkt), mkt.me, g1))
        assert len(made) == 1
        added = column(mkt.conn, NEW_AUDIENCE, (made[0], attack_org.id("c5")))
        assert len(added) == 1
        moved = "UPDATE crm.campaigns SET segment_id = NULL WHERE id = %s RETURNING id"
        assert column(mkt.conn, moved, (made[0],)) == made


# A narrower template: what is hidden is in the same project -----------------------------

NARROW = {
    "marketing.yaml": [
        ("  segments:\n    rows:\n      - scope: project\n        actions: [select]\n",
         "  segments:\n    rows:\n"),
        ("  campaigns:\n    rows:\n      - scope: project\n        actions: [select]\n",
         "  campaigns:\n    rows:\n"),
    ]
}  # fmt: skip


@pytest.fixture(scope="module")
def narrow(
    scratch: ScratchFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PolicyOrg]:
    """The fixture org where marketers see only their own segments and campaigns, and
    g2, adm's segment in saoviet.crm (hidden from mkt, as m2 is)."""
    database = scratch.migrated()
    try:
        org = build_policy_org(
            database, policy_dir(Path(tmp_path_factory.mktemp("narrow")), NARROW)
        )
        with database.connect() as conn:
            row = conn.execute(
                "INSERT INTO crm.segments (project_id, owner_id, name, description)"
                " VALUES (crm_private.project_id('saoviet.crm'), %s, 'g2', 'adm''s') RETURNING id",
                (org.emp("adm"),),
            ).fetchone()
            assert row is not None
            org.loaded.ids[("segments", "g2")] = int(row[0])
        yield org
    finally:
        database.drop()


def project(org: PolicyOrg, code: str) -> int:
    with org.db.connect() as conn:
        row = conn.execute("SELECT id FROM crm.projects WHERE code = %s", (code,)).fetchone()
    assert row is not None
    return int(row[0])


def test_narrow_marketer_sees_only_own(narrow):
    with narrow.rolled_back("mkt") as conn:
        # The premise: g2 and m2 are in mkt's project and hidden from mkt
        assert narrow.visible(conn, "segments") == {"g1"}
        assert narrow.visible(conn, "campaigns") == {"m1"}


def test_campaign_on_hidden_segment_of_own_project(narrow):
    # Regression (issue 8): the foreign key (segment_id, project_id) accepted a hidden
    # segment of the same project (a campaign planted on it) and refused a missing one
    with narrow.rolled_back("mkt") as conn:
        params = (project(narrow, "saoviet.crm"), narrow.emp("mkt"))
        hidden = outcome(conn, NEW_CAMPAIGN, (*params, narrow.id("g2", "segments")))
        absent = outcome(conn, NEW_CAMPAIGN, (*params, NEVER_USED_ID))
        assert hidden == absent
        assert "rows" not in hidden  # an error, not a row
        # Expect the own segment to work as before
        assert outcome(conn, NEW_CAMPAIGN, (*params, narrow.id("g1", "segments"))) == "N rows"


def test_point_own_campaign_at_hidden_segment_of_own_project(narrow):
    with narrow.rolled_back("mkt") as conn:
        query = "UPDATE crm.campaigns SET segment_id = %s WHERE id = %s RETURNING id"
        m1 = narrow.id("m1", "campaigns")
        hidden = outcome(conn, query, (narrow.id("g2", "segments"), m1))
        absent = outcome(conn, query, (NEVER_USED_ID, m1))
        assert hidden == absent
        assert outcome(conn, query, (None, m1)) == "N rows"


def test_audience_on_hidden_campaign_of_own_project(narrow):
    # Regression (issue 8): the foreign key (campaign_id, project_id) accepted m2, adm's
    # campaign mkt cannot see, and refused a missing one
    with narrow.rolled_back("mkt") as conn:
        c5 = narrow.id("c5")
        hidden = outcome(conn, NEW_AUDIENCE, (narrow.id("m2", "campaigns"), c5))
        absent = outcome(conn, NEW_AUDIENCE, (NEVER_USED_ID, c5))
        assert hidden == absent
        assert "rows" not in hidden
        assert outcome(conn, NEW_AUDIENCE, (narrow.id("m1", "campaigns"), c5)) == "N rows"
