-- Checks behind `crmdb lint` (crmdb/lint.py): what a deployed database must not hold.
-- Format: a `-- name --` line, a one-line description, then the SQL.
--
-- Every check but lint_settings runs with %(schemas)s (crmdb's schemas, a text array),
-- so a literal percent sign is written %%, and returns one row per finding:
-- object (what), problem (why it matters), fix (the SQL that mends it).
-- Run with search_path = '' (lint_settings): names in fixes come out qualified.
-- Field groups (issue 5): the checks after template_grants_nothing; crmdb/lint.py adds
-- crm_api drift and masks (from the templates) and anchor copies (one query per side
-- table, the `{...}` templates at the end of this file).

-- lint_settings --
-- Qualify every name in regprocedure and format output (local to the lint's transaction)
SELECT pg_catalog.set_config('search_path', '', true)

-- rls_disabled --
-- Tables in crmdb's schemas without row-level security: every role with a grant reads every row
SELECT format('%%I.%%I', n.nspname, c.relname) AS object,
       'row-level security is not enabled: anyone granted the table reads every row' AS problem,
       format('ALTER TABLE %%I.%%I ENABLE ROW LEVEL SECURITY;', n.nspname, c.relname)
       || CASE WHEN NOT c.relforcerowsecurity
               THEN format(' ALTER TABLE %%I.%%I FORCE ROW LEVEL SECURITY;', n.nspname, c.relname)
               ELSE '' END
       || CASE WHEN NOT EXISTS (SELECT FROM pg_policy AS p
                                 WHERE p.polrelid = c.oid AND p.polname = 'crmdb_owner_all')
               THEN format(' CREATE POLICY crmdb_owner_all ON %%I.%%I TO crmdb_owner USING (true) WITH CHECK (true);',
                           n.nspname, c.relname)
               ELSE '' END AS fix
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s) AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity
 ORDER BY 1

-- rls_not_forced --
-- Tables with row-level security that is not forced: their owner (and its definer code) skips it
SELECT format('%%I.%%I', n.nspname, c.relname) AS object,
       'row-level security is not forced: the owner, and code running as the owner, skips every policy' AS problem,
       format('ALTER TABLE %%I.%%I FORCE ROW LEVEL SECURITY;', n.nspname, c.relname) AS fix
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s) AND c.relkind IN ('r', 'p')
   AND c.relrowsecurity AND NOT c.relforcerowsecurity
 ORDER BY 1

-- view_not_security_invoker --
-- Views that read their tables with their owner's rights, so the owner's policies apply, not the reader's
SELECT format('%%I.%%I', n.nspname, c.relname) AS object,
       'the view is not security_invoker: it reads its tables as its owner, not under the reader''s policies' AS problem,
       format('ALTER VIEW %%I.%%I SET (security_invoker = true);', n.nspname, c.relname) AS fix
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s) AND c.relkind = 'v'
   AND NOT EXISTS (SELECT FROM unnest(c.reloptions) AS o
                    WHERE o IN ('security_invoker=true', 'security_invoker=on', 'security_invoker=1'))
 ORDER BY 1

-- function_search_path --
-- SECURITY DEFINER functions (and functions that pin a path) whose search_path lets a session's objects in
WITH f AS (
    SELECT p.oid, p.prosecdef,
           (SELECT substr(s, length('search_path=') + 1) FROM unnest(p.proconfig) AS s
             WHERE s LIKE 'search\_path=%%') AS path
      FROM pg_proc AS p
      JOIN pg_namespace AS n ON n.oid = p.pronamespace
     WHERE n.nspname = ANY (%(schemas)s)
        OR (p.prosecdef AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = 'crmdb_owner'))
)
SELECT f.oid::regprocedure::text AS object,
       CASE WHEN f.path IS NULL
            THEN 'SECURITY DEFINER without a pinned search_path: it runs with the caller''s path and the owner''s rights'
            ELSE format('search_path %%s searches pg_temp before pg_catalog: any session can shadow types (and relations) the function names', f.path)
       END AS problem,
       format('ALTER FUNCTION %%s SET search_path = pg_catalog, pg_temp;', f.oid::regprocedure) AS fix
  FROM f
 WHERE (f.prosecdef AND f.path IS NULL)
    OR (f.path IS NOT NULL
        AND (string_to_array(replace(f.path, ' ', ''), ','))[cardinality(string_to_array(replace(f.path, ' ', ''), ','))] <> 'pg_temp')
 ORDER BY 1

-- privileged_role --
-- Employee and gateway roles that are, or may act as, a role that steps around row-level security
WITH reaching AS (
    SELECT e.role_name, 'employee' AS kind FROM crm.employees AS e
    UNION
    SELECT g.role_name, 'gateway' FROM crm_private.gateways AS g
)
SELECT x.role_name::text AS object,
       format('%%s role %%s %%s: %%s', x.kind, x.role_name,
              CASE WHEN p.oid = r.oid THEN 'has' ELSE 'may act as ' || quote_ident(p.rolname) || ', which has' END,
              concat_ws(', ', CASE WHEN p.rolsuper THEN 'SUPERUSER' END,
                              CASE WHEN p.rolbypassrls THEN 'BYPASSRLS' END,
                              CASE WHEN p.rolcreaterole THEN 'CREATEROLE' END,
                              CASE WHEN p.rolname = 'crmdb_owner' THEN 'every crmdb object' END,
                              CASE WHEN p.rolname = 'crmdb_worker' THEN 'every employee''s identity' END)) AS problem,
       CASE WHEN p.oid = r.oid
            THEN format('ALTER ROLE %%I NOSUPERUSER NOBYPASSRLS NOCREATEROLE;', r.rolname)
            ELSE format('REVOKE %%I FROM %%I;', p.rolname, r.rolname)
       END AS fix
  FROM reaching AS x
  JOIN pg_roles AS r ON r.rolname = x.role_name
  -- A superuser is a member of every role: report the attribute, not each role.
  JOIN pg_roles AS p ON p.oid = r.oid OR (NOT r.rolsuper AND pg_has_role(r.oid, p.oid, 'MEMBER'))
 WHERE p.rolsuper OR p.rolbypassrls OR p.rolcreaterole OR p.rolname IN ('crmdb_owner', 'crmdb_worker')
 ORDER BY 1, 2

-- role_owns_objects --
-- Employee and gateway roles that own objects in this database (an owner may change them, and skips unforced policies)
WITH reaching AS (
    SELECT e.role_name FROM crm.employees AS e
    UNION
    SELECT g.role_name FROM crm_private.gateways AS g
)
SELECT x.role_name::text AS object,
       format('owns %%s', string_agg(pg_describe_object(d.classid, d.objid, d.objsubid), ', '
                                    ORDER BY pg_describe_object(d.classid, d.objid, d.objsubid))) AS problem,
       format('REASSIGN OWNED BY %%I TO crmdb_owner;', x.role_name) AS fix
  FROM reaching AS x
  JOIN pg_roles AS r ON r.rolname = x.role_name
  JOIN pg_shdepend AS d ON d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid
       AND d.deptype = 'o' AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
 GROUP BY x.role_name
 ORDER BY 1

-- public_grants --
-- Privileges PUBLIC holds on crmdb's schemas, relations and functions (a function's default ACL lets PUBLIC execute it)
SELECT format('schema %%I', n.nspname) AS object,
       format('PUBLIC holds %%s', string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type)) AS problem,
       format('REVOKE ALL ON SCHEMA %%I FROM PUBLIC;', n.nspname) AS fix
  FROM pg_namespace AS n
 CROSS JOIN LATERAL aclexplode(n.nspacl) AS a
 WHERE n.nspname = ANY (%(schemas)s) AND a.grantee = 0
 GROUP BY n.nspname
UNION ALL
SELECT format('%%s %%I.%%I', CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' ELSE 'table' END,
              n.nspname, c.relname),
       format('PUBLIC holds %%s', string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type)),
       format('REVOKE ALL ON %%s %%I.%%I FROM PUBLIC;', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
              n.nspname, c.relname)
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL aclexplode(c.relacl) AS a
 WHERE n.nspname = ANY (%(schemas)s) AND a.grantee = 0
 GROUP BY n.nspname, c.relname, c.relkind
UNION ALL
SELECT format('function %%s', p.oid::regprocedure),
       'PUBLIC may execute it',
       format('REVOKE EXECUTE ON FUNCTION %%s FROM PUBLIC;', p.oid::regprocedure)
  FROM pg_proc AS p
  JOIN pg_namespace AS n ON n.oid = p.pronamespace
 CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS a
 WHERE n.nspname = ANY (%(schemas)s) AND a.grantee = 0
 ORDER BY 1

-- owner_policy_drift --
-- Owner policies that no longer say exactly "crmdb_owner, every row"; other policies outside crm and crm_vault (which templates never make)
SELECT format('%%I on %%I.%%I', p.polname, n.nspname, c.relname) AS object,
       CASE WHEN p.polname = 'crmdb_owner_all'
            THEN 'the owner policy was changed: it must apply to crmdb_owner only, to every row and command'
            ELSE 'no template generates policies outside the crm and crm_vault schemas'
       END AS problem,
       format('DROP POLICY %%I ON %%I.%%I;', p.polname, n.nspname, c.relname)
       || CASE WHEN p.polname = 'crmdb_owner_all'
               THEN format(' CREATE POLICY crmdb_owner_all ON %%I.%%I TO crmdb_owner USING (true) WITH CHECK (true);',
                           n.nspname, c.relname)
               ELSE '' END AS fix
  FROM pg_policy AS p
  JOIN pg_class AS c ON c.oid = p.polrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s)
   AND CASE WHEN p.polname = 'crmdb_owner_all'
            THEN NOT (p.polcmd = '*' AND p.polpermissive
                      AND p.polroles = ARRAY[(SELECT oid FROM pg_roles WHERE rolname = 'crmdb_owner')]::oid[]
                      AND pg_get_expr(p.polqual, p.polrelid) = 'true'
                      AND pg_get_expr(p.polwithcheck, p.polrelid) = 'true')
            ELSE n.nspname NOT IN ('crm', 'crm_vault')
       END
 ORDER BY 1

-- template_grants_nothing --
-- Templates employees hold (crm.project_members) whose role grants no table and no report
-- (EXECUTE on a crm function, `reports:`), or that has no role at all
SELECT t.template AS object,
       CASE WHEN r.oid IS NULL
            THEN format('%%s membership(s) name template %%s, but no role %%I exists: no policy file defines it',
                        t.members, t.template, t.role_name)
            ELSE format('%%s membership(s) name template %%s, whose role %%I is granted no crm table and no report: it grants nothing',
                        t.members, t.template, t.role_name)
       END AS problem,
       format('DELETE FROM crm.project_members WHERE template = %%L;'
              '  -- or give policies/%%s.yaml tables and run: crmdb policy apply', t.template, t.template) AS fix
  FROM (SELECT m.template, 'crmdb_tpl_' || m.template AS role_name, count(*) AS members
          FROM crm.project_members AS m
         GROUP BY m.template) AS t
  LEFT JOIN pg_roles AS r ON r.rolname = t.role_name
 WHERE r.oid IS NULL
    OR (NOT EXISTS (SELECT FROM pg_class AS c
                      JOIN pg_namespace AS n ON n.oid = c.relnamespace
                     CROSS JOIN LATERAL aclexplode(c.relacl) AS a
                     WHERE n.nspname = 'crm' AND a.grantee = r.oid)
        AND NOT EXISTS (SELECT FROM pg_proc AS f
                          JOIN pg_namespace AS n ON n.oid = f.pronamespace
                         CROSS JOIN LATERAL aclexplode(f.proacl) AS a
                         WHERE n.nspname = 'crm' AND a.grantee = r.oid
                           AND a.privilege_type = 'EXECUTE'))
 ORDER BY 1

-- read_copies_exposed --
-- Privileges and views that show the field groups' read copies (migration 0017) outside crm_api: USAGE on crm_vault, SELECT on crm.customers or crm.contracts as a whole, or on a copy column; a view over crm_vault or a copy column
WITH copies AS (
    -- the read copies: columns of crm's tables whose type is a crm_vault group type
    SELECT at.attrelid, at.attnum, at.attname, at.attacl
      FROM pg_attribute AS at
      JOIN pg_type AS t ON t.oid = at.atttypid
      JOIN pg_namespace AS tn ON tn.oid = t.typnamespace AND tn.nspname = 'crm_vault'
      JOIN pg_class AS c ON c.oid = at.attrelid
      JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = 'crm'
     WHERE NOT at.attisdropped
)
SELECT 'schema crm_vault' AS object,
       format('%%I may name crm_vault''s tables, which show every field group''s read copy on each row it may read', r.rolname) AS problem,
       format('REVOKE USAGE ON SCHEMA crm_vault FROM %%I;', r.rolname) AS fix
  FROM pg_namespace AS n
 CROSS JOIN LATERAL aclexplode(n.nspacl) AS a
  JOIN pg_roles AS r ON r.oid = a.grantee
 WHERE n.nspname = 'crm_vault' AND a.privilege_type = 'USAGE' AND r.rolname <> 'crmdb_owner'
UNION ALL
SELECT format('%%I.%%I', n.nspname, c.relname),
       format('%%I may select the whole table, the read copies of its field groups included: every group of each row it may read', r.rolname),
       format('REVOKE SELECT ON %%I.%%I FROM %%I;  -- crmdb policy apply grants a template role every other column again',
              n.nspname, c.relname, r.rolname)
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL aclexplode(c.relacl) AS a
  JOIN pg_roles AS r ON r.oid = a.grantee
 WHERE a.privilege_type = 'SELECT' AND r.rolname <> 'crmdb_owner'
   AND EXISTS (SELECT FROM copies WHERE copies.attrelid = c.oid)
UNION ALL
SELECT format('%%I.%%I.%%I', n.nspname, c.relname, cp.attname),
       format('%%I may select this read copy of a field group: the group of each row it may read', r.rolname),
       format('REVOKE SELECT (%%I) ON %%I.%%I FROM %%I;', cp.attname, n.nspname, c.relname, r.rolname)
  FROM copies AS cp
  JOIN pg_class AS c ON c.oid = cp.attrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL aclexplode(cp.attacl) AS a
  JOIN pg_roles AS r ON r.oid = a.grantee
 WHERE a.privilege_type = 'SELECT' AND r.rolname <> 'crmdb_owner'
UNION ALL
-- A view outside crm_api that shows the read copies without crm_api's checks (made by
-- a superuser or the owner, who may name them): one over crm_vault (employees select its
-- tables, as crm_api's views need), or one over a copy column that runs with its owner's
-- privileges (not security_invoker, as view_not_security_invoker reads the option; a
-- materialized view keeps what its owner read). A security_invoker view over a copy
-- column is refused to employees by the column's privileges.
SELECT format('%%I.%%I', x.nspname, x.relname),
       format('this %%s reads the field groups'' read copies (%%s)%%s without crm_api''s checks: whoever may select it reads every group of the rows it shows',
              CASE x.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
              string_agg(DISTINCT x.reads, ', '),
              CASE WHEN NOT x.invoker THEN format(' as its owner %%I', x.owner) ELSE '' END),
       format('DROP %%s %%I.%%I;  -- read crm_api''s views instead, which show each group where the templates allow',
              CASE x.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, x.nspname, x.relname)
  FROM (SELECT vn.nspname, v.relname, v.relkind, pg_get_userbyid(v.relowner) AS owner,
               format('%%I.%%I', tn.nspname, t.relname) AS reads, tn.nspname = 'crm_vault' AS vault,
               v.relkind = 'v' AND EXISTS (
                   SELECT FROM unnest(v.reloptions) AS o
                    WHERE o IN ('security_invoker=true', 'security_invoker=on', 'security_invoker=1')) AS invoker
          FROM pg_depend AS d
          JOIN pg_rewrite AS rw ON rw.oid = d.objid
          JOIN pg_class AS v ON v.oid = rw.ev_class
          JOIN pg_namespace AS vn ON vn.oid = v.relnamespace
          JOIN pg_class AS t ON t.oid = d.refobjid
          JOIN pg_namespace AS tn ON tn.oid = t.relnamespace
          LEFT JOIN copies AS cp ON cp.attrelid = t.oid AND cp.attnum = d.refobjsubid
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
           AND v.oid <> t.oid AND vn.nspname <> 'crm_api'
           AND ((tn.nspname = 'crm_vault' AND t.relkind IN ('r', 'p')) OR cp.attnum IS NOT NULL)) AS x
 GROUP BY x.nspname, x.relname, x.relkind, x.owner, x.invoker
HAVING bool_or(x.vault) OR NOT x.invoker
 ORDER BY 1, 2

-- derived_columns_writable --
-- Anchor copies of field-group tables and stored masks that an employee role may write, with no crmdb trigger refusing it
WITH guarded AS (
    -- side tables: the parent's anchors; parents: <column>_mask of every masked column
    SELECT c.oid AS relid, a.attnum, a.attname::text AS col, ARRAY['UPDATE'] AS privileges
      FROM pg_class AS c
      JOIN pg_namespace AS n ON n.oid = c.relnamespace
      JOIN pg_class AS parent ON parent.relnamespace = c.relnamespace
           AND parent.relname = split_part(c.relname, '__', 1)
      JOIN pg_attribute AS a ON a.attrelid = c.oid
     WHERE n.nspname = 'crm' AND c.relkind = 'r' AND c.relname LIKE '%%\_\_%%'
       AND a.attname IN ('project_id', 'org_unit_id', 'owner_id', 'customer_id')
       AND NOT a.attisdropped
    UNION ALL
    SELECT c.oid, a.attnum, a.attname::text, ARRAY['INSERT', 'UPDATE']
      FROM crm_private.field_masks AS m
      JOIN pg_class AS c ON c.relname = m.table_name
           AND c.relnamespace = 'crm'::regnamespace
      JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = m.column_name || '_mask'
), writers AS (
    -- employees hold what their templates hold; a grant to one of them by hand is
    -- role_owns_objects' and public_grants' kind of mistake, not reported here
    SELECT r.oid, r.rolname
      FROM pg_roles AS r
     WHERE r.rolname LIKE 'crmdb\_tpl\_%%' OR r.rolname LIKE 'crmdb\_rule\_%%'
        OR r.rolname = 'crmdb_employee'
), exposed AS (
    SELECT g.relid, g.col, g.privileges,
           string_agg(DISTINCT w.rolname::text, ', ' ORDER BY w.rolname::text) AS roles
      FROM guarded AS g
      JOIN writers AS w ON EXISTS (SELECT FROM unnest(g.privileges) AS p
                                    WHERE has_column_privilege(w.oid, g.relid, g.attnum, p))
     WHERE NOT EXISTS (
           SELECT FROM pg_trigger AS t
            WHERE t.tgrelid = g.relid AND NOT t.tgisinternal AND t.tgenabled IN ('O', 'A')
              AND t.tgfoid = 'crm_private.keep_derived()'::regprocedure
              AND t.tgtype & 3 = 3                       -- BEFORE, FOR EACH ROW
              AND t.tgtype & 16 = 16                     -- UPDATE
              AND (t.tgtype & 4 = 4 OR g.privileges = ARRAY['UPDATE'])  -- INSERT, for masks
              AND (cardinality(t.tgattr::int2[]) = 0 OR g.attnum = ANY (t.tgattr::int2[]))
              AND g.col = ANY (string_to_array(encode(t.tgargs, 'escape'), '\000')))
     GROUP BY g.relid, g.col, g.privileges
)
SELECT format('%%s.%%I', x.relid::regclass, x.col) AS object,
       format('%%s may write it (%%s) and no enabled crm_private.keep_derived trigger refuses that: %%s',
              x.roles, array_to_string(x.privileges, ', '),
              CASE WHEN x.privileges = ARRAY['UPDATE']
                   THEN 'an anchor copy moved by hand detaches the field group from its row''s policies'
                   ELSE 'a forged mask misleads every masked reader' END) AS problem,
       format('DROP TRIGGER IF EXISTS _040_keep_derived ON %%1$s; CREATE TRIGGER _040_keep_derived'
              ' BEFORE %%2$s OF %%3$s ON %%1$s FOR EACH ROW EXECUTE FUNCTION crm_private.keep_derived(%%4$s);',
              x.relid::regclass,
              CASE WHEN x.privileges = ARRAY['UPDATE'] THEN 'UPDATE' ELSE 'INSERT OR UPDATE' END,
              (SELECT string_agg(quote_ident(g.col), ', ' ORDER BY g.attnum) FROM guarded AS g
                WHERE g.relid = x.relid AND g.privileges = x.privileges),
              (SELECT string_agg(quote_literal(g.col), ', ' ORDER BY g.attnum) FROM guarded AS g
                WHERE g.relid = x.relid AND g.privileges = x.privileges)) AS fix
  FROM exposed AS x
 ORDER BY 1

-- audit_reader_without_groups --
-- Templates that read the audit trail but not every field group: crm.change_log holds every field's history
WITH sides AS (
    SELECT c.oid, c.relname
      FROM pg_class AS c
     WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
       AND c.relname LIKE '%%\_\_%%'
       AND EXISTS (SELECT FROM pg_class AS parent WHERE parent.relnamespace = c.relnamespace
                      AND parent.relname = split_part(c.relname, '__', 1))
)
SELECT r.rolname::text AS object,
       format('reads crm.change_log, where field groups'' values are logged under their table''s name,'
              ' but no policy lets it read %%s', string_agg(s.relname::text, ', ' ORDER BY s.relname)) AS problem,
       format('REVOKE SELECT ON crm.change_log FROM %%I;  -- or name those groups in fields: {read: [...]}'
              ' of the template''s scopes and run: crmdb policy apply', r.rolname) AS fix
  FROM pg_roles AS r
 CROSS JOIN sides AS s
 WHERE (r.rolname LIKE 'crmdb\_tpl\_%%' OR r.rolname = 'crmdb_employee')
   AND has_table_privilege(r.oid, 'crm.change_log', 'SELECT')
   AND EXISTS (SELECT FROM pg_policy AS p
                WHERE p.polrelid = 'crm.change_log'::regclass AND p.polcmd IN ('r', '*')
                  AND (r.oid = ANY (p.polroles) OR p.polroles = '{0}'))
   AND NOT EXISTS (SELECT FROM pg_policy AS p
                    WHERE p.polrelid = s.oid AND p.polcmd IN ('r', '*')
                      AND (r.oid = ANY (p.polroles) OR p.polroles = '{0}'))
 GROUP BY r.rolname
 ORDER BY 1

-- explain_guard --
-- Sessions that do not load crmdb_guard: employees may EXPLAIN, and a plan tells what row-level security hides
SELECT 'session_preload_libraries' AS object,
       'sessions do not load crmdb_guard: an employee with a SQL login can EXPLAIN ANALYZE and'
       ' read hidden rows and fields by bisection' AS problem,
       'crmdb guard enable   -- on the server''s machine; or build ext/crmdb_guard, install it'
       ' and: ALTER SYSTEM SET session_preload_libraries = ''crmdb_guard''; SELECT pg_reload_conf();' AS fix
 WHERE current_setting('crmdb_guard.version', true) IS NULL

-- side_tables --
-- Field-group tables (crm.<parent>__<group>) with their parent and the anchors they copy from it (not a check)
SELECT c.relname::text AS side, split_part(c.relname, '__', 1) AS parent,
       array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attname IS NOT NULL) AS anchors
  FROM pg_class AS c
  JOIN pg_class AS parent ON parent.relnamespace = c.relnamespace
       AND parent.relname = split_part(c.relname, '__', 1) AND parent.relkind = 'r'
  LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND NOT a.attisdropped
       AND a.attname IN ('project_id', 'org_unit_id', 'owner_id', 'customer_id')
       AND EXISTS (SELECT FROM pg_attribute AS pa WHERE pa.attrelid = parent.oid
                      AND pa.attname = a.attname AND NOT pa.attisdropped)
 WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r' AND c.relname LIKE '%%\_\_%%'
 GROUP BY c.relname
 ORDER BY 1

-- side_rows_out_of_step --
-- Rows of one field-group table whose anchor copies differ from their parent's, and parents without their group row ({side}, {parent}, {anchors}, {side_anchors}, {parent_anchors} formatted by crmdb/lint.py)
SELECT (SELECT count(*) FROM {side} AS s JOIN {parent} AS p ON p.id = s.id
         WHERE ({side_anchors}) IS DISTINCT FROM ({parent_anchors})) AS moved,
       (SELECT count(*) FROM {parent} AS p
         WHERE NOT EXISTS (SELECT FROM {side} AS s WHERE s.id = p.id)) AS missing

-- fix_side_anchors --
-- The statement that copies a parent's anchors to its field-group rows again (formatted as above)
UPDATE {side} AS s SET ({anchors}) = ROW({parent_anchors}) FROM {parent} AS p
 WHERE p.id = s.id AND ({side_anchors}) IS DISTINCT FROM ({parent_anchors});

-- fix_side_rows --
-- The statement that makes the missing field-group rows (formatted as above)
INSERT INTO {side} (id, {anchors}) SELECT p.id, {parent_anchors} FROM {parent} AS p
 WHERE NOT EXISTS (SELECT FROM {side} AS s WHERE s.id = p.id);

-- copies_out_of_step --
-- Rows whose read copy of a field group (what crm_api shows) differs from the group's row ({parent}, {side}, {copy} formatted by crmdb/lint.py)
SELECT count(*) FROM {parent} AS p JOIN {side} AS s ON s.id = p.id
 WHERE p.{copy} IS DISTINCT FROM crm_private.copy_of(s)

-- fix_copies --
-- The statement that copies the groups' values into their rows again (formatted as above)
UPDATE {parent} AS p SET {copy} = crm_private.copy_of(s) FROM {side} AS s
 WHERE s.id = p.id AND p.{copy} IS DISTINCT FROM crm_private.copy_of(s);

-- masks_out_of_step --
-- Stored masks that differ from the mask of the value ({parent}, {side}, {column}, {mask} formatted by crmdb/lint.py; %(keep)s)
SELECT count(*) FROM {parent} AS r JOIN {side} AS g ON g.id = r.id
 WHERE r.{mask} IS DISTINCT FROM crm_private.mask_text(g.{column}, %(keep)s)

-- api_views --
-- crm_api's views: the comment policy apply left, the definition, the INSTEAD OF trigger's function (source, definer) and its state, the grants, and the definition of its crm_private scope view (with crmdb_guard's statement cache)
SELECT format('crm_api.%%I', c.relname) AS view,
       obj_description(c.oid, 'pg_class') AS comment,
       pg_get_viewdef(c.oid) AS definition,
       f.prosrc AS writer_source,
       f.prosecdef AS writer_definer,
       t.tgenabled IN ('O', 'A') AS writer_enabled,
       (SELECT array_agg(format('%%s:%%s', a.grantee::regrole, a.privilege_type))
          FROM aclexplode(c.relacl) AS a WHERE a.grantee <> c.relowner) AS grants,
       pg_get_viewdef(to_regclass(format('crm_private.%%I', 'api_' || c.relname || '_scope')))
           AS scope
  FROM pg_class AS c
  LEFT JOIN pg_trigger AS t ON t.tgrelid = c.oid AND t.tgname = 'write'
  LEFT JOIN pg_proc AS f ON f.oid = t.tgfoid
 WHERE c.relnamespace = 'crm_api'::regnamespace AND c.relkind = 'v'
 ORDER BY 1

-- api_view_definition --
-- The definition of a view as PostgreSQL prints it (the desired one, created as a temporary view)
SELECT pg_get_viewdef(%(view)s::regclass)
