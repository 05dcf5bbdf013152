"""Validation of `criteria` expressions written in templates and sharing rules.

A criteria expression is a boolean condition over the table's own columns:
comparisons, AND/OR/NOT, IN lists, IS [NOT] NULL, LIKE, BETWEEN, literals. No
subqueries, no function calls beyond a short list, nothing that could close the
parenthesis the compiler wraps it in. PostgreSQL parses it for real at plan time.
"""

import re

KEYWORDS = {
    "and",
    "or",
    "not",
    "in",
    "is",
    "null",
    "true",
    "false",
    "like",
    "ilike",
    "between",
    "distinct",
    "from",
}
FUNCTIONS = {"lower", "upper", "coalesce", "now", "length", "trim"}
# PostgreSQL reads a run of operator characters as one token, and `--` or `/*` in it
# as the start of a comment, so runs are matched whole and checked against this list.
OPERATORS = {"<>", "!=", "<=", ">=", "=", "<", ">", "+", "-", "*", "/", "%"}
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<cast>::)
  | (?P<op>[-+*/<>=!%~@#^&|`?]+)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)


def check_criteria(expression: object, columns: tuple[str, ...]) -> list[str]:
    """Problems with `expression` (empty if it is acceptable)."""
    if not isinstance(expression, str) or not expression.strip():
        return ["criteria 'where' must be a non-empty SQL condition"]
    problems: list[str] = []
    tokens: list[tuple[str, str]] = []
    pos, gap = 0, True
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if not match:
            bad = expression[pos]
            hint = " (quote strings with ')" if bad == '"' else ""
            return [f"criteria: unexpected character {bad!r} at position {pos + 1}{hint}"]
        kind, text = match.lastgroup or "", match.group()
        if kind == "op" and text not in OPERATORS:
            what = "comments are" if "--" in text or "/*" in text else f"operator {text!r} is"
            return [f"criteria: {what} not allowed (at position {pos + 1})"]
        if kind == "string" and tokens and tokens[-1][0] == "ident" and not gap:
            # E'..', U&'..', B'..': prefixed strings with escapes of their own.
            return [f"criteria: prefixed string literals are not allowed (at position {pos})"]
        if kind == "string" and "\\" in text:
            # With standard_conforming_strings off a backslash escapes the quote.
            return [f"criteria: backslashes in strings are not allowed (at position {pos + 1})"]
        if kind != "space":
            tokens.append((kind, text))
        gap = kind == "space"
        pos = match.end()

    depth = 0
    for i, (kind, text) in enumerate(tokens):
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth < 0:
                return ["criteria: unbalanced ')'"]
        elif kind == "ident":
            word = text.lower()
            is_call = i + 1 < len(tokens) and tokens[i + 1][1] == "("
            previous = tokens[i - 1][1] if i else ""
            if word in KEYWORDS:
                continue
            if is_call:
                if word not in FUNCTIONS:
                    problems.append(
                        f"criteria: function {text}() is not allowed "
                        f"(allowed: {', '.join(sorted(FUNCTIONS))})"
                    )
            elif previous == "::":
                continue  # a type name in a cast, e.g. '5'::int
            elif text not in columns:
                problems.append(f"criteria: unknown column {text!r}")
    if depth != 0:
        problems.append("criteria: unbalanced '('")
    if not any(kind == "ident" and text in columns for kind, text in tokens):
        problems.append("criteria: the condition names no column of the table")
    return problems
