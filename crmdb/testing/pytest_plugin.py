"""pytest fixtures: one server per session, one fresh database per test.

Enable with `pytest_plugins = ["crmdb.testing.pytest_plugin"]` in conftest.py.
"""

from collections.abc import Iterator

import pytest

from crmdb.testing.cluster import Cluster, start_cluster
from crmdb.testing.scratch import ScratchDatabase, ScratchFactory


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def scratch(pg_cluster: Cluster) -> Iterator[ScratchFactory]:
    factory = ScratchFactory(pg_cluster)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def db(scratch: ScratchFactory) -> Iterator[ScratchDatabase]:
    """A fresh, fully migrated database; its roles are dropped afterwards."""
    database = scratch.migrated()
    try:
        yield database
    finally:
        database.drop()


@pytest.fixture
def empty_db(scratch: ScratchFactory) -> Iterator[ScratchDatabase]:
    """A fresh database with no crmdb objects."""
    database = scratch.empty()
    try:
        yield database
    finally:
        database.drop()


@pytest.fixture
def crmdb_guard(pg_cluster: Cluster) -> None:
    """Skips the test, saying why, when crmdb_guard is not loaded on the test server."""
    if pg_cluster.guard_missing is not None:
        pytest.skip(f"crmdb_guard is not loaded on this server: {pg_cluster.guard_missing}")
