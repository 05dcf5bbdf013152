-- Rolls back 0002: the policy helpers, template membership and explain access.
-- Generated policies call these helpers, so they go too (CASCADE).
DROP TRIGGER _300_template_roles ON crm.project_members;
DROP TRIGGER _300_rule_roles ON crm.employees;
DROP TRIGGER _300_rule_roles ON crm.org_units;
DROP FUNCTION crm_private.project_members_changed();
DROP FUNCTION crm_private.employee_placement_changed();
DROP FUNCTION crm_private.org_units_moved();
DROP FUNCTION crm_private.sync_roles(bigint);
DROP FUNCTION crm_private.wanted_roles(bigint);
DROP FUNCTION crm_private.template_role(text);
DROP TABLE crm_private.sharing_rule_audiences;
DROP FUNCTION crm.explain_access(text, bigint);
DROP FUNCTION crm_private.access_paths(name, text, bigint) CASCADE;
DROP FUNCTION crm_private.prior_customers(bigint) CASCADE;
DROP FUNCTION crm_private.prior_contracts(bigint) CASCADE;
DROP FUNCTION crm_private.prior_activities(bigint) CASCADE;
DROP FUNCTION crm_private.prior_shares(bigint) CASCADE;
DROP FUNCTION crm_private.project_id(text) CASCADE;
DROP FUNCTION crm_private.shared_customer_ids(name, boolean) CASCADE;
DROP FUNCTION crm_private.has_template(name, text) CASCADE;
DROP FUNCTION crm_private.project_ids(name, text) CASCADE;
DROP FUNCTION crm_private.org_unit_ids(name, boolean) CASCADE;
DROP FUNCTION crm_private.subordinate_ids(name) CASCADE;
