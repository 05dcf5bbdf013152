-- Rolls back 0002: the policy helpers, template membership and explain access.
-- Generated policies call these helpers, so they go too (CASCADE).
DROP TRIGGER _300_template_roles ON crm.project_members;
DROP FUNCTION crm_private.project_members_changed();
DROP FUNCTION crm_private.sync_template_roles(bigint);
DROP FUNCTION crm_private.template_role(text);
DROP FUNCTION crm.explain_access(text, bigint);
DROP FUNCTION crm_private.access_paths(name, text, bigint);
DROP FUNCTION crm_private.anchors(regclass, bigint, text[]) CASCADE;
DROP FUNCTION crm_private.project_id(text) CASCADE;
DROP FUNCTION crm_private.in_audience(name, text, boolean, name[]) CASCADE;
DROP FUNCTION crm_private.shared_customer_ids(name, boolean) CASCADE;
DROP FUNCTION crm_private.has_template(name, text) CASCADE;
DROP FUNCTION crm_private.project_ids(name, text) CASCADE;
DROP FUNCTION crm_private.org_unit_ids(name, boolean) CASCADE;
DROP FUNCTION crm_private.subordinate_ids(name) CASCADE;
