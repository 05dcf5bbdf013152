"""The generated policy text for the shipped templates (no database needed)."""

import re

from crmdb.policies.apply import load_desired
from crmdb.policies.model import PolicyError, load_policies
from crmdb.policies.tables import TABLES

PROBE = "EXISTS (SELECT FROM crm.customers AS c WHERE c.id = "


def test_customer_probe_appears_once_per_expression():
    for (_, name), policy in load_desired().policies.items():
        for expr in (policy.using, policy.check):
            # Expect the "customer visible" probe at most once for the new row: a second
            # copy would cost a second primary-key probe per row
            assert expr is None or expr.count(f"{PROBE}{name.split('__')[0]}.") <= 1, name


def test_moving_through_the_customer_scope_checks_the_old_rows_customer():
    policy = load_desired().policies[("crm.shares", "shares__admin__customer__update")]
    assert policy.check is not None
    # Expect the old row's customer (prior) inside the move check, not the new row's
    moved = policy.check[policy.check.index("crm_private.prior_shares") :]
    assert f"{PROBE}prior.customer_id)" in moved
    assert f"{PROBE}shares.customer_id)" not in moved


def test_customer_scope_is_not_offered_on_customers_itself():
    # Expect "rows of customers I can see" only on tables that point at a customer
    assert "customer" not in TABLES["customers"].scopes()
    assert "customer" in TABLES["contracts"].scopes()


def test_customer_scope_on_customers_is_a_template_error(tmp_path):
    (tmp_path / "odd.yaml").write_text(
        "template: odd\ndescription: x\ntables:\n  customers:\n    rows:\n"
        "      - scope: customer\n        actions: [select]\n",
        encoding="utf-8",
    )
    try:
        load_policies(tmp_path)
    except PolicyError as exc:
        # Expect the scope's line named
        assert any(p.line == 6 and "customer" in p.message for p in exc.problems), str(exc)
    else:
        raise AssertionError("a customer scope on customers was accepted")


def _vault(table: str):
    view = load_desired().api[f"crm_api.{table}"]
    assert view.vault is not None
    return view.vault


def _roles(vault, expr: str) -> set[str]:
    """The roles whose crmdb_roles columns `expr` reads."""
    checks = {
        line.split(" AS ")[-1].rstrip(","): line.split("'")[1]
        for line in vault.scope.splitlines()
        if "pg_has_role" in line
    }
    return {checks[c] for c in re.findall(r"crmdb_roles\.(crmdb_role\d+)\b", expr)}


def _scope_column(vault, name: str) -> str:
    """The expression of scope column `name` (one per line in the scope's SELECT)."""
    line = next(x for x in vault.scope.splitlines() if x.rstrip(",").endswith(f" AS {name}"))
    return line.strip().removeprefix("SELECT ").rstrip(",")


def test_a_groups_predicate_starts_with_the_callers_every_row_flag():
    # Expect contact shown on every row to whoever holds no select policy that hides it:
    # only the director's org-unit scope (financial only) and the owner's policy do
    vault = _vault("customers")
    flag = vault.predicates["contact"].split(" OR ", 1)[0].removeprefix("crmdb_scope.")
    expr = _scope_column(vault, flag)
    assert expr.startswith("bool_and(NOT (")
    assert _roles(vault, expr) == {"crmdb_tpl_director", "crmdb_owner"}


def test_terms_that_search_a_helpers_ids_come_last():
    vault = _vault("customers")
    for group, predicate in vault.predicates.items():
        terms = predicate.split(" OR (")
        searches = ["[pg_catalog.width_bucket(" in term for term in terms]
        # Expect no cheap term after the first search (OR stops at the first true)
        assert any(searches), group
        assert searches == sorted(searches), group


def test_membership_in_a_helpers_ids_is_a_binary_search():
    # Expect a director's subordinates searched (width_bucket), never scanned (= ANY)
    predicate = _vault("customers").predicates["contact"]
    assert "= ANY (crmdb_scope.crmdb_h" not in predicate
    search = re.search(
        r"(crmdb_scope\.crmdb_h\d+)\[pg_catalog\.width_bucket\(owner_id, \1\)\]", predicate
    )
    assert search is not None


def test_a_helper_is_called_only_for_groups_not_shown_on_every_row():
    # Expect the manual shares looked up for a caller with a sharing template (rep,
    # manager, director) who also holds a role hiding contact or notes on some row:
    # shares show only those two groups
    vault = _vault("customers")
    line = next(x for x in vault.scope.splitlines() if "shared_customer_ids" in x)
    sharing, hiding = line.split("CASE WHEN ", 1)[1].split(" THEN ")[0].split(") AND (")
    assert _roles(vault, sharing) == {
        "crmdb_tpl_director",
        "crmdb_tpl_sales_manager",
        "crmdb_tpl_sales_rep",
    }
    assert _roles(vault, hiding) == {
        "crmdb_owner",
        "crmdb_rule_web_leads_to_care",
        "crmdb_tpl_call_center",
        "crmdb_tpl_director",
        "crmdb_tpl_marketing",
    }
