-- Named queries used by crmdb's Python code (see crmdb/queries.py).
-- Format: a `-- name --` line, a one-line description, then the SQL.
-- `{name}` marks an identifier formatted with psycopg.sql.Identifier.

-- Connections ------------------------------------------------------------------

-- set_local_role --
-- Act as an employee role until the end of the current transaction
SET LOCAL ROLE {role}

-- database_exists --
-- Whether a database of this name exists
SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = %(name)s)

-- create_database --
-- Create an empty database
CREATE DATABASE {name}

-- server_info --
-- Server version and the connection's identity
SELECT pg_catalog.current_setting('server_version') AS version,
       pg_catalog.current_setting('server_version_num')::int AS version_num,
       pg_catalog.current_database() AS database,
       current_user AS "user"

-- Migrations -------------------------------------------------------------------

-- applied_migrations --
-- Migrations yoyo has applied, oldest first
SELECT migration_id, applied_at_utc
  FROM _yoyo_migration
 ORDER BY applied_at_utc, migration_id

-- Scratch databases (tests, crmdb policy test) ----------------------------------

-- create_database_from_template --
-- Clone a database (the template must have no open connections)
CREATE DATABASE {name} TEMPLATE {template}

-- drop_database --
-- Drop a database, ending its connections
DROP DATABASE IF EXISTS {name} WITH (FORCE)

-- roles_with_prefix --
-- Roles whose names start with a prefix (a test's namespace)
SELECT rolname FROM pg_catalog.pg_roles WHERE starts_with(rolname, %(prefix)s) ORDER BY rolname

-- drop_role --
-- Drop a role (it must own nothing and hold no privileges in any database)
DROP ROLE IF EXISTS {role}

-- set_fast_settings --
-- Trade durability for speed on a throwaway test cluster
ALTER SYSTEM SET fsync = off

-- set_fast_settings_commit --
-- Trade durability for speed on a throwaway test cluster
ALTER SYSTEM SET synchronous_commit = off

-- reload_conf --
-- Apply ALTER SYSTEM settings that need only a reload
SELECT pg_catalog.pg_reload_conf()
