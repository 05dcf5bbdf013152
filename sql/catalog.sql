-- Catalog queries behind crmdb.catalog.snapshot: a description of every object in
-- crmdb's schemas, by name only (never OIDs), so two databases can be compared.
-- Format: a `-- name --` line, a one-line description, then the SQL.
--
-- Every query but snapshot_settings is run with %(schemas)s (a text array), so a
-- literal percent sign is written %%, and returns a first column `key` that names
-- one object uniquely within its category; the other columns describe it. ACLs and option lists are sorted, so the order in which
-- grants were made does not show. Run with search_path = '' (snapshot_settings) so
-- pg_get_*def and format_type qualify every name the same way in every database.
-- NOT NULL constraints (pg_constraint rows only from PostgreSQL 18) are left out:
-- columns.not_null and types.not_null say the same on every version.

-- snapshot_settings --
-- Qualify every name in deparsed output (local to the snapshot's transaction)
SELECT pg_catalog.set_config('search_path', '', true)

-- schemas --
-- The schemas themselves: owner and ACL
SELECT n.nspname::text COLLATE "C" AS key,
       pg_get_userbyid(n.nspowner)::text AS owner,
       CASE WHEN n.nspacl IS NOT NULL THEN
           ARRAY(SELECT a::text COLLATE "C" FROM unnest(n.nspacl) AS a ORDER BY 1)
       END AS acl
  FROM pg_namespace AS n
 WHERE n.nspname = ANY (%(schemas)s)
 ORDER BY 1

-- relations --
-- Tables, views, sequences, foreign tables, composite types: kind, owner, ACL, options, RLS
SELECT format('%%I.%%I', n.nspname, c.relname) COLLATE "C" AS key,
       c.relkind::text AS kind,
       pg_get_userbyid(c.relowner)::text AS owner,
       CASE WHEN c.relacl IS NOT NULL THEN
           ARRAY(SELECT a::text COLLATE "C" FROM unnest(c.relacl) AS a ORDER BY 1)
       END AS acl,
       ARRAY(SELECT o::text COLLATE "C" FROM unnest(c.reloptions) AS o ORDER BY 1) AS options,
       c.relpersistence::text AS persistence,
       c.relrowsecurity AS rls_enabled,
       c.relforcerowsecurity AS rls_forced,
       c.relreplident::text AS replica_identity,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS view_definition,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partition_key,
       pg_get_expr(c.relpartbound, c.oid) AS partition_bound,
       ARRAY(SELECT format('%%I.%%I', pn.nspname, p.relname)
               FROM pg_inherits AS i
               JOIN pg_class AS p ON p.oid = i.inhparent
               JOIN pg_namespace AS pn ON pn.oid = p.relnamespace
              WHERE i.inhrelid = c.oid
              ORDER BY i.inhseqno) AS parents
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s)
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
 ORDER BY 1

-- sequences --
-- Sequence parameters and the column that owns each (identity or serial)
SELECT format('%%I.%%I', n.nspname, c.relname) COLLATE "C" AS key,
       format_type(s.seqtypid, NULL) AS data_type,
       s.seqstart AS start_value,
       s.seqincrement AS increment,
       s.seqmin AS min_value,
       s.seqmax AS max_value,
       s.seqcache AS cache,
       s.seqcycle AS cycle,
       (SELECT format('%%I.%%I.%%I (%%s)', tn.nspname, t.relname, a.attname, d.deptype)
          FROM pg_depend AS d
          JOIN pg_class AS t ON t.oid = d.refobjid
          JOIN pg_namespace AS tn ON tn.oid = t.relnamespace
          JOIN pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
           AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) AS owned_by
  FROM pg_sequence AS s
  JOIN pg_class AS c ON c.oid = s.seqrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s)
 ORDER BY 1

-- columns --
-- Columns of tables, views and composite types, with their logical position
-- (attnum without dropped columns, so a column dropped by a migration leaves no gap)
SELECT format('%%I.%%I.%%I', n.nspname, c.relname, a.attname) COLLATE "C" AS key,
       row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position,
       format_type(a.atttypid, a.atttypmod) AS data_type,
       a.attnotnull AS not_null,
       pg_get_expr(ad.adbin, ad.adrelid) AS default_expr,
       a.attidentity::text AS identity,
       a.attgenerated::text AS generated,
       CASE WHEN co.oid IS NOT NULL THEN format('%%I.%%I', con.nspname, co.collname) END AS collation,
       CASE WHEN a.attacl IS NOT NULL THEN
           ARRAY(SELECT x::text COLLATE "C" FROM unnest(a.attacl) AS x ORDER BY 1)
       END AS acl,
       a.attstorage::text AS storage
  FROM pg_attribute AS a
  JOIN pg_class AS c ON c.oid = a.attrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef AS ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
  LEFT JOIN pg_collation AS co ON co.oid = a.attcollation
  LEFT JOIN pg_namespace AS con ON con.oid = co.collnamespace
 WHERE n.nspname = ANY (%(schemas)s)
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
   AND a.attnum > 0
   AND NOT a.attisdropped
 ORDER BY 1

-- constraints --
-- Table and domain constraints as pg_get_constraintdef deparses them
SELECT format('%%I.%%I.%%I', n.nspname, coalesce(c.relname, t.typname), k.conname) COLLATE "C" AS key,
       k.contype::text AS kind,
       pg_get_constraintdef(k.oid) AS definition
  FROM pg_constraint AS k
  JOIN pg_namespace AS n ON n.oid = k.connamespace
  LEFT JOIN pg_class AS c ON c.oid = k.conrelid
  LEFT JOIN pg_type AS t ON t.oid = k.contypid
 WHERE n.nspname = ANY (%(schemas)s)
   AND k.contype <> 'n'
 ORDER BY 1

-- indexes --
-- Indexes (including those behind constraints) as pg_get_indexdef deparses them
SELECT format('%%I.%%I', n.nspname, ic.relname) COLLATE "C" AS key,
       pg_get_indexdef(i.indexrelid) AS definition,
       i.indisvalid AS valid,
       i.indisclustered AS clustered,
       i.indisreplident AS replica_identity
  FROM pg_index AS i
  JOIN pg_class AS ic ON ic.oid = i.indexrelid
  JOIN pg_namespace AS n ON n.oid = ic.relnamespace
 WHERE n.nspname = ANY (%(schemas)s)
 ORDER BY 1

-- triggers --
-- User triggers (not the internal ones behind foreign keys) and whether each is enabled
SELECT format('%%I.%%I.%%I', n.nspname, c.relname, t.tgname) COLLATE "C" AS key,
       pg_get_triggerdef(t.oid) AS definition,
       t.tgenabled::text AS enabled
  FROM pg_trigger AS t
  JOIN pg_class AS c ON c.oid = t.tgrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s)
   AND NOT t.tgisinternal
 ORDER BY 1

-- functions --
-- Functions and procedures: full definition, owner, ACL, SECURITY DEFINER, SET options
SELECT p.oid::regprocedure::text COLLATE "C" AS key,  -- schema.name(argument types)
       p.prokind::text AS kind,
       pg_get_userbyid(p.proowner)::text AS owner,
       CASE WHEN p.proacl IS NOT NULL THEN
           ARRAY(SELECT a::text COLLATE "C" FROM unnest(p.proacl) AS a ORDER BY 1)
       END AS acl,
       p.prosecdef AS security_definer,
       ARRAY(SELECT o::text COLLATE "C" FROM unnest(p.proconfig) AS o ORDER BY 1) AS config,
       -- pg_get_functiondef refuses aggregates; the objects category still lists them
       CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END AS definition
  FROM pg_proc AS p
  JOIN pg_namespace AS n ON n.oid = p.pronamespace
 WHERE n.nspname = ANY (%(schemas)s)
 ORDER BY 1

-- policies --
-- Row-level security policies: command, permissive, roles, USING and WITH CHECK
SELECT format('%%I.%%I.%%I', n.nspname, c.relname, pol.polname) COLLATE "C" AS key,
       pol.polcmd::text AS command,
       pol.polpermissive AS permissive,
       ARRAY(SELECT CASE WHEN x = 0 THEN 'public' ELSE pg_get_userbyid(x)::text END COLLATE "C"
               FROM unnest(pol.polroles) AS x
              ORDER BY 1) AS roles,
       pg_get_expr(pol.polqual, pol.polrelid) AS using_expr,
       pg_get_expr(pol.polwithcheck, pol.polrelid) AS check_expr
  FROM pg_policy AS pol
  JOIN pg_class AS c ON c.oid = pol.polrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s)
 ORDER BY 1

-- enums --
-- Enum types and their labels, in sort order
SELECT format('%%I.%%I', n.nspname, t.typname) COLLATE "C" AS key,
       array_agg(e.enumlabel::text ORDER BY e.enumsortorder) AS labels
  FROM pg_enum AS e
  JOIN pg_type AS t ON t.oid = e.enumtypid
  JOIN pg_namespace AS n ON n.oid = t.typnamespace
 WHERE n.nspname = ANY (%(schemas)s)
 GROUP BY n.nspname, t.typname
 ORDER BY 1

-- types --
-- Types made explicitly (enums, domains, ranges, composites; not array or row types):
-- kind, owner, ACL and domain details
SELECT format('%%I.%%I', n.nspname, t.typname) COLLATE "C" AS key,
       t.typtype::text AS kind,
       pg_get_userbyid(t.typowner)::text AS owner,
       CASE WHEN t.typacl IS NOT NULL THEN
           ARRAY(SELECT a::text COLLATE "C" FROM unnest(t.typacl) AS a ORDER BY 1)
       END AS acl,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END AS base_type,
       t.typnotnull AS not_null,
       pg_get_expr(t.typdefaultbin, 0) AS default_expr,
       (SELECT format_type(r.rngsubtype, NULL) FROM pg_range AS r WHERE r.rngtypid = t.oid) AS range_subtype
  FROM pg_type AS t
  JOIN pg_namespace AS n ON n.oid = t.typnamespace
 WHERE n.nspname = ANY (%(schemas)s)
   AND (t.typrelid = 0 OR EXISTS (SELECT FROM pg_class AS c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
   AND NOT EXISTS (SELECT FROM pg_type AS e WHERE e.typarray = t.oid)
 ORDER BY 1

-- comments --
-- COMMENT ON anything in the schemas (tables, columns, functions, types, constraints,
-- triggers, policies...) and on the schemas themselves
SELECT format('%%s %%s', o.type, o.identity) COLLATE "C" AS key,
       d.description
  FROM pg_description AS d
 CROSS JOIN LATERAL pg_identify_object_as_address(d.classoid, d.objoid, d.objsubid) AS addr
 CROSS JOIN LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) AS o
 WHERE d.objoid >= 16384  -- FirstNormalObjectId: skips initdb's own objects, cheaply
   AND CASE WHEN o.type = 'schema' THEN o.identity = ANY (%(schemas)s)
            -- types name themselves as one qualified name; o.schema covers them
            ELSE coalesce(o.schema, addr.object_names[1]) = ANY (%(schemas)s) END
 ORDER BY 1

-- objects --
-- Every object that lives directly in the schemas, whatever its kind: a catch-all for
-- kinds the other categories do not describe (operators, collations, statistics...)
SELECT DISTINCT format('%%s %%s', o.type, o.identity) COLLATE "C" AS key
  FROM pg_depend AS d
  JOIN pg_namespace AS n ON n.oid = d.refobjid
 CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) AS o
 WHERE d.refclassid = 'pg_namespace'::regclass
   AND n.nspname = ANY (%(schemas)s)
 ORDER BY 1

-- default_privileges --
-- ALTER DEFAULT PRIVILEGES entries in this database (any schema, or all schemas: *)
SELECT format('%%s %%s %%s', pg_get_userbyid(a.defaclrole), coalesce(quote_ident(n.nspname), '*'),
              a.defaclobjtype) COLLATE "C" AS key,
       ARRAY(SELECT x::text COLLATE "C" FROM unnest(a.defaclacl) AS x ORDER BY 1) AS acl
  FROM pg_default_acl AS a
  LEFT JOIN pg_namespace AS n ON n.oid = a.defaclnamespace
 ORDER BY 1

-- roles --
-- crmdb's own cluster-wide roles: whether each exists, and its attributes
SELECT v.rolname COLLATE "C" AS key,
       r.rolname IS NOT NULL AS present,
       r.rolcanlogin AS can_login,
       r.rolinherit AS inherit
  FROM (VALUES ('crmdb_owner'), ('crmdb_employee')) AS v (rolname)
  LEFT JOIN pg_roles AS r ON r.rolname = v.rolname
 ORDER BY 1
