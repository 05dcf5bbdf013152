"""The named-query loader."""

import pytest

from crmdb.queries import parse, query


def test_parse_splits_on_name_headers() -> None:
    text = (
        "-- header comment\n\n-- first --\n-- what it does\nSELECT 1\n\n"
        "-- second --\n-- more\nSELECT 2\n"
    )
    assert parse(text) == {"first": "-- what it does\nSELECT 1", "second": "-- more\nSELECT 2"}


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="'dup' is defined twice"):
        parse("-- dup --\nSELECT 1\n-- dup --\nSELECT 2\n")


def test_unknown_query_is_named() -> None:
    with pytest.raises(KeyError, match=r"no query named 'nope' in sql/queries\.sql"):
        query("nope")


def test_every_shipped_query_has_a_description() -> None:
    from crmdb.resources import resource_dir

    for path in resource_dir("sql").glob("*.sql"):
        if path.name == "schema.sql":
            continue
        for name, body in parse(path.read_text()).items():
            assert body.startswith("-- "), f"{path.name}: query {name} has no description line"
