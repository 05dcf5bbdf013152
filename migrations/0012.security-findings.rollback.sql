-- Rolls back 0012: project ids for anyone again, creators from the client, contracts in
-- any project. Rows keep their values.
SET ROLE crmdb_owner;

-- 3.
DROP TRIGGER _060_customer_project ON crm.contracts;
DROP FUNCTION crm_private.contract_project();
ALTER TABLE crm.contracts DROP CONSTRAINT contracts_customer_project_fkey;
ALTER TABLE crm.customers DROP CONSTRAINT customers_id_project_id_key;

-- 2.
DROP TRIGGER _055_creator ON crm.customers;
DROP TRIGGER _055_creator ON crm.campaign_audiences;
DROP FUNCTION crm_private.keep_creator();
COMMENT ON COLUMN crm.customers.created_by IS NULL;
COMMENT ON COLUMN crm.campaign_audiences.added_by IS 'The marketer who added the customer';

-- 1. As 0002 made it (and 0005 pinned its search_path).
CREATE OR REPLACE FUNCTION crm_private.project_id(p_code text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT p.id FROM crm.projects AS p WHERE p.code = p_code);
END
$$;
COMMENT ON FUNCTION crm_private.project_id(text) IS 'The id of a project by code (sharing rules name projects by code)';
DROP FUNCTION crm_private.project_id_for(name, text);
ALTER TABLE crm_private.sharing_rule_audiences DROP COLUMN project;

RESET ROLE;
