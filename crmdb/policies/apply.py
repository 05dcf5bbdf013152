"""Applying a plan: one transaction, one applier at a time, all or nothing."""

from pathlib import Path

import psycopg

from crmdb.db import Target, connect, server_error
from crmdb.errors import CrmdbError
from crmdb.policies.compile import Desired, compile_policies
from crmdb.policies.model import PolicyError, load_policies
from crmdb.policies.plan import Plan, make_plan
from crmdb.queries import query
from crmdb.resources import resource_dir


def load_desired(directory: Path | None = None) -> Desired:
    """Load, validate and compile the templates; PolicyError lists every problem."""
    return compile_policies(load_policies(directory or resource_dir("policies")))


def plan(target: Target, desired: Desired) -> Plan:
    with connect(target) as conn:
        try:
            return make_plan(conn, desired)
        except psycopg.Error as exc:
            raise CrmdbError(f"planning failed: {server_error(exc)}") from None
        finally:
            conn.rollback()


def apply_in(conn: psycopg.Connection, desired: Desired) -> Plan:
    """Lock, plan and run the plan inside the caller's open transaction."""
    conn.execute(query("policy_lock"))
    conn.execute(query("policy_lock_timeout"))
    result = make_plan(conn, desired)
    for statement in result.statements:
        conn.execute(statement)  # generated from our jinja templates, not user input
    return result


def apply(target: Target, desired: Desired) -> Plan:
    """Apply in one transaction; on any error nothing is changed."""
    with connect(target) as conn:
        try:
            with conn.transaction():
                return apply_in(conn, desired)
        except psycopg.Error as exc:
            raise CrmdbError(
                f"policy apply failed, nothing was changed: {server_error(exc)}"
            ) from None


__all__ = ["PolicyError", "apply", "apply_in", "load_desired", "plan"]
