"""The jinja2 environment for sql/policy/*.sql.j2 (StrictUndefined: a typo fails loudly)."""

import re
from functools import cache
from typing import Any

import jinja2

from crmdb.resources import resource_dir

_PLAIN = re.compile(r"^[a-z_][a-z0-9_]*$")
# Reserved words that cannot stand unquoted as a name.
_RESERVED = {
    "all",
    "and",
    "any",
    "as",
    "check",
    "column",
    "default",
    "from",
    "grant",
    "group",
    "order",
    "select",
    "table",
    "to",
    "user",
    "where",
    "with",
}


def ident(name: str) -> str:
    """Quote an SQL identifier when it needs quoting."""
    if _PLAIN.match(name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def literal(value: Any) -> str:
    """An SQL literal: NULL, or a quoted string."""
    if value is None:
        return "NULL"
    return "'" + str(value).replace("'", "''") + "'"


def sql_text_array(values: list[str]) -> str:
    """ARRAY['a', 'b']::text[] (an empty list gives an empty array)."""
    return "ARRAY[" + ", ".join(literal(v) for v in values) + "]::text[]"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_dir("sql") / "policy"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["ident"] = ident
    env.filters["literal"] = literal
    env.filters["sql_text_array"] = sql_text_array
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def ddl(macro: str, *args: Any) -> str:
    """One statement from sql/policy/ddl.sql.j2."""
    module = environment().get_template("ddl.sql.j2").module
    return str(getattr(module, macro)(*args)).strip()


def sections(text: str) -> dict[str, str]:
    """Split rendered text on `-- name --` lines into {name: body}."""
    parts = re.split(r"^-- (\w+) --$", text, flags=re.MULTILINE)
    return {
        name: " ".join(line.strip() for line in body.strip().splitlines() if line.strip())
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }
