"""DSN resolution: --dsn, then CRMDB_DSN, then DATABASE_URL; malformed input is one clear error."""

import pytest

from crmdb.db import Target, resolve_target
from crmdb.errors import CrmdbError


def test_flag_wins_over_environment() -> None:
    env = {"CRMDB_DSN": "dbname=from_env", "DATABASE_URL": "dbname=from_url"}
    target = resolve_target("dbname=from_flag", env)
    assert (target.source, target.params()["dbname"]) == ("--dsn", "from_flag")


def test_crmdb_dsn_wins_over_database_url() -> None:
    env = {"CRMDB_DSN": "dbname=from_env", "DATABASE_URL": "dbname=from_url"}
    assert resolve_target(None, env).source == "CRMDB_DSN"
    assert resolve_target(None, {"DATABASE_URL": "dbname=from_url"}).source == "DATABASE_URL"


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("host=x port=5432 dbname", 'invalid DSN in --dsn: missing "=" after "dbname"'),
        ("mysql://u@h/db", "invalid DSN in --dsn: scheme 'mysql' is not supported"),
        (
            "postgresql://u@h/db?nosuchoption=1",
            'invalid DSN in --dsn: invalid URI query parameter: "nosuchoption"',
        ),
        ("host='unterminated", "invalid DSN in --dsn: unterminated quoted string"),
    ],
)
def test_malformed_dsn_is_named(dsn: str, message: str) -> None:
    with pytest.raises(CrmdbError) as info:
        resolve_target(dsn, {})
    assert str(info.value).startswith(message)


def test_environment_source_is_named() -> None:
    with pytest.raises(CrmdbError, match="invalid DSN in DATABASE_URL"):
        resolve_target(None, {"DATABASE_URL": "oops"})


def test_describe_never_shows_the_password() -> None:
    target = Target("postgresql://alice:s3cret@db.example:6543/crm", "--dsn")
    assert target.describe() == "host=db.example port=6543 dbname=crm user=alice"
    assert "s3cret" not in target.describe()
