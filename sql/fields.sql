-- Custom fields (crmdb/custom_fields.py). `{name}` marks identifiers.

-- add_custom_field --
-- Register a field; crm_private.check_custom_field checks the group, the name, the pattern
INSERT INTO crm.custom_fields (table_name, field_group, name, data_type, label, min_value,
                               max_value, max_length, pattern, choices)
VALUES (%(table)s, %(group)s, %(name)s, %(type)s::crm.custom_field_type, %(label)s, %(min)s,
        %(max)s, %(max_length)s, %(pattern)s, %(choices)s)

-- drop_custom_field --
-- Unregister a field; returns its group's table in schema crm
DELETE FROM crm.custom_fields
 WHERE table_name = %(table)s AND name = %(name)s
RETURNING table_name || '__' || field_group

-- purge_custom_values --
-- Remove a dropped field's values from its group's rows (audited as changes of the group)
UPDATE {side} SET custom = custom - %(name)s WHERE custom ? %(name)s

-- list_custom_fields --
-- Every custom field with its rules
SELECT table_name, name, field_group, data_type::text,
       concat_ws(', ',
                 CASE WHEN min_value IS NOT NULL THEN '>= ' || min_value END,
                 CASE WHEN max_value IS NOT NULL THEN '<= ' || max_value END,
                 CASE WHEN max_length IS NOT NULL THEN 'at most ' || max_length || ' characters' END,
                 CASE WHEN pattern IS NOT NULL THEN 'matches ' || pattern END,
                 CASE WHEN choices IS NOT NULL THEN 'one of ' || array_to_string(choices, ', ') END),
       coalesce(label, '')
  FROM crm.custom_fields
 ORDER BY table_name, name
