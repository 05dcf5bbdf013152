"""Applying a plan: one transaction, one applier at a time, all or nothing."""

from pathlib import Path

import psycopg

from crmdb import plans
from crmdb.db import Target
from crmdb.policies.compile import Desired, compile_policies
from crmdb.policies.model import PolicyError, load_policies
from crmdb.policies.plan import Plan, make_plan
from crmdb.queries import query
from crmdb.resources import resource_dir


def load_desired(directory: Path | None = None) -> Desired:
    """Load, validate and compile the templates; PolicyError lists every problem."""
    return compile_policies(load_policies(directory or resource_dir("policies")))


def plan(target: Target, desired: Desired) -> Plan:
    return plans.plan(target, lambda conn: make_plan(conn, desired))


def apply_in(conn: psycopg.Connection, desired: Desired) -> Plan:
    """Lock, plan and run the plan inside the caller's open transaction."""
    conn.execute(query("policy_lock"))
    conn.execute(query("policy_lock_timeout"))
    return plans.run(conn, make_plan(conn, desired))


def apply(target: Target, desired: Desired) -> Plan:
    """Apply in one transaction; on any error nothing is changed."""
    return plans.apply(target, "policy", lambda conn: apply_in(conn, desired))


__all__ = ["PolicyError", "apply", "apply_in", "load_desired", "plan"]
