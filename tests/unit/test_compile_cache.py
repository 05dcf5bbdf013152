"""Compiling the shipped templates for crmdb_guard's statement cache (no database)."""

import re

import pytest

from crmdb.policies.apply import load_desired
from crmdb.policies.statement_cache import cached, memoized, reader
from crmdb.policies.vault import HELPER_TYPES, VaultReads

ACCESSOR = re.compile(
    r"crmdb_guard\.(?P<fn>scope_\w+)\('(?P<view>[\w.]+)'::regclass, (?P<slot>\d+)(?:, [\w.]+)?\)"
)
RETURNS = {"scope_flag": "boolean", "scope_id": "bigint", "scope_ids": "bigint[]"}


def test_every_helper_call_of_the_policies_goes_through_the_cache() -> None:
    desired = cached(load_desired())
    assert desired.statement_cache
    texts = [t for p in desired.policies.values() for t in (p.using, p.check) if t]
    for helper in HELPER_TYPES:
        assert not any(f"{helper}(" in t for t in texts), helper
    assert any("crmdb_guard.subordinate_ids(current_user)" in t for t in texts)
    assert cached(desired) is desired  # compiling twice changes nothing


def test_the_views_read_every_scope_column_by_its_slot_and_type() -> None:
    plain = load_desired()
    desired = cached(plain)
    checked = 0
    for name, view in desired.api.items():
        if view.vault is None:
            continue
        before = plain.api[name].vault
        assert before is not None and before.scope_view is None
        assert view.vault.scope_view == f"crm_private.api_{view.table.name}_scope"
        for predicate in view.vault.predicates.values():
            assert "crmdb_scope" not in predicate
            for m in ACCESSOR.finditer(predicate):
                assert m["view"] == view.vault.scope_view
                column, sql_type = view.vault.columns[int(m["slot"]) - 1]
                assert sql_type == RETURNS.get(m["fn"], "bigint[]"), (column, m[0])
                checked += 1
        assert "crmdb_guard.project_ids(current_user" in view.vault.scope
    assert checked > 20


def test_membership_tests_become_binary_searches() -> None:
    reads = VaultReads(
        "SELECT ...",
        {
            "g": "crmdb_scope.crmdb_all1 OR (project_id = ANY (crmdb_scope.crmdb_u2))"
            " AND crmdb_scope.crmdb_h3[pg_catalog.width_bucket(owner_id, crmdb_scope.crmdb_h3)]"
            " = owner_id OR owner_id = crmdb_scope.crmdb_h4"
        },
        (
            ("crmdb_all1", "boolean"),
            ("crmdb_u2", "bigint[]"),
            ("crmdb_h3", "bigint[]"),
            ("crmdb_h4", "bigint"),
        ),
    )
    v = "'crm_private.x_scope'::regclass"
    assert reader(reads, "crm_private.x_scope").predicates["g"] == (
        f"crmdb_guard.scope_flag({v}, 1) OR (crmdb_guard.scope_has({v}, 2, project_id))"
        f" AND crmdb_guard.scope_has({v}, 3, owner_id) OR owner_id = crmdb_guard.scope_id({v}, 4)"
    )


def test_a_search_of_a_scalar_is_refused() -> None:
    reads = VaultReads(
        "SELECT ...", {"g": "id = ANY (crmdb_scope.crmdb_h1)"}, (("crmdb_h1", "bigint"),)
    )
    with pytest.raises(ValueError, match="crmdb_h1 is bigint"):
        reader(reads, "crm_private.x_scope")


def test_only_the_statement_constant_helpers_are_memoized() -> None:
    # prior_* take the row's own values: answers per row, not per statement
    assert memoized("crm_private.project_ids(current_user, 'x')") == (
        "crmdb_guard.project_ids(current_user, 'x')"
    )
    assert memoized("crm_private.prior_customers(id)") == "crm_private.prior_customers(id)"
    assert memoized("crm_private.project_ids_for(x)") == "crm_private.project_ids_for(x)"
