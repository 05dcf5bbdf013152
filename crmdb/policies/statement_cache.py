"""Compiling for crmdb_guard's statement cache (ext/crmdb_guard/scope.c, sql/guard.sql).

Where the database has the cache (`crmdb guard enable` installs it), the policies and
views say the same thing, and PostgreSQL computes the caller's scope once per statement:

- the row policies call `crmdb_guard.<helper>` instead of `crm_private.<helper>`: the
  same function, called once per statement, role and arguments, so the policies and the
  view's scope share one call of each helper;
- a crm_api view's scope query becomes a view of its own, `crm_private.api_<table>_scope`
  (security_invoker), and the group predicates read its row through
  `crmdb_guard.scope_has/flag/id/ids(<view>, <column>, ...)`: no join to a scope row,
  nothing carried along with every row (through a sort, too), binary search in C.

The compiled Desired is otherwise the same; `for_database` picks the form for the
database a plan is made against, so `crmdb policy plan` on a server without the library
keeps plain SQL.
"""

import dataclasses
import re

import psycopg

from crmdb.guard import statement_cache_installed
from crmdb.policies.compile import ApiView, Desired
from crmdb.policies.vault import HELPER_TYPES, SCOPE_ALIAS, VaultReads

SCHEMA = "crmdb_guard"
_CALL = re.compile(
    r"\bcrm_private\.(" + "|".join(h.split(".", 1)[1] for h in sorted(HELPER_TYPES)) + r")\("
)
_COLUMN = r"(?:\w+\.)?\w+"
# x = ANY (<scope array>), and the binary search vault.py writes for a helper's ids
_ANY = re.compile(rf"(?P<x>{_COLUMN}) = ANY \({SCOPE_ALIAS}\.(?P<c>crmdb_\w+)(?:::bigint\[\])?\)")
_SEARCH = re.compile(
    rf"{SCOPE_ALIAS}\.(?P<c>crmdb_\w+)\[pg_catalog\.width_bucket\((?P<x>{_COLUMN}), "
    rf"{SCOPE_ALIAS}\.(?P=c)\)\] = (?P=x)"
)
_REFERENCE = re.compile(rf"{SCOPE_ALIAS}\.(?P<c>crmdb_\w+)")
_ACCESSOR = {"boolean": "scope_flag", "bigint": "scope_id", "bigint[]": "scope_ids"}


def memoized(sql: str) -> str:
    """`sql` with each call of a policy helper going through the statement cache."""
    return _CALL.sub(rf"{SCHEMA}.\1(", sql)


def reader(reads: VaultReads, view: str) -> VaultReads:
    """The scope as a view of its own; the predicates read its columns per row."""
    slots = {column: (i, sql_type) for i, (column, sql_type) in enumerate(reads.columns, 1)}
    literal = f"'{view}'::regclass"

    def has(m: re.Match[str]) -> str:
        slot, sql_type = slots[m["c"]]
        if sql_type != "bigint[]":
            raise ValueError(f"{view}: {m['c']} is {sql_type}, searched as bigint[]")
        return f"{SCHEMA}.scope_has({literal}, {slot}, {m['x']})"

    def value(m: re.Match[str]) -> str:
        slot, sql_type = slots[m["c"]]
        return f"{SCHEMA}.{_ACCESSOR[sql_type]}({literal}, {slot})"

    predicates = {}
    for group, predicate in reads.predicates.items():
        predicate = _SEARCH.sub(has, predicate)
        predicate = _ANY.sub(has, predicate)
        predicates[group] = _REFERENCE.sub(value, predicate)
    return dataclasses.replace(
        reads, scope=memoized(reads.scope), predicates=predicates, scope_view=view
    )


def cached(desired: Desired) -> Desired:
    """`desired` compiled for a database with the statement cache."""
    if desired.statement_cache:
        return desired
    policies = {
        key: dataclasses.replace(
            p,
            using=None if p.using is None else memoized(p.using),
            check=None if p.check is None else memoized(p.check),
        )
        for key, p in desired.policies.items()
    }
    api: dict[str, ApiView] = {}
    for name, view in desired.api.items():
        if view.vault is not None:
            view = dataclasses.replace(view, vault=reader(view.vault, view.scope_name))
        api[name] = view
    return dataclasses.replace(desired, policies=policies, api=api, statement_cache=True)


def for_database(conn: psycopg.Connection, desired: Desired) -> Desired:
    """`desired` in the form for conn's database: cached where it has the cache."""
    return cached(desired) if statement_cache_installed(conn) else desired
