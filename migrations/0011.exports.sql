-- Audited exports: who exported what, refused or not, and everyone concerned is told.
-- depends: 0010.feature-clusters
--
-- crm.export(table, filter, fields) is the one export path (crmdb export uses it too):
-- SECURITY INVOKER, it reads crm_private.export_<table>, a view crmdb policy apply
-- generates over crm_api.<table> with the rows the caller's templates let them export
-- (the `export` action), so rows and fields are exactly what the caller may see and
-- export. In the same transaction it writes crm.exports (who, when, filter, fields, row
-- count, the exported ids as ranges) and one notification per related account: the
-- owners of the exported records, their managers and the projects' admins. A refused
-- export returns no rows, raises a WARNING and is recorded as refused: PostgreSQL has
-- no autonomous transactions, so the record needs the caller's transaction to commit
-- (crmdb export does; apps must too, or ask crm.export_allowed first).

SET ROLE crmdb_owner;

CREATE TABLE crm.exports (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    employee_id  bigint REFERENCES crm.employees (id),
    actor_role   name NOT NULL,
    table_name   text NOT NULL,
    filter       text,
    fields       text[] NOT NULL,
    row_count    bigint NOT NULL DEFAULT 0,
    record_ids   int8multirange NOT NULL DEFAULT '{}',
    project_ids  bigint[] NOT NULL DEFAULT '{}',
    refused      boolean NOT NULL DEFAULT false,
    reason       text,
    txid         bigint NOT NULL DEFAULT pg_catalog.txid_current()
);
CREATE INDEX exports_employee_idx ON crm.exports (employee_id, at);
CREATE INDEX exports_project_ids_idx ON crm.exports USING gin (project_ids);
COMMENT ON TABLE crm.exports IS 'The export audit trail (crm.export, crmdb export): append-only for everyone';
COMMENT ON COLUMN crm.exports.filter IS 'The caller''s WHERE condition, as given';
COMMENT ON COLUMN crm.exports.record_ids IS 'Every exported id, as ranges of consecutive ids (compact for large exports)';
COMMENT ON COLUMN crm.exports.project_ids IS 'Projects of the exported records (their admins are told and may read this row)';
COMMENT ON COLUMN crm.exports.refused IS 'The caller had no export action on the table; reason says why';

CREATE TRIGGER _000_append_only BEFORE UPDATE OR DELETE ON crm.exports
    FOR EACH ROW EXECUTE FUNCTION crm_private.refuse_change_log_edit();
CREATE TRIGGER _000_append_only_truncate BEFORE TRUNCATE ON crm.exports
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.refuse_change_log_edit();

ALTER TABLE crm.exports ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.exports FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.exports TO crmdb_owner USING (true) WITH CHECK (true);
CREATE POLICY crmdb_employee_own ON crm.exports FOR SELECT TO crmdb_employee
    USING (employee_id = (SELECT crm_private.employee_id_for(current_user)));
CREATE POLICY crmdb_project_admins ON crm.exports FOR SELECT TO crmdb_employee
    USING (project_ids && (SELECT crm_private.project_ids(current_user, 'admin')
                                  || crm_private.project_ids(current_user, 'super_admin')));
COMMENT ON POLICY crmdb_employee_own ON crm.exports IS 'crmdb: every employee reads the record of their own exports';
COMMENT ON POLICY crmdb_project_admins ON crm.exports IS 'crmdb: project admins read the exports of their projects'' records';
GRANT SELECT ON crm.exports TO crmdb_employee;

-- Recording ---------------------------------------------------------------------------

-- Who is told of an export: the owners of the exported records and their direct
-- managers, and the admins of the records' projects; not the exporter.
CREATE FUNCTION crm_private.export_recipients(p_table text, p_ids int8multirange, p_projects bigint[])
RETURNS SETOF bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    WITH owners AS (
        SELECT c.owner_id AS id FROM unnest(p_ids) AS r
          JOIN crm.customers AS c ON c.id >= lower(r) AND c.id < upper(r)
         WHERE p_table = 'customers' AND c.owner_id IS NOT NULL
        UNION
        SELECT k.owner_id FROM unnest(p_ids) AS r
          JOIN crm.contracts AS k ON k.id >= lower(r) AND k.id < upper(r)
         WHERE p_table = 'contracts' AND k.owner_id IS NOT NULL
    )
    SELECT id FROM owners
    UNION
    SELECT e.manager_id FROM owners JOIN crm.employees AS e ON e.id = owners.id
     WHERE e.manager_id IS NOT NULL
    UNION
    SELECT m.employee_id FROM crm.project_members AS m
     WHERE m.project_id = ANY (p_projects) AND m.template IN ('admin', 'super_admin')
$$;
COMMENT ON FUNCTION crm_private.export_recipients(text, int8multirange, bigint[]) IS 'Accounts an export concerns: owners of the exported records, their managers, the projects'' admins';

-- SECURITY DEFINER: employees cannot write crm.exports themselves. It records what the
-- calling export found; a caller can add a record of an export that did not happen,
-- never remove or change one (README, Exports).
CREATE FUNCTION crm_private.record_export(
    p_table text, p_filter text, p_fields text[], p_count bigint, p_ids int8multirange,
    p_projects bigint[], p_refused boolean, p_reason text
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_actor name := crm_private.acting_role();
    v_employee bigint := crm_private.employee_id_for(v_actor);
    v_id bigint;
BEGIN
    IF v_employee IS NULL AND NOT pg_catalog.pg_has_role(v_actor, 'crmdb_owner', 'MEMBER') THEN
        RAISE EXCEPTION 'crmdb: only employees export' USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO crm.exports (employee_id, actor_role, table_name, filter, fields, row_count,
                             record_ids, project_ids, refused, reason)
    VALUES (v_employee, v_actor, p_table, p_filter, p_fields, p_count, p_ids, p_projects,
            p_refused, p_reason)
    RETURNING id INTO v_id;
    IF NOT p_refused AND p_count > 0 THEN
        INSERT INTO crm.notifications (employee_id, kind, subject, details)
        SELECT r, 'export',
               pg_catalog.format('%s exported %s %s record(s), yours among them',
                                 coalesce((SELECT e.full_name FROM crm.employees AS e WHERE e.id = v_employee), v_actor),
                                 p_count, p_table),
               jsonb_build_object('export_id', v_id, 'table', p_table, 'rows', p_count,
                                  'by', v_actor)
          FROM crm_private.export_recipients(p_table, p_ids, p_projects) AS r
         WHERE r IS DISTINCT FROM v_employee;
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION crm_private.record_export(text, text, text[], bigint, int8multirange, bigint[], boolean, text) IS 'Writes an export''s audit row and tells the accounts it concerns (crm.export calls it)';

-- The export path ---------------------------------------------------------------------

CREATE FUNCTION crm.export_allowed(p_table text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.to_regclass(pg_catalog.format('crm_private.%I', 'export_' || p_table)) IS NOT NULL
       AND pg_catalog.has_table_privilege(
               pg_catalog.format('crm_private.%I', 'export_' || p_table), 'SELECT')
$$;
COMMENT ON FUNCTION crm.export_allowed(text) IS 'Whether the current employee holds the export action on a table (on some of its rows)';

CREATE FUNCTION crm.export(p_table text, p_filter text DEFAULT NULL, p_fields text[] DEFAULT NULL)
RETURNS SETOF jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_view text := pg_catalog.format('crm_private.%I', 'export_' || p_table);
    v_columns text[];
    v_fields text[];
    v_unknown text[];
    v_count bigint := 0;
    v_ranges int8range[] := '{}';
    v_start bigint;
    v_last bigint;
    v_projects bigint[] := '{}';
    r record;
BEGIN
    IF NOT crm.export_allowed(p_table) THEN
        PERFORM crm_private.record_export(p_table, p_filter, coalesce(p_fields, '{}'), 0, '{}',
                                          '{}', true, 'no export action on ' || p_table);
        RAISE WARNING 'crmdb: export of % refused: you have no export action on it (recorded)', p_table
            USING ERRCODE = 'insufficient_privilege';
        RETURN;
    END IF;
    v_columns := ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = v_view::regclass AND a.attnum > 0 AND NOT a.attisdropped
                        ORDER BY a.attnum);
    v_fields := coalesce(p_fields, v_columns);
    v_unknown := ARRAY(SELECT f FROM unnest(v_fields) AS f WHERE f <> ALL (v_columns));
    IF cardinality(v_unknown) > 0 THEN
        RAISE EXCEPTION 'crmdb: % has no field %', p_table, array_to_string(v_unknown, ', ')
            USING ERRCODE = 'undefined_column',
                  HINT = 'fields: ' || array_to_string(v_columns, ', ');
    END IF;
    -- The filter is the caller's own SQL, run with the caller's own rights.
    FOR r IN EXECUTE pg_catalog.format(
        'SELECT e.id, (to_jsonb(e) ->> ''project_id'')::bigint AS project_id,'
        ' (SELECT jsonb_object_agg(j.k, j.v) FROM jsonb_each(to_jsonb(e)) AS j (k, v)'
        '   WHERE j.k = ANY ($1)) AS doc'
        ' FROM %s AS e WHERE %s ORDER BY e.id', v_view, coalesce(nullif(p_filter, ''), 'true'))
        USING v_fields
    LOOP
        v_count := v_count + 1;
        IF v_last IS NOT NULL AND r.id = v_last + 1 THEN
            v_last := r.id;
        ELSE
            IF v_last IS NOT NULL THEN
                v_ranges := v_ranges || int8range(v_start, v_last + 1);
            END IF;
            v_start := r.id;
            v_last := r.id;
        END IF;
        IF r.project_id IS NOT NULL AND NOT r.project_id = ANY (v_projects) THEN
            v_projects := v_projects || r.project_id;
        END IF;
        RETURN NEXT r.doc;
    END LOOP;
    IF v_last IS NOT NULL THEN
        v_ranges := v_ranges || int8range(v_start, v_last + 1);
    END IF;
    PERFORM crm_private.record_export(p_table, p_filter, v_fields, v_count,
                                      int8multirange(VARIADIC v_ranges), v_projects, false, NULL);
END
$$;
COMMENT ON FUNCTION crm.export(text, text, text[]) IS 'Export a table''s rows the current employee may export (rows and fields as crm_api shows them), as jsonb; audited and announced in the same transaction';

-- Exports are announced by email too (crm_private.notifications_email queues one per
-- notification of these kinds, with the generic notification template).
INSERT INTO crm_private.notification_emails (kind, template) VALUES ('export', 'notification');

REVOKE EXECUTE ON FUNCTION crm_private.export_recipients(text, int8multirange, bigint[]),
    crm_private.record_export(text, text, text[], bigint, int8multirange, bigint[], boolean, text),
    crm.export_allowed(text), crm.export(text, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    crm_private.record_export(text, text, text[], bigint, int8multirange, bigint[], boolean, text),
    crm.export_allowed(text), crm.export(text, text, text[])
TO crmdb_employee;

RESET ROLE;
