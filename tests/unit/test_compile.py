"""The generated policy text for the shipped templates (no database needed)."""

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
