-- Rolls back 0009: custom fields (their values in the groups' custom columns stay).
SET ROLE crmdb_owner;

DROP TRIGGER _050_custom_values ON crm.customers__contact;
DROP TRIGGER _050_custom_values ON crm.customers__financial;
DROP TRIGGER _050_custom_values ON crm.customers__internal_notes;
DROP TRIGGER _050_custom_values ON crm.contracts__financial;
DROP TABLE crm.custom_fields;
DROP FUNCTION crm_private.check_custom_field(), crm_private.check_custom_values();
DROP TYPE crm.custom_field_type;

RESET ROLE;
