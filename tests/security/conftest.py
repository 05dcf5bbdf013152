"""The attack suite: fixtures, and a summary of the attempts at the end of the session.

Each test is one attempt, marked with its category (`pytest.mark.attack(category)`,
set per module) and run as every attacker where meaningful (the `attacker` fixture).
A passing attempt was blocked; a failing one is a hole in crmdb. Attempts marked
`residual` assert a known, documented limit (README, "Security"): they pass while the
limit is exactly as documented.
"""

import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from attack_org import ATTACKERS, Attacker, AttackOrg, attacker_session, build_attack_org

from crmdb.testing.scratch import TEST_PASSWORD, ScratchFactory

CATEGORY = "attack_category"
_results: dict[str, Counter[str]] = defaultdict(Counter)
_failed: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attack(category): an attempt of the attack suite")
    config.addinivalue_line(
        "markers", "residual(reason): a documented limit; the test asserts it is as documented"
    )
    config.addinivalue_line(
        "markers",
        "hole(reason, when=None): a known hole, xfail(strict) for the parameters `when`"
        " (a predicate on the test's parameters, e.g. the attacker) accepts, or for all",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        hole = item.get_closest_marker("hole")
        if hole is not None:
            when = hole.kwargs.get("when")
            params = getattr(getattr(item, "callspec", None), "params", {})
            if when is None or when(params):
                item.add_marker(pytest.mark.xfail(strict=True, reason=hole.args[0]))
        marker = item.get_closest_marker("attack")
        if marker is None:
            continue
        kind = "residual" if item.get_closest_marker("residual") else "attempt"
        item.user_properties.append((CATEGORY, (marker.args[0], kind)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    found = [v for k, v in report.user_properties if k == CATEGORY]
    if not found or not (report.when == "call" or report.outcome != "passed"):
        return
    ((category, kind),) = found
    if hasattr(report, "wasxfail"):
        # A known hole (xfail strict): it fails as documented in its reason.
        _results[category]["known hole (xfail)"] += 1
    elif report.when != "call" and report.outcome == "skipped":
        _results[category]["skipped"] += 1
    elif report.outcome == "passed":
        _results[category]["residual" if kind == "residual" else "blocked"] += 1
    elif report.outcome == "failed":
        # A residual that fails no longer holds as documented: update the README.
        _results[category]["SUCCEEDED" if kind == "attempt" else "residual changed"] += 1
        _failed.append(report.nodeid)
    else:
        _results[category]["skipped"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _results:
        return
    tr = terminalreporter
    tr.write_sep("=", "crmdb attack suite")
    total: Counter[str] = Counter()
    for category in sorted(_results):
        counts = _results[category]
        total.update(counts)
        attempts = counts["blocked"] + counts["SUCCEEDED"]
        attempts += counts["known hole (xfail)"]
        parts = [f"{attempts} attempts, {counts['blocked']} blocked"]
        parts += [
            f"{counts[k]} {k}"
            for k in ("SUCCEEDED", "known hole (xfail)", "residual", "residual changed", "skipped")
            if counts[k]
        ]
        tr.write_line(f"{category:<24} {', '.join(parts)}")
    attempts = total["blocked"] + total["SUCCEEDED"] + total["known hole (xfail)"]
    if total["known hole (xfail)"]:
        tr.write_line(f"{total['known hole (xfail)']} attempts succeed as known holes (xfail)")
    if total["SUCCEEDED"]:
        tr.write_line(f"{total['SUCCEEDED']} of {attempts} attempts SUCCEEDED (holes in crmdb)")
    elif not total["known hole (xfail)"]:
        tr.write_line(f"all {attempts} attempts blocked")
    for nodeid in _failed:
        tr.write_line(f"  failed: {nodeid}")
    if total["residual"]:
        tr.write_line(f"{total['residual']} residual risks hold as documented (README, Security)")


@pytest.fixture(scope="session")
def attack_org(scratch: ScratchFactory) -> Iterator[AttackOrg]:
    """One org for the whole suite; attempts roll back what they change."""
    database = scratch.migrated()
    try:
        yield build_attack_org(database)
    finally:
        database.drop()


@pytest.fixture(params=ATTACKERS)
def attacker(request: pytest.FixtureRequest, attack_org: AttackOrg) -> Iterator[Attacker]:
    """The attempt runs once as each attacker, in their own session, rolled back."""
    with attacker_session(attack_org, request.param) as attacker:
        yield attacker


@pytest.fixture(scope="session")
def gateway(attack_org: AttackOrg) -> str:
    """A gateway login of the attack org (crm_admin.add_gateway)."""
    role = attack_org.db.role("Gateway")  # mixed case: catches quoting bugs
    with attack_org.db.connect() as conn:
        conn.execute("SELECT crm_admin.add_gateway(%s, %s)", (role, TEST_PASSWORD))
    return role


@pytest.fixture
def gw(attack_org: AttackOrg, gateway: str) -> Iterator[psycopg.Connection]:
    """A gateway session, as an app holds it (autocommit between transactions)."""
    with attack_org.db.connect_as(gateway) as conn:
        yield conn
