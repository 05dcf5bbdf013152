"""Named SQL queries, loaded from sql/queries.sql.

Each query starts with a `-- name --` line followed by a one-line description, as in
procrastinate. Python refers to queries by name; no SQL lives in Python strings.
Queries take `%(param)s` parameters; where a query needs an identifier (a role name),
it writes `{name}` and the caller formats it with psycopg.sql.Identifier.
"""

import re
from functools import cache

from psycopg import sql

from crmdb.resources import sql_path

_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a queries file into {name: sql}."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@cache
def _load(filename: str) -> dict[str, str]:
    return parse(sql_path(filename).read_text(encoding="utf-8"))


def query(name: str, filename: str = "queries.sql") -> sql.SQL:
    """The named query, ready for cursor.execute (or .format() for identifiers)."""
    try:
        text = _load(filename)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/{filename}") from None
    return sql.SQL(text)  # text comes from our own files, never from user input
