-- Rolls back 0011: the export path, its audit trail and the generated export views.
SET ROLE crmdb_owner;

DO $$
DECLARE
    v regclass;
BEGIN
    FOR v IN SELECT c.oid FROM pg_catalog.pg_class AS c
              WHERE c.relnamespace = 'crm_private'::regnamespace AND c.relkind = 'v'
                AND c.relname LIKE 'export\_%' LOOP
        EXECUTE pg_catalog.format('DROP VIEW %s', v);
    END LOOP;
END
$$;
DROP FUNCTION crm.export(text, text, text[]), crm.export_allowed(text),
    crm_private.record_export(text, text, text[], bigint, int8multirange, bigint[], boolean, text),
    crm_private.export_recipients(text, int8multirange, bigint[]);
DROP TABLE crm.exports;
DELETE FROM crm_private.notification_emails WHERE kind = 'export';

RESET ROLE;
