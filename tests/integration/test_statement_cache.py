"""crmdb_guard's statement cache (ext/crmdb_guard/scope.c), as the employees.

With the cache installed (the test template has it, as `crmdb guard enable` gives a
server), the row policies call crmdb_guard.<helper> and crm_api's views read the
caller's scope through crmdb_guard.scope_*: each helper runs once per statement. These
tests hold the cache to "once per statement, never an answer from another one": a share
committed meanwhile, the transaction's own writes, a rolled-back subtransaction, a SET
ROLE, all inside one transaction or one statement; and to plain SQL's answers for every
employee and field. The fixture org: rep_c does not see c1 (rep_a's) until it is shared.
"""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from policy_org import SHARE, PolicyOrg, build_policy_org
from psycopg import errors, sql

from crmdb import guard
from crmdb.policies.apply import apply_in
from crmdb.policies.compile import compile_policies
from crmdb.policies.plan import make_plan
from crmdb.testing.cluster import Cluster
from crmdb.testing.scratch import ScratchDatabase

PHONE = "0912345678"
SEEN = "SELECT count(phone) FROM crm_api.customers WHERE id = %s"
SCOPE = "crm_private.api_customers_scope"


@pytest.fixture
def org(db: ScratchDatabase, crmdb_guard: None) -> Iterator[PolicyOrg]:
    org = build_policy_org(db)
    with db.connect() as conn:
        conn.execute("UPDATE crm.customers__contact SET phone = %s", (PHONE,))
    yield org


def seen(conn: psycopg.Connection, customer: int, *, prepare: bool | None = None) -> int:
    """1 when the connection's role reads the customer's phone through crm_api, else 0."""
    row = conn.execute(SEEN, (customer,), prepare=prepare).fetchone()
    assert row is not None
    return int(row[0])


def share(org: PolicyOrg, customer: str, grantee: str) -> dict[str, Any]:
    return {
        "customer": org.id(customer),
        "employee": org.emp(grantee),
        "unit": None,
        "access": "read",
        "by": org.emp("adm"),
        "days": None,
    }


def test_the_policies_and_views_use_the_cache(org: PolicyOrg) -> None:
    with org.db.connect() as conn:
        policies = conn.execute(
            "SELECT string_agg(pg_get_expr(polqual, polrelid), ' ') FROM pg_policy"
            " WHERE polrelid IN ('crm.customers'::regclass, 'crm.contracts'::regclass)"
        ).fetchone()
        view = conn.execute("SELECT pg_get_viewdef('crm_api.customers'::regclass)").fetchone()
        scope = conn.execute(
            "SELECT c.reloptions, obj_description(c.oid, 'pg_class') FROM pg_class AS c"
            " WHERE c.oid = %s::regclass",
            (SCOPE,),
        ).fetchone()
    assert policies is not None and view is not None and scope is not None
    assert "crmdb_guard.subordinate_ids(CURRENT_USER)" in policies[0]
    assert "crm_private.subordinate_ids" not in policies[0]
    assert "crm_private.project_ids" not in policies[0]
    assert "crmdb_guard.scope_has" in view[0] and "crmdb_guard.scope_flag" in view[0]
    assert "crmdb_scope" not in view[0]
    assert scope[0] == ["security_invoker=true"] and scope[1]


def test_a_share_committed_meanwhile_is_seen_by_the_next_statement(org: PolicyOrg) -> None:
    c1 = org.id("c1")
    with org.connect_as("rep_c", autocommit=False) as rep, org.db.connect() as admin:
        assert seen(rep, c1) == 0
        row = admin.execute(SHARE, share(org, "c1", "rep_c")).fetchone()
        assert row is not None
        assert seen(rep, c1) == 1  # the same transaction: read committed
        admin.execute("DELETE FROM crm.shares WHERE id = %s", row)
        assert seen(rep, c1) == 0
        rep.rollback()


def test_a_prepared_statement_reads_each_execution_afresh(org: PolicyOrg) -> None:
    """One generic plan (as psycopg, JDBC and PostgREST reuse them), executed again in
    the same transaction after a share is committed, then removed."""
    c1 = org.id("c1")
    with org.connect_as("rep_c", autocommit=False) as rep, org.db.connect() as admin:
        rep.execute("SET plan_cache_mode = force_generic_plan")
        assert seen(rep, c1, prepare=True) == 0
        row = admin.execute(SHARE, share(org, "c1", "rep_c")).fetchone()
        assert row is not None
        assert seen(rep, c1, prepare=True) == 1
        admin.execute("DELETE FROM crm.shares WHERE id = %s", row)
        assert seen(rep, c1, prepare=True) == 0
        rep.rollback()


def test_repeatable_read_keeps_its_snapshot(org: PolicyOrg) -> None:
    c1 = org.id("c1")
    with org.connect_as("rep_c", autocommit=False) as rep, org.db.connect() as admin:
        rep.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        assert seen(rep, c1) == 0
        admin.execute(SHARE, share(org, "c1", "rep_c"))
        assert seen(rep, c1) == 0  # as plain SQL: the transaction's snapshot
        rep.rollback()
        assert seen(rep, c1) == 1
        rep.rollback()


def _notices_of(org: PolicyOrg, block: sql.Composed) -> list[str]:
    """Runs a DO block as the superuser, rolled back; the notices it raised."""
    got: list[str] = []
    with org.db.connect(autocommit=False) as conn:
        conn.add_notice_handler(lambda d: got.append(d.message_primary or ""))
        conn.execute(block)
        conn.rollback()
    return got


def test_one_statement_sees_its_own_writes_and_their_rollback(org: PolicyOrg) -> None:
    """One DO statement (one start time): reads before a share, after it inside a
    subtransaction, and after that subtransaction rolled back."""
    rep = sql.Identifier(org.role("rep_c"))
    c1 = sql.Literal(org.id("c1"))
    statement = SHARE.removesuffix(" RETURNING id").replace("%(", "{").replace(")s", "}")
    insert = sql.SQL(statement).format(
        **{k: sql.Literal(v) for k, v in share(org, "c1", "rep_c").items()}
    )
    block = sql.SQL(
        """DO $$
        DECLARE a int; b int; c int;
        BEGIN
            SET LOCAL ROLE {rep};
            SELECT count(phone) INTO a FROM crm_api.customers WHERE id = {c1};
            RESET ROLE;
            BEGIN
                {insert};
                SET LOCAL ROLE {rep};
                SELECT count(phone) INTO b FROM crm_api.customers WHERE id = {c1};
                RAISE EXCEPTION 'undo';
            EXCEPTION WHEN raise_exception THEN NULL;
            END;
            SET LOCAL ROLE {rep};
            SELECT count(phone) INTO c FROM crm_api.customers WHERE id = {c1};
            RESET ROLE;
            RAISE NOTICE '% % %', a, b, c;
        END $$"""
    ).format(rep=rep, c1=c1, insert=insert)
    assert _notices_of(org, block) == ["0 1 0"]


def test_a_role_switch_within_a_statement_reads_the_new_role(org: PolicyOrg) -> None:
    block = sql.SQL(
        """DO $$
        DECLARE a int; b int; c int;
        BEGIN
            SET LOCAL ROLE {rep_a};
            SELECT count(phone) INTO a FROM crm_api.customers WHERE id = {c1};
            SET LOCAL ROLE {rep_b};
            SELECT count(phone) INTO b FROM crm_api.customers WHERE id = {c1};
            SET LOCAL ROLE {rep_a};
            SELECT count(phone) INTO c FROM crm_api.customers WHERE id = {c1};
            RESET ROLE;
            RAISE NOTICE '% % %', a, b, c;
        END $$"""
    ).format(
        rep_a=sql.Identifier(org.role("rep_a")),
        rep_b=sql.Identifier(org.role("rep_b")),
        c1=sql.Literal(org.id("c1")),
    )
    assert _notices_of(org, block) == ["1 0 1"]


def test_both_views_in_one_statement(org: PolicyOrg) -> None:
    """Two scope views cached side by side: each view's fields as read alone."""
    joined = (
        "SELECT k.id, c.phone, c.bank_account, k.amount FROM crm_api.contracts AS k"
        " JOIN crm_api.customers AS c ON c.id = k.customer_id ORDER BY k.id"
    )
    apart = (
        "SELECT k.id, (SELECT c.phone FROM crm_api.customers AS c WHERE c.id = k.customer_id),"
        " (SELECT c.bank_account FROM crm_api.customers AS c WHERE c.id = k.customer_id),"
        " k.amount FROM crm_api.contracts AS k ORDER BY k.id"
    )
    for key in ("rep_a", "mgr_hn", "boss"):
        with org.connect_as(key) as conn:
            rows = conn.execute(joined).fetchall()
            assert rows, key
            assert rows == conn.execute(apart).fetchall(), key


def test_the_cache_functions_refuse_what_sql_would(org: PolicyOrg) -> None:
    with org.connect_as("rep_a") as rep:
        with pytest.raises(errors.WrongObjectType, match="not a scope view of crm_private"):
            rep.execute("SELECT crmdb_guard.scope_has('crm.customers'::regclass, 1, 1)")
        with pytest.raises(errors.InvalidParameterValue, match="no column 999"):
            rep.execute("SELECT crmdb_guard.scope_flag(%s::regclass, 999)", (SCOPE,))
        with pytest.raises(errors.InvalidParameterValue, match="of type bigint"):
            rep.execute("SELECT crmdb_guard.scope_id(%s::regclass, 1)", (SCOPE,))
        # A colleague's scope: the helper's own answer (none), cached or not
        boss = org.role("boss")
        cached = rep.execute("SELECT crmdb_guard.subordinate_ids(%s)", (boss,)).fetchone()
        plain = rep.execute("SELECT crm_private.subordinate_ids(%s)", (boss,)).fetchone()
        assert cached == plain == ([],)
    outsider = org.db.role("outsider")
    with org.db.connect() as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(outsider), sql.Literal("crmdb-test-password")
            )
        )
    with org.db.connect_as(outsider) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SELECT crmdb_guard.employee_id_for(current_user)")


def _everything(org: PolicyOrg) -> dict[str, Any]:
    """Every row and field of the crm_api views with field groups, per employee."""
    seen_by: dict[str, Any] = {}
    for key in sorted(org.loaded.roles):
        if not key:
            continue
        with org.connect_as(key) as conn:
            seen_by[key] = [_rows(conn, t) for t in ("customers", "contracts")]
    return seen_by


def _rows(conn: psycopg.Connection, table: str) -> list[tuple[Any, ...]] | str:
    try:
        return conn.execute(f"SELECT * FROM crm_api.{table} ORDER BY id").fetchall()
    except errors.InsufficientPrivilege:
        return "denied"  # a solution without the table (marketing: no contracts)


def _uses_cache(org: PolicyOrg) -> bool:
    with org.db.connect() as conn:
        row = conn.execute(
            "SELECT pg_get_viewdef('crm_api.customers'::regclass) LIKE '%crmdb_guard.scope_%'"
        ).fetchone()
    assert row is not None
    return bool(row[0])


def test_cached_and_plain_sql_agree(org: PolicyOrg, pg_cluster: Cluster) -> None:
    """Every employee reads the same rows and fields with the cache and without it, and
    the plan moves a database between the two when the cache comes or goes."""
    cached = _everything(org)
    assert sum(len(rows) for rows, _ in cached.values()) > 20
    with org.db.connect(autocommit=False) as conn:
        conn.execute("DROP SCHEMA crmdb_guard CASCADE")  # takes the policies with it
        apply_in(conn, compile_policies(org.policies))
        conn.commit()
    assert not _uses_cache(org)
    assert _everything(org) == cached
    assert pg_cluster.guard_library is not None
    with org.db.connect() as conn:
        guard.install_statement_cache(conn, pg_cluster.guard_library)
        assert make_plan(conn, compile_policies(org.policies)).statements
    with org.db.connect(autocommit=False) as conn:
        apply_in(conn, compile_policies(org.policies))
        conn.commit()
    assert _uses_cache(org)
    with org.db.connect() as conn:
        assert make_plan(conn, compile_policies(org.policies)).statements == []
    assert _everything(org) == cached
