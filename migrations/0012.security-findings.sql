-- Security findings (issue 8): what the attack suite's next round found.
-- depends: 0011.exports
--
-- 1. crm_private.project_id(code) answered every employee with the id of any project,
--    so NULL meant "no such project" and an id "it exists, you are not in it". It now
--    answers (as the caller, current_user) only for projects the caller is a member of
--    or that a sharing rule they are in names; any other code, existing or not, gives
--    NULL. DBAs and crmdb's own SECURITY DEFINER code (crmdb_owner) see every project.
-- 2. Who created a row (crm.customers.created_by, crm.campaign_audiences.added_by) came
--    from the client. crmdb now sets it on insert to current_user's employee and
--    refuses employees' changes (crm_private.keep_creator); DBAs keep what they load.
-- 3. A contract could be in another project than its customer: a rep in two projects
--    could put a contract of one project's customer into the other. A contract now is
--    in its customer's project (a foreign key on (customer_id, project_id), following
--    the customer when it moves), with a clear error (crm_private.contract_project).
--    Activities have no project; campaign audiences take their customer's already.
-- (Foreign-key probes of the marketing tables and the lint's report grants are fixed in
-- the generated policies and crmdb lint: run `crmdb policy apply` after this migration.)

SET ROLE crmdb_owner;

-- 1. Project ids only for one's own projects --------------------------------------------

ALTER TABLE crm_private.sharing_rule_audiences ADD COLUMN project text;
COMMENT ON COLUMN crm_private.sharing_rule_audiences.project IS 'Code of the project the rule is limited to, if any: its audience may resolve that code (crm_private.project_id)';

CREATE FUNCTION crm_private.project_id_for(p_role name, p_code text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- NULL unless the session may act as p_role and p_role is a present employee.
    v_employee bigint := crm_private.employee_id_for(p_role);
BEGIN
    IF v_employee IS NULL THEN
        RETURN NULL;
    END IF;
    -- A project p_role works in, or one a sharing rule p_role is in names; any other
    -- code gives NULL, whether or not such a project exists.
    RETURN (
        SELECT p.id FROM crm.projects AS p
         WHERE p.code = p_code
           AND (EXISTS (SELECT FROM crm.project_members AS m
                         WHERE m.project_id = p.id AND m.employee_id = v_employee)
                OR EXISTS (SELECT FROM crm_private.sharing_rule_audiences AS a
                             JOIN pg_catalog.pg_roles AS r ON r.rolname = a.role_name
                            WHERE a.project = p.code
                              AND pg_catalog.pg_has_role(p_role, r.oid, 'MEMBER'))));
END
$$;
COMMENT ON FUNCTION crm_private.project_id_for(name, text) IS 'The id of project p_code if p_role (a role the session may act as) works in it or is in a sharing rule naming it; NULL otherwise, existing or not. Use crm_private.project_id';

CREATE OR REPLACE FUNCTION crm_private.project_id(p_code text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- SECURITY INVOKER: current_user is the caller. crmdb_owner (DBAs, and crmdb's
    -- SECURITY DEFINER code such as explain_access) knows every project.
    IF pg_catalog.pg_has_role(current_user, 'crmdb_owner', 'MEMBER') THEN
        RETURN (SELECT p.id FROM crm.projects AS p WHERE p.code = p_code);
    END IF;
    RETURN crm_private.project_id_for(current_user, p_code);
END
$$;
COMMENT ON FUNCTION crm_private.project_id(text) IS 'The id of a project by code (sharing rules name projects by code), for the caller''s own projects and those of their sharing rules; NULL for any other code, existing or not';

REVOKE EXECUTE ON FUNCTION crm_private.project_id_for(name, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crm_private.project_id_for(name, text) TO crmdb_employee;

-- 2. Who created a row is crmdb's -------------------------------------------------------

-- SECURITY INVOKER: current_user is the writer (crmdb_owner inside crmdb's definer code).
CREATE FUNCTION crm_private.keep_creator() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_column text := TG_ARGV[0];  -- the creator column, e.g. created_by
BEGIN
    -- DBAs and crmdb's own code keep what they write (imports, the fixture, routing).
    IF pg_catalog.pg_has_role(current_user, 'crmdb_owner', 'MEMBER') THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        -- Whatever the statement said: the employee current_user is.
        RETURN pg_catalog.jsonb_populate_record(
            NEW, pg_catalog.jsonb_build_object(v_column, crm.current_employee_id()));
    END IF;
    IF (pg_catalog.to_jsonb(NEW) -> v_column) IS DISTINCT FROM (pg_catalog.to_jsonb(OLD) -> v_column) THEN
        RAISE EXCEPTION 'crmdb: %.% of row % is who created it and cannot change', TG_TABLE_NAME, v_column, OLD.id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'crmdb sets it on insert to the employee who inserts the row';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.keep_creator() IS 'BEFORE INSERT OR UPDATE trigger: the creator column named as argument is the inserting employee (current_user''s), and employees cannot change it';

CREATE TRIGGER _055_creator BEFORE INSERT OR UPDATE OF created_by ON crm.customers
    FOR EACH ROW EXECUTE FUNCTION crm_private.keep_creator('created_by');
CREATE TRIGGER _055_creator BEFORE INSERT OR UPDATE OF added_by ON crm.campaign_audiences
    FOR EACH ROW EXECUTE FUNCTION crm_private.keep_creator('added_by');
COMMENT ON COLUMN crm.customers.created_by IS 'The employee who created the record (set by crmdb on insert; employees cannot change it)';
COMMENT ON COLUMN crm.campaign_audiences.added_by IS 'The marketer who added the customer (set by crmdb on insert; employees cannot change it)';

-- 3. A contract is in its customer's project --------------------------------------------

-- Contracts already elsewhere: say which, and stop (moving them is the DBA's decision).
DO $$
DECLARE
    v_found text;
BEGIN
    SELECT string_agg(pg_catalog.format('contract %s (project %s) of customer %s (project %s)',
                                        k.id, k.project_id, c.id, c.project_id), '; ' ORDER BY k.id)
      INTO v_found
      FROM crm.contracts AS k
      JOIN crm.customers AS c ON c.id = k.customer_id
     WHERE k.project_id <> c.project_id;
    IF v_found IS NOT NULL THEN
        RAISE EXCEPTION 'crmdb 0012: contracts in another project than their customer''s: %', v_found
            USING HINT = 'move them (UPDATE crm.contracts AS k SET project_id = c.project_id FROM crm.customers AS c'
                         ' WHERE c.id = k.customer_id AND k.project_id <> c.project_id) or their customers, then migrate again';
    END IF;
END
$$;

ALTER TABLE crm.customers ADD CONSTRAINT customers_id_project_id_key UNIQUE (id, project_id);
COMMENT ON CONSTRAINT customers_id_project_id_key ON crm.customers IS 'Target of contracts_customer_project_fkey (a contract is in its customer''s project)';
ALTER TABLE crm.contracts ADD CONSTRAINT contracts_customer_project_fkey
    FOREIGN KEY (customer_id, project_id) REFERENCES crm.customers (id, project_id) ON UPDATE CASCADE;
COMMENT ON CONSTRAINT contracts_customer_project_fkey ON crm.contracts IS 'A contract is in its customer''s project, and follows the customer when it moves';

-- SECURITY INVOKER on purpose: the customer as the writer sees it. A hidden customer
-- gives no row and nothing is said here; the writer's row policies then refuse the
-- contract exactly as for a customer that does not exist.
CREATE FUNCTION crm_private.contract_project() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_project bigint;
BEGIN
    SELECT c.project_id INTO v_project FROM crm.customers AS c WHERE c.id = NEW.customer_id;
    IF NOT FOUND THEN
        RETURN NEW;
    ELSIF NEW.project_id IS NULL THEN
        NEW.project_id := v_project;  -- left out: the customer's
    ELSIF NEW.project_id <> v_project THEN
        RAISE EXCEPTION 'crmdb: a contract of customer % is in the customer''s project (%), not in project %',
            NEW.customer_id, v_project, NEW.project_id
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'leave project_id out: a contract takes its customer''s project';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.contract_project() IS 'BEFORE trigger on crm.contracts: project_id is the customer''s (as the writer sees the customer); another project is an error naming both';

CREATE TRIGGER _060_customer_project BEFORE INSERT OR UPDATE OF customer_id, project_id ON crm.contracts
    FOR EACH ROW EXECUTE FUNCTION crm_private.contract_project();

REVOKE EXECUTE ON FUNCTION crm_private.keep_creator(), crm_private.contract_project() FROM PUBLIC;

RESET ROLE;
