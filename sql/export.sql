-- Exports (crmdb/export.py). `{name}` marks identifiers and the caller's filter.

-- export_allowed --
-- Whether the current employee may export the table at all
SELECT crm.export_allowed(%(table)s)

-- export_columns --
-- The fields an export of the table can hold, in the view's order
SELECT a.attname::text
  FROM pg_catalog.pg_attribute AS a
 WHERE a.attrelid = pg_catalog.to_regclass(pg_catalog.format('crm_private.%%I', 'export_' || %(table)s))
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum

-- export_count --
-- How many rows an export will hold (for the progress bar)
SELECT count(*) FROM {view} WHERE {filter}

-- export_rows --
-- The export itself, streamed: crm.export audits it in this transaction
COPY (SELECT doc FROM crm.export(%(table)s, %(filter)s, %(fields)s) AS doc) TO STDOUT

-- refuse_export --
-- A refused export: no rows, a WARNING, and the refusal recorded
SELECT count(*) FROM crm.export(%(table)s, %(filter)s, %(fields)s)

-- last_export --
-- The audit row this transaction's export wrote
SELECT id, row_count, refused FROM crm.exports
 WHERE txid = pg_catalog.txid_current() ORDER BY id DESC LIMIT 1
