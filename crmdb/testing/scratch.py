"""Scratch databases cloned from a migrated template, with namespaced roles.

Migrating takes a while; CREATE DATABASE ... TEMPLATE is a file copy. Roles are
cluster-wide, so each scratch database gets a prefix for the roles created in it,
and dropping the database drops those roles too.
"""

import secrets
from dataclasses import dataclass

import psycopg
from psycopg import sql

from crmdb import guard, migrate
from crmdb.db import Target
from crmdb.queries import query
from crmdb.testing.cluster import Cluster

# Scratch employees log in with this password where the server asks for one.
TEST_PASSWORD = "crmdb-test-password"


@dataclass
class ScratchDatabase:
    cluster: Cluster
    name: str
    prefix: str  # every role made for this database starts with it

    @property
    def target(self) -> Target:
        return Target(self.cluster.uri(self.name), "scratch")

    def role(self, name: str) -> str:
        """The namespaced role name for a logical name (case is kept)."""
        return f"{self.prefix}{name}"

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection:
        """A superuser connection."""
        return psycopg.connect(self.cluster.uri(self.name), autocommit=autocommit)

    def connect_as(self, role: str, *, autocommit: bool = True) -> psycopg.Connection:
        """A direct login as `role` (already namespaced)."""
        uri = self.cluster.uri(self.name, user=role, password=TEST_PASSWORD)
        return psycopg.connect(uri, autocommit=autocommit)

    def drop(self) -> None:
        with psycopg.connect(self.cluster.admin_uri, autocommit=True) as conn:
            conn.execute(query("drop_database").format(name=sql.Identifier(self.name)))
            roles = conn.execute(query("roles_with_prefix"), {"prefix": self.prefix}).fetchall()
            for (role,) in roles:
                conn.execute(query("drop_role").format(role=sql.Identifier(role)))


class ScratchFactory:
    """Makes scratch databases on one cluster; the template is migrated once."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.token = secrets.token_hex(3)
        self._template: str | None = None
        self._count = 0

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.cluster.admin_uri, autocommit=True)

    def _new_name(self) -> tuple[str, str]:
        self._count += 1
        return f"crmdb_t{self.token}_{self._count}", f"t{self.token}{self._count}_"

    def empty(self) -> ScratchDatabase:
        """A new database with nothing in it."""
        name, prefix = self._new_name()
        with self._admin() as conn:
            conn.execute(query("create_database").format(name=sql.Identifier(name)))
        return ScratchDatabase(self.cluster, name, prefix)

    def template(self) -> str:
        if self._template is None:
            db = self.empty()
            migrate.apply(db.target)
            if self.cluster.guard_library is not None:
                # Policies applied in the clones compile for the statement cache, as on
                # a server where crmdb guard enable ran
                with psycopg.connect(self.cluster.uri(db.name), autocommit=True) as conn:
                    guard.install_statement_cache(conn, self.cluster.guard_library)
            self._template = db.name
        return self._template

    def migrated(self) -> ScratchDatabase:
        """A new database with every migration applied."""
        template = self.template()
        name, prefix = self._new_name()
        with self._admin() as conn:
            conn.execute(
                query("create_database_from_template").format(
                    name=sql.Identifier(name), template=sql.Identifier(template)
                )
            )
        return ScratchDatabase(self.cluster, name, prefix)

    def close(self) -> None:
        if self._template is not None:
            ScratchDatabase(self.cluster, self._template, f"t{self.token}_tpl_").drop()
