-- crmdb schema: the complete, current definition of every object migrations manage.
--
-- Applying migrations/ in order must produce exactly this schema; tests/migration
-- builds one database from each and compares their catalogs. Change both together.
--
-- Layout:
--   crm          customer data and the org (employees see it through RLS policies)
--   crm_private  internals: closure tables, helper and trigger functions
--   crm_admin    the admin API used by the CLI (SECURITY INVOKER: the caller needs
--                CREATEROLE and membership in crmdb_owner, or superuser)
--   crm_vault    what only crm_api's views read (customers and contracts with the read
--                copies of their field groups); nobody else may name it
-- Roles:
--   crmdb_owner     owns every object; never granted to an employee
--   crmdb_employee  every employee role is a member; holds the schema USAGE they need
--   crmdb_worker    holds every active employee role, NOINHERIT: the worker's login renders
--                   an employee's email as them (SET LOCAL ROLE); never granted to an employee

-- Roles ----------------------------------------------------------------------

DO $$
BEGIN
    -- NOINHERIT: the owner holds ADMIN OPTION on the template and rule roles (to grant
    -- them) but must not inherit them, or every generated policy would also apply to
    -- the owner's own queries (in the helpers), costing planning time on each.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'crmdb_owner') THEN
        CREATE ROLE crmdb_owner NOLOGIN NOINHERIT;
    ELSE
        ALTER ROLE crmdb_owner NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'crmdb_employee') THEN
        CREATE ROLE crmdb_employee NOLOGIN;
    END IF;
    -- The worker's login is a member: it renders each employee's emails under SET LOCAL
    -- ROLE <employee> (their RLS decides what the email shows). NOINHERIT, holding every
    -- active employee role: it may act as them but has none of their privileges.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'crmdb_worker') THEN
        CREATE ROLE crmdb_worker NOLOGIN NOINHERIT;
    END IF;
    -- Roles are the cluster's: this grant marks the role as used by this database, so
    -- rolling crmdb back elsewhere cannot drop it (PUBLIC may connect anyway).
    EXECUTE pg_catalog.format('GRANT CONNECT ON DATABASE %I TO crmdb_worker', pg_catalog.current_database());
    -- A non-superuser DBA (CREATEROLE) must be able to act as the owner.
    IF NOT pg_catalog.pg_has_role(current_user, 'crmdb_owner', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT crmdb_owner TO %I', current_user);
    END IF;
END
$$;

CREATE SCHEMA crm AUTHORIZATION crmdb_owner;
CREATE SCHEMA crm_private AUTHORIZATION crmdb_owner;
CREATE SCHEMA crm_admin AUTHORIZATION crmdb_owner;
CREATE SCHEMA crm_vault AUTHORIZATION crmdb_owner;

-- Everything below is created by, and so owned by, crmdb_owner.
SET ROLE crmdb_owner;

COMMENT ON SCHEMA crm IS 'crmdb: customer data and the organisation; employees reach it only through row-level security';
COMMENT ON SCHEMA crm_private IS 'crmdb internals: closure tables, helper and trigger functions; not an API';
COMMENT ON SCHEMA crm_vault IS 'What only crm_api''s views read: partitioned tables over crm.customers and crm.contracts that show the field groups'' read copies; no role but crmdb_owner may name them (no USAGE)';
COMMENT ON SCHEMA crm_admin IS 'crmdb admin API (employees, gateways, org units, projects); for DBAs and the crmdb CLI';

-- Nobody reaches the schemas unless granted below.
REVOKE ALL ON SCHEMA crm, crm_private, crm_admin FROM PUBLIC;
GRANT USAGE ON SCHEMA crm, crm_private TO crmdb_employee;

-- Types ----------------------------------------------------------------------

CREATE TYPE crm.org_unit_kind AS ENUM ('company', 'branch', 'department', 'team');
COMMENT ON TYPE crm.org_unit_kind IS 'Level of an org unit, from large to small';

CREATE TYPE crm.employee_status AS ENUM (
    'active',    -- works and receives new records
    'on_leave',  -- keeps access, receives no new records (routing skips them)
    'departed'   -- left: the role cannot log in and sees nothing
);
COMMENT ON TYPE crm.employee_status IS 'Employment state; departed employees have no identity in the database';

CREATE TYPE crm.solution AS ENUM ('marketing', 'sales', 'management');
COMMENT ON TYPE crm.solution IS 'A CRM solution a project offers (Bizfly: Marketing, Sales, Management)';

CREATE TYPE crm.customer_stage AS ENUM (
    'lead',         -- new, not yet qualified
    'qualified',    -- confirmed interest, with sales
    'opportunity',  -- negotiating a contract
    'customer',     -- bought (a won contract)
    'after_sales',  -- handed to customer care
    'lost'          -- closed without a sale
);
COMMENT ON TYPE crm.customer_stage IS 'Lifecycle stage of a customer, in pipeline order';

CREATE TYPE crm.source_channel AS ENUM (
    'chat', 'call_center', 'web_form', 'email', 'referral', 'event', 'import', 'manual'
);
COMMENT ON TYPE crm.source_channel IS 'Channel a customer record came from';

CREATE TYPE crm.contract_status AS ENUM ('draft', 'negotiating', 'won', 'lost', 'cancelled');
COMMENT ON TYPE crm.contract_status IS 'State of a deal/contract; won means signed';

CREATE TYPE crm.activity_kind AS ENUM ('call', 'email', 'meeting', 'note', 'task', 'appointment');
COMMENT ON TYPE crm.activity_kind IS 'What an activity is; task and appointment have a due time';

CREATE TYPE crm.share_access AS ENUM ('read', 'edit');
COMMENT ON TYPE crm.share_access IS 'What a manual share allows';

-- Organisation ---------------------------------------------------------------

CREATE TABLE crm.org_units (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    code        text NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9][a-z0-9_.-]*$'),
    name        text NOT NULL CHECK (name <> ''),
    kind        crm.org_unit_kind NOT NULL,
    parent_id   bigint REFERENCES crm.org_units (id),
    timezone    text NOT NULL DEFAULT 'Asia/Ho_Chi_Minh',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT org_units_not_own_parent CHECK (parent_id <> id)
);
CREATE INDEX org_units_parent_id_idx ON crm.org_units (parent_id);
COMMENT ON TABLE crm.org_units IS 'Org units as a tree, from large to small: company, branch/department, team';
COMMENT ON COLUMN crm.org_units.code IS 'Stable short name used by the CLI, templates and rules';
COMMENT ON COLUMN crm.org_units.parent_id IS 'Enclosing unit; NULL for the company';
COMMENT ON COLUMN crm.org_units.timezone IS 'IANA time zone for the unit''s business hours';

CREATE TABLE crm.employees (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    role_name    name NOT NULL UNIQUE,
    full_name    text NOT NULL CHECK (full_name <> ''),
    email        text NOT NULL UNIQUE CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    phone        text,
    title        text,
    manager_id   bigint REFERENCES crm.employees (id),
    org_unit_id  bigint NOT NULL REFERENCES crm.org_units (id),
    status       crm.employee_status NOT NULL DEFAULT 'active',
    departed_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT employees_not_own_manager CHECK (manager_id <> id),
    CONSTRAINT employees_departed_at_iff_departed CHECK ((status = 'departed') = (departed_at IS NOT NULL))
);
CREATE INDEX employees_manager_id_idx ON crm.employees (manager_id);
CREATE INDEX employees_org_unit_id_idx ON crm.employees (org_unit_id);
COMMENT ON TABLE crm.employees IS 'Staff; each is bound to exactly one PostgreSQL role, which is their identity';
COMMENT ON COLUMN crm.employees.role_name IS 'The PostgreSQL role this employee acts as (current_user); see crm.current_employee_id()';
COMMENT ON COLUMN crm.employees.manager_id IS 'Direct manager; the hierarchy may be any depth (crm_private.manager_tree)';
COMMENT ON COLUMN crm.employees.org_unit_id IS 'The team/unit the employee belongs to';
COMMENT ON COLUMN crm.employees.status IS 'active, on_leave or departed; departed employees lose login and identity';

CREATE TABLE crm.projects (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    code         text NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9][a-z0-9_.-]*$'),
    name         text NOT NULL CHECK (name <> ''),
    description  text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm.projects IS 'CRM workspaces; customers belong to exactly one project';
COMMENT ON COLUMN crm.projects.code IS 'Stable short name used by the CLI, templates and rules';

CREATE TABLE crm.project_solutions (
    project_id  bigint NOT NULL REFERENCES crm.projects (id) ON DELETE CASCADE,
    solution    crm.solution NOT NULL,
    PRIMARY KEY (project_id, solution)
);
COMMENT ON TABLE crm.project_solutions IS 'Which solutions (marketing, sales, management) a project has enabled';

CREATE TABLE crm.project_members (
    project_id   bigint NOT NULL REFERENCES crm.projects (id) ON DELETE CASCADE,
    employee_id  bigint NOT NULL REFERENCES crm.employees (id),
    solution     crm.solution NOT NULL,
    template     text NOT NULL CHECK (template ~ '^[a-z_][a-z0-9_]*$'),
    added_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, employee_id, solution),
    FOREIGN KEY (project_id, solution) REFERENCES crm.project_solutions (project_id, solution)
);
CREATE INDEX project_members_employee_id_idx ON crm.project_members (employee_id);
COMMENT ON TABLE crm.project_members IS 'Who works in which project and solution, under which role template';
COMMENT ON COLUMN crm.project_members.template IS 'Role template name (policies/<template>.yaml) that governs this membership';

-- Customer data --------------------------------------------------------------

-- Read copies of field groups (migration 0017): each customer and contract row holds
-- one per group, which only crm_api's views show (through crm_vault, see below).
CREATE TYPE crm_vault.customers_contact AS (phone text, email text, address text, custom jsonb);
CREATE TYPE crm_vault.customers_financial AS
    (bank_account text, bank_name text, tax_code text, financial_notes text, custom jsonb);
CREATE TYPE crm_vault.customers_internal_notes AS (notes text, custom jsonb);
CREATE TYPE crm_vault.contracts_financial AS
    (amount numeric(18, 2), payment_method text, bank_account text, bank_name text, custom jsonb);
COMMENT ON TYPE crm_vault.customers_contact IS 'Read copy of crm.customers__contact, held by the customer row';
COMMENT ON TYPE crm_vault.customers_financial IS 'Read copy of crm.customers__financial, held by the customer row';
COMMENT ON TYPE crm_vault.customers_internal_notes IS 'Read copy of crm.customers__internal_notes, held by the customer row';
COMMENT ON TYPE crm_vault.contracts_financial IS 'Read copy of crm.contracts__financial, held by the contract row';

CREATE TABLE crm.customers (
    id                bigint PRIMARY KEY,
    project_id        bigint NOT NULL REFERENCES crm.projects (id),
    org_unit_id       bigint REFERENCES crm.org_units (id),
    owner_id          bigint REFERENCES crm.employees (id),
    full_name         text NOT NULL CHECK (full_name <> ''),
    province          text,
    stage             crm.customer_stage NOT NULL DEFAULT 'lead',
    source            crm.source_channel NOT NULL DEFAULT 'manual',
    score             integer NOT NULL DEFAULT 0 CHECK (score BETWEEN 0 AND 100),
    product_interest  text,
    created_by        bigint REFERENCES crm.employees (id),
    assigned_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Field groups (contact, financial, internal notes) live in side tables
    -- crm.customers__<group>; see "Field groups" below.
    phone_mask        text,
    contact_copy         crm_vault.customers_contact,
    financial_copy       crm_vault.customers_financial,
    internal_notes_copy  crm_vault.customers_internal_notes,
    CONSTRAINT customers_id_project_id_key UNIQUE (id, project_id)
);
CREATE INDEX customers_owner_id_created_at_idx ON crm.customers (owner_id, created_at DESC);
CREATE INDEX customers_project_id_idx ON crm.customers (project_id);
CREATE INDEX customers_org_unit_id_idx ON crm.customers (org_unit_id);
CREATE INDEX customers_created_at_idx ON crm.customers (created_at DESC);
CREATE INDEX customers_stage_idx ON crm.customers (stage);
-- Ids from an owned sequence, taken by crm_private.assign_id (not identity: crm.customers
-- is the partition of crm_vault.customers, and partitions cannot have identity columns).
CREATE SEQUENCE crm.customers_id_seq OWNED BY crm.customers.id;
COMMENT ON SEQUENCE crm.customers_id_seq IS 'Ids of crm.customers, taken by crm_private.assign_id';
COMMENT ON TABLE crm.customers IS 'Customers and leads; who sees which row is decided by the role templates';
COMMENT ON COLUMN crm.customers.project_id IS 'The CRM workspace the customer belongs to';
COMMENT ON COLUMN crm.customers.org_unit_id IS 'The team responsible for the customer';
COMMENT ON COLUMN crm.customers.owner_id IS 'The employee caring for the customer; NULL while waiting in a routing queue';
COMMENT ON COLUMN crm.customers.full_name IS 'Contact field';
COMMENT ON COLUMN crm.customers.province IS 'Contact field; region used by routing rules';
COMMENT ON COLUMN crm.customers.stage IS 'Lifecycle stage: lead, qualified, opportunity, customer, after_sales, lost';
COMMENT ON COLUMN crm.customers.source IS 'Channel the record came from';
COMMENT ON COLUMN crm.customers.score IS 'Lead score 0-100, used by routing rules';
COMMENT ON COLUMN crm.customers.phone_mask IS 'The phone as masked readers see it (policies/fields.yaml); kept by crm_private.refresh_masks';
COMMENT ON COLUMN crm.customers.assigned_at IS 'When the current owner was assigned (SLA clocks start here)';
COMMENT ON COLUMN crm.customers.created_by IS 'The employee who created the record (set by crmdb on insert; employees cannot change it)';
COMMENT ON CONSTRAINT customers_id_project_id_key ON crm.customers IS 'Target of contracts_customer_project_fkey (a contract is in its customer''s project)';

CREATE TABLE crm.contracts (
    id              bigint PRIMARY KEY,
    customer_id     bigint NOT NULL REFERENCES crm.customers (id),
    project_id      bigint NOT NULL REFERENCES crm.projects (id),
    owner_id        bigint REFERENCES crm.employees (id),
    title           text NOT NULL CHECK (title <> ''),
    currency        char(3) NOT NULL DEFAULT 'VND',
    status          crm.contract_status NOT NULL DEFAULT 'draft',
    signed_at       timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    financial_copy  crm_vault.contracts_financial,
    CHECK ((status = 'won') = (signed_at IS NOT NULL)),
    CONSTRAINT contracts_customer_project_fkey FOREIGN KEY (customer_id, project_id)
        REFERENCES crm.customers (id, project_id) ON UPDATE CASCADE
);
CREATE INDEX contracts_customer_id_idx ON crm.contracts (customer_id);
CREATE INDEX contracts_owner_id_idx ON crm.contracts (owner_id);
CREATE INDEX contracts_project_id_idx ON crm.contracts (project_id);
CREATE SEQUENCE crm.contracts_id_seq OWNED BY crm.contracts.id;
COMMENT ON SEQUENCE crm.contracts_id_seq IS 'Ids of crm.contracts, taken by crm_private.assign_id';
COMMENT ON TABLE crm.contracts IS 'Deals and contracts of a customer (sales solution)';
COMMENT ON COLUMN crm.contracts.owner_id IS 'The sales rep who owns the contract';
COMMENT ON COLUMN crm.contracts.signed_at IS 'Set exactly when the contract is won';
COMMENT ON COLUMN crm.customers.contact_copy IS 'Read copy of the contact group (crm.customers__contact); no employee may select it: crm_api.customers shows it where the group''s predicates allow';
COMMENT ON COLUMN crm.customers.financial_copy IS 'Read copy of the financial group (crm.customers__financial); no employee may select it: crm_api.customers shows it where the group''s predicates allow';
COMMENT ON COLUMN crm.customers.internal_notes_copy IS 'Read copy of the internal_notes group (crm.customers__internal_notes); no employee may select it: crm_api.customers shows it where the group''s predicates allow';
COMMENT ON COLUMN crm.contracts.financial_copy IS 'Read copy of the financial group (crm.contracts__financial); no employee may select it: crm_api.contracts shows it where the group''s predicates allow';
COMMENT ON CONSTRAINT contracts_customer_project_fkey ON crm.contracts IS 'A contract is in its customer''s project, and follows the customer when it moves';

CREATE TABLE crm.activities (
    id                bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    customer_id       bigint NOT NULL REFERENCES crm.customers (id),
    employee_id       bigint NOT NULL REFERENCES crm.employees (id),
    kind              crm.activity_kind NOT NULL,
    subject           text NOT NULL CHECK (subject <> ''),
    body              text,
    occurred_at       timestamptz,
    due_at            timestamptz,
    done_at           timestamptz,
    duration_seconds  integer CHECK (duration_seconds >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (kind NOT IN ('task', 'appointment') OR due_at IS NOT NULL)
);
CREATE INDEX activities_customer_id_idx ON crm.activities (customer_id, occurred_at DESC);
CREATE INDEX activities_open_due_idx ON crm.activities (employee_id, due_at)
    WHERE done_at IS NULL AND kind IN ('task', 'appointment');
COMMENT ON TABLE crm.activities IS 'Calls, 1:1 emails, meetings, notes, tasks and appointments on a customer';
COMMENT ON COLUMN crm.activities.employee_id IS 'Who did it, or who must do it (tasks, appointments)';
COMMENT ON COLUMN crm.activities.occurred_at IS 'When a call/email/meeting/note happened';
COMMENT ON COLUMN crm.activities.due_at IS 'When a task or appointment is due';
COMMENT ON COLUMN crm.activities.done_at IS 'When a task or appointment was completed; NULL while open';

CREATE TABLE crm.shares (
    id                   bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    customer_id          bigint NOT NULL REFERENCES crm.customers (id) ON DELETE CASCADE,
    grantee_employee_id  bigint REFERENCES crm.employees (id),
    grantee_org_unit_id  bigint REFERENCES crm.org_units (id),
    access               crm.share_access NOT NULL DEFAULT 'read',
    reason               text,
    granted_by           bigint REFERENCES crm.employees (id),
    created_at           timestamptz NOT NULL DEFAULT now(),
    expires_at           timestamptz,
    CHECK (num_nonnulls(grantee_employee_id, grantee_org_unit_id) = 1),
    CHECK (expires_at > created_at)
);
CREATE INDEX shares_customer_id_idx ON crm.shares (customer_id);
CREATE INDEX shares_grantee_employee_id_idx ON crm.shares (grantee_employee_id, customer_id);
CREATE INDEX shares_grantee_org_unit_id_idx ON crm.shares (grantee_org_unit_id, customer_id);
COMMENT ON TABLE crm.shares IS 'Manual shares of a customer to an employee or an org unit, optionally until expires_at';
COMMENT ON COLUMN crm.shares.grantee_employee_id IS 'Share target when shared to one colleague (exactly one target is set)';
COMMENT ON COLUMN crm.shares.grantee_org_unit_id IS 'Share target when shared to a whole org unit';
COMMENT ON COLUMN crm.shares.reason IS 'Why, e.g. covering while the owner is on leave';
COMMENT ON COLUMN crm.shares.expires_at IS 'The share stops working at this time; NULL for no end';

CREATE TABLE crm.change_log (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name         text NOT NULL,
    record_id          bigint NOT NULL,
    action             text NOT NULL CHECK (action IN ('INSERT', 'UPDATE', 'DELETE')),
    changed_fields     text[] NOT NULL,
    old_values         jsonb,
    new_values         jsonb,
    actor_role         name NOT NULL,
    actor_employee_id  bigint,
    txid               xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at                 timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX change_log_record_idx ON crm.change_log (table_name, record_id, at);
CREATE INDEX change_log_at_idx ON crm.change_log (at);
COMMENT ON TABLE crm.change_log IS 'Audit trail written by triggers: who changed which row and fields, when; append-only';
COMMENT ON COLUMN crm.change_log.changed_fields IS 'Columns whose value changed (all columns on INSERT and DELETE)';
COMMENT ON COLUMN crm.change_log.old_values IS 'Values before the change, changed fields only (NULL on INSERT)';
COMMENT ON COLUMN crm.change_log.new_values IS 'Values after the change, changed fields only (NULL on DELETE)';
COMMENT ON COLUMN crm.change_log.actor_role IS 'Role the session acted as (after SET ROLE), or the login role';
COMMENT ON COLUMN crm.change_log.actor_employee_id IS 'Employee bound to actor_role; NULL for DBAs and the worker';
COMMENT ON COLUMN crm.change_log.txid IS 'Transaction that made the change; groups the rows of one statement';

-- Internals: hierarchies as closure tables -----------------------------------
-- One row per (ancestor, descendant) pair, including (x, x) at depth 0, so "x and
-- everything below it" is one index range. Triggers keep them in step with
-- employees.manager_id and org_units.parent_id: an org change rewrites only these
-- rows, never customer rows.

CREATE TABLE crm_private.manager_tree (
    manager_id   bigint NOT NULL REFERENCES crm.employees (id) ON DELETE CASCADE,
    employee_id  bigint NOT NULL REFERENCES crm.employees (id) ON DELETE CASCADE,
    depth        integer NOT NULL CHECK (depth >= 0),
    PRIMARY KEY (manager_id, employee_id)
);
CREATE INDEX manager_tree_employee_id_idx ON crm_private.manager_tree (employee_id);
COMMENT ON TABLE crm_private.manager_tree IS 'Closure of employees.manager_id: every manager above every employee, any depth (depth 0 = self)';

CREATE TABLE crm_private.org_unit_tree (
    ancestor_id    bigint NOT NULL REFERENCES crm.org_units (id) ON DELETE CASCADE,
    descendant_id  bigint NOT NULL REFERENCES crm.org_units (id) ON DELETE CASCADE,
    depth          integer NOT NULL CHECK (depth >= 0),
    PRIMARY KEY (ancestor_id, descendant_id)
);
CREATE INDEX org_unit_tree_descendant_id_idx ON crm_private.org_unit_tree (descendant_id);
COMMENT ON TABLE crm_private.org_unit_tree IS 'Closure of org_units.parent_id: every unit above every unit (depth 0 = self)';

CREATE TABLE crm_private.gateways (
    role_name   name PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm_private.gateways IS 'LOGIN roles for apps and BI tools that SET ROLE to employees; each holds every active employee role';

-- Identity -------------------------------------------------------------------

-- Whether the session may act as p_role: it is the login, or the login may SET ROLE to
-- it. SQL-standard body (bound when created, whatever the caller's search_path) and no
-- SET, so the planner inlines it: inside the helpers below it is a one-time filter.
CREATE FUNCTION crm_private.may_act_as(p_role name) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(p_role = SESSION_USER
                    OR pg_catalog.pg_has_role(SESSION_USER,
                           pg_catalog.to_regrole(pg_catalog.quote_ident(p_role)), 'MEMBER'),
                    false);
END;
COMMENT ON FUNCTION crm_private.may_act_as(name) IS 'Whether the session (its login) is p_role or may SET ROLE to it; the guard of every identity helper';

CREATE FUNCTION crm_private.employee_id_for(p_role name) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    -- Answers only for roles this session could act as, so no one learns about a
    -- colleague by passing their role name. PL/pgSQL: its plan is cached per session
    -- (a SQL function is planned at every call on PostgreSQL 15).
    IF NOT crm_private.may_act_as(p_role) THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT e.id FROM crm.employees AS e
             WHERE e.role_name = p_role AND e.status <> 'departed');
END
$$;
COMMENT ON FUNCTION crm_private.employee_id_for(name) IS 'Employee bound to a role the calling session may act as; NULL otherwise or if departed. Use crm.current_employee_id()';

CREATE FUNCTION crm.current_employee_id() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = ''
AS $$
    SELECT crm_private.employee_id_for(current_user)
$$;
COMMENT ON FUNCTION crm.current_employee_id() IS 'The employee the current role (current_user, after any SET ROLE) is bound to; NULL for non-employees and departed staff. Call as (SELECT crm.current_employee_id()) to evaluate once per statement';

CREATE FUNCTION crm_private.acting_role() RETURNS name
LANGUAGE sql STABLE SET search_path = ''
AS $$
    -- Inside SECURITY DEFINER code current_user is the owner; the session's active
    -- role is the role GUC (changed only by SET ROLE, which checks membership) or,
    -- without SET ROLE, the login.
    SELECT CASE pg_catalog.current_setting('role')
               WHEN 'none' THEN session_user
               ELSE pg_catalog.current_setting('role')::name
           END
$$;
COMMENT ON FUNCTION crm_private.acting_role() IS 'Role the session acts as, also from inside SECURITY DEFINER functions (for the audit trail)';

-- Triggers -------------------------------------------------------------------
-- Named _NNN_ so they fire in order: _100 touch, _200 hierarchy, _500 audit.

CREATE FUNCTION crm_private.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = ''
AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.touch_updated_at() IS 'BEFORE UPDATE trigger: sets updated_at';

CREATE FUNCTION crm_private.maintain_manager_tree() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- Rows of one multi-row INSERT may come in any order: link the subtrees of
        -- children whose own trigger already ran, then attach below the parent as a
        -- move would (a child whose trigger runs later attaches itself).
        INSERT INTO crm_private.manager_tree (manager_id, employee_id, depth)
        SELECT NEW.id, NEW.id, 0
        UNION ALL
        SELECT NEW.id, below.employee_id, below.depth + 1
          FROM crm.employees AS child
          JOIN crm_private.manager_tree AS below ON below.manager_id = child.id
         WHERE child.manager_id = NEW.id AND child.id <> NEW.id;
        IF NEW.manager_id IS NULL THEN
            RETURN NULL;
        END IF;
    ELSIF NEW.manager_id IS NOT DISTINCT FROM OLD.manager_id THEN
        RETURN NULL;
    END IF;

    -- Move (or attach) the employee's whole subtree below the new manager.
    IF EXISTS (SELECT FROM crm_private.manager_tree
                WHERE manager_id = NEW.id AND employee_id = NEW.manager_id) THEN
        RAISE EXCEPTION 'employee % cannot report to % (a subordinate of theirs): that would make a cycle',
            NEW.role_name, (SELECT e.role_name FROM crm.employees AS e WHERE e.id = NEW.manager_id)
            USING ERRCODE = 'check_violation';
    END IF;
    DELETE FROM crm_private.manager_tree AS t
     USING crm_private.manager_tree AS above, crm_private.manager_tree AS below
     WHERE above.employee_id = NEW.id AND above.depth > 0
       AND below.manager_id = NEW.id
       AND t.manager_id = above.manager_id AND t.employee_id = below.employee_id;
    INSERT INTO crm_private.manager_tree (manager_id, employee_id, depth)
    SELECT above.manager_id, below.employee_id, above.depth + below.depth + 1
      FROM crm_private.manager_tree AS above, crm_private.manager_tree AS below
     WHERE above.employee_id = NEW.manager_id
       AND below.manager_id = NEW.id;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.maintain_manager_tree() IS 'AFTER trigger on crm.employees: keeps crm_private.manager_tree in step and refuses cycles';

CREATE FUNCTION crm_private.maintain_org_unit_tree() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- Rows of one multi-row INSERT may come in any order: link the subtrees of
        -- children whose own trigger already ran, then attach below the parent as a
        -- move would (a child whose trigger runs later attaches itself).
        INSERT INTO crm_private.org_unit_tree (ancestor_id, descendant_id, depth)
        SELECT NEW.id, NEW.id, 0
        UNION ALL
        SELECT NEW.id, below.descendant_id, below.depth + 1
          FROM crm.org_units AS child
          JOIN crm_private.org_unit_tree AS below ON below.ancestor_id = child.id
         WHERE child.parent_id = NEW.id AND child.id <> NEW.id;
        IF NEW.parent_id IS NULL THEN
            RETURN NULL;
        END IF;
    ELSIF NEW.parent_id IS NOT DISTINCT FROM OLD.parent_id THEN
        RETURN NULL;
    END IF;

    IF EXISTS (SELECT FROM crm_private.org_unit_tree
                WHERE ancestor_id = NEW.id AND descendant_id = NEW.parent_id) THEN
        RAISE EXCEPTION 'org unit % cannot move under % (one of its own sub-units): that would make a cycle',
            NEW.code, (SELECT u.code FROM crm.org_units AS u WHERE u.id = NEW.parent_id)
            USING ERRCODE = 'check_violation';
    END IF;
    DELETE FROM crm_private.org_unit_tree AS t
     USING crm_private.org_unit_tree AS above, crm_private.org_unit_tree AS below
     WHERE above.descendant_id = NEW.id AND above.depth > 0
       AND below.ancestor_id = NEW.id
       AND t.ancestor_id = above.ancestor_id AND t.descendant_id = below.descendant_id;
    INSERT INTO crm_private.org_unit_tree (ancestor_id, descendant_id, depth)
    SELECT above.ancestor_id, below.descendant_id, above.depth + below.depth + 1
      FROM crm_private.org_unit_tree AS above, crm_private.org_unit_tree AS below
     WHERE above.descendant_id = NEW.parent_id
       AND below.ancestor_id = NEW.id;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.maintain_org_unit_tree() IS 'AFTER trigger on crm.org_units: keeps crm_private.org_unit_tree in step and refuses cycles';

CREATE FUNCTION crm_private.record_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_actor name := crm_private.acting_role();
    v_employee bigint;
    v_columns text[];
    -- Read copies of field groups (columns of a crm_vault type): never logged here;
    -- each group's table logs its own changes. Updates name them as quiet columns (the
    -- tables' update triggers pass them), so only inserts and deletes look them up.
    v_copies text[] := '{}';
    -- Trigger arguments: columns whose changes alone are not logged.
    v_quiet text[] := ARRAY['updated_at'] || coalesce(TG_ARGV, '{}'::text[]);
BEGIN
    -- Statement-level with transition tables: one INSERT per statement, not per row.
    -- Each row is made jsonb once (MATERIALIZED: not recomputed at every reference).
    SELECT e.id INTO v_employee FROM crm.employees AS e WHERE e.role_name = v_actor;
    IF TG_OP IN ('INSERT', 'DELETE') THEN
        SELECT coalesce(array_agg(a.attname::text ORDER BY a.attname)
                            FILTER (WHERE t.typnamespace IS DISTINCT FROM 'crm_vault'::regnamespace), '{}'),
               coalesce(array_agg(a.attname::text)
                            FILTER (WHERE t.typnamespace = 'crm_vault'::regnamespace), '{}')
          INTO v_columns, v_copies
          FROM pg_catalog.pg_attribute AS a
          JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
         WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped;
    END IF;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id,
                                    project_id)
        WITH r AS MATERIALIZED (SELECT n.id, to_jsonb(n) - v_copies AS nj FROM new_rows AS n)
        SELECT TG_TABLE_NAME, r.id, 'INSERT', v_columns, NULL, r.nj, v_actor, v_employee,
               crm_private.change_project(r.nj)
          FROM r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id,
                                    project_id)
        WITH r AS MATERIALIZED (SELECT o.id, to_jsonb(o) - v_copies AS oj FROM old_rows AS o)
        SELECT TG_TABLE_NAME, r.id, 'DELETE', v_columns, r.oj, NULL, v_actor, v_employee,
               crm_private.change_project(r.oj)
          FROM r;
    ELSE
        INSERT INTO crm.change_log (table_name, record_id, action, changed_fields,
                                    old_values, new_values, actor_role, actor_employee_id,
                                    project_id)
        -- Compared key by key; rows where only quiet columns changed are not logged
        -- (and are left out before the key-by-key comparison: a routing batch's group
        -- rows change only their anchor copies).
        WITH r AS MATERIALIZED (
            SELECT x.id, x.nj, x.oj
              FROM (SELECT n.id, to_jsonb(n) AS nj, to_jsonb(o) AS oj
                      FROM new_rows AS n
                      JOIN old_rows AS o ON o.id = n.id) AS x
             WHERE (x.nj - v_quiet) IS DISTINCT FROM (x.oj - v_quiet)
        )
        SELECT TG_TABLE_NAME, r.id, 'UPDATE', d.fields, d.old_values, d.new_values,
               v_actor, v_employee, crm_private.change_project(r.nj)
          FROM r
         CROSS JOIN LATERAL (
              SELECT array_agg(k ORDER BY k) AS fields,
                     jsonb_object_agg(k, r.oj -> k) AS old_values,
                     jsonb_object_agg(k, r.nj -> k) AS new_values
                FROM jsonb_object_keys(r.nj) AS k
               WHERE k <> ALL (v_quiet) AND (r.nj -> k) IS DISTINCT FROM (r.oj -> k)
          ) AS d
         WHERE d.fields IS NOT NULL;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.record_changes() IS 'AFTER statement trigger: writes crm.change_log from the transition tables';

CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.employees
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.customers
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.contracts
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.activities
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();

CREATE TRIGGER _200_manager_tree AFTER INSERT OR UPDATE OF manager_id ON crm.employees
    FOR EACH ROW EXECUTE FUNCTION crm_private.maintain_manager_tree();
CREATE TRIGGER _200_org_unit_tree AFTER INSERT OR UPDATE OF parent_id ON crm.org_units
    FOR EACH ROW EXECUTE FUNCTION crm_private.maintain_org_unit_tree();

-- The audited tables: the org and every customer record.
CREATE TRIGGER _500_audit_insert AFTER INSERT ON crm.employees
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.employees
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_delete AFTER DELETE ON crm.employees
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_insert AFTER INSERT ON crm.customers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
-- The phone's mask is derived from a field group's value: its changes alone are not logged.
-- The read copies of field groups are quiet: never logged (record_changes).
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION crm_private.record_changes('phone_mask', 'contact_copy', 'financial_copy', 'internal_notes_copy');
CREATE TRIGGER _500_audit_delete AFTER DELETE ON crm.customers
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_insert AFTER INSERT ON crm.contracts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.contracts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION crm_private.record_changes('financial_copy');
CREATE TRIGGER _500_audit_delete AFTER DELETE ON crm.contracts
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_insert AFTER INSERT ON crm.activities
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.activities
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_delete AFTER DELETE ON crm.activities
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_insert AFTER INSERT ON crm.shares
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.shares
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_delete AFTER DELETE ON crm.shares
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();

-- The audit trail is append-only, for its owner too.
CREATE FUNCTION crm_private.refuse_change_log_edit() RETURNS trigger
LANGUAGE plpgsql SET search_path = ''
AS $$
BEGIN
    RAISE EXCEPTION 'crm.change_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
COMMENT ON FUNCTION crm_private.refuse_change_log_edit() IS 'BEFORE trigger: refuses UPDATE, DELETE and TRUNCATE on the audit trail';
CREATE TRIGGER _000_append_only BEFORE UPDATE OR DELETE ON crm.change_log
    FOR EACH ROW EXECUTE FUNCTION crm_private.refuse_change_log_edit();
CREATE TRIGGER _000_append_only_truncate BEFORE TRUNCATE ON crm.change_log
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.refuse_change_log_edit();

-- Row-level security ---------------------------------------------------------
-- Every table is FORCE ROW LEVEL SECURITY: even crmdb_owner is filtered. The owner
-- policies below let owner-run code (SECURITY DEFINER helpers, triggers, DBAs who
-- SET ROLE crmdb_owner) see every row; employees get their policies from the role
-- templates (crmdb policy apply). With none applied, employees see nothing.

ALTER TABLE crm.org_units ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.org_units FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.org_units TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.employees ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.employees FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.employees TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.projects FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.projects TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.project_solutions ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.project_solutions FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.project_solutions TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.project_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.project_members FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.project_members TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.customers FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.customers TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.contracts ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.contracts FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.contracts TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.activities ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.activities FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.activities TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.shares ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.shares FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.shares TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.change_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.change_log FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.change_log TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.manager_tree ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.manager_tree FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.manager_tree TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.org_unit_tree ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.org_unit_tree FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.org_unit_tree TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.gateways ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.gateways FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.gateways TO crmdb_owner USING (true) WITH CHECK (true);

-- Admin API -----------------------------------------------------------------
-- SECURITY INVOKER: the caller's own CREATEROLE and table privileges apply, so these
-- are for DBAs (superuser, or CREATEROLE and a member of crmdb_owner) and the CLI.

CREATE FUNCTION crm_private.check_role_name(p_role name, p_what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = ''
AS $$
BEGIN
    IF p_role IS NULL OR p_role = '' THEN
        RAISE EXCEPTION '% role name is empty', p_what USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_role ~ '^(pg_|crmdb_)' OR p_role IN ('public', 'none', 'current_user', 'session_user', 'current_role') THEN
        RAISE EXCEPTION '% role name "%" is reserved', p_what, p_role USING ERRCODE = 'reserved_name';
    END IF;
END
$$;
COMMENT ON FUNCTION crm_private.check_role_name(name, text) IS 'Refuses empty and reserved role names';

CREATE FUNCTION crm_private.employee_by_role(p_role name) RETURNS crm.employees
LANGUAGE plpgsql STABLE SET search_path = ''
AS $$
DECLARE
    v_employee crm.employees;
BEGIN
    SELECT * INTO v_employee FROM crm.employees WHERE role_name = p_role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown employee "%"', p_role USING ERRCODE = 'no_data_found';
    END IF;
    RETURN v_employee;
END
$$;
COMMENT ON FUNCTION crm_private.employee_by_role(name) IS 'The employee bound to a role, or an error naming it';

CREATE FUNCTION crm_private.org_unit_by_code(p_code text) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = ''
AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT id INTO v_id FROM crm.org_units WHERE code = p_code;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown org unit "%"', p_code USING ERRCODE = 'no_data_found';
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION crm_private.org_unit_by_code(text) IS 'The id of an org unit, or an error naming it';

CREATE FUNCTION crm_admin.add_org_unit(
    p_code text, p_name text, p_kind crm.org_unit_kind,
    p_parent text DEFAULT NULL, p_timezone text DEFAULT 'Asia/Ho_Chi_Minh'
) RETURNS bigint
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_id bigint;
BEGIN
    PERFORM pg_catalog.now() AT TIME ZONE p_timezone;  -- refuses unknown time zones
    INSERT INTO crm.org_units (code, name, kind, parent_id, timezone)
    VALUES (p_code, p_name, p_kind,
            CASE WHEN p_parent IS NOT NULL THEN crm_private.org_unit_by_code(p_parent) END,
            p_timezone)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION crm_admin.add_org_unit(text, text, crm.org_unit_kind, text, text) IS 'Adds an org unit under p_parent (a code); returns its id';

CREATE FUNCTION crm_admin.add_employee(
    p_role name, p_full_name text, p_email text, p_org_unit text,
    p_manager name DEFAULT NULL, p_title text DEFAULT NULL,
    p_login boolean DEFAULT false, p_password text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_role pg_catalog.pg_roles;
    v_id bigint;
    v_gateway name;
BEGIN
    PERFORM crm_private.check_role_name(p_role, 'employee');
    IF EXISTS (SELECT FROM crm.employees WHERE role_name = p_role) THEN
        RAISE EXCEPTION 'employee "%" already exists', p_role USING ERRCODE = 'unique_violation';
    END IF;
    SELECT * INTO v_role FROM pg_catalog.pg_roles WHERE rolname = p_role;
    IF FOUND THEN
        -- Adopting an existing role is fine, unless it is, or is a member of, a role
        -- that could step around RLS (every role is a member of itself).
        IF EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                    WHERE pg_catalog.pg_has_role(v_role.oid, r.oid, 'MEMBER')
                      AND (r.rolsuper OR r.rolbypassrls OR r.rolcreaterole OR r.rolreplication
                           OR r.rolname IN ('crmdb_owner', 'crmdb_worker'))) THEN
            RAISE EXCEPTION 'role "%" exists and has, or is a member of a role with, SUPERUSER, BYPASSRLS, CREATEROLE, REPLICATION, crmdb_owner or crmdb_worker: it cannot be an employee', p_role
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF EXISTS (SELECT FROM crm_private.gateways WHERE role_name = p_role) THEN
            RAISE EXCEPTION 'role "%" is a gateway, not an employee', p_role USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSE
        EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN INHERIT', p_role);
    END IF;
    IF p_login THEN
        EXECUTE pg_catalog.format('ALTER ROLE %I LOGIN PASSWORD %L', p_role, p_password);
    END IF;
    -- On PostgreSQL 16+ the employee inherits crmdb_employee but cannot SET ROLE to it.
    EXECUTE pg_catalog.format('GRANT crmdb_employee TO %I%s', p_role,
        CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
             THEN ' WITH SET FALSE' ELSE '' END);
    FOR v_gateway IN SELECT role_name FROM crm_private.gateways ORDER BY role_name LOOP
        EXECUTE pg_catalog.format('GRANT %I TO %I', p_role, v_gateway);
    END LOOP;
    -- The worker renders this employee's emails as them (crmdb_worker is NOINHERIT:
    -- it may SET ROLE to the employee but holds none of their privileges).
    EXECUTE pg_catalog.format('GRANT %I TO crmdb_worker', p_role);

    IF p_manager IS NOT NULL AND (crm_private.employee_by_role(p_manager)).status = 'departed' THEN
        RAISE EXCEPTION 'employee "%" has departed and cannot be a manager', p_manager
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO crm.employees (role_name, full_name, email, title, manager_id, org_unit_id)
    VALUES (p_role, p_full_name, p_email, p_title,
            CASE WHEN p_manager IS NOT NULL THEN (crm_private.employee_by_role(p_manager)).id END,
            crm_private.org_unit_by_code(p_org_unit))
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION crm_admin.add_employee(name, text, text, text, name, text, boolean, text) IS 'Adds an employee bound to role p_role (created NOLOGIN unless p_login), grants it to every gateway and to crmdb_worker; returns the id';

CREATE FUNCTION crm_admin.move_employee(
    p_role name, p_manager name DEFAULT NULL, p_org_unit text DEFAULT NULL,
    p_clear_manager boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_employee crm.employees := crm_private.employee_by_role(p_role);
BEGIN
    IF p_manager IS NOT NULL AND p_clear_manager THEN
        RAISE EXCEPTION 'give a new manager or clear the manager, not both' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_manager IS NOT NULL AND (crm_private.employee_by_role(p_manager)).status = 'departed' THEN
        RAISE EXCEPTION 'employee "%" has departed and cannot be a manager', p_manager
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE crm.employees
       SET manager_id = CASE
               WHEN p_clear_manager THEN NULL
               WHEN p_manager IS NOT NULL THEN (crm_private.employee_by_role(p_manager)).id
               ELSE manager_id END,
           org_unit_id = CASE
               WHEN p_org_unit IS NOT NULL THEN crm_private.org_unit_by_code(p_org_unit)
               ELSE org_unit_id END
     WHERE id = v_employee.id;
END
$$;
COMMENT ON FUNCTION crm_admin.move_employee(name, name, text, boolean) IS 'Gives an employee a new manager and/or org unit; takes effect at the next statement';

CREATE FUNCTION crm_admin.set_employee_status(p_role name, p_status crm.employee_status)
RETURNS void
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_employee crm.employees := crm_private.employee_by_role(p_role);
    v_gateway name;
BEGIN
    IF v_employee.status = 'departed' AND p_status <> 'departed' THEN
        RAISE EXCEPTION 'employee "%" has departed; add them again under a new role to rehire', p_role
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_employee.status = p_status THEN
        RETURN;
    END IF;
    UPDATE crm.employees
       SET status = p_status,
           departed_at = CASE WHEN p_status = 'departed' THEN pg_catalog.now() END
     WHERE id = v_employee.id;
    IF p_status = 'departed' THEN
        -- Closed three ways: no login, no gateway can SET ROLE to it, no identity
        -- (crm.current_employee_id() is NULL for departed staff).
        EXECUTE pg_catalog.format('ALTER ROLE %I NOLOGIN', p_role);
        FOR v_gateway IN SELECT role_name FROM crm_private.gateways ORDER BY role_name LOOP
            EXECUTE pg_catalog.format('REVOKE %I FROM %I', p_role, v_gateway);
        END LOOP;
        EXECUTE pg_catalog.format('REVOKE %I FROM crmdb_worker', p_role);
    END IF;
END
$$;
COMMENT ON FUNCTION crm_admin.set_employee_status(name, crm.employee_status) IS 'Puts an employee on leave, back to active, or departed (login closed, gateways and crmdb_worker revoked, no identity); after commit, end their open sessions with crm_admin.end_sessions';

CREATE FUNCTION crm_admin.end_sessions(p_role name) RETURNS integer
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_pid integer;
    v_ended integer := 0;
BEGIN
    -- Separate from set_employee_status so that sessions end only once the departure
    -- is committed (terminating a backend cannot be rolled back). A loop, not a WHERE
    -- clause: the planner may evaluate conditions in any order, and
    -- pg_terminate_backend must only ever see this role's sessions.
    FOR v_pid IN
        SELECT a.pid FROM pg_catalog.pg_stat_activity AS a
         WHERE a.usename = p_role AND a.pid <> pg_catalog.pg_backend_pid()
    LOOP
        IF pg_catalog.pg_terminate_backend(v_pid) THEN
            v_ended := v_ended + 1;
        END IF;
    END LOOP;
    RETURN v_ended;
END
$$;
COMMENT ON FUNCTION crm_admin.end_sessions(name) IS 'Ends every open session logged in as p_role; returns how many';

CREATE FUNCTION crm_admin.add_gateway(p_role name, p_password text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_employee name;
BEGIN
    PERFORM crm_private.check_role_name(p_role, 'gateway');
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = p_role) THEN
        RAISE EXCEPTION 'role "%" already exists; a gateway must be a new role', p_role
            USING ERRCODE = 'duplicate_object';
    END IF;
    -- NOINHERIT and no grants of its own: after RESET ROLE (or a failed SET ROLE)
    -- the gateway cannot even reach the crm schemas.
    EXECUTE pg_catalog.format('CREATE ROLE %I LOGIN NOINHERIT PASSWORD %L', p_role, p_password);
    FOR v_employee IN SELECT role_name FROM crm.employees WHERE status <> 'departed' ORDER BY role_name LOOP
        EXECUTE pg_catalog.format('GRANT %I TO %I', v_employee, p_role);
    END LOOP;
    INSERT INTO crm_private.gateways (role_name) VALUES (p_role);
END
$$;
COMMENT ON FUNCTION crm_admin.add_gateway(name, text) IS 'Creates a NOINHERIT LOGIN role that may SET ROLE to every active employee and holds nothing itself';

CREATE FUNCTION crm_admin.add_project(p_code text, p_name text, p_solutions crm.solution[])
RETURNS bigint
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO crm.projects (code, name) VALUES (p_code, p_name) RETURNING id INTO v_id;
    INSERT INTO crm.project_solutions (project_id, solution)
    SELECT DISTINCT v_id, s FROM pg_catalog.unnest(p_solutions) AS s;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION crm_admin.add_project(text, text, crm.solution[]) IS 'Adds a project (CRM workspace) with its solutions; returns its id';

CREATE FUNCTION crm_admin.add_project_member(
    p_project text, p_role name, p_solution crm.solution, p_template text
) RETURNS void
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_project bigint;
    v_employee crm.employees := crm_private.employee_by_role(p_role);
BEGIN
    IF v_employee.status = 'departed' THEN
        RAISE EXCEPTION 'employee "%" has departed and cannot join a project', p_role
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT id INTO v_project FROM crm.projects WHERE code = p_project;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown project "%"', p_project USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT EXISTS (SELECT FROM crm.project_solutions WHERE project_id = v_project AND solution = p_solution) THEN
        RAISE EXCEPTION 'project "%" has no % solution', p_project, p_solution USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO crm.project_members (project_id, employee_id, solution, template)
    VALUES (v_project, v_employee.id, p_solution, p_template)
    ON CONFLICT (project_id, employee_id, solution) DO UPDATE SET template = EXCLUDED.template;
END
$$;
COMMENT ON FUNCTION crm_admin.add_project_member(text, name, crm.solution, text) IS 'Makes an employee a member of a project''s solution under a role template (replaces the template if already a member)';

-- Privileges -----------------------------------------------------------------
-- Functions are not executable by PUBLIC unless granted, now and in later migrations.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA crm, crm_private, crm_admin FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE crmdb_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crm.current_employee_id() TO crmdb_employee;
GRANT EXECUTE ON FUNCTION crm_private.employee_id_for(name) TO crmdb_employee;

-- Row-level security helpers (generated policies call these) --------------------

CREATE FUNCTION crm_private.subordinate_ids(p_role name) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(t.employee_id ORDER BY t.employee_id), '{}')
          FROM crm.employees AS e
          JOIN crm_private.manager_tree AS t ON t.manager_id = e.id
         WHERE e.role_name = p_role AND e.status <> 'departed'
           AND crm_private.may_act_as(p_role)
           AND t.depth > 0);
END
$$;
COMMENT ON FUNCTION crm_private.subordinate_ids(name) IS 'Employees anywhere below p_role in the manager hierarchy (not p_role itself); empty unless the session may act as p_role';

CREATE FUNCTION crm_private.org_unit_ids(p_role name, p_include_sub_units boolean) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(t.descendant_id ORDER BY t.descendant_id), '{}')
          FROM crm.employees AS e
          JOIN crm_private.org_unit_tree AS t ON t.ancestor_id = e.org_unit_id
         WHERE e.role_name = p_role AND e.status <> 'departed'
           AND crm_private.may_act_as(p_role)
           AND (p_include_sub_units OR t.depth = 0));
END
$$;
COMMENT ON FUNCTION crm_private.org_unit_ids(name, boolean) IS 'p_role''s org unit, and with p_include_sub_units every unit below it';

CREATE FUNCTION crm_private.project_ids(p_role name, p_template text) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(DISTINCT m.project_id ORDER BY m.project_id), '{}')
          FROM crm.employees AS e
          JOIN crm.project_members AS m ON m.employee_id = e.id
         WHERE e.role_name = p_role AND e.status <> 'departed'
           AND crm_private.may_act_as(p_role)
           AND m.template = p_template);
END
$$;
COMMENT ON FUNCTION crm_private.project_ids(name, text) IS 'Projects where p_role is a member under template p_template (the project guard of every template policy)';

CREATE FUNCTION crm_private.has_template(p_role name, p_template text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    RETURN (
        SELECT EXISTS (
            SELECT FROM crm.employees AS e
              JOIN crm.project_members AS m ON m.employee_id = e.id
             WHERE e.role_name = p_role AND e.status <> 'departed'
               AND crm_private.may_act_as(p_role)
               AND m.template = p_template));
END
$$;
COMMENT ON FUNCTION crm_private.has_template(name, text) IS 'Whether p_role holds template p_template in any project (the guard for tables without a project)';

CREATE FUNCTION crm_private.shared_customer_ids(p_role name, p_edit boolean) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    -- Shares to the employee or to their org unit, not expired; with p_edit only
    -- shares that allow editing. Two index lookups (an OR join would scan every share).
    RETURN (
        WITH me AS (
            SELECT e.id, e.org_unit_id FROM crm.employees AS e
             WHERE e.role_name = p_role AND e.status <> 'departed'
               AND crm_private.may_act_as(p_role)
        ), granted AS (
            SELECT s.customer_id, s.expires_at, s.access
              FROM me JOIN crm.shares AS s ON s.grantee_employee_id = me.id
            UNION ALL
            SELECT s.customer_id, s.expires_at, s.access
              FROM me JOIN crm.shares AS s ON s.grantee_org_unit_id = me.org_unit_id
        )
        SELECT coalesce(array_agg(DISTINCT g.customer_id ORDER BY g.customer_id), '{}')
          FROM granted AS g
         WHERE (g.expires_at IS NULL OR g.expires_at > pg_catalog.now())
           AND (NOT p_edit OR g.access = 'edit'));
END
$$;
COMMENT ON FUNCTION crm_private.shared_customer_ids(name, boolean) IS 'Customers shared to p_role or to p_role''s org unit and not expired (only edit shares with p_edit)';

-- Project ids only for one's own projects (migration 0012): any other code, existing or
-- not, gives NULL, so nobody learns which projects exist.
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

CREATE FUNCTION crm_private.project_id(p_code text) RETURNS bigint
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

-- The row as it was before the current statement, for WITH CHECK on UPDATE: it
-- requires columns to stay unchanged, or the old row to lie in a scope that may move
-- rows (PostgreSQL ORs the USING of one policy with the WITH CHECK of another, so the
-- new row alone proves nothing). Plain SQL, SECURITY INVOKER and without SET, so the
-- planner inlines each into a primary-key probe: the caller's own row policies apply
-- (nothing is shown that the caller could not SELECT; an invisible row gives no row,
-- and the check fails closed), and a STABLE body sees the statement's snapshot.

CREATE FUNCTION crm_private.prior_customers(p_id bigint) RETURNS SETOF crm.customers
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT id, project_id, org_unit_id, owner_id, full_name, province, stage, source, score,
       product_interest, created_by, assigned_at, created_at, updated_at, phone_mask,
       (NULL::crm.customers).contact_copy, (NULL::crm.customers).financial_copy,
       (NULL::crm.customers).internal_notes_copy
  FROM crm.customers WHERE id = p_id
$$;
COMMENT ON FUNCTION crm_private.prior_customers(bigint) IS 'A customer as it was before the current statement, through the caller''s row policies (for update checks)';

CREATE FUNCTION crm_private.prior_contracts(p_id bigint) RETURNS SETOF crm.contracts
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT id, customer_id, project_id, owner_id, title, currency, status, signed_at,
       created_at, updated_at, (NULL::crm.contracts).financial_copy
  FROM crm.contracts WHERE id = p_id
$$;
COMMENT ON FUNCTION crm_private.prior_contracts(bigint) IS 'A contract as it was before the current statement, through the caller''s row policies (for update checks)';

CREATE FUNCTION crm_private.prior_activities(p_id bigint) RETURNS SETOF crm.activities
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.activities WHERE id = p_id $$;
COMMENT ON FUNCTION crm_private.prior_activities(bigint) IS 'An activity as it was before the current statement, through the caller''s row policies (for update checks)';

CREATE FUNCTION crm_private.prior_shares(p_id bigint) RETURNS SETOF crm.shares
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.shares WHERE id = p_id $$;
COMMENT ON FUNCTION crm_private.prior_shares(bigint) IS 'A share as it was before the current statement, through the caller''s row policies (for update checks)';

-- Template and sharing rule membership ----------------------------------------
-- A role template is the group role crmdb_tpl_<template>, a sharing rule the group
-- role crmdb_rule_<rule>; `crmdb policy apply` creates them with ADMIN OPTION for
-- crmdb_owner. Policies name these roles, so PostgreSQL leaves out, at plan time,
-- every policy that cannot apply to the current employee. Membership follows the data:
-- project memberships for templates, the audience (org unit, named employees) for
-- sharing rules; departed employees hold none.

CREATE TABLE crm_private.sharing_rule_audiences (
    role_name          name PRIMARY KEY CHECK (role_name LIKE 'crmdb\_rule\_%'),
    org_unit           text,
    include_sub_units  boolean NOT NULL DEFAULT false,
    employees          name[] NOT NULL DEFAULT '{}',
    project            text
);
COMMENT ON TABLE crm_private.sharing_rule_audiences IS 'Who each sharing rule reaches: an org unit (and its sub-units) and named employees; written by crmdb policy apply';
COMMENT ON COLUMN crm_private.sharing_rule_audiences.project IS 'Code of the project the rule is limited to, if any: its audience may resolve that code (crm_private.project_id)';
ALTER TABLE crm_private.sharing_rule_audiences ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.sharing_rule_audiences FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.sharing_rule_audiences TO crmdb_owner USING (true) WITH CHECK (true);

CREATE FUNCTION crm_private.template_role(p_template text) RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = ''
AS $$
    SELECT ('crmdb_tpl_' || p_template)::name
$$;
COMMENT ON FUNCTION crm_private.template_role(text) IS 'The group role that carries a role template''s privileges and policies';

CREATE FUNCTION crm_private.wanted_roles(p_employee_id bigint) RETURNS SETOF name
LANGUAGE sql STABLE SET search_path = ''
AS $$
    SELECT crm_private.template_role(m.template)
      FROM crm.project_members AS m
      JOIN crm.employees AS e ON e.id = m.employee_id
     WHERE m.employee_id = p_employee_id AND e.status <> 'departed'
    UNION
    SELECT a.role_name
      FROM crm_private.sharing_rule_audiences AS a
      JOIN crm.employees AS e ON e.id = p_employee_id AND e.status <> 'departed'
     WHERE e.role_name = ANY (a.employees)
        OR EXISTS (SELECT FROM crm.org_units AS u
                     JOIN crm_private.org_unit_tree AS t ON t.ancestor_id = u.id
                    WHERE u.code = a.org_unit AND t.descendant_id = e.org_unit_id
                      AND (a.include_sub_units OR t.depth = 0))
$$;
COMMENT ON FUNCTION crm_private.wanted_roles(bigint) IS 'The template and sharing rule roles an employee should be a member of';

CREATE FUNCTION crm_private.sync_roles(p_employee_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_role name;
    v_group name;
    v_want boolean;
BEGIN
    SELECT role_name INTO v_role FROM crm.employees WHERE id = p_employee_id;
    IF v_role IS NULL THEN
        RETURN;
    END IF;
    FOR v_group, v_want IN
        SELECT r.rolname, r.rolname IN (SELECT crm_private.wanted_roles(p_employee_id))
          FROM pg_catalog.pg_roles AS r
         WHERE (r.rolname LIKE 'crmdb\_tpl\_%' OR r.rolname LIKE 'crmdb\_rule\_%')
           AND pg_catalog.pg_has_role('crmdb_owner', r.oid, 'MEMBER WITH ADMIN OPTION')
    LOOP
        IF v_want AND NOT EXISTS (
                SELECT FROM pg_catalog.pg_auth_members AS am
                  JOIN pg_catalog.pg_roles AS g ON g.oid = am.roleid
                  JOIN pg_catalog.pg_roles AS m ON m.oid = am.member
                 WHERE g.rolname = v_group AND m.rolname = v_role) THEN
            -- PostgreSQL 16+: inherit the group's privileges, never SET ROLE to it.
            EXECUTE pg_catalog.format('GRANT %I TO %I%s', v_group, v_role,
                CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
                     THEN ' WITH SET FALSE' ELSE '' END);
        ELSIF NOT v_want AND EXISTS (
                SELECT FROM pg_catalog.pg_auth_members AS am
                  JOIN pg_catalog.pg_roles AS g ON g.oid = am.roleid
                  JOIN pg_catalog.pg_roles AS m ON m.oid = am.member
                 WHERE g.rolname = v_group AND m.rolname = v_role) THEN
            EXECUTE pg_catalog.format('REVOKE %I FROM %I', v_group, v_role);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm_private.sync_roles(bigint) IS 'Grants an employee''s role exactly the template and sharing rule roles they should hold, and revokes the rest';

CREATE FUNCTION crm_private.project_members_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM crm_private.sync_roles(OLD.employee_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM crm_private.sync_roles(NEW.employee_id);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.project_members_changed() IS 'AFTER trigger on crm.project_members: keeps template role membership in step';

CREATE FUNCTION crm_private.employee_placement_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    PERFORM crm_private.sync_roles(NEW.id);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.employee_placement_changed() IS 'AFTER trigger on crm.employees: a new unit or status changes sharing rule (and, on departure, template) membership';

CREATE FUNCTION crm_private.org_units_moved() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    -- A unit moved: audiences that include sub-units may have changed for anyone.
    PERFORM crm_private.sync_roles(e.id) FROM crm.employees AS e;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.org_units_moved() IS 'AFTER statement trigger on crm.org_units: re-syncs sharing rule membership when units move';

CREATE TRIGGER _300_template_roles AFTER INSERT OR UPDATE OR DELETE ON crm.project_members
    FOR EACH ROW EXECUTE FUNCTION crm_private.project_members_changed();
CREATE TRIGGER _300_rule_roles AFTER INSERT OR UPDATE OF org_unit_id, status ON crm.employees
    FOR EACH ROW EXECUTE FUNCTION crm_private.employee_placement_changed();
CREATE TRIGGER _300_rule_roles AFTER UPDATE OF parent_id ON crm.org_units
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.org_units_moved();

-- Explain access -------------------------------------------------------------
-- `crmdb policy apply` replaces this body with one generated from the templates;
-- until then no template grants anything, so there is no path to explain.

CREATE FUNCTION crm_private.access_paths(p_role name, p_table text, p_id bigint)
RETURNS TABLE (template text, scope text, kind text, actions text[], detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
AS $function$
BEGIN
    IF NOT (p_role = session_user OR pg_catalog.pg_has_role(session_user, p_role, 'MEMBER')) THEN
        RAISE EXCEPTION 'permission denied to explain the access of role %', p_role
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$function$;
COMMENT ON FUNCTION crm_private.access_paths(name, text, bigint) IS 'Every path by which p_role may act on a record: template (or ''sharing rule''), scope label, scope kind, actions, and why (generated by crmdb policy apply)';

CREATE FUNCTION crm.explain_access(p_table text, p_id bigint)
RETURNS TABLE (template text, scope text, actions text[], detail text)
LANGUAGE sql STABLE SET search_path = ''
AS $$
    SELECT ap.template, ap.scope, ap.actions, ap.detail
      FROM crm_private.access_paths(current_user, p_table, p_id) AS ap
$$;
COMMENT ON FUNCTION crm.explain_access(text, bigint) IS 'Why the current employee may see or change a record (table name, id): one row per template scope or sharing rule; no rows means no access';

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA crm, crm_private FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    crm_private.subordinate_ids(name),
    crm_private.org_unit_ids(name, boolean),
    crm_private.project_ids(name, text),
    crm_private.has_template(name, text),
    crm_private.shared_customer_ids(name, boolean),
    crm_private.project_id(text),
    crm_private.project_id_for(name, text),
    crm_private.prior_customers(bigint),
    crm_private.prior_contracts(bigint),
    crm_private.prior_activities(bigint),
    crm_private.prior_shares(bigint),
    crm_private.access_paths(name, text, bigint),
    crm.explain_access(text, bigint)
TO crmdb_employee;

RESET ROLE;

-- Routing (migrations/0004.routing.sql) ------------------------------------------
-- Assignment, hand-off and SLA rules, business hours, the assignment history,
-- notifications, the event queue the worker drains, and offboarding. Triggers record
-- events in the changing transaction and NOTIFY crmdb_routing; `crmdb worker` applies
-- them through crm_private.route_events, the one path that writes owners past the
-- employees' row policies.

SET ROLE crmdb_owner;

-- Types ------------------------------------------------------------------------

CREATE TYPE crm.routing_rule_kind AS ENUM (
    'assign',   -- new customers without an owner
    'handoff'   -- a customer reaching a stage (on_stage), e.g. customer -> after-sales
);
COMMENT ON TYPE crm.routing_rule_kind IS 'When a routing rule applies: to new unowned customers, or when a customer reaches a stage';

CREATE TYPE crm.routing_strategy AS ENUM (
    'round_robin',     -- in turn: assignment counts per rule stay within 1 of each other
    'least_loaded',    -- fewest open customers (or open tasks, load_measure) first
    'weighted',        -- in proportion to the queue members' weights
    'keep_with_team'   -- the previous owner if eligible, else their team; else round robin
);
COMMENT ON TYPE crm.routing_strategy IS 'How a routing rule picks among the eligible employees of its target';

CREATE TYPE crm_private.routing_event_kind AS ENUM (
    'customer_created',         -- a customer was inserted without an owner
    'stage_changed',            -- a customer's stage changed (stage: the new one)
    'owner_responded',          -- the owner logged an activity while an SLA clock ran
    'employee_status_changed',  -- an employee's status changed (status: the new one)
    'offboard_customer',        -- a departed employee's customer to hand on
    'sla_expired'               -- an SLA clock ran out (rule, hop, excluded)
);
COMMENT ON TYPE crm_private.routing_event_kind IS 'What a routing event records; the worker acts on each kind';

-- Configuration (admins manage it through their role template, or crmdb rules) ---

CREATE TABLE crm.business_hours (
    org_unit_id  bigint NOT NULL REFERENCES crm.org_units (id) ON DELETE CASCADE,
    weekday      smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    opens        time NOT NULL,
    closes       time NOT NULL,
    PRIMARY KEY (org_unit_id, weekday, opens),
    CHECK (opens < closes)
);
COMMENT ON TABLE crm.business_hours IS 'Opening intervals of a team, in the team''s own time zone (org_units.timezone); a team without rows is always open';
COMMENT ON COLUMN crm.business_hours.weekday IS 'ISO day of the week: 1 = Monday ... 7 = Sunday';
COMMENT ON COLUMN crm.business_hours.opens IS 'Local time the interval starts (inclusive)';
COMMENT ON COLUMN crm.business_hours.closes IS 'Local time the interval ends (exclusive)';

CREATE TABLE crm.routing_rules (
    id                  bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id          bigint NOT NULL REFERENCES crm.projects (id) ON DELETE CASCADE,
    name                text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]*$'),
    kind                crm.routing_rule_kind NOT NULL DEFAULT 'assign',
    on_stage            crm.customer_stage,
    priority            integer NOT NULL DEFAULT 100,
    enabled             boolean NOT NULL DEFAULT true,
    -- condition over the customer: NULL matches anything
    sources             crm.source_channel[],
    provinces           text[],
    product_interests   text[],
    stages              crm.customer_stage[],
    min_score           integer CHECK (min_score BETWEEN 0 AND 100),
    max_score           integer CHECK (max_score BETWEEN 0 AND 100),
    -- target: an org unit or a named queue
    target_org_unit_id  bigint REFERENCES crm.org_units (id),
    include_sub_units   boolean NOT NULL DEFAULT false,
    target_queue        text CHECK (target_queue ~ '^[a-z0-9][a-z0-9_.-]*$'),
    strategy            crm.routing_strategy NOT NULL DEFAULT 'round_robin',
    load_measure        text NOT NULL DEFAULT 'customers' CHECK (load_measure IN ('customers', 'tasks')),
    max_open            integer CHECK (max_open > 0),
    hours_org_unit_id   bigint REFERENCES crm.org_units (id),
    -- SLA: no activity by the owner within sla_minutes -> next eligible, then the manager
    sla_minutes         integer CHECK (sla_minutes > 0),
    sla_business_hours  boolean NOT NULL DEFAULT false,
    sla_max_hops        integer NOT NULL DEFAULT 2 CHECK (sla_max_hops >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name),
    CONSTRAINT routing_rules_on_stage_iff_handoff CHECK ((kind = 'handoff') = (on_stage IS NOT NULL)),
    CONSTRAINT routing_rules_one_target CHECK (num_nonnulls(target_org_unit_id, target_queue) = 1),
    CONSTRAINT routing_rules_score_range CHECK (min_score <= max_score),
    CONSTRAINT routing_rules_sla_hours_need_team CHECK (NOT sla_business_hours OR hours_org_unit_id IS NOT NULL)
);
CREATE INDEX routing_rules_match_idx ON crm.routing_rules (project_id, kind, priority) WHERE enabled;
COMMENT ON TABLE crm.routing_rules IS 'Declarative assignment and hand-off rules of a project; the first enabled matching rule by priority routes a customer';
COMMENT ON COLUMN crm.routing_rules.name IS 'Stable name, unique in the project (crmdb rules files refer to it)';
COMMENT ON COLUMN crm.routing_rules.on_stage IS 'handoff rules: the stage whose reaching triggers the rule';
COMMENT ON COLUMN crm.routing_rules.priority IS 'Lower runs first; ties by id';
COMMENT ON COLUMN crm.routing_rules.sources IS 'Condition: source channel is one of these (NULL: any)';
COMMENT ON COLUMN crm.routing_rules.provinces IS 'Condition: province is one of these (NULL: any)';
COMMENT ON COLUMN crm.routing_rules.product_interests IS 'Condition: product interest is one of these (NULL: any)';
COMMENT ON COLUMN crm.routing_rules.stages IS 'Condition: current stage is one of these (NULL: any)';
COMMENT ON COLUMN crm.routing_rules.min_score IS 'Condition: score at least this (NULL: any)';
COMMENT ON COLUMN crm.routing_rules.max_score IS 'Condition: score at most this (NULL: any)';
COMMENT ON COLUMN crm.routing_rules.target_org_unit_id IS 'Target: the active project members of this org unit';
COMMENT ON COLUMN crm.routing_rules.include_sub_units IS 'With an org unit target: the units below it too';
COMMENT ON COLUMN crm.routing_rules.target_queue IS 'Target: the members of this named queue of the project (crm.routing_queue_members)';
COMMENT ON COLUMN crm.routing_rules.load_measure IS 'least_loaded counts open customers (stage other than lost) or open tasks and appointments';
COMMENT ON COLUMN crm.routing_rules.max_open IS 'Capacity: employees with this many open customers get no more from this rule';
COMMENT ON COLUMN crm.routing_rules.hours_org_unit_id IS 'Team whose business hours and time zone apply: outside them customers wait; NULL: any time';
COMMENT ON COLUMN crm.routing_rules.sla_minutes IS 'Minutes the new owner has to log an activity before the customer moves on; NULL: no SLA';
COMMENT ON COLUMN crm.routing_rules.sla_business_hours IS 'Count SLA minutes only inside the business hours of hours_org_unit_id';
COMMENT ON COLUMN crm.routing_rules.sla_max_hops IS 'Reassignments on SLA expiry before escalating to the owner''s manager';

CREATE TABLE crm.routing_queue_members (
    project_id   bigint NOT NULL REFERENCES crm.projects (id) ON DELETE CASCADE,
    queue        text NOT NULL CHECK (queue ~ '^[a-z0-9][a-z0-9_.-]*$'),
    employee_id  bigint NOT NULL REFERENCES crm.employees (id),
    weight       integer NOT NULL DEFAULT 1 CHECK (weight > 0),
    PRIMARY KEY (project_id, queue, employee_id)
);
COMMENT ON TABLE crm.routing_queue_members IS 'Named queues of a project: who is in each, with a weight for the weighted strategy';
COMMENT ON COLUMN crm.routing_queue_members.weight IS 'Relative share under the weighted strategy';

-- Loads: open customers per owner, counted from the index alone (least_loaded, max_open).
CREATE INDEX customers_open_owner_idx ON crm.customers (owner_id) WHERE stage <> 'lost';
COMMENT ON INDEX crm.customers_open_owner_idx IS 'Open (not lost) customers by owner: the routing engine''s load counts, index-only';

-- Outcomes ---------------------------------------------------------------------

CREATE TABLE crm.assignment_history (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id       bigint NOT NULL REFERENCES crm.customers (id) ON DELETE CASCADE,
    project_id        bigint NOT NULL REFERENCES crm.projects (id) ON DELETE CASCADE,
    from_employee_id  bigint REFERENCES crm.employees (id),
    to_employee_id    bigint NOT NULL REFERENCES crm.employees (id),
    rule_id           bigint REFERENCES crm.routing_rules (id) ON DELETE SET NULL,
    rule_name         text,
    strategy          text NOT NULL CHECK (strategy IN ('round_robin', 'least_loaded', 'weighted',
                                                        'keep_with_team', 'successor', 'manager')),
    reason            text NOT NULL CHECK (reason IN ('new', 'handoff', 'sla', 'escalation', 'offboarding')),
    hop               integer NOT NULL DEFAULT 0,
    event_id          bigint NOT NULL,
    at                timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT assignment_history_once_per_event UNIQUE (event_id, customer_id)
);
CREATE INDEX assignment_history_customer_idx ON crm.assignment_history (customer_id, at);
CREATE INDEX assignment_history_project_idx ON crm.assignment_history (project_id);
CREATE INDEX assignment_history_to_idx ON crm.assignment_history (to_employee_id);
COMMENT ON TABLE crm.assignment_history IS 'Every assignment the routing engine made: who, from whom, why (rule, strategy, reason); append-only';
COMMENT ON COLUMN crm.assignment_history.rule_name IS 'The rule''s name at the time (kept if the rule is deleted)';
COMMENT ON COLUMN crm.assignment_history.strategy IS 'The rule''s strategy, or successor / manager for offboarding, escalation and fallbacks';
COMMENT ON COLUMN crm.assignment_history.reason IS 'new customer, stage handoff, sla reassignment, sla escalation, offboarding';
COMMENT ON COLUMN crm.assignment_history.hop IS 'SLA reassignments so far in this chain (0 for the first assignment)';
COMMENT ON COLUMN crm.assignment_history.event_id IS 'The routing event applied; unique per customer, so no event is applied twice';

CREATE TABLE crm.notifications (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    employee_id  bigint NOT NULL REFERENCES crm.employees (id),
    kind         text NOT NULL CHECK (kind ~ '^[a-z_]+$'),
    customer_id  bigint REFERENCES crm.customers (id) ON DELETE CASCADE,
    subject      text NOT NULL CHECK (subject <> ''),
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    read_at      timestamptz
);
CREATE INDEX notifications_employee_idx ON crm.notifications (employee_id, id DESC);
COMMENT ON TABLE crm.notifications IS 'Messages to one employee (assignments, reassignments, escalations); each employee sees only their own';
COMMENT ON COLUMN crm.notifications.kind IS 'assigned, reassigned_away, escalated, ...';
COMMENT ON COLUMN crm.notifications.details IS 'Structured details: rule, strategy, reason, previous owner';
COMMENT ON COLUMN crm.notifications.read_at IS 'When the employee marked it read (crm.mark_notifications_read); NULL while unread';

-- Internals: the event queue and the engine's state --------------------------------

CREATE TABLE crm_private.routing_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         crm_private.routing_event_kind NOT NULL,
    customer_id  bigint,
    employee_id  bigint,
    stage        crm.customer_stage,
    status       crm.employee_status,
    rule_id      bigint,
    hop          integer NOT NULL DEFAULT 0,
    excluded     bigint[] NOT NULL DEFAULT '{}',
    due_at       timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0
);
CREATE INDEX routing_events_due_idx ON crm_private.routing_events (due_at, id);
CREATE INDEX routing_events_customer_idx ON crm_private.routing_events (customer_id, id)
    WHERE customer_id IS NOT NULL;
COMMENT ON TABLE crm_private.routing_events IS 'Events written by triggers in the same transaction as the change; the worker claims them (FOR UPDATE SKIP LOCKED) and deletes them when applied';
COMMENT ON COLUMN crm_private.routing_events.due_at IS 'Not before this time (business hours, retries)';
COMMENT ON COLUMN crm_private.routing_events.excluded IS 'sla_expired: employees who already had the customer in this chain';
COMMENT ON COLUMN crm_private.routing_events.attempts IS 'Times the worker found nobody eligible and deferred it';

CREATE TABLE crm_private.routing_counters (
    rule_id      bigint NOT NULL REFERENCES crm.routing_rules (id) ON DELETE CASCADE,
    employee_id  bigint NOT NULL REFERENCES crm.employees (id) ON DELETE CASCADE,
    assigned     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (rule_id, employee_id)
);
COMMENT ON TABLE crm_private.routing_counters IS 'Assignments per rule and employee: the turn of round robin and weighted (written under the rule''s lock)';

CREATE TABLE crm_private.sla_timers (
    customer_id  bigint PRIMARY KEY REFERENCES crm.customers (id) ON DELETE CASCADE,
    rule_id      bigint NOT NULL REFERENCES crm.routing_rules (id) ON DELETE CASCADE,
    owner_id     bigint NOT NULL REFERENCES crm.employees (id),
    assigned_at  timestamptz NOT NULL,
    due_at       timestamptz NOT NULL,
    hop          integer NOT NULL DEFAULT 0,
    excluded     bigint[] NOT NULL DEFAULT '{}'
);
CREATE INDEX sla_timers_due_idx ON crm_private.sla_timers (due_at);
COMMENT ON TABLE crm_private.sla_timers IS 'Running SLA clocks: the owner must log an activity on the customer before due_at';

CREATE TABLE crm_private.successors (
    employee_id   bigint PRIMARY KEY REFERENCES crm.employees (id),
    successor_id  bigint NOT NULL REFERENCES crm.employees (id),
    CHECK (employee_id <> successor_id)
);
COMMENT ON TABLE crm_private.successors IS 'Who takes over a departing employee''s open records (crm_admin.offboard_employee); without one the rules decide';

-- Business hours ---------------------------------------------------------------

CREATE FUNCTION crm_private.is_open(p_unit bigint, p_at timestamptz) RETURNS boolean
LANGUAGE sql STABLE SET search_path = ''
AS $$
    SELECT NOT EXISTS (SELECT FROM crm.business_hours AS h WHERE h.org_unit_id = p_unit)
        OR EXISTS (
            SELECT FROM crm.business_hours AS h
              JOIN crm.org_units AS u ON u.id = h.org_unit_id
             WHERE h.org_unit_id = p_unit
               AND h.weekday = extract(isodow FROM p_at AT TIME ZONE u.timezone)
               AND (p_at AT TIME ZONE u.timezone)::time >= h.opens
               AND (p_at AT TIME ZONE u.timezone)::time < h.closes)
$$;
COMMENT ON FUNCTION crm_private.is_open(bigint, timestamptz) IS 'Whether a team is inside its business hours at p_at (always, without hours)';

CREATE FUNCTION crm_private.open_intervals(p_unit bigint, p_from timestamptz, p_days integer)
RETURNS TABLE (opens timestamptz, closes timestamptz)
LANGUAGE sql STABLE SET search_path = ''
AS $$
    -- Each opening interval of the next p_days local days, as absolute times.
    SELECT (d.day + h.opens) AT TIME ZONE u.timezone, (d.day + h.closes) AT TIME ZONE u.timezone
      FROM crm.org_units AS u
     CROSS JOIN LATERAL pg_catalog.generate_series(0, p_days) AS g(n)
     CROSS JOIN LATERAL (SELECT (p_from AT TIME ZONE u.timezone)::date + g.n AS day) AS d
      JOIN crm.business_hours AS h
        ON h.org_unit_id = u.id AND h.weekday = extract(isodow FROM d.day)
     WHERE u.id = p_unit
       AND (d.day + h.closes) AT TIME ZONE u.timezone > p_from
     ORDER BY 1
$$;
COMMENT ON FUNCTION crm_private.open_intervals(bigint, timestamptz, integer) IS 'A team''s opening intervals that end after p_from, over the next p_days local days';

CREATE FUNCTION crm_private.next_open(p_unit bigint, p_at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = ''
AS $$
    SELECT CASE WHEN crm_private.is_open(p_unit, p_at) THEN p_at
                ELSE (SELECT min(i.opens) FROM crm_private.open_intervals(p_unit, p_at, 8) AS i
                       WHERE i.opens > p_at)
           END
$$;
COMMENT ON FUNCTION crm_private.next_open(bigint, timestamptz) IS 'p_at if the team is open then, else when it next opens (NULL if it never does)';

CREATE FUNCTION crm_private.add_business_minutes(p_unit bigint, p_from timestamptz, p_minutes integer)
RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = ''
AS $$
DECLARE
    v_left interval := pg_catalog.make_interval(mins => p_minutes);
    v_interval record;
BEGIN
    IF NOT EXISTS (SELECT FROM crm.business_hours WHERE org_unit_id = p_unit) THEN
        RETURN p_from + v_left;
    END IF;
    -- Consume the minutes interval by interval; a week ahead covers any sane SLA,
    -- a longer one is looked up a week at a time.
    LOOP
        FOR v_interval IN SELECT * FROM crm_private.open_intervals(p_unit, p_from, 7) LOOP
            IF greatest(v_interval.opens, p_from) + v_left <= v_interval.closes THEN
                RETURN greatest(v_interval.opens, p_from) + v_left;
            END IF;
            v_left := v_left - (v_interval.closes - greatest(v_interval.opens, p_from));
            p_from := v_interval.closes;
        END LOOP;
        p_from := p_from + interval '1 second';
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm_private.add_business_minutes(bigint, timestamptz, integer) IS 'The time p_minutes of a team''s business hours after p_from';

-- Triggers: record events in the changing transaction, wake the worker ------------

CREATE FUNCTION crm_private.wake_router() RETURNS void
LANGUAGE sql SET search_path = ''
AS $$
    -- Identical notifications of one transaction are delivered once, at commit.
    SELECT pg_catalog.pg_notify('crmdb_routing', '')
$$;
COMMENT ON FUNCTION crm_private.wake_router() IS 'NOTIFY crmdb_routing (no payload): wakes listening workers once per transaction';

CREATE FUNCTION crm_private.customers_inserted_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO crm_private.routing_events (kind, customer_id)
    SELECT 'customer_created', n.id FROM new_rows AS n WHERE n.owner_id IS NULL;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.customers_inserted_event() IS 'AFTER INSERT statement trigger on crm.customers: an event per customer without an owner';

CREATE FUNCTION crm_private.customers_stage_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO crm_private.routing_events (kind, customer_id, stage)
    SELECT 'stage_changed', n.id, n.stage
      FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
     WHERE n.stage IS DISTINCT FROM o.stage;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.customers_stage_event() IS 'AFTER UPDATE statement trigger on crm.customers: an event per customer whose stage changed';

CREATE FUNCTION crm_private.activities_owner_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Only activities that stop a running SLA clock: the owner's own, on their customer.
    INSERT INTO crm_private.routing_events (kind, customer_id, employee_id)
    SELECT DISTINCT 'owner_responded'::crm_private.routing_event_kind, n.customer_id, n.employee_id
      FROM new_rows AS n
      JOIN crm_private.sla_timers AS t ON t.customer_id = n.customer_id AND t.owner_id = n.employee_id;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.activities_owner_event() IS 'AFTER INSERT statement trigger on crm.activities: an event when an owner responds while an SLA clock runs';

CREATE FUNCTION crm_private.employees_status_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO crm_private.routing_events (kind, employee_id, status)
    SELECT 'employee_status_changed', n.id, n.status
      FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
     WHERE n.status IS DISTINCT FROM o.status;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.employees_status_event() IS 'AFTER UPDATE statement trigger on crm.employees: an event per status change (departures are offboarded)';

CREATE TRIGGER _600_routing_insert AFTER INSERT ON crm.customers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.customers_inserted_event();
CREATE TRIGGER _600_routing_update AFTER UPDATE ON crm.customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.customers_stage_event();
CREATE TRIGGER _600_routing_insert AFTER INSERT ON crm.activities
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.activities_owner_event();
CREATE TRIGGER _600_routing_update AFTER UPDATE ON crm.employees
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.employees_status_event();
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.routing_rules
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();

-- Notifications ------------------------------------------------------------------

CREATE FUNCTION crm_private.notifications_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    -- Channel crmdb_notifications_<employee id>; the payload is the newest id only:
    -- anyone may LISTEN to any channel, the rows themselves are behind RLS.
    PERFORM pg_catalog.pg_notify('crmdb_notifications_' || n.employee_id, max(n.id)::text)
       FROM new_rows AS n GROUP BY n.employee_id;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.notifications_inserted() IS 'AFTER INSERT statement trigger on crm.notifications: NOTIFY crmdb_notifications_<employee id> with the newest id';
CREATE TRIGGER _900_notify AFTER INSERT ON crm.notifications
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.notifications_inserted();

CREATE FUNCTION crm.mark_notifications_read(p_ids bigint[] DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_count integer;
BEGIN
    -- SECURITY INVOKER: row-level security limits it to the caller's own notifications.
    UPDATE crm.notifications
       SET read_at = pg_catalog.now()
     WHERE read_at IS NULL AND (p_ids IS NULL OR id = ANY (p_ids));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION crm.mark_notifications_read(bigint[]) IS 'Marks the current employee''s unread notifications read (those in p_ids, or all); returns how many';

-- The engine ---------------------------------------------------------------------
-- Only the worker runs it, as crmdb_owner or a member (a DBA login): EXECUTE is not
-- granted to employees, and route_events refuses any caller bound to an employee.
-- It is the one path that writes owners past the employees' row policies; every
-- assignment leaves a crm.assignment_history row and a crm.change_log row naming
-- the worker's role.

CREATE FUNCTION crm_private.routing_candidates(p_rule_id bigint, p_excluded bigint[] DEFAULT '{}')
RETURNS TABLE (employee_id bigint, weight integer, assigned bigint, load bigint, room bigint)
LANGUAGE sql STABLE SET search_path = ''
AS $$
    -- The rule's target, less whoever is not active, not in the project, excluded or at
    -- capacity. assigned: this rule's count (a newcomer starts level with the lowest);
    -- load: open customers or open tasks; room: how many more it may take (NULL: any).
    WITH r AS (SELECT * FROM crm.routing_rules WHERE id = p_rule_id),
    pool AS (
        SELECT e.id AS employee_id, 1 AS weight
          FROM r
          JOIN crm_private.org_unit_tree AS t
            ON t.ancestor_id = r.target_org_unit_id AND (r.include_sub_units OR t.depth = 0)
          JOIN crm.employees AS e ON e.org_unit_id = t.descendant_id
        UNION
        SELECT m.employee_id, m.weight
          FROM r JOIN crm.routing_queue_members AS m
            ON m.project_id = r.project_id AND m.queue = r.target_queue
    ),
    counted AS (
        SELECT p.employee_id, p.weight, c.assigned, r.max_open, r.load_measure,
               -- Exact for least_loaded; for capacity alone, counted up to max_open.
               CASE WHEN r.strategy = 'least_loaded' AND r.load_measure = 'customers'
                    THEN (SELECT count(*) FROM crm.customers AS cu
                           WHERE cu.owner_id = p.employee_id AND cu.stage <> 'lost')
                    WHEN r.max_open IS NOT NULL
                    THEN (SELECT count(*) FROM (
                              SELECT FROM crm.customers AS cu
                               WHERE cu.owner_id = p.employee_id AND cu.stage <> 'lost'
                               LIMIT r.max_open) AS capped)
               END AS open_customers,
               CASE WHEN r.strategy = 'least_loaded' AND r.load_measure = 'tasks'
                    THEN (SELECT count(*) FROM crm.activities AS a
                           WHERE a.employee_id = p.employee_id AND a.done_at IS NULL
                             AND a.kind IN ('task', 'appointment'))
               END AS open_tasks
          FROM pool AS p
         CROSS JOIN r
          JOIN crm.employees AS e ON e.id = p.employee_id AND e.status = 'active'
          LEFT JOIN crm_private.routing_counters AS c
            ON c.rule_id = r.id AND c.employee_id = p.employee_id
         WHERE p.employee_id <> ALL (p_excluded)
           AND EXISTS (SELECT FROM crm.project_members AS pm
                        WHERE pm.project_id = r.project_id AND pm.employee_id = p.employee_id)
    )
    SELECT x.employee_id, x.weight,
           coalesce(x.assigned, (SELECT min(c.assigned) FROM crm_private.routing_counters AS c
                                  WHERE c.rule_id = p_rule_id), 0),
           coalesce(CASE x.load_measure WHEN 'tasks' THEN x.open_tasks ELSE x.open_customers END, 0),
           x.max_open - x.open_customers
      FROM counted AS x
     WHERE x.max_open IS NULL OR x.open_customers < x.max_open
$$;
COMMENT ON FUNCTION crm_private.routing_candidates(bigint, bigint[]) IS 'Eligible employees of a routing rule (active, project members, under capacity, not excluded) with their turn, load and room';

CREATE FUNCTION crm_private.active_manager(p_employee_id bigint) RETURNS bigint
LANGUAGE sql STABLE SET search_path = ''
AS $$
    SELECT t.manager_id
      FROM crm_private.manager_tree AS t
      JOIN crm.employees AS m ON m.id = t.manager_id AND m.status = 'active'
     WHERE t.employee_id = p_employee_id AND t.depth > 0
     ORDER BY t.depth
     LIMIT 1
$$;
COMMENT ON FUNCTION crm_private.active_manager(bigint) IS 'The nearest active manager above an employee (escalations and fallbacks)';

CREATE FUNCTION crm_private.check_router() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = ''
AS $$
DECLARE
    v_role name := crm_private.acting_role();
BEGIN
    IF EXISTS (SELECT FROM crm.employees WHERE role_name = v_role)
       OR NOT pg_catalog.pg_has_role(v_role, 'crmdb_owner', 'MEMBER') THEN
        RAISE EXCEPTION 'role % may not run the routing engine (crmdb_owner members that are not employees only)', v_role
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;
COMMENT ON FUNCTION crm_private.check_router() IS 'Refuses callers of the routing engine that are employees or not members of crmdb_owner';

CREATE FUNCTION crm_private.assign_rule(p_rule_id bigint, p_now timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_strategy crm.routing_strategy;
    v_max_open integer;
    v_work record;
BEGIN
    -- One rule at a time, in rule id order across workers: its counters and loads are
    -- read and written under this lock, so concurrent workers take turns fairly.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('crmdb routing rule'), p_rule_id::integer);
    SELECT strategy, max_open INTO v_strategy, v_max_open FROM crm.routing_rules WHERE id = p_rule_id;

    -- Water-filling: every candidate offers slots 1..n (n: this rule's customers in the
    -- batch) keyed by what its turn/load would be after taking that many; the i-th
    -- customer (in event order) takes the i-th smallest slot. The same as picking the
    -- best candidate one customer at a time, in one statement.
    WITH need AS (
        SELECT w.event_id, row_number() OVER (ORDER BY w.event_id) AS rn
          FROM pg_temp.routing_work AS w
         WHERE w.rule_id = p_rule_id AND w.to_employee IS NULL AND w.excluded = '{}'
           AND w.strategy <> 'keep_with_team'
    ), slots AS (
        SELECT c.employee_id,
               CASE v_strategy
                   WHEN 'least_loaded' THEN (c.load + s.j)::numeric
                   WHEN 'weighted' THEN (c.assigned + s.j)::numeric / c.weight
                   ELSE (c.assigned + s.j)::numeric
               END AS key, s.j
          FROM crm_private.routing_candidates(p_rule_id) AS c
         CROSS JOIN LATERAL pg_catalog.generate_series(
               1, least((SELECT count(*) FROM need), coalesce(c.room, 2147483647))) AS s(j)
    ), ranked AS (
        SELECT s.employee_id, row_number() OVER (ORDER BY s.key, s.j, s.employee_id) AS rn
          FROM slots AS s
    )
    UPDATE pg_temp.routing_work AS w
       SET to_employee = r.employee_id
      FROM need JOIN ranked AS r ON r.rn = need.rn
     WHERE w.event_id = need.event_id;

    -- The rest one customer at a time, each pick seeing the ones before it (capacity
    -- counts this batch's picks too): SLA hops (with people to skip) and keep_with_team,
    -- which takes the previous owner, else the least loaded of their team, else the
    -- target in turn; all of them only under the rule's max_open.
    FOR v_work IN SELECT w.event_id, w.from_employee, w.project_id, w.excluded, w.strategy
                    FROM pg_temp.routing_work AS w
                   WHERE w.rule_id = p_rule_id AND w.to_employee IS NULL
                     AND (w.excluded <> '{}' OR w.strategy = 'keep_with_team')
                   ORDER BY w.event_id LOOP
        UPDATE pg_temp.routing_work AS w
           SET to_employee = coalesce(
                   CASE WHEN v_work.strategy = 'keep_with_team' THEN (
                       SELECT e.id FROM crm.employees AS prev
                         JOIN crm.employees AS e ON e.org_unit_id = prev.org_unit_id
                        CROSS JOIN LATERAL (
                              SELECT (SELECT count(*) FROM crm.customers AS cu
                                       WHERE cu.owner_id = e.id AND cu.stage <> 'lost')
                                     + (SELECT count(*) FROM pg_temp.routing_work AS b
                                         WHERE b.to_employee = e.id) AS n) AS open
                        WHERE prev.id = v_work.from_employee AND e.status = 'active'
                          AND e.id <> ALL (v_work.excluded)
                          AND EXISTS (SELECT FROM crm.project_members AS pm
                                       WHERE pm.project_id = v_work.project_id AND pm.employee_id = e.id)
                          -- kept by its owner (a hand-off) it adds nothing to their load
                          AND (v_max_open IS NULL
                               OR open.n - (e.id = v_work.from_employee)::integer < v_max_open)
                        ORDER BY e.id = prev.id DESC, open.n, e.id
                        LIMIT 1)
                   END,
                   (SELECT c.employee_id
                      FROM crm_private.routing_candidates(p_rule_id, v_work.excluded) AS c
                     CROSS JOIN LATERAL (SELECT count(*) AS n FROM pg_temp.routing_work AS b
                                          WHERE b.to_employee = c.employee_id) AS taken
                     WHERE c.room IS NULL OR c.room > taken.n
                     ORDER BY CASE v_strategy WHEN 'least_loaded' THEN (c.load + taken.n)::numeric
                                              WHEN 'weighted' THEN (c.assigned + 1)::numeric / c.weight
                                              ELSE c.assigned::numeric END, c.employee_id
                     LIMIT 1))
         WHERE w.event_id = v_work.event_id;
    END LOOP;

    -- Count the turns; a newcomer's counter starts level with the lowest.
    INSERT INTO crm_private.routing_counters (rule_id, employee_id, assigned)
    SELECT DISTINCT p_rule_id, w.to_employee,
           coalesce((SELECT min(c.assigned) FROM crm_private.routing_counters AS c
                      WHERE c.rule_id = p_rule_id), 0)
      FROM pg_temp.routing_work AS w
     WHERE w.rule_id = p_rule_id AND w.to_employee IS NOT NULL
    ON CONFLICT (rule_id, employee_id) DO NOTHING;
    UPDATE crm_private.routing_counters AS k
       SET assigned = k.assigned + n.taken
      FROM (SELECT w.to_employee, count(*) AS taken FROM pg_temp.routing_work AS w
             WHERE w.rule_id = p_rule_id AND w.to_employee IS NOT NULL
             GROUP BY w.to_employee) AS n
     WHERE k.rule_id = p_rule_id AND k.employee_id = n.to_employee;
END
$$;
COMMENT ON FUNCTION crm_private.assign_rule(bigint, timestamptz) IS 'Picks an owner for every batch customer routed by one rule (every strategy under max_open), under the rule''s lock, and counts the turns';

CREATE FUNCTION crm_private.rule_matches(r crm.routing_rules, c crm.customers) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = ''
AS $$
    SELECT r.enabled AND r.project_id = c.project_id
       AND (r.sources IS NULL OR c.source = ANY (r.sources))
       AND (r.provinces IS NULL OR c.province = ANY (r.provinces))
       AND (r.product_interests IS NULL OR c.product_interest = ANY (r.product_interests))
       AND (r.stages IS NULL OR c.stage = ANY (r.stages))
       AND (r.min_score IS NULL OR c.score >= r.min_score)
       AND (r.max_score IS NULL OR c.score <= r.max_score)
$$;
COMMENT ON FUNCTION crm_private.rule_matches(crm.routing_rules, crm.customers) IS 'Whether a customer meets a routing rule''s condition (and the rule is enabled, in the customer''s project)';

CREATE FUNCTION crm_private.offboard(p_employee_id bigint, p_now timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_fallback bigint := coalesce(
        (SELECT s.successor_id FROM crm_private.successors AS s
           JOIN crm.employees AS e ON e.id = s.successor_id AND e.status = 'active'
          WHERE s.employee_id = p_employee_id),
        crm_private.active_manager(p_employee_id));
BEGIN
    -- Each open customer becomes an event of its own: routed by the rules or to the
    -- successor; their open tasks and contracts follow the customer.
    INSERT INTO crm_private.routing_events (kind, customer_id, employee_id, due_at)
    SELECT 'offboard_customer', c.id, p_employee_id, p_now
      FROM crm.customers AS c
     WHERE c.owner_id = p_employee_id AND c.stage <> 'lost'
     ORDER BY c.id;
    -- Open tasks and contracts on other people's customers: to that customer's owner
    -- if active, else to the successor or the nearest active manager.
    UPDATE crm.activities AS a
       SET employee_id = coalesce(o.id, v_fallback)
      FROM crm.customers AS c
      LEFT JOIN crm.employees AS o ON o.id = c.owner_id AND o.status = 'active'
     WHERE a.customer_id = c.id AND a.employee_id = p_employee_id
       AND a.done_at IS NULL AND a.kind IN ('task', 'appointment')
       AND c.owner_id IS DISTINCT FROM p_employee_id
       AND coalesce(o.id, v_fallback) IS NOT NULL;
    UPDATE crm.contracts AS k
       SET owner_id = coalesce(o.id, v_fallback)
      FROM crm.customers AS c
      LEFT JOIN crm.employees AS o ON o.id = c.owner_id AND o.status = 'active'
     WHERE k.customer_id = c.id AND k.owner_id = p_employee_id
       AND k.status IN ('draft', 'negotiating')
       AND c.owner_id IS DISTINCT FROM p_employee_id
       AND coalesce(o.id, v_fallback) IS NOT NULL;
END
$$;
COMMENT ON FUNCTION crm_private.offboard(bigint, timestamptz) IS 'A departure: one offboard_customer event per open customer; open tasks and contracts on others'' customers to those customers'' owners';

CREATE FUNCTION crm_private.route_events(p_limit integer, p_now timestamptz DEFAULT NULL)
RETURNS TABLE (claimed integer, assigned integer, deferred integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, pg_catalog.clock_timestamp());
    v_ids bigint[];
    v_rule bigint;
    v_work record;
    v_assigned integer;
    v_deferred integer;
BEGIN
    PERFORM crm_private.check_router();
    IF pg_catalog.to_regclass('pg_temp.routing_work') IS NULL THEN
        CREATE TEMP TABLE routing_work (
            event_id bigint PRIMARY KEY, customer_id bigint NOT NULL, project_id bigint NOT NULL,
            from_employee bigint, rule_id bigint, strategy text NOT NULL, reason text NOT NULL,
            hop integer NOT NULL, excluded bigint[] NOT NULL, to_employee bigint
        ) ON COMMIT DELETE ROWS;
    END IF;
    DELETE FROM pg_temp.routing_work;

    -- 1. SLA clocks that ran out become events.
    WITH due AS (
        DELETE FROM crm_private.sla_timers AS t
         WHERE t.customer_id IN (SELECT s.customer_id FROM crm_private.sla_timers AS s
                                  WHERE s.due_at <= v_now ORDER BY s.due_at LIMIT p_limit
                                    FOR UPDATE SKIP LOCKED)
        RETURNING t.*
    )
    INSERT INTO crm_private.routing_events (kind, customer_id, employee_id, rule_id, hop, excluded, due_at)
    SELECT 'sla_expired', d.customer_id, d.owner_id, d.rule_id, d.hop, d.excluded, v_now FROM due AS d;

    -- 2. Claim due events. A customer's events go in order: one waits while an earlier
    --    one is pending, deferred, or held by another worker.
    v_ids := ARRAY(
        SELECT e.id FROM crm_private.routing_events AS e
         WHERE e.due_at <= v_now
           AND (e.customer_id IS NULL OR NOT EXISTS (
                SELECT FROM crm_private.routing_events AS p
                 WHERE p.customer_id = e.customer_id AND p.id < e.id))
         ORDER BY e.due_at, e.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED);
    IF cardinality(v_ids) = 0 THEN
        RETURN QUERY SELECT 0, 0, 0;
        RETURN;
    END IF;

    -- 3. Lock their customers in id order. A customer someone is changing right now is
    --    left, with its event, for a later batch: the worker never waits on the app.
    v_ids := ARRAY(
        SELECT e.id FROM crm_private.routing_events AS e
         WHERE e.id = ANY (v_ids)
           AND (e.customer_id IS NULL
                OR e.customer_id IN (SELECT c.id FROM crm.customers AS c
                                      WHERE c.id IN (SELECT x.customer_id FROM crm_private.routing_events AS x
                                                      WHERE x.id = ANY (v_ids))
                                      ORDER BY c.id FOR UPDATE SKIP LOCKED)
                OR NOT EXISTS (SELECT FROM crm.customers AS c WHERE c.id = e.customer_id)));

    -- 4. Departures: every open customer becomes an offboard_customer event.
    PERFORM crm_private.offboard(e.employee_id, v_now)
       FROM crm_private.routing_events AS e
      WHERE e.id = ANY (v_ids) AND e.kind = 'employee_status_changed' AND e.status = 'departed'
      ORDER BY e.id;

    -- 5. Owners who responded stop their SLA clock.
    DELETE FROM crm_private.sla_timers AS t
     USING crm_private.routing_events AS e
     WHERE e.id = ANY (v_ids) AND e.kind = 'owner_responded'
       AND t.customer_id = e.customer_id AND t.owner_id = e.employee_id;

    -- 6. What to route, and by which rule (still applicable: the customer may have
    --    moved on since the event). A new customer no rule matches is 'unmatched': the
    --    project's triage takes it (below); a stage without a hand-off rule moves nothing.
    INSERT INTO pg_temp.routing_work
    SELECT e.id, c.id, c.project_id, c.owner_id, r.id, coalesce(r.strategy::text, 'triage'),
           CASE WHEN e.kind = 'stage_changed' THEN 'handoff'
                WHEN r.id IS NULL THEN 'unmatched' ELSE 'new' END, 0, '{}', NULL
      FROM crm_private.routing_events AS e
      JOIN crm.customers AS c ON c.id = e.customer_id
      LEFT JOIN LATERAL (
           SELECT r.* FROM crm.routing_rules AS r
            WHERE r.project_id = c.project_id
              AND crm_private.rule_matches(r, c)
              AND CASE e.kind WHEN 'customer_created' THEN r.kind = 'assign'
                              ELSE r.kind = 'handoff' AND r.on_stage = e.stage END
            ORDER BY r.priority, r.id LIMIT 1) AS r ON true
     WHERE e.id = ANY (v_ids)
       AND ((e.kind = 'customer_created' AND c.owner_id IS NULL)
            OR (e.kind = 'stage_changed' AND c.stage = e.stage AND r.id IS NOT NULL));

    -- Offboarding: to the successor, else by the rules, else to the nearest manager.
    INSERT INTO pg_temp.routing_work
    SELECT e.id, c.id, c.project_id, c.owner_id,
           CASE WHEN s.successor_id IS NULL THEN r.id END,
           CASE WHEN s.successor_id IS NOT NULL THEN 'successor'
                WHEN r.id IS NULL THEN 'manager' ELSE r.strategy::text END,
           'offboarding', 0, '{}',
           CASE WHEN s.successor_id IS NOT NULL THEN s.successor_id
                WHEN r.id IS NULL THEN crm_private.active_manager(e.employee_id) END
      FROM crm_private.routing_events AS e
      JOIN crm.customers AS c ON c.id = e.customer_id AND c.owner_id = e.employee_id
      LEFT JOIN (crm_private.successors AS s
                 JOIN crm.employees AS se ON se.id = s.successor_id AND se.status = 'active')
        ON s.employee_id = e.employee_id
      LEFT JOIN LATERAL (
           SELECT r.* FROM crm.routing_rules AS r
            WHERE r.project_id = c.project_id
              AND crm_private.rule_matches(r, c)
              AND (r.kind = 'assign' OR r.on_stage = c.stage)
            ORDER BY r.priority, r.id LIMIT 1) AS r ON true
     WHERE e.id = ANY (v_ids) AND e.kind = 'offboard_customer';

    -- SLA expiry without an activity by the owner since assignment: the next eligible
    -- employee of the rule, or after sla_max_hops the owner's manager.
    INSERT INTO pg_temp.routing_work
    SELECT e.id, c.id, c.project_id, c.owner_id,
           CASE WHEN e.hop < r.sla_max_hops THEN r.id END,
           CASE WHEN e.hop < r.sla_max_hops THEN r.strategy::text ELSE 'manager' END,
           CASE WHEN e.hop < r.sla_max_hops THEN 'sla' ELSE 'escalation' END,
           CASE WHEN e.hop < r.sla_max_hops THEN e.hop + 1 ELSE e.hop END,
           e.excluded || e.employee_id,
           CASE WHEN e.hop >= r.sla_max_hops THEN crm_private.active_manager(e.employee_id) END
      FROM crm_private.routing_events AS e
      JOIN crm.customers AS c ON c.id = e.customer_id AND c.owner_id = e.employee_id
      JOIN crm.routing_rules AS r ON r.id = e.rule_id
     WHERE e.id = ANY (v_ids) AND e.kind = 'sla_expired'
       AND NOT EXISTS (SELECT FROM crm.activities AS a
                        WHERE a.customer_id = c.id AND a.employee_id = c.owner_id
                          AND a.created_at >= c.assigned_at);

    -- The planner has no statistics on a temporary table: give it the batch's size, so
    -- that the joins below probe customers, activities and contracts by index.
    ANALYZE pg_temp.routing_work;

    -- 7. Outside the team's business hours nothing moves: wait until it opens.
    WITH closed AS (
        DELETE FROM pg_temp.routing_work AS w
         USING crm.routing_rules AS r
         WHERE r.id = w.rule_id AND w.to_employee IS NULL AND r.hours_org_unit_id IS NOT NULL
           AND NOT crm_private.is_open(r.hours_org_unit_id, v_now)
        RETURNING w.event_id, r.hours_org_unit_id
    )
    UPDATE crm_private.routing_events AS e
       SET due_at = coalesce(crm_private.next_open(closed.hours_org_unit_id, v_now), v_now + interval '1 day')
      FROM closed
     WHERE e.id = closed.event_id;

    -- 8. Pick owners, rule by rule in id order (the order every worker locks them in).
    FOR v_rule IN SELECT DISTINCT w.rule_id FROM pg_temp.routing_work AS w
                   WHERE w.rule_id IS NOT NULL AND w.to_employee IS NULL ORDER BY 1 LOOP
        PERFORM crm_private.assign_rule(v_rule, v_now);
    END LOOP;

    -- Nobody eligible. A new customer whose rule found nobody for overflow_tries tries
    -- (crm.routing_settings; by default the 12th, 5 minutes apart: an hour) overflows to
    -- the project's triage; offboarding falls back to the nearest active manager.
    UPDATE pg_temp.routing_work AS w
       SET reason = 'overflow'
      FROM crm_private.routing_events AS e
     WHERE e.id = w.event_id AND w.to_employee IS NULL AND w.reason = 'new'
       AND e.attempts + 1 >= (crm_private.routing_settings_of(w.project_id)).overflow_tries;
    UPDATE pg_temp.routing_work AS w
       SET to_employee = crm_private.active_manager(w.from_employee), strategy = 'manager', rule_id = NULL
     WHERE w.to_employee IS NULL AND w.reason = 'offboarding';
    -- An SLA hop that finds nobody else eligible (everyone else already had it, is on
    -- leave, departed or at capacity) escalates at once, as after the last hop: to the
    -- owner's nearest active manager, else (below) the project's triage. It never waits:
    -- the unresponsive owner would keep the customer meanwhile. The rule stays on record.
    UPDATE pg_temp.routing_work AS w
       SET reason = 'sla_no_eligible', strategy = 'manager', hop = w.hop - 1,
           to_employee = crm_private.active_manager(w.from_employee)
     WHERE w.to_employee IS NULL AND w.reason = 'sla';

    -- The project's triage: its triage queue, else its admins (crm.routing_settings),
    -- the least loaded first, one customer at a time (each pick counts in the next one's
    -- load). It takes unmatched and overflowing new customers, and offboarding and SLA
    -- escalations that found no active manager.
    FOR v_work IN SELECT w.event_id, w.project_id, w.from_employee FROM pg_temp.routing_work AS w
                   WHERE w.to_employee IS NULL
                     AND w.reason IN ('unmatched', 'overflow', 'offboarding', 'escalation', 'sla_no_eligible')
                   ORDER BY w.event_id LOOP
        UPDATE pg_temp.routing_work AS w
           SET to_employee = f.employee_id, strategy = f.strategy,
               rule_id = CASE WHEN w.reason IN ('overflow', 'sla_no_eligible') THEN w.rule_id END
          FROM (SELECT f.employee_id, f.strategy
                  FROM crm_private.fallback_candidates(v_work.project_id) AS f
                 WHERE f.employee_id IS DISTINCT FROM v_work.from_employee
                 ORDER BY f.tier,
                          f.open_customers + (SELECT count(*) FROM pg_temp.routing_work AS b
                                               WHERE b.to_employee = f.employee_id),
                          f.employee_id
                 LIMIT 1) AS f
         WHERE w.event_id = v_work.event_id;
    END LOOP;
    -- An SLA escalation that finds nobody at all (no active manager, an empty triage)
    -- ends the chain with the owner, who is active: on record (strategy kept) and told,
    -- with no clock to fire again. Whatever else finds nobody waits and retries.
    UPDATE pg_temp.routing_work AS w
       SET to_employee = w.from_employee, strategy = 'kept', rule_id = NULL
     WHERE w.to_employee IS NULL AND w.reason IN ('escalation', 'sla_no_eligible');
    WITH stuck AS (
        DELETE FROM pg_temp.routing_work AS w WHERE w.to_employee IS NULL
        RETURNING w.event_id, w.project_id
    )
    UPDATE crm_private.routing_events AS e
       SET due_at = v_now + pg_catalog.make_interval(
               mins => (crm_private.routing_settings_of(stuck.project_id)).retry_minutes),
           attempts = e.attempts + 1
      FROM stuck
     WHERE e.id = stuck.event_id;

    -- 9. Write: owner, history, open work of a departed owner, SLA clock, notifications.
    UPDATE crm.customers AS c
       SET owner_id = w.to_employee, org_unit_id = e.org_unit_id, assigned_at = v_now
      FROM pg_temp.routing_work AS w
      JOIN crm.employees AS e ON e.id = w.to_employee
     WHERE c.id = w.customer_id AND w.strategy <> 'kept';
    GET DIAGNOSTICS v_assigned = ROW_COUNT;

    INSERT INTO crm.assignment_history (customer_id, project_id, from_employee_id, to_employee_id,
                                        rule_id, rule_name, strategy, reason, hop, event_id, at)
    SELECT w.customer_id, w.project_id, w.from_employee, w.to_employee, w.rule_id, r.name,
           w.strategy, w.reason, w.hop, w.event_id, v_now
      FROM pg_temp.routing_work AS w
      LEFT JOIN crm.routing_rules AS r ON r.id = w.rule_id;

    IF EXISTS (SELECT FROM pg_temp.routing_work AS w WHERE w.reason = 'offboarding') THEN
        UPDATE crm.activities AS a
           SET employee_id = w.to_employee
          FROM pg_temp.routing_work AS w
         WHERE w.reason = 'offboarding' AND a.customer_id = w.customer_id
           AND a.employee_id = w.from_employee AND a.done_at IS NULL
           AND a.kind IN ('task', 'appointment');
        UPDATE crm.contracts AS k
           SET owner_id = w.to_employee
          FROM pg_temp.routing_work AS w
         WHERE w.reason = 'offboarding' AND k.customer_id = w.customer_id
           AND k.owner_id = w.from_employee AND k.status IN ('draft', 'negotiating');
    END IF;

    DELETE FROM crm_private.sla_timers AS t USING pg_temp.routing_work AS w
     WHERE t.customer_id = w.customer_id;
    INSERT INTO crm_private.sla_timers (customer_id, rule_id, owner_id, assigned_at, due_at, hop, excluded)
    SELECT w.customer_id, r.id, w.to_employee, v_now,
           CASE WHEN r.sla_business_hours
                THEN crm_private.add_business_minutes(r.hours_org_unit_id, v_now, r.sla_minutes)
                ELSE v_now + pg_catalog.make_interval(mins => r.sla_minutes) END,
           w.hop, w.excluded
      FROM pg_temp.routing_work AS w
      JOIN crm.routing_rules AS r ON r.id = w.rule_id
     WHERE r.sla_minutes IS NOT NULL AND w.reason NOT IN ('overflow', 'sla_no_eligible');

    INSERT INTO crm.notifications (employee_id, kind, customer_id, subject, details)
    SELECT w.to_employee,
           CASE WHEN w.strategy = 'kept' THEN 'sla_missed'
                WHEN w.reason IN ('escalation', 'overflow', 'sla_no_eligible') OR w.strategy = 'project_admin'
                THEN 'escalated' ELSE 'assigned' END,
           w.customer_id,
           CASE
               WHEN w.strategy = 'kept' THEN pg_catalog.format('Customer #%s: no activity logged within the SLA, and nobody could take it over (no one else eligible, no active manager, an empty triage): it stays with you', w.customer_id)
               WHEN w.reason = 'sla_no_eligible' AND w.strategy <> 'manager' THEN pg_catalog.format('Customer #%s escalated to you: no response within the SLA, nobody else eligible under rule %s, and no active manager', w.customer_id, r.name)
               WHEN w.reason = 'sla_no_eligible' THEN pg_catalog.format('Customer #%s escalated to you: no response within the SLA, and nobody else eligible under rule %s', w.customer_id, r.name)
               WHEN w.reason = 'escalation' AND w.strategy <> 'manager' THEN pg_catalog.format('Customer #%s escalated to you: no response within the SLA, and no active manager', w.customer_id)
               WHEN w.reason = 'escalation' THEN pg_catalog.format('Customer #%s escalated to you: no response within the SLA', w.customer_id)
               WHEN w.reason = 'sla' THEN pg_catalog.format('Customer #%s reassigned to you: the previous owner did not respond in time', w.customer_id)
               WHEN w.reason = 'unmatched' THEN pg_catalog.format('Customer #%s assigned to you: no routing rule of its project matched it', w.customer_id)
               WHEN w.reason = 'overflow' THEN pg_catalog.format('Customer #%s assigned to you: rule %s found nobody eligible for an hour', w.customer_id, r.name)
               WHEN w.reason = 'offboarding' AND w.strategy IN ('manager', 'triage', 'project_admin') THEN pg_catalog.format('Customer #%s of a departed colleague assigned to you: no successor or rule could take it', w.customer_id)
               ELSE pg_catalog.format('Customer #%s assigned to you', w.customer_id)
           END,
           pg_catalog.jsonb_build_object('reason', w.reason, 'rule', r.name, 'strategy', w.strategy,
                                         'from_employee_id', w.from_employee, 'hop', w.hop)
      FROM pg_temp.routing_work AS w
      LEFT JOIN crm.routing_rules AS r ON r.id = w.rule_id
    UNION ALL
    SELECT w.from_employee, 'reassigned_away', w.customer_id,
           pg_catalog.format('Customer #%s moved to someone else: no activity logged within the SLA', w.customer_id),
           pg_catalog.jsonb_build_object('reason', w.reason, 'rule', r.name, 'to_employee_id', w.to_employee)
      FROM pg_temp.routing_work AS w
      LEFT JOIN crm.routing_rules AS r ON r.id = w.rule_id
      JOIN crm.employees AS prev ON prev.id = w.from_employee AND prev.status <> 'departed'
     WHERE w.reason IN ('sla', 'escalation', 'sla_no_eligible') AND w.strategy <> 'kept';

    -- 10. Done: applied events go; deferred ones stay, due later.
    DELETE FROM crm_private.routing_events AS e WHERE e.id = ANY (v_ids) AND e.due_at <= v_now;
    SELECT count(*) INTO v_deferred FROM crm_private.routing_events AS e
     WHERE e.id = ANY (v_ids) AND e.due_at > v_now;
    DELETE FROM pg_temp.routing_work;
    RETURN QUERY SELECT cardinality(v_ids), v_assigned, v_deferred;
END
$$;
COMMENT ON FUNCTION crm_private.route_events(integer, timestamptz) IS 'The routing worker''s batch: claims up to p_limit due events (SKIP LOCKED), applies the rules, writes owners, history, SLA clocks and notifications; p_now pins the clock (tests). Callable by crmdb_owner members that are not employees';

CREATE FUNCTION crm_private.next_routing_due() RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $$
    -- Only the first pending event of each customer can be claimed next.
    SELECT least((SELECT min(e.due_at) FROM crm_private.routing_events AS e
                   WHERE e.customer_id IS NULL OR NOT EXISTS (
                         SELECT FROM crm_private.routing_events AS p
                          WHERE p.customer_id = e.customer_id AND p.id < e.id)),
                 (SELECT min(t.due_at) FROM crm_private.sla_timers AS t))
$$;
COMMENT ON FUNCTION crm_private.next_routing_due() IS 'When the next claimable event or SLA clock falls due (the worker sleeps until then at most)';

-- Admin API ------------------------------------------------------------------------

CREATE FUNCTION crm_admin.offboard_employee(p_role name, p_successor name DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = ''
AS $$
DECLARE
    v_employee crm.employees := crm_private.employee_by_role(p_role);
    v_successor crm.employees;
BEGIN
    IF p_successor IS NOT NULL THEN
        v_successor := crm_private.employee_by_role(p_successor);
        IF v_successor.status <> 'active' OR v_successor.id = v_employee.id THEN
            RAISE EXCEPTION 'employee "%" cannot take over from "%": a successor must be another active employee', p_successor, p_role
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        INSERT INTO crm_private.successors (employee_id, successor_id)
        VALUES (v_employee.id, v_successor.id)
        ON CONFLICT (employee_id) DO UPDATE SET successor_id = EXCLUDED.successor_id;
    END IF;
    PERFORM crm_admin.set_employee_status(p_role, 'departed');
END
$$;
COMMENT ON FUNCTION crm_admin.offboard_employee(name, name) IS 'Marks an employee departed; the routing worker hands their open customers, tasks and contracts to p_successor, or by the rules';

-- Row-level security ---------------------------------------------------------------
-- Routing configuration and history get their employee policies from the role
-- templates (policies/admin.yaml); notifications have fixed policies of their own,
-- named crmdb_* like the owner's, which `crmdb policy` leaves alone.

ALTER TABLE crm.business_hours ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.business_hours FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.business_hours TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.routing_rules ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.routing_rules FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.routing_rules TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.routing_queue_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.routing_queue_members FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.routing_queue_members TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.assignment_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.assignment_history FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.assignment_history TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.notifications ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.notifications FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.notifications TO crmdb_owner USING (true) WITH CHECK (true);
CREATE POLICY crmdb_employee_own ON crm.notifications FOR SELECT TO crmdb_employee
    USING (employee_id = (SELECT crm.current_employee_id()));
CREATE POLICY crmdb_employee_mark_read ON crm.notifications FOR UPDATE TO crmdb_employee
    USING (employee_id = (SELECT crm.current_employee_id()))
    WITH CHECK (employee_id = (SELECT crm.current_employee_id()));
COMMENT ON POLICY crmdb_employee_own ON crm.notifications IS 'crmdb: every employee reads their own notifications, whatever their templates';
COMMENT ON POLICY crmdb_employee_mark_read ON crm.notifications IS 'crmdb: every employee may mark their own notifications read (only read_at is granted)';
ALTER TABLE crm_private.routing_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.routing_events FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.routing_events TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.routing_counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.routing_counters FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.routing_counters TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.sla_timers ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.sla_timers FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.sla_timers TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.successors ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.successors FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.successors TO crmdb_owner USING (true) WITH CHECK (true);

-- Privileges -----------------------------------------------------------------------

GRANT SELECT, UPDATE (read_at) ON crm.notifications TO crmdb_employee;
GRANT EXECUTE ON FUNCTION crm.mark_notifications_read(bigint[]) TO crmdb_employee;

RESET ROLE;

-- Security hardening (migration 0005) ----------------------------------------
-- Found by the attack suite (tests/security); see the migration for the reasoning:
-- 1. every crmdb function searches pg_catalog first and pg_temp last (`''` searched
--    the session's temporary schema first for types and relations);
-- 2. rows employees insert get their id from the sequence (crm_private.assign_id);
-- 3. crm.change_log.project_id, so templates can limit the audit trail to projects.

SET ROLE crmdb_owner;

-- 1. pg_temp last --------------------------------------------------------------

DO $$
DECLARE
    v_function regprocedure;
BEGIN
    FOR v_function IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc AS p
          JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('crm', 'crm_private', 'crm_admin')
           AND 'search_path=""' = ANY (p.proconfig)
         ORDER BY 1
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', v_function);
    END LOOP;
END
$$;

-- 2. Ids are the database's ----------------------------------------------------

CREATE FUNCTION crm_private.assign_id() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- crm_private.acting_role(), written out: this runs for every inserted row.
    v_role name := pg_catalog.current_setting('role');
BEGIN
    IF v_role = 'none' THEN
        v_role := session_user;
    END IF;
    -- DBAs (members of crmdb_owner, superusers) keep the ids they load; everyone
    -- else gets the next one, whatever they asked for.
    IF NEW.id IS NULL OR NOT pg_catalog.pg_has_role(v_role, 'crmdb_owner', 'MEMBER') THEN
        NEW.id := pg_catalog.nextval(pg_catalog.pg_get_serial_sequence(
            pg_catalog.format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'id')::regclass);
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.assign_id() IS 'BEFORE INSERT trigger: rows employees insert get the next id from the sequence, never one they chose';

CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.customers
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();
CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.contracts
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();
CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.activities
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();
CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.shares
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();

-- 3. The audit trail's project -------------------------------------------------

ALTER TABLE crm.change_log ADD COLUMN project_id bigint;
CREATE INDEX change_log_project_id_idx ON crm.change_log (project_id, at);
COMMENT ON COLUMN crm.change_log.project_id IS 'Project of the changed row (of its customer for activities and shares); NULL for the org (employees)';

-- PL/pgSQL: its query is planned once per session, not at every row.
CREATE FUNCTION crm_private.change_project(p_row jsonb) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((p_row ->> 'project_id')::bigint,
                    (SELECT c.project_id FROM crm.customers AS c
                      WHERE c.id = (p_row ->> 'customer_id')::bigint));
END
$$;
COMMENT ON FUNCTION crm_private.change_project(jsonb) IS 'The project an audited row (as jsonb) belongs to: its project_id, else its customer''s';

-- Trigger code only: nobody else may call them.
REVOKE EXECUTE ON FUNCTION crm_private.assign_id(), crm_private.change_project(jsonb) FROM PUBLIC;

RESET ROLE;

-- Field groups (migration 0006) -------------------------------------------------------
-- Hidden fields live in relations whose row policies decide: each field group other
-- than core is a 1:1 side table crm.<table>__<group> with the parent's anchors copied
-- (docs/field-security.md). crm_api's views are generated by crmdb policy apply.

CREATE SCHEMA crm_api AUTHORIZATION crmdb_owner;
SET ROLE crmdb_owner;

COMMENT ON SCHEMA crm_api IS 'Views employees read and write: one per protected table, every field group joined in; generated by crmdb policy apply (security_invoker)';
GRANT USAGE ON SCHEMA crm_api TO crmdb_employee;

-- Masks -------------------------------------------------------------------------------

CREATE FUNCTION crm_private.mask_text(p_value text, p_keep_last integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN p_value IS NOT NULL
            THEN repeat('*', greatest(length(p_value) - p_keep_last, 0))
                 || right(p_value, least(p_keep_last, length(p_value))) END;
COMMENT ON FUNCTION crm_private.mask_text(text, integer) IS 'A value with all but its last p_keep_last characters as *';

CREATE TABLE crm_private.field_masks (
    table_name   text NOT NULL,
    column_name  text NOT NULL,
    keep_last    integer NOT NULL CHECK (keep_last BETWEEN 0 AND 8),
    PRIMARY KEY (table_name, column_name)
);
COMMENT ON TABLE crm_private.field_masks IS 'Masked fields (policies/fields.yaml): the parent keeps <column>_mask up to date; written by crmdb policy apply';
ALTER TABLE crm_private.field_masks ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.field_masks FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.field_masks TO crmdb_owner USING (true) WITH CHECK (true);

-- Side tables -------------------------------------------------------------------------

CREATE TABLE crm.customers__contact (
    id           bigint PRIMARY KEY REFERENCES crm.customers (id) ON DELETE CASCADE,
    project_id   bigint NOT NULL,
    org_unit_id  bigint,
    owner_id     bigint,
    phone        text,
    email        text,
    address      text,
    custom       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom) = 'object')
);
CREATE INDEX customers__contact_phone_idx ON crm.customers__contact (phone);
COMMENT ON TABLE crm.customers__contact IS 'Field group contact of crm.customers (phone, email, address); anchors copied from the customer';

CREATE TABLE crm.customers__financial (
    id               bigint PRIMARY KEY REFERENCES crm.customers (id) ON DELETE CASCADE,
    project_id       bigint NOT NULL,
    org_unit_id      bigint,
    owner_id         bigint,
    bank_account     text,
    bank_name        text,
    tax_code         text,
    financial_notes  text,
    custom           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom) = 'object')
);
COMMENT ON TABLE crm.customers__financial IS 'Field group financial of crm.customers (bank account, tax code); anchors copied from the customer';

CREATE TABLE crm.customers__internal_notes (
    id           bigint PRIMARY KEY REFERENCES crm.customers (id) ON DELETE CASCADE,
    project_id   bigint NOT NULL,
    org_unit_id  bigint,
    owner_id     bigint,
    notes        text,
    custom       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom) = 'object')
);
COMMENT ON TABLE crm.customers__internal_notes IS 'Field group internal_notes of crm.customers; anchors copied from the customer';

CREATE TABLE crm.contracts__financial (
    id              bigint PRIMARY KEY REFERENCES crm.contracts (id) ON DELETE CASCADE,
    project_id      bigint NOT NULL,
    owner_id        bigint,
    customer_id     bigint NOT NULL,
    amount          numeric(18, 2) NOT NULL DEFAULT 0 CHECK (amount >= 0),
    payment_method  text,
    bank_account    text,
    bank_name       text,
    custom          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom) = 'object')
);
CREATE INDEX contracts__financial_customer_id_idx ON crm.contracts__financial (customer_id);
COMMENT ON TABLE crm.contracts__financial IS 'Field group financial of crm.contracts (contract money, bank account); anchors copied from the contract';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers__contact', 'customers__financial',
                             'customers__internal_notes', 'contracts__financial'] LOOP
        EXECUTE pg_catalog.format('ALTER TABLE crm.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('ALTER TABLE crm.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY crmdb_owner_all ON crm.%I TO crmdb_owner USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$$;

-- Triggers ----------------------------------------------------------------------------

-- Side rows are created with their parents, as the owner: employees never insert them
-- (nothing to forge), and every parent has exactly one row per group.
CREATE FUNCTION crm_private.create_field_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME = 'customers' THEN
        INSERT INTO crm.customers__contact (id, project_id, org_unit_id, owner_id)
        SELECT n.id, n.project_id, n.org_unit_id, n.owner_id FROM new_rows AS n
        ON CONFLICT (id) DO NOTHING;
        INSERT INTO crm.customers__financial (id, project_id, org_unit_id, owner_id)
        SELECT n.id, n.project_id, n.org_unit_id, n.owner_id FROM new_rows AS n
        ON CONFLICT (id) DO NOTHING;
        INSERT INTO crm.customers__internal_notes (id, project_id, org_unit_id, owner_id)
        SELECT n.id, n.project_id, n.org_unit_id, n.owner_id FROM new_rows AS n
        ON CONFLICT (id) DO NOTHING;
    ELSIF TG_TABLE_NAME = 'contracts' THEN
        INSERT INTO crm.contracts__financial (id, project_id, owner_id, customer_id)
        SELECT n.id, n.project_id, n.owner_id, n.customer_id FROM new_rows AS n
        ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.create_field_rows() IS 'AFTER INSERT statement trigger on customers and contracts: one row per field group, anchors copied';

CREATE FUNCTION crm_private.copy_anchors() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Statement-level: one UPDATE per group table for every row whose anchors changed
    -- (a routing batch moves hundreds of customers; row by row, each copy was three
    -- statements, each with its own audit trigger run).
    IF TG_TABLE_NAME = 'customers' THEN
        IF NOT EXISTS (SELECT FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
                        WHERE (o.project_id, o.org_unit_id, o.owner_id)
                              IS DISTINCT FROM (n.project_id, n.org_unit_id, n.owner_id)) THEN
            RETURN NULL;
        END IF;
        UPDATE crm.customers__contact AS g
           SET project_id = n.project_id, org_unit_id = n.org_unit_id, owner_id = n.owner_id
          FROM new_rows AS n
         WHERE g.id = n.id
           AND (g.project_id, g.org_unit_id, g.owner_id)
               IS DISTINCT FROM (n.project_id, n.org_unit_id, n.owner_id);
        UPDATE crm.customers__financial AS g
           SET project_id = n.project_id, org_unit_id = n.org_unit_id, owner_id = n.owner_id
          FROM new_rows AS n
         WHERE g.id = n.id
           AND (g.project_id, g.org_unit_id, g.owner_id)
               IS DISTINCT FROM (n.project_id, n.org_unit_id, n.owner_id);
        UPDATE crm.customers__internal_notes AS g
           SET project_id = n.project_id, org_unit_id = n.org_unit_id, owner_id = n.owner_id
          FROM new_rows AS n
         WHERE g.id = n.id
           AND (g.project_id, g.org_unit_id, g.owner_id)
               IS DISTINCT FROM (n.project_id, n.org_unit_id, n.owner_id);
    ELSIF TG_TABLE_NAME = 'contracts' THEN
        UPDATE crm.contracts__financial AS g
           SET project_id = n.project_id, owner_id = n.owner_id, customer_id = n.customer_id
          FROM new_rows AS n
         WHERE g.id = n.id
           AND (g.project_id, g.owner_id, g.customer_id)
               IS DISTINCT FROM (n.project_id, n.owner_id, n.customer_id);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.copy_anchors() IS 'AFTER UPDATE statement trigger on customers and contracts: the field groups'' copies of the anchors follow, one UPDATE per group table';

-- Masks and anchor copies are the owner's to write (its triggers, DBA loads): a fake
-- mask would mislead masked readers, a moved copy would detach a group from its row.
-- SECURITY INVOKER on purpose: current_user is whoever runs the statement, crmdb_owner
-- inside crmdb's own definer triggers.
CREATE FUNCTION crm_private.keep_derived() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_new jsonb;
    v_old jsonb;
    v_column text;
BEGIN
    -- crmdb's own writes first, before any row is made jsonb (a routing batch copies
    -- anchors into hundreds of group rows).
    IF pg_catalog.pg_has_role(current_user, 'crmdb_owner', 'MEMBER') THEN
        RETURN NEW;
    END IF;
    v_new := to_jsonb(NEW);
    v_old := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END;
    FOREACH v_column IN ARRAY TG_ARGV LOOP
        IF (v_new -> v_column) IS DISTINCT FROM coalesce(v_old -> v_column, 'null') THEN
            RAISE EXCEPTION 'crmdb: %.% is kept by crmdb and cannot be written', TG_TABLE_NAME, v_column
                USING ERRCODE = 'insufficient_privilege',
                      HINT = CASE WHEN TG_TABLE_NAME LIKE '%\_\_%'
                                  THEN 'change the row it belongs to; its field groups follow'
                                  ELSE 'write the field; its mask follows' END;
        END IF;
    END LOOP;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.keep_derived() IS 'BEFORE trigger: refuses employees'' writes to the columns named as arguments (masks, field groups'' anchor copies)';

CREATE FUNCTION crm_private.refresh_masks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_parent text := split_part(TG_TABLE_NAME, '__', 1);
    v_row jsonb := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END;
    m record;
BEGIN
    -- Dynamic SQL, but only for masked columns and only when the group is written.
    FOR m IN SELECT f.column_name, f.keep_last FROM crm_private.field_masks AS f
              WHERE f.table_name = v_parent AND v_row ? f.column_name LOOP
        EXECUTE pg_catalog.format(
            'UPDATE crm.%I SET %I = crm_private.mask_text($1, $2) WHERE id = $3'
            ' AND %2$I IS DISTINCT FROM crm_private.mask_text($1, $2)',
            v_parent, m.column_name || '_mask')
        USING v_row ->> m.column_name, m.keep_last, NEW.id;
    END LOOP;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.refresh_masks() IS 'AFTER trigger on field group tables: writes the mask of each masked column into the parent (<column>_mask)';

-- A group's copy as its row says it: NULL while a customer's group is empty (no value,
-- no custom field), so the empty rows made with each new customer write nothing back.
-- A contract's money is never empty (amount defaults to 0).
CREATE FUNCTION crm_private.copy_of(g crm.customers__contact) RETURNS crm_vault.customers_contact
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN num_nonnulls(g.phone, g.email, g.address) > 0 OR g.custom <> '{}'
            THEN ROW(g.phone, g.email, g.address, g.custom)::crm_vault.customers_contact END;
CREATE FUNCTION crm_private.copy_of(g crm.customers__financial) RETURNS crm_vault.customers_financial
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN num_nonnulls(g.bank_account, g.bank_name, g.tax_code, g.financial_notes) > 0
                 OR g.custom <> '{}'
            THEN ROW(g.bank_account, g.bank_name, g.tax_code, g.financial_notes,
                     g.custom)::crm_vault.customers_financial END;
CREATE FUNCTION crm_private.copy_of(g crm.customers__internal_notes) RETURNS crm_vault.customers_internal_notes
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN g.notes IS NOT NULL OR g.custom <> '{}'
            THEN ROW(g.notes, g.custom)::crm_vault.customers_internal_notes END;
CREATE FUNCTION crm_private.copy_of(g crm.contracts__financial) RETURNS crm_vault.contracts_financial
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ROW(g.amount, g.payment_method, g.bank_account, g.bank_name,
           g.custom)::crm_vault.contracts_financial;
COMMENT ON FUNCTION crm_private.copy_of(crm.customers__contact) IS 'The read copy of a customer''s contact group (NULL while empty)';
COMMENT ON FUNCTION crm_private.copy_of(crm.customers__financial) IS 'The read copy of a customer''s financial group (NULL while empty)';
COMMENT ON FUNCTION crm_private.copy_of(crm.customers__internal_notes) IS 'The read copy of a customer''s internal notes group (NULL while empty)';
COMMENT ON FUNCTION crm_private.copy_of(crm.contracts__financial) IS 'The read copy of a contract''s financial group';
REVOKE EXECUTE ON FUNCTION crm_private.copy_of(crm.customers__contact),
    crm_private.copy_of(crm.customers__financial), crm_private.copy_of(crm.customers__internal_notes),
    crm_private.copy_of(crm.contracts__financial) FROM PUBLIC;

-- The side tables keep the copies: one UPDATE of the parents per statement.
CREATE FUNCTION crm_private.copy_field_values() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Statement triggers fire for statements that changed nothing too (the parents'
    -- own triggers update the groups' anchor copies): stop there, not one level down.
    IF NOT EXISTS (SELECT FROM new_rows) THEN
        RETURN NULL;
    END IF;
    -- Rows of a transition table are records: each branch names its table's row type.
    -- Only when a copy changes: an UPDATE of no row still fires the parent's statement
    -- triggers (the audit, anchor copies, routing), and the group rows made empty with
    -- each new customer, or whose anchors alone moved, change no copy.
    IF TG_TABLE_NAME = 'customers__contact' THEN
        IF EXISTS (SELECT FROM new_rows AS n JOIN crm.customers AS p ON p.id = n.id
                    WHERE p.contact_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__contact)) THEN
            UPDATE crm.customers AS p SET contact_copy = crm_private.copy_of(ROW(n.*)::crm.customers__contact)
              FROM new_rows AS n
             WHERE p.id = n.id AND p.contact_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__contact);
        END IF;
    ELSIF TG_TABLE_NAME = 'customers__financial' THEN
        IF EXISTS (SELECT FROM new_rows AS n JOIN crm.customers AS p ON p.id = n.id
                    WHERE p.financial_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__financial)) THEN
            UPDATE crm.customers AS p SET financial_copy = crm_private.copy_of(ROW(n.*)::crm.customers__financial)
              FROM new_rows AS n
             WHERE p.id = n.id AND p.financial_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__financial);
        END IF;
    ELSIF TG_TABLE_NAME = 'customers__internal_notes' THEN
        IF EXISTS (SELECT FROM new_rows AS n JOIN crm.customers AS p ON p.id = n.id
                    WHERE p.internal_notes_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__internal_notes)) THEN
            UPDATE crm.customers AS p SET internal_notes_copy = crm_private.copy_of(ROW(n.*)::crm.customers__internal_notes)
              FROM new_rows AS n
             WHERE p.id = n.id AND p.internal_notes_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.customers__internal_notes);
        END IF;
    ELSIF TG_TABLE_NAME = 'contracts__financial' THEN
        IF EXISTS (SELECT FROM new_rows AS n JOIN crm.contracts AS p ON p.id = n.id
                    WHERE p.financial_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.contracts__financial)) THEN
            UPDATE crm.contracts AS p SET financial_copy = crm_private.copy_of(ROW(n.*)::crm.contracts__financial)
              FROM new_rows AS n
             WHERE p.id = n.id AND p.financial_copy IS DISTINCT FROM crm_private.copy_of(ROW(n.*)::crm.contracts__financial);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.copy_field_values() IS 'AFTER INSERT and UPDATE statement trigger on field group tables: the parent row''s read copy of the group follows';
REVOKE EXECUTE ON FUNCTION crm_private.copy_field_values() FROM PUBLIC;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers__contact', 'customers__financial',
                             'customers__internal_notes', 'contracts__financial'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _420_copy_insert AFTER INSERT ON crm.%I REFERENCING NEW TABLE AS new_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION crm_private.copy_field_values()', t);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _420_copy_update AFTER UPDATE ON crm.%I REFERENCING NEW TABLE AS new_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION crm_private.copy_field_values()', t);
    END LOOP;
END
$$;

CREATE TRIGGER _040_keep_derived
    BEFORE INSERT OR UPDATE OF phone_mask, contact_copy, financial_copy, internal_notes_copy ON crm.customers
    FOR EACH ROW EXECUTE FUNCTION crm_private.keep_derived('phone_mask', 'contact_copy', 'financial_copy', 'internal_notes_copy');
CREATE TRIGGER _040_keep_derived BEFORE INSERT OR UPDATE OF financial_copy ON crm.contracts
    FOR EACH ROW EXECUTE FUNCTION crm_private.keep_derived('financial_copy');
CREATE TRIGGER _400_field_rows AFTER INSERT ON crm.customers
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.create_field_rows();
CREATE TRIGGER _400_field_rows AFTER INSERT ON crm.contracts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.create_field_rows();
-- Statement-level (transition tables cannot go with a column list or WHEN: the function
-- finds the rows whose anchors changed).
CREATE TRIGGER _410_field_anchors AFTER UPDATE ON crm.customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.copy_anchors();
CREATE TRIGGER _410_field_anchors AFTER UPDATE ON crm.contracts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crm_private.copy_anchors();
CREATE TRIGGER _400_masks AFTER UPDATE OF phone ON crm.customers__contact
    FOR EACH ROW WHEN (OLD.phone IS DISTINCT FROM NEW.phone)
    EXECUTE FUNCTION crm_private.refresh_masks();

-- The audit trail: a group's changes are logged under its table name; anchors copied
-- from the parent are not changes of the group (the parent's row says it).
DO $$
DECLARE
    t text;
    v_anchors text;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers__contact', 'customers__financial',
                             'customers__internal_notes', 'contracts__financial'] LOOP
        v_anchors := CASE WHEN t LIKE 'customers%' THEN '''project_id'', ''org_unit_id'', ''owner_id'''
                          ELSE '''project_id'', ''owner_id'', ''customer_id''' END;
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.%I REFERENCING OLD TABLE AS old_rows'
            ' NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes(%s)',
            t, v_anchors);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _500_audit_delete AFTER DELETE ON crm.%I REFERENCING OLD TABLE AS old_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes()', t);
        -- The id too: moved onto another row's id, a group row would answer "exists"
        -- (duplicate key) for rows the writer cannot see.
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _040_keep_derived BEFORE UPDATE OF id, %s ON crm.%I'
            ' FOR EACH ROW EXECUTE FUNCTION crm_private.keep_derived(''id'', %s)',
            replace(v_anchors, '''', ''), t, v_anchors);
    END LOOP;
END
$$;

-- Trigger code only: nobody else may call them.
REVOKE EXECUTE ON FUNCTION crm_private.create_field_rows(), crm_private.copy_anchors(),
    crm_private.keep_derived(), crm_private.refresh_masks() FROM PUBLIC;

-- Explain fields -----------------------------------------------------------------------

-- SECURITY INVOKER: the answer is what the caller's own privileges and row policies do
-- on each group's table (a read, and an update rolled back), never a second model.
CREATE FUNCTION crm.explain_fields(p_table text, p_id bigint)
RETURNS TABLE (field_group text, columns text[], readable boolean, writable boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_side regclass;
    v_rows bigint;
BEGIN
    FOR v_side, field_group IN
        SELECT c.oid::regclass, substr(c.relname, length(p_table) + 3)
          FROM pg_catalog.pg_class AS c
         WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
           AND starts_with(c.relname, p_table || '__')
         ORDER BY c.relname
    LOOP
        columns := ARRAY(
            SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = v_side AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attname NOT IN ('id', 'project_id', 'org_unit_id', 'owner_id', 'customer_id',
                                     'custom')
             ORDER BY a.attnum);
        BEGIN
            EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE id = $1', v_side)
               INTO v_rows USING p_id;
            readable := v_rows = 1;
        EXCEPTION WHEN insufficient_privilege THEN
            readable := false;
        END;
        writable := false;
        IF readable THEN
            BEGIN
                EXECUTE pg_catalog.format('UPDATE %s SET custom = custom WHERE id = $1', v_side)
                  USING p_id;
                GET DIAGNOSTICS v_rows = ROW_COUNT;
                writable := v_rows = 1;
                RAISE EXCEPTION USING ERRCODE = 'P0004';  -- undo the probe
            EXCEPTION WHEN insufficient_privilege OR assert_failure THEN
                NULL;
            END;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION crm.explain_fields(text, bigint) IS 'Which field groups of a record (table name, id) the current employee may read and write; hidden groups read as NULL (or their mask) in crm_api';
REVOKE EXECUTE ON FUNCTION crm.explain_fields(text, bigint), crm_private.mask_text(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crm.explain_fields(text, bigint) TO crmdb_employee;

RESET ROLE;

-- Custom fields (migration 0009) --------------------------------------------------------
-- Admins add fields to customers and contracts without DDL: each in a field group (its
-- values in crm.<table>__<group>.custom), validated on every write, a typed column of
-- crm_api.<table> after crmdb policy apply.

SET ROLE crmdb_owner;

CREATE TYPE crm.custom_field_type AS ENUM ('text', 'integer', 'numeric', 'boolean', 'date', 'timestamptz');
COMMENT ON TYPE crm.custom_field_type IS 'What a custom field holds; its crm_api column has this type';

CREATE TABLE crm.custom_fields (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    table_name   text NOT NULL CHECK (table_name IN ('customers', 'contracts')),
    field_group  text NOT NULL,
    name         text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    data_type    crm.custom_field_type NOT NULL,
    label        text,
    min_value    numeric,
    max_value    numeric,
    max_length   integer CHECK (max_length > 0),
    pattern      text,
    choices      text[],
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (table_name, name),
    CHECK (min_value IS NULL AND max_value IS NULL OR data_type IN ('integer', 'numeric')),
    CHECK (max_length IS NULL AND pattern IS NULL AND choices IS NULL OR data_type = 'text'),
    CHECK (min_value <= max_value)
);
COMMENT ON TABLE crm.custom_fields IS 'Custom fields of customers and contracts: each in a field group, validated on every write, a typed column of crm_api.<table> after crmdb policy apply';
COMMENT ON COLUMN crm.custom_fields.field_group IS 'The field group (policies/fields.yaml) whose readers see the field: its values live in crm.<table>__<group>.custom';
COMMENT ON COLUMN crm.custom_fields.name IS 'Column name in crm_api.<table>: lower case, digits and _, unique per table';
COMMENT ON COLUMN crm.custom_fields.pattern IS 'A regular expression text values must match';
COMMENT ON COLUMN crm.custom_fields.choices IS 'The only values a text field may take';

ALTER TABLE crm.custom_fields ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.custom_fields FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.custom_fields TO crmdb_owner USING (true) WITH CHECK (true);

-- A definition must name a group that exists, a name no column of the table's view has,
-- and a pattern PostgreSQL accepts.
CREATE FUNCTION crm_private.check_custom_field() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_side regclass := pg_catalog.to_regclass(pg_catalog.format('crm.%I', NEW.table_name || '__' || NEW.field_group));
BEGIN
    IF v_side IS NULL THEN
        RAISE EXCEPTION 'crmdb: % has no field group % (its groups: %)', NEW.table_name, NEW.field_group,
            (SELECT string_agg(substr(c.relname, length(NEW.table_name) + 3), ', ' ORDER BY c.relname)
               FROM pg_catalog.pg_class AS c
              WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r'
                AND starts_with(c.relname, NEW.table_name || '__'))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attname = NEW.name
                  AND (a.attrelid = pg_catalog.format('crm.%I', NEW.table_name)::regclass
                       OR a.attrelid IN (SELECT c.oid FROM pg_catalog.pg_class AS c
                                          WHERE c.relnamespace = 'crm'::regnamespace
                                            AND starts_with(c.relname, NEW.table_name || '__')))) THEN
        RAISE EXCEPTION 'crmdb: % already has a field named %', NEW.table_name, NEW.name
            USING ERRCODE = 'duplicate_column';
    END IF;
    IF NEW.pattern IS NOT NULL THEN
        PERFORM '' ~ NEW.pattern;  -- an invalid regular expression raises here
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.table_name, NEW.field_group, NEW.name, NEW.data_type)
                            IS DISTINCT FROM (OLD.table_name, OLD.field_group, OLD.name, OLD.data_type) THEN
        RAISE EXCEPTION 'crmdb: custom field %.% keeps its table, group, name and type; drop it and add another', OLD.table_name, OLD.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.check_custom_field() IS 'BEFORE trigger on crm.custom_fields: the group exists, the name is free, the pattern compiles; table, group, name and type never change';

-- Every write of a group's custom values is checked against the registry.
CREATE FUNCTION crm_private.check_custom_values() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_table text := split_part(TG_TABLE_NAME, '__', 1);
    v_group text := split_part(TG_TABLE_NAME, '__', 2);
    v_key text;
    v_value jsonb;
    f crm.custom_fields;
    v_text text;
BEGIN
    FOR v_key, v_value IN SELECT * FROM jsonb_each(NEW.custom) LOOP
        SELECT * INTO f FROM crm.custom_fields AS cf
         WHERE cf.table_name = v_table AND cf.field_group = v_group AND cf.name = v_key;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'crmdb: % has no custom field % in group %', v_table, v_key, v_group
                USING ERRCODE = 'check_violation';
        END IF;
        CONTINUE WHEN jsonb_typeof(v_value) = 'null';
        v_text := v_value #>> '{}';
        BEGIN
            CASE f.data_type
                WHEN 'text' THEN
                    IF jsonb_typeof(v_value) <> 'string' THEN RAISE invalid_text_representation; END IF;
                WHEN 'integer' THEN PERFORM v_text::integer;
                WHEN 'numeric' THEN PERFORM v_text::numeric;
                WHEN 'boolean' THEN
                    IF jsonb_typeof(v_value) <> 'boolean' THEN RAISE invalid_text_representation; END IF;
                WHEN 'date' THEN PERFORM v_text::date;
                WHEN 'timestamptz' THEN PERFORM v_text::timestamptz;
            END CASE;
        EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range
                       OR invalid_datetime_format OR datetime_field_overflow THEN
            RAISE EXCEPTION 'crmdb: %.% must be of type %', v_table, v_key, f.data_type
                USING ERRCODE = 'check_violation';
        END;
        IF f.min_value IS NOT NULL AND v_text::numeric < f.min_value
           OR f.max_value IS NOT NULL AND v_text::numeric > f.max_value THEN
            RAISE EXCEPTION 'crmdb: %.% must be between % and %', v_table, v_key,
                coalesce(f.min_value::text, '-inf'), coalesce(f.max_value::text, 'inf')
                USING ERRCODE = 'check_violation';
        END IF;
        IF f.max_length IS NOT NULL AND length(v_text) > f.max_length THEN
            RAISE EXCEPTION 'crmdb: %.% is at most % characters', v_table, v_key, f.max_length
                USING ERRCODE = 'check_violation';
        END IF;
        IF f.pattern IS NOT NULL AND v_text !~ f.pattern THEN
            RAISE EXCEPTION 'crmdb: %.% must match %', v_table, v_key, f.pattern
                USING ERRCODE = 'check_violation';
        END IF;
        IF f.choices IS NOT NULL AND NOT v_text = ANY (f.choices) THEN
            RAISE EXCEPTION 'crmdb: %.% must be one of: %', v_table, v_key, array_to_string(f.choices, ', ')
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.check_custom_values() IS 'BEFORE trigger on field group tables: every key of custom is a registered field of the group, of its type and within its rules';

CREATE TRIGGER _100_check BEFORE INSERT OR UPDATE ON crm.custom_fields
    FOR EACH ROW EXECUTE FUNCTION crm_private.check_custom_field();
CREATE TRIGGER _500_audit_insert AFTER INSERT ON crm.custom_fields
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.custom_fields
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();
CREATE TRIGGER _500_audit_delete AFTER DELETE ON crm.custom_fields
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes();

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers__contact', 'customers__financial',
                             'customers__internal_notes', 'contracts__financial'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _050_custom_values BEFORE INSERT OR UPDATE OF custom ON crm.%I'
            ' FOR EACH ROW WHEN (NEW.custom <> ''{}'') EXECUTE FUNCTION crm_private.check_custom_values()', t);
    END LOOP;
END
$$;

REVOKE EXECUTE ON FUNCTION crm_private.check_custom_field(), crm_private.check_custom_values() FROM PUBLIC;

RESET ROLE;

-- Exports (migration 0011) ----------------------------------------------------------------
-- crm.export is the one export path: rows and fields the caller may export (the
-- generated crm_private.export_<table> views), audited in crm.exports and announced to
-- the accounts concerned, in the caller's transaction.

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

REVOKE EXECUTE ON FUNCTION crm_private.export_recipients(text, int8multirange, bigint[]),
    crm_private.record_export(text, text, text[], bigint, int8multirange, bigint[], boolean, text),
    crm.export_allowed(text), crm.export(text, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    crm_private.record_export(text, text, text[], bigint, int8multirange, bigint[], boolean, text),
    crm.export_allowed(text), crm.export(text, text, text[])
TO crmdb_employee;

-- Routing gaps (migration 0007) ----------------------------------------------
-- What the rules cannot place goes to the project's triage (its queue named triage,
-- then its admins); keep_with_team under max_open; one wake-up per transaction from a
-- statement trigger on the event queue. See the migration for the reasoning.

SET ROLE crmdb_owner;

-- 1. Why an assignment was made: the fallbacks ------------------------------------

ALTER TABLE crm.assignment_history DROP CONSTRAINT assignment_history_strategy_check;
ALTER TABLE crm.assignment_history ADD CONSTRAINT assignment_history_strategy_check
    CHECK (strategy IN ('round_robin', 'least_loaded', 'weighted', 'keep_with_team',
                        'successor', 'manager', 'triage', 'project_admin'));
ALTER TABLE crm.assignment_history DROP CONSTRAINT assignment_history_reason_check;
ALTER TABLE crm.assignment_history ADD CONSTRAINT assignment_history_reason_check
    CHECK (reason IN ('new', 'handoff', 'sla', 'escalation', 'offboarding', 'unmatched', 'overflow'));
COMMENT ON COLUMN crm.assignment_history.strategy IS 'The rule''s strategy; successor or manager for offboarding and escalation; triage (the project''s triage queue) or project_admin for the fallbacks';
COMMENT ON COLUMN crm.assignment_history.reason IS 'new customer, stage handoff, sla reassignment, sla escalation, offboarding; unmatched (no rule matched a new customer), overflow (its rule found nobody eligible for an hour)';

-- 2. The project's triage: who takes what the rules cannot place -------------------

CREATE FUNCTION crm_private.fallback_candidates(p_project_id bigint)
RETURNS TABLE (employee_id bigint, strategy text, tier integer, open_customers bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    -- Active members of the project in its queue named triage (tier 0), and its admins:
    -- members holding the admin or super_admin template (tier 1), with their loads.
    SELECT x.employee_id, x.strategy, x.tier,
           (SELECT count(*) FROM crm.customers AS c
             WHERE c.owner_id = x.employee_id AND c.stage <> 'lost')
      FROM (SELECT m.employee_id, 'triage' AS strategy, 0 AS tier
              FROM crm.routing_queue_members AS m
             WHERE m.project_id = p_project_id AND m.queue = 'triage'
            UNION
            SELECT pm.employee_id, 'project_admin', 1
              FROM crm.project_members AS pm
             WHERE pm.project_id = p_project_id AND pm.template IN ('admin', 'super_admin')) AS x
      JOIN crm.employees AS e ON e.id = x.employee_id AND e.status = 'active'
     WHERE EXISTS (SELECT FROM crm.project_members AS pm
                    WHERE pm.project_id = p_project_id AND pm.employee_id = x.employee_id)
$$;
COMMENT ON FUNCTION crm_private.fallback_candidates(bigint) IS 'Who takes a project''s customers the rules cannot place: active members of its triage queue (tier 0), then its admins (tier 1), with their open customers';

-- 3. keep_with_team under max_open, like every strategy: in assign_rule above -----------

-- 4. Nothing unowned is dropped: unmatched and overflowing customers, offboarding and
--    escalations without a manager go to the project's triage ------------------------

-- 5. One wake-up: a statement trigger on the event queue ------------------------------
-- The event triggers only record events; whatever records one (the triggers, the
-- engine's offboarding and SLA clocks) wakes the workers through this trigger, and
-- PostgreSQL delivers the identical notifications of a transaction once, at commit.

CREATE FUNCTION crm_private.routing_events_inserted() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM new_rows) THEN
        PERFORM crm_private.wake_router();
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.routing_events_inserted() IS 'AFTER INSERT statement trigger on crm_private.routing_events: wakes the routing workers (NOTIFY crmdb_routing) when the statement recorded events';
CREATE TRIGGER _900_wake AFTER INSERT ON crm_private.routing_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.routing_events_inserted();
COMMENT ON TRIGGER _900_wake ON crm_private.routing_events IS 'The one place that wakes the routing workers: once per transaction that recorded events';
REVOKE EXECUTE ON FUNCTION crm_private.routing_events_inserted(), crm_private.fallback_candidates(bigint) FROM PUBLIC;

-- Feature clusters (migration 0010) ------------------------------------------------------
-- Each table belongs to a solution (crmdb/policies/tables.py): campaigns, segments and
-- campaign audiences to marketing, contracts to sales, the reports to management, the
-- directories to none; a template names only its solution's tables and the directories
-- (management oversees them all), so a template role holds no privilege at all on
-- another solution's tables.

SET ROLE crmdb_owner;

-- Types ------------------------------------------------------------------------------

CREATE TYPE crm.campaign_channel AS ENUM ('email', 'sms', 'zalo');
COMMENT ON TYPE crm.campaign_channel IS 'How a campaign reaches its audience';

CREATE TYPE crm.campaign_status AS ENUM (
    'draft',      -- being prepared
    'scheduled',  -- will start at scheduled_at
    'running',    -- messages are going out
    'paused',     -- stopped for now, may resume
    'finished',   -- every message went out
    'cancelled'   -- stopped for good
);
COMMENT ON TYPE crm.campaign_status IS 'Where a campaign is in its life';

CREATE TYPE crm.audience_status AS ENUM (
    'queued',     -- waiting to be sent
    'sent',       -- handed to the channel
    'delivered',  -- the channel confirmed delivery
    'failed',     -- the channel gave up
    'opted_out'   -- the customer asked not to receive it: never sent again
);
COMMENT ON TYPE crm.audience_status IS 'Where one customer''s message of a campaign is';

-- Tables -----------------------------------------------------------------------------

CREATE TABLE crm.segments (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id   bigint NOT NULL REFERENCES crm.projects (id),
    owner_id     bigint REFERENCES crm.employees (id),
    name         text NOT NULL CHECK (name <> ''),
    description  text NOT NULL CHECK (description <> ''),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, project_id)  -- campaigns point at a segment of their own project
);
CREATE INDEX segments_project_id_idx ON crm.segments (project_id);
CREATE INDEX segments_owner_id_idx ON crm.segments (owner_id);
COMMENT ON TABLE crm.segments IS 'Marketing segments: named groups of a project''s customers that campaigns target (marketing solution)';
COMMENT ON COLUMN crm.segments.project_id IS 'The project whose customers the segment groups';
COMMENT ON COLUMN crm.segments.owner_id IS 'The marketer who maintains the segment';
COMMENT ON COLUMN crm.segments.description IS 'Who is in it, in words (e.g. Ha Noi leads interested in home loans)';

CREATE TABLE crm.campaigns (
    id            bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id    bigint NOT NULL REFERENCES crm.projects (id),
    owner_id      bigint REFERENCES crm.employees (id),
    name          text NOT NULL CHECK (name <> ''),
    channel       crm.campaign_channel NOT NULL,
    status        crm.campaign_status NOT NULL DEFAULT 'draft',
    segment_id    bigint,
    scheduled_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, project_id),  -- audiences are in their campaign's project
    -- A segment of the same project; a deleted segment leaves the campaign without one.
    FOREIGN KEY (segment_id, project_id) REFERENCES crm.segments (id, project_id)
        ON DELETE SET NULL (segment_id),
    CHECK (status <> 'scheduled' OR scheduled_at IS NOT NULL)
);
CREATE INDEX campaigns_project_id_idx ON crm.campaigns (project_id);
CREATE INDEX campaigns_owner_id_idx ON crm.campaigns (owner_id);
CREATE INDEX campaigns_segment_id_idx ON crm.campaigns (segment_id);
COMMENT ON TABLE crm.campaigns IS 'Marketing campaigns (email, SMS, Zalo) of a project (marketing solution)';
COMMENT ON COLUMN crm.campaigns.owner_id IS 'The marketer responsible for the campaign';
COMMENT ON COLUMN crm.campaigns.channel IS 'email, sms or zalo';
COMMENT ON COLUMN crm.campaigns.status IS 'draft, scheduled, running, paused, finished or cancelled';
COMMENT ON COLUMN crm.campaigns.segment_id IS 'The segment it targets (of the same project), if any';
COMMENT ON COLUMN crm.campaigns.scheduled_at IS 'When it starts; required once scheduled';

CREATE TABLE crm.campaign_audiences (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    campaign_id  bigint NOT NULL,
    customer_id  bigint NOT NULL REFERENCES crm.customers (id) ON DELETE CASCADE,
    project_id   bigint NOT NULL REFERENCES crm.projects (id),
    added_by     bigint REFERENCES crm.employees (id),
    status       crm.audience_status NOT NULL DEFAULT 'queued',
    sent_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, customer_id),
    FOREIGN KEY (campaign_id, project_id) REFERENCES crm.campaigns (id, project_id) ON DELETE CASCADE,
    CHECK (status NOT IN ('sent', 'delivered') OR sent_at IS NOT NULL)
);
CREATE INDEX campaign_audiences_customer_id_idx ON crm.campaign_audiences (customer_id);
CREATE INDEX campaign_audiences_project_id_idx ON crm.campaign_audiences (project_id);
CREATE INDEX campaign_audiences_added_by_idx ON crm.campaign_audiences (added_by);
COMMENT ON TABLE crm.campaign_audiences IS 'Who a campaign reaches: one row per customer, with its delivery status (marketing solution)';
COMMENT ON COLUMN crm.campaign_audiences.project_id IS 'The customer''s project when added, which must be the campaign''s (set by crm_private.audience_project)';
COMMENT ON COLUMN crm.campaign_audiences.added_by IS 'The marketer who added the customer (set by crmdb on insert; employees cannot change it)';
COMMENT ON COLUMN crm.campaign_audiences.status IS 'queued, sent, delivered, failed or opted_out';
COMMENT ON COLUMN crm.campaign_audiences.sent_at IS 'When the message went out; set once sent';

ALTER TABLE crm.segments ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.segments FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.segments TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.campaigns ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.campaigns FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.campaigns TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm.campaign_audiences ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.campaign_audiences FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.campaign_audiences TO crmdb_owner USING (true) WITH CHECK (true);

-- Triggers ---------------------------------------------------------------------------

-- An audience row takes its customer's project, as the writer sees the customer: a
-- customer hidden from the writer gives NULL, so the row fails the writer's row policies
-- exactly as for a customer that does not exist (nothing is learnt about hidden ones).
-- The campaign's foreign key then requires the campaign to be in that same project.
-- SECURITY INVOKER on purpose: the writer's own row policies answer.
CREATE FUNCTION crm_private.audience_project() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.project_id := (SELECT c.project_id FROM crm.customers AS c WHERE c.id = NEW.customer_id);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.audience_project() IS 'BEFORE trigger on crm.campaign_audiences: project_id is the customer''s project as the writer sees the customer (NULL if hidden)';

CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.segments
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();
CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.campaigns
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();
CREATE TRIGGER _050_assign_id BEFORE INSERT ON crm.campaign_audiences
    FOR EACH ROW EXECUTE FUNCTION crm_private.assign_id();
CREATE TRIGGER _060_project BEFORE INSERT OR UPDATE OF customer_id, project_id ON crm.campaign_audiences
    FOR EACH ROW EXECUTE FUNCTION crm_private.audience_project();
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.segments
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.campaigns
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.campaign_audiences
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['segments', 'campaigns', 'campaign_audiences'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _500_audit_insert AFTER INSERT ON crm.%I REFERENCING NEW TABLE AS new_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes()', t);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _500_audit_update AFTER UPDATE ON crm.%I REFERENCING OLD TABLE AS old_rows'
            ' NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes()', t);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _500_audit_delete AFTER DELETE ON crm.%I REFERENCING OLD TABLE AS old_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION crm_private.record_changes()', t);
    END LOOP;
END
$$;

-- Update checks: the row as it was before the statement (see crm_private.prior_customers).

CREATE FUNCTION crm_private.prior_segments(p_id bigint) RETURNS SETOF crm.segments
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.segments WHERE id = p_id $$;
COMMENT ON FUNCTION crm_private.prior_segments(bigint) IS 'A segment as it was before the current statement, through the caller''s row policies (for update checks)';

CREATE FUNCTION crm_private.prior_campaigns(p_id bigint) RETURNS SETOF crm.campaigns
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.campaigns WHERE id = p_id $$;
COMMENT ON FUNCTION crm_private.prior_campaigns(bigint) IS 'A campaign as it was before the current statement, through the caller''s row policies (for update checks)';

CREATE FUNCTION crm_private.prior_campaign_audiences(p_id bigint) RETURNS SETOF crm.campaign_audiences
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT * FROM crm.campaign_audiences WHERE id = p_id $$;
COMMENT ON FUNCTION crm_private.prior_campaign_audiences(bigint) IS 'An audience row as it was before the current statement, through the caller''s row policies (for update checks)';

-- Reports (management) ---------------------------------------------------------------

-- SECURITY INVOKER: the caller's own privileges, row policies and field groups decide
-- every number. Customers are the ones the caller sees; contracts the ones the caller
-- sees of those customers; money only of the contracts whose financial group the caller
-- reads (the rest are counted in hidden_amounts, never summed). Templates grant it with
-- `reports: [pipeline]` (EXECUTE), and only with select on what it reads.
CREATE FUNCTION crm.report_pipeline()
RETURNS TABLE (project_id bigint, project_code text, stage crm.customer_stage,
               owner_id bigint, owner_name text, customers bigint,
               open_contracts bigint, won_contracts bigint,
               open_amount numeric, won_amount numeric, hidden_amounts bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    WITH deals AS (
        SELECT k.customer_id,
               count(*) FILTER (WHERE k.status IN ('draft', 'negotiating')) AS open_contracts,
               count(*) FILTER (WHERE k.status = 'won') AS won_contracts,
               sum(f.amount) FILTER (WHERE k.status IN ('draft', 'negotiating')) AS open_amount,
               sum(f.amount) FILTER (WHERE k.status = 'won') AS won_amount,
               count(*) FILTER (WHERE f.id IS NULL AND k.status IN ('draft', 'negotiating', 'won'))
                   AS hidden_amounts
          FROM crm.contracts AS k
          LEFT JOIN crm.contracts__financial AS f ON f.id = k.id
         GROUP BY k.customer_id
    )
    SELECT c.project_id, p.code, c.stage, c.owner_id, e.full_name,
           count(*),
           coalesce(sum(d.open_contracts), 0)::bigint,
           coalesce(sum(d.won_contracts), 0)::bigint,
           sum(d.open_amount),
           sum(d.won_amount),
           coalesce(sum(d.hidden_amounts), 0)::bigint
      FROM crm.customers AS c
      LEFT JOIN deals AS d ON d.customer_id = c.id
      LEFT JOIN crm.projects AS p ON p.id = c.project_id
      LEFT JOIN crm.employees AS e ON e.id = c.owner_id
     GROUP BY c.project_id, p.code, c.stage, c.owner_id, e.full_name
     ORDER BY p.code, c.stage, e.full_name
$$;
COMMENT ON FUNCTION crm.report_pipeline() IS 'Management report: the pipeline by project, stage and owner over the customers and contracts the caller sees; amounts only where the caller reads the contracts'' financial group (hidden_amounts counts the others)';

REVOKE EXECUTE ON FUNCTION crm_private.audience_project(), crm.report_pipeline(),
    crm_private.prior_segments(bigint), crm_private.prior_campaigns(bigint),
    crm_private.prior_campaign_audiences(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crm_private.prior_segments(bigint), crm_private.prior_campaigns(bigint),
    crm_private.prior_campaign_audiences(bigint) TO crmdb_employee;

-- Email outbox, notifications and reminders (migrations/0008.outbox.sql) ------------
-- Emails are written to crm_private.email_outbox in the same transaction as their
-- event and sent by `crmdb worker` (at most once each); notification events (shares,
-- SLA warnings, due tasks) and their emails; automation emails to customers;
-- unsubscribes. Employees reach none of the tables, only the functions granted below.
-- Customers' contact and financial columns are read only by sql/email.sql.

SET ROLE crmdb_owner;

-- Types ------------------------------------------------------------------------

CREATE TYPE crm_private.email_status AS ENUM (
    'queued',      -- waiting for its next attempt (next_attempt_at)
    'sending',     -- claimed by a worker, which holds its advisory lock while it sends
    'sent',        -- the SMTP server accepted it
    'dead',        -- dead letter: refused for good, or max attempts failed (last_error)
    'unknown',     -- the worker stopped while transmitting: never retried (at-most-once)
    'skipped',     -- nothing to send: no address, or the recipient departed
    'suppressed'   -- the address unsubscribed (automation emails only)
);
COMMENT ON TYPE crm_private.email_status IS 'Life of an outbox email: queued -> sending -> sent, or back to queued (retry), dead, unknown, skipped, suppressed';

CREATE TYPE crm_private.automation_event AS ENUM (
    'customer_created',  -- a customer was inserted
    'contract_won'       -- a contract was inserted as, or became, won
);
COMMENT ON TYPE crm_private.automation_event IS 'What starts an automation email';

-- Settings ---------------------------------------------------------------------

CREATE TABLE crm_private.notification_settings (
    id                   boolean PRIMARY KEY DEFAULT true CHECK (id),
    reminder_minutes     integer NOT NULL DEFAULT 15 CHECK (reminder_minutes BETWEEN 0 AND 10080),
    sla_warning_percent  integer NOT NULL DEFAULT 80 CHECK (sla_warning_percent BETWEEN 1 AND 99)
);
INSERT INTO crm_private.notification_settings DEFAULT VALUES;
COMMENT ON TABLE crm_private.notification_settings IS 'One row: how long before a due time reminders go, and at which share of an SLA the owner is warned';
COMMENT ON COLUMN crm_private.notification_settings.reminder_minutes IS 'Tasks and appointments: remind the owner this many minutes before due_at (applies to reminders set after a change)';
COMMENT ON COLUMN crm_private.notification_settings.sla_warning_percent IS 'SLA clocks: warn the owner when this share of the SLA has passed, counted as the SLA is (business minutes or not)';

CREATE TABLE crm_private.notification_emails (
    kind      text PRIMARY KEY CHECK (kind ~ '^[a-z_]+$'),
    template  text NOT NULL CHECK (template ~ '^[a-z_][a-z0-9_]*$')
);
INSERT INTO crm_private.notification_emails (kind, template) VALUES
    ('escalated', 'notification'),
    ('reassigned_away', 'notification'),
    ('share_granted', 'notification'),
    ('task_due', 'notification'),
    ('sla_warning', 'notification');
COMMENT ON TABLE crm_private.notification_emails IS 'Notification kinds that are also emailed, with the template (emails/<template>.<language>.j2); other kinds are in-app only';

CREATE TABLE crm_private.notification_preferences (
    employee_id    bigint PRIMARY KEY REFERENCES crm.employees (id) ON DELETE CASCADE,
    language       text NOT NULL DEFAULT 'vi' CHECK (language IN ('vi', 'en')),
    email_enabled  boolean NOT NULL DEFAULT true
);
COMMENT ON TABLE crm_private.notification_preferences IS 'An employee''s email language and whether notifications are also emailed (crm.set_notification_preferences); no row: Vietnamese, emails on';

CREATE TABLE crm_private.customer_languages (
    customer_id  bigint PRIMARY KEY REFERENCES crm.customers (id) ON DELETE CASCADE,
    language     text NOT NULL CHECK (language IN ('vi', 'en'))
);
COMMENT ON TABLE crm_private.customer_languages IS 'The language of emails to a customer (crm_admin.set_customer_language); no row: Vietnamese';

-- Automation emails (managed from automations/*.yaml by crmdb automations apply) --

CREATE TABLE crm_private.email_automations (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES crm.projects (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]*$'),
    event       crm_private.automation_event NOT NULL,
    template    text NOT NULL CHECK (template ~ '^[a-z_][a-z0-9_]*$'),
    enabled     boolean NOT NULL DEFAULT true,
    -- condition over the customer: NULL matches anything
    sources     crm.source_channel[],
    provinces   text[],
    stages      crm.customer_stage[],
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);
CREATE INDEX email_automations_event_idx ON crm_private.email_automations (project_id, event) WHERE enabled;
COMMENT ON TABLE crm_private.email_automations IS 'Declarative automation emails to customers: on an event in a project, for customers meeting the condition, send a template';
COMMENT ON COLUMN crm_private.email_automations.sources IS 'Condition: the customer''s source is one of these (NULL: any)';
COMMENT ON COLUMN crm_private.email_automations.provinces IS 'Condition: the customer''s province is one of these (NULL: any)';
COMMENT ON COLUMN crm_private.email_automations.stages IS 'Condition: the customer''s stage is one of these (NULL: any)';

CREATE TABLE crm_private.email_unsubscribes (
    email            text PRIMARY KEY CHECK (email = pg_catalog.lower(email) AND email ~ '^[^@\s]+@[^@\s]+$'),
    reason           text,
    recorded_by      name NOT NULL,
    unsubscribed_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm_private.email_unsubscribes IS 'Addresses that get no automation email (crm.unsubscribe, crm_admin.unsubscribe); checked when each email is sent';
COMMENT ON COLUMN crm_private.email_unsubscribes.recorded_by IS 'The role that recorded it (the app acting for a link''s recipient, or a DBA)';

-- The outbox -------------------------------------------------------------------

CREATE TABLE crm_private.email_outbox (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    template               text NOT NULL CHECK (template ~ '^[a-z_][a-z0-9_]*$'),
    language               text NOT NULL DEFAULT 'vi' CHECK (language IN ('vi', 'en')),
    recipient_employee_id  bigint REFERENCES crm.employees (id),
    recipient_customer_id  bigint REFERENCES crm.customers (id) ON DELETE CASCADE,
    recipient_email        text,
    customer_id            bigint,
    contract_id            bigint,
    notification_id        bigint,
    automation_id          bigint REFERENCES crm_private.email_automations (id) ON DELETE SET NULL,
    context                jsonb NOT NULL DEFAULT '{}',
    dedupe_key             text UNIQUE,
    status                 crm_private.email_status NOT NULL DEFAULT 'queued',
    attempts               integer NOT NULL DEFAULT 0,
    next_attempt_at        timestamptz NOT NULL DEFAULT now(),
    claim_token            bigint,
    claimed_by             text,
    claimed_at             timestamptz,
    transmit_started_at    timestamptz,
    sent_at                timestamptz,
    last_error             text,
    unsubscribe_token      uuid NOT NULL UNIQUE DEFAULT pg_catalog.gen_random_uuid(),
    created_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT email_outbox_one_recipient CHECK (num_nonnulls(recipient_employee_id, recipient_customer_id) = 1)
);
CREATE INDEX email_outbox_due_idx ON crm_private.email_outbox (next_attempt_at, id) WHERE status = 'queued';
CREATE INDEX email_outbox_sending_idx ON crm_private.email_outbox (id) WHERE status = 'sending';
COMMENT ON TABLE crm_private.email_outbox IS 'Emails written in the same transaction as their event; the worker claims, renders and sends them (at most once each)';
COMMENT ON COLUMN crm_private.email_outbox.recipient_email IS 'Employees: their address when queued; customers: filled when the worker renders it';
COMMENT ON COLUMN crm_private.email_outbox.customer_id IS 'The customer the email is about (rendered with the fields the recipient may see)';
COMMENT ON COLUMN crm_private.email_outbox.context IS 'Template variables fixed at the event: notification kind, subject and details';
COMMENT ON COLUMN crm_private.email_outbox.dedupe_key IS 'One email per event: automation, record (a second identical event queues nothing)';
COMMENT ON COLUMN crm_private.email_outbox.transmit_started_at IS 'Committed just before the message itself goes to the server: a worker that dies before it never transmitted (the email is retried), after it maybe did (unknown)';
COMMENT ON COLUMN crm_private.email_outbox.claim_token IS 'Identifies the claim of the worker sending it; the outcome is recorded only with it';
COMMENT ON COLUMN crm_private.email_outbox.unsubscribe_token IS 'Secret of the email''s unsubscribe link (crm.unsubscribe)';

-- Reminders and SLA warnings (the worker turns due ones into notifications) ----

CREATE TABLE crm_private.reminders (
    activity_id  bigint PRIMARY KEY REFERENCES crm.activities (id) ON DELETE CASCADE,
    employee_id  bigint NOT NULL REFERENCES crm.employees (id),
    due_at       timestamptz NOT NULL,
    remind_at    timestamptz NOT NULL,
    sent_at      timestamptz
);
CREATE INDEX reminders_due_idx ON crm_private.reminders (remind_at) WHERE sent_at IS NULL;
COMMENT ON TABLE crm_private.reminders IS 'One per open task or appointment, kept by triggers: a new owner or due time sets a new reminder (the old owner gets none)';

CREATE TABLE crm_private.sla_warnings (
    customer_id  bigint PRIMARY KEY REFERENCES crm_private.sla_timers (customer_id) ON DELETE CASCADE,
    owner_id     bigint NOT NULL REFERENCES crm.employees (id),
    warn_at      timestamptz NOT NULL,
    due_at       timestamptz NOT NULL,
    sent_at      timestamptz
);
CREATE INDEX sla_warnings_due_idx ON crm_private.sla_warnings (warn_at) WHERE sent_at IS NULL;
COMMENT ON TABLE crm_private.sla_warnings IS 'When to warn the owner of a running SLA clock; goes with the clock (the owner responded, or the customer moved)';

-- Notifications: one call for in-app plus email --------------------------------

CREATE FUNCTION crm_private.notify(
    p_employee_id bigint, p_kind text, p_subject text, p_details jsonb DEFAULT '{}',
    p_customer_id bigint DEFAULT NULL, p_email_template text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    -- The email (if any) is queued by the notifications trigger, in this transaction:
    -- p_email_template, else the kind's template in crm_private.notification_emails.
    INSERT INTO crm.notifications (employee_id, kind, customer_id, subject, details)
    VALUES (p_employee_id, p_kind, p_customer_id, p_subject,
            coalesce(p_details, '{}') || CASE WHEN p_email_template IS NOT NULL
                THEN pg_catalog.jsonb_build_object('email_template', p_email_template)
                ELSE '{}' END)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION crm_private.notify(bigint, text, text, jsonb, bigint, text) IS 'One in-app notification to an employee (NOTIFY crmdb_notifications_<id>) and, with p_email_template or a template for the kind, one email, in the caller''s transaction; for owner code (triggers, the worker, exports)';

CREATE FUNCTION crm_private.notifications_email() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO crm_private.email_outbox (template, language, recipient_employee_id,
                                          recipient_email, customer_id, notification_id,
                                          context, dedupe_key)
    SELECT coalesce(n.details ->> 'email_template', m.template), coalesce(p.language, 'vi'),
           e.id, e.email, n.customer_id, n.id,
           pg_catalog.jsonb_build_object('kind', n.kind, 'subject', n.subject, 'details', n.details),
           'notification:' || n.id
      FROM new_rows AS n
      JOIN crm.employees AS e ON e.id = n.employee_id AND e.status <> 'departed'
      LEFT JOIN crm_private.notification_emails AS m ON m.kind = n.kind
      LEFT JOIN crm_private.notification_preferences AS p ON p.employee_id = e.id
     WHERE coalesce(n.details ->> 'email_template', m.template) IS NOT NULL
       AND coalesce(p.email_enabled, true);
    IF FOUND THEN
        PERFORM pg_catalog.pg_notify('crmdb_outbox', '');
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.notifications_email() IS 'AFTER INSERT statement trigger on crm.notifications: queues the email of each notification that has a template, unless the employee turned emails off';
CREATE TRIGGER _910_email AFTER INSERT ON crm.notifications
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.notifications_email();

CREATE FUNCTION crm_private.shares_granted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Shares an employee makes (not a DBA's bulk load: seed, demo, imports) notify the
    -- grantee, or every active member of the grantee unit; never the granter.
    IF NOT EXISTS (SELECT FROM crm.employees AS e WHERE e.role_name = crm_private.acting_role()) THEN
        RETURN NULL;
    END IF;
    PERFORM crm_private.notify(g.employee_id, 'share_granted',
                               pg_catalog.format('Customer #%s shared with you (%s)', n.customer_id, n.access),
                               pg_catalog.jsonb_build_object('share_id', n.id, 'access', n.access,
                                   'granted_by', n.granted_by, 'expires_at', n.expires_at,
                                   'reason', n.reason),
                               n.customer_id)
       FROM new_rows AS n
      CROSS JOIN LATERAL (
            SELECT n.grantee_employee_id AS employee_id WHERE n.grantee_employee_id IS NOT NULL
            UNION
            SELECT e.id FROM crm.employees AS e
             WHERE e.org_unit_id = n.grantee_org_unit_id AND e.status = 'active') AS g
      WHERE g.employee_id IS DISTINCT FROM n.granted_by
      ORDER BY n.id, g.employee_id;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.shares_granted() IS 'AFTER INSERT statement trigger on crm.shares: notifies whoever an employee shared a customer with';
CREATE TRIGGER _700_notify AFTER INSERT ON crm.shares
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.shares_granted();

-- Reminders ----------------------------------------------------------------------

CREATE FUNCTION crm_private.activities_reminders() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lead interval := pg_catalog.make_interval(
        mins => (SELECT s.reminder_minutes FROM crm_private.notification_settings AS s));
BEGIN
    -- Done, no longer a task or appointment, or without a due time: no reminder (a new
    -- row has none to delete).
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM crm_private.reminders AS r
         USING new_rows AS n
         WHERE r.activity_id = n.id
           AND (n.done_at IS NOT NULL OR n.kind NOT IN ('task', 'appointment') OR n.due_at IS NULL);
    END IF;
    -- Open ones: a new owner or due time is a new reminder (sent_at cleared), so it
    -- follows the owner and the time; anything else keeps the reminder as it was.
    INSERT INTO crm_private.reminders AS r (activity_id, employee_id, due_at, remind_at)
    SELECT n.id, n.employee_id, n.due_at, n.due_at - v_lead
      FROM new_rows AS n
     WHERE n.done_at IS NULL AND n.kind IN ('task', 'appointment') AND n.due_at IS NOT NULL
    ON CONFLICT (activity_id) DO UPDATE
       SET employee_id = EXCLUDED.employee_id, due_at = EXCLUDED.due_at,
           remind_at = EXCLUDED.remind_at, sent_at = NULL
     WHERE r.employee_id IS DISTINCT FROM EXCLUDED.employee_id
        OR r.due_at IS DISTINCT FROM EXCLUDED.due_at;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.activities_reminders() IS 'AFTER INSERT/UPDATE statement trigger on crm.activities: keeps one reminder per open task or appointment, for its current owner and due time';
CREATE TRIGGER _700_reminders_insert AFTER INSERT ON crm.activities
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.activities_reminders();
CREATE TRIGGER _700_reminders_update AFTER UPDATE ON crm.activities
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.activities_reminders();

CREATE FUNCTION crm_private.sla_timers_warning() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_percent integer := (SELECT s.sla_warning_percent FROM crm_private.notification_settings AS s);
BEGIN
    -- The warning falls at v_percent of the SLA, counted as the SLA itself is.
    INSERT INTO crm_private.sla_warnings (customer_id, owner_id, warn_at, due_at)
    SELECT n.customer_id, n.owner_id,
           CASE WHEN r.sla_business_hours
                THEN crm_private.add_business_minutes(r.hours_org_unit_id, n.assigned_at,
                                                      r.sla_minutes * v_percent / 100)
                ELSE n.assigned_at + (n.due_at - n.assigned_at) * v_percent / 100 END,
           n.due_at
      FROM new_rows AS n
      JOIN crm.routing_rules AS r ON r.id = n.rule_id
    ON CONFLICT (customer_id) DO NOTHING;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.sla_timers_warning() IS 'AFTER INSERT statement trigger on crm_private.sla_timers: when to warn the owner before the SLA runs out';
CREATE TRIGGER _700_warning AFTER INSERT ON crm_private.sla_timers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.sla_timers_warning();

-- Automation emails ----------------------------------------------------------------

CREATE FUNCTION crm_private.queue_automation_emails(p_event crm_private.automation_event, p_records jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- p_records: [{customer_id, contract_id?}]. The customer's address is looked up
    -- when the email is rendered (the worker), not here; conditions read only the
    -- customer's project, source, province and stage.
    INSERT INTO crm_private.email_outbox (template, language, recipient_customer_id, customer_id,
                                          contract_id, automation_id, context, dedupe_key)
    SELECT a.template, coalesce(l.language, 'vi'), c.id, c.id, x.contract_id, a.id,
           pg_catalog.jsonb_build_object('automation', a.name, 'event', p_event),
           pg_catalog.concat_ws(':', 'automation', a.id, c.id, x.contract_id)
      FROM pg_catalog.jsonb_to_recordset(p_records) AS x(customer_id bigint, contract_id bigint)
      JOIN crm.customers AS c ON c.id = x.customer_id
      JOIN crm_private.email_automations AS a
        ON a.project_id = c.project_id AND a.event = p_event AND a.enabled
       AND (a.sources IS NULL OR c.source = ANY (a.sources))
       AND (a.provinces IS NULL OR c.province = ANY (a.provinces))
       AND (a.stages IS NULL OR c.stage = ANY (a.stages))
      LEFT JOIN crm_private.customer_languages AS l ON l.customer_id = c.id
     ORDER BY c.id, a.id
    ON CONFLICT (dedupe_key) DO NOTHING;
    IF FOUND THEN
        PERFORM pg_catalog.pg_notify('crmdb_outbox', '');
    END IF;
END
$$;
COMMENT ON FUNCTION crm_private.queue_automation_emails(crm_private.automation_event, jsonb) IS 'Queues the emails of the enabled automations of an event whose condition each customer meets (once per automation and record)';

CREATE FUNCTION crm_private.customers_automation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM crm_private.email_automations WHERE event = 'customer_created' AND enabled) THEN
        PERFORM crm_private.queue_automation_emails('customer_created',
            (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('customer_id', n.id)) FROM new_rows AS n));
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.customers_automation() IS 'AFTER INSERT statement trigger on crm.customers: automation emails of customer_created';
CREATE TRIGGER _700_automation AFTER INSERT ON crm.customers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.customers_automation();

CREATE FUNCTION crm_private.contracts_automation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM crm_private.email_automations WHERE event = 'contract_won' AND enabled) THEN
        IF TG_OP = 'INSERT' THEN
            PERFORM crm_private.queue_automation_emails('contract_won',
                (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                            'customer_id', n.customer_id, 'contract_id', n.id))
                   FROM new_rows AS n WHERE n.status = 'won'));
        ELSE
            PERFORM crm_private.queue_automation_emails('contract_won',
                (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                            'customer_id', n.customer_id, 'contract_id', n.id))
                   FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
                  WHERE n.status = 'won' AND o.status <> 'won'));
        END IF;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm_private.contracts_automation() IS 'AFTER INSERT/UPDATE statement trigger on crm.contracts: automation emails of contract_won';
CREATE TRIGGER _700_automation_insert AFTER INSERT ON crm.contracts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.contracts_automation();
CREATE TRIGGER _700_automation_update AFTER UPDATE ON crm.contracts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION crm_private.contracts_automation();
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm_private.email_automations
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();

-- The worker ---------------------------------------------------------------------
-- Like the routing engine: crmdb_owner members that are not employees (the DBA login
-- `crmdb worker` uses). Each claimed email is held by a session advisory lock of the
-- claiming connection, so a worker that died (its session ended) is told apart from
-- one still talking to the SMTP server without any clock.

CREATE FUNCTION crm_private.check_worker() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role name := crm_private.acting_role();
BEGIN
    IF EXISTS (SELECT FROM crm.employees WHERE role_name = v_role)
       OR NOT pg_catalog.pg_has_role(v_role, 'crmdb_owner', 'MEMBER') THEN
        RAISE EXCEPTION 'role % may not run the outbox worker (crmdb_owner members that are not employees only)', v_role
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;
COMMENT ON FUNCTION crm_private.check_worker() IS 'Refuses callers of the outbox worker functions that are employees or not members of crmdb_owner';

CREATE FUNCTION crm_private.email_lock_key(p_id bigint) RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (p_id & 2147483647)::integer
$$;
COMMENT ON FUNCTION crm_private.email_lock_key(bigint) IS 'Second key of an outbox email''s advisory lock (the first: hashtext(''crmdb email''))';

CREATE FUNCTION crm_private.claim_emails(p_limit integer, p_now timestamptz, p_worker text)
RETURNS TABLE (id bigint, claim_token bigint, template text, language text,
               recipient_employee_id bigint, recipient_role name, recipient_name text,
               recipient_departed boolean,
               recipient_customer_id bigint, recipient_email text, customer_id bigint,
               contract_id bigint, automation boolean, context jsonb, attempts integer,
               unsubscribe_token uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_token bigint := (pg_catalog.random() * 9007199254740991)::bigint;
BEGIN
    PERFORM crm_private.check_worker();
    -- Marked sending (and committed by the caller) before any SMTP traffic: from then
    -- on the email is never claimed again, whatever happens to this worker.
    RETURN QUERY
    WITH claimed AS (
        UPDATE crm_private.email_outbox AS o
           SET status = 'sending', attempts = o.attempts + 1, claim_token = v_token,
               claimed_by = p_worker, claimed_at = p_now, transmit_started_at = NULL
         WHERE o.id IN (SELECT q.id FROM crm_private.email_outbox AS q
                         WHERE q.status = 'queued' AND q.next_attempt_at <= p_now
                         ORDER BY q.next_attempt_at, q.id
                         LIMIT p_limit
                           FOR UPDATE SKIP LOCKED)
        RETURNING o.*
    )
    -- The recipient's language as it is now (a customer's may be set after the event).
    SELECT c.id, c.claim_token, c.template,
           coalesce(np.language, cl.language, c.language), c.recipient_employee_id,
           e.role_name, e.full_name, e.status = 'departed', c.recipient_customer_id, c.recipient_email,
           c.customer_id, c.contract_id, c.automation_id IS NOT NULL OR c.context ? 'automation',
           c.context, c.attempts, c.unsubscribe_token
      FROM claimed AS c
      LEFT JOIN crm.employees AS e ON e.id = c.recipient_employee_id
      LEFT JOIN crm_private.notification_preferences AS np ON np.employee_id = c.recipient_employee_id
      LEFT JOIN crm_private.customer_languages AS cl ON cl.customer_id = c.recipient_customer_id
      -- A session lock: it outlives this transaction, ends with the session.
      CROSS JOIN LATERAL pg_catalog.pg_advisory_lock(pg_catalog.hashtext('crmdb email'),
                                                     crm_private.email_lock_key(c.id)) AS l
     ORDER BY c.id;
END
$$;
COMMENT ON FUNCTION crm_private.claim_emails(integer, timestamptz, text) IS 'The outbox worker''s claim: up to p_limit due emails marked sending (SKIP LOCKED), each held by a session advisory lock until finish_email';

CREATE FUNCTION crm_private.finish_email(
    p_id bigint, p_token bigint, p_outcome crm_private.email_status, p_error text,
    p_now timestamptz, p_recipient_email text DEFAULT NULL,
    p_max_attempts integer DEFAULT 5, p_backoff interval DEFAULT interval '1 minute'
) RETURNS crm_private.email_status
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status crm_private.email_status;
BEGIN
    PERFORM crm_private.check_worker();
    -- queued: a temporary failure, retried after p_backoff * 2^(attempts - 1) (at most
    -- a day), or a dead letter after p_max_attempts. 'unknown' rows may still become
    -- sent: the worker's session was lost, yet the server accepted the message.
    UPDATE crm_private.email_outbox AS o
       SET status = CASE WHEN p_outcome = 'queued' AND o.attempts >= p_max_attempts THEN 'dead'
                         ELSE p_outcome END,
           next_attempt_at = CASE WHEN p_outcome = 'queued'
               THEN p_now + least(p_backoff * pg_catalog.power(2, o.attempts - 1), interval '1 day')
               ELSE o.next_attempt_at END,
           sent_at = CASE WHEN p_outcome = 'sent' THEN p_now END,
           last_error = CASE WHEN p_outcome = 'queued' AND o.attempts >= p_max_attempts
               THEN pg_catalog.format('%s (gave up after %s attempts)', p_error, o.attempts)
               ELSE coalesce(p_error, o.last_error) END,
           recipient_email = coalesce(p_recipient_email, o.recipient_email),
           claim_token = CASE WHEN p_outcome = 'queued' THEN NULL ELSE o.claim_token END
     WHERE o.id = p_id AND o.claim_token = p_token AND o.status IN ('sending', 'unknown')
    RETURNING o.status INTO v_status;
    PERFORM pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('crmdb email'), crm_private.email_lock_key(p_id));
    RETURN v_status;
END
$$;
COMMENT ON FUNCTION crm_private.finish_email(bigint, bigint, crm_private.email_status, text, timestamptz, text, integer, interval) IS 'Records what became of a claimed email (sent, queued for a retry with backoff or dead after p_max_attempts, dead, skipped, suppressed) and releases its lock; NULL if the claim is no longer the caller''s';

CREATE FUNCTION crm_private.transmitting_email(p_id bigint, p_token bigint, p_now timestamptz)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM crm_private.check_worker();
    -- Committed by the caller before the message goes on the wire (after the server
    -- said 354 to DATA): the line between "never transmitted" and "maybe delivered".
    UPDATE crm_private.email_outbox AS o SET transmit_started_at = p_now
     WHERE o.id = p_id AND o.claim_token = p_token AND o.status = 'sending';
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION crm_private.transmitting_email(bigint, bigint, timestamptz) IS 'Marks a claimed email as being transmitted (the worker commits it before sending the message); false if the claim is no longer the caller''s';

CREATE FUNCTION crm_private.recover_emails() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM crm_private.check_worker();
    -- An email still 'sending' whose lock is free lost its worker. Before transmission
    -- it never reached the server: queued again, the attempt not counted. After it the
    -- server may have accepted it: at most once, it is not sent again; an operator
    -- checks the server's log for its Message-ID and requeues it if it never arrived
    -- (crm_admin.requeue_email). Call only while holding no claims of one's own (a
    -- session's own locks are free to it).
    UPDATE crm_private.email_outbox AS o
       SET status = CASE WHEN o.transmit_started_at IS NULL THEN 'queued'::crm_private.email_status
                         ELSE 'unknown' END,
           attempts = CASE WHEN o.transmit_started_at IS NULL THEN o.attempts - 1 ELSE o.attempts END,
           claim_token = CASE WHEN o.transmit_started_at IS NULL THEN NULL ELSE o.claim_token END,
           last_error = CASE WHEN o.transmit_started_at IS NULL THEN o.last_error
               ELSE pg_catalog.format('delivery unknown: worker %s stopped while transmitting (since %s); not retried, look for its Message-ID in the SMTP server''s log',
                                      o.claimed_by, o.transmit_started_at) END
     WHERE o.status = 'sending'
       AND pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('crmdb email'), crm_private.email_lock_key(o.id));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION crm_private.recover_emails() IS 'Emails whose worker died (their lock is free): queued again if never transmitted, else unknown; returns how many';

CREATE FUNCTION crm_private.notify_due(p_limit integer, p_now timestamptz)
RETURNS TABLE (reminders integer, warnings integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_reminders integer;
    v_warnings integer;
BEGIN
    PERFORM crm_private.check_worker();
    -- Due reminders of tasks and appointments not yet due (a reminder set after its
    -- due time passed is dropped), to the current owner if not departed.
    WITH due AS (
        UPDATE crm_private.reminders AS r SET sent_at = p_now
         WHERE r.activity_id IN (SELECT x.activity_id FROM crm_private.reminders AS x
                                  WHERE x.sent_at IS NULL AND x.remind_at <= p_now
                                  ORDER BY x.remind_at LIMIT p_limit FOR UPDATE SKIP LOCKED)
        RETURNING r.*
    )
    SELECT count(crm_private.notify(d.employee_id, 'task_due',
               pg_catalog.format('%s due at %s: %s', pg_catalog.initcap(a.kind::text),
                                 pg_catalog.to_char(d.due_at AT TIME ZONE u.timezone, 'YYYY-MM-DD HH24:MI'),
                                 a.subject),
               pg_catalog.jsonb_build_object('activity_id', a.id, 'activity_kind', a.kind,
                                             'due_at', d.due_at, 'activity_subject', a.subject),
               a.customer_id))::integer
      INTO v_reminders
      FROM due AS d
      JOIN crm.activities AS a ON a.id = d.activity_id
      JOIN crm.employees AS e ON e.id = d.employee_id AND e.status <> 'departed'
      JOIN crm.org_units AS u ON u.id = e.org_unit_id
     WHERE d.due_at > p_now;

    WITH due AS (
        UPDATE crm_private.sla_warnings AS w SET sent_at = p_now
         WHERE w.customer_id IN (SELECT x.customer_id FROM crm_private.sla_warnings AS x
                                  WHERE x.sent_at IS NULL AND x.warn_at <= p_now
                                  ORDER BY x.warn_at LIMIT p_limit FOR UPDATE SKIP LOCKED)
        RETURNING w.*
    )
    SELECT count(crm_private.notify(d.owner_id, 'sla_warning',
               pg_catalog.format('Customer #%s: log an activity before %s or it moves to someone else',
                                 d.customer_id,
                                 pg_catalog.to_char(d.due_at AT TIME ZONE u.timezone, 'YYYY-MM-DD HH24:MI')),
               pg_catalog.jsonb_build_object('due_at', d.due_at),
               d.customer_id))::integer
      INTO v_warnings
      FROM due AS d
      JOIN crm.employees AS e ON e.id = d.owner_id AND e.status <> 'departed'
      JOIN crm.org_units AS u ON u.id = e.org_unit_id
     WHERE d.due_at > p_now;
    RETURN QUERY SELECT v_reminders, v_warnings;
END
$$;
COMMENT ON FUNCTION crm_private.notify_due(integer, timestamptz) IS 'The worker''s reminder batch: due task/appointment reminders and SLA warnings become notifications (and emails); p_now pins the clock (tests)';

CREATE FUNCTION crm_private.next_outbox_due(OUT notifications timestamptz, OUT emails timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT least((SELECT min(r.remind_at) FROM crm_private.reminders AS r WHERE r.sent_at IS NULL),
                 (SELECT min(w.warn_at) FROM crm_private.sla_warnings AS w WHERE w.sent_at IS NULL)),
           (SELECT min(o.next_attempt_at) FROM crm_private.email_outbox AS o WHERE o.status = 'queued')
$$;
COMMENT ON FUNCTION crm_private.next_outbox_due() IS 'When the next reminder or SLA warning, and the next queued email, fall due (the worker sleeps until then at most)';

-- Employees and the app ------------------------------------------------------------

CREATE FUNCTION crm.set_notification_preferences(p_language text DEFAULT NULL, p_email_enabled boolean DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Identity from the session's role (current_user is the owner in here).
    v_employee bigint := crm_private.employee_id_for(crm_private.acting_role());
BEGIN
    IF v_employee IS NULL THEN
        RAISE EXCEPTION 'only an employee may set their notification preferences'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_language IS NOT NULL AND p_language NOT IN ('vi', 'en') THEN
        RAISE EXCEPTION 'unknown language "%" (expected vi or en)', p_language
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO crm_private.notification_preferences AS p (employee_id, language, email_enabled)
    VALUES (v_employee, coalesce(p_language, 'vi'), coalesce(p_email_enabled, true))
    ON CONFLICT (employee_id) DO UPDATE
       SET language = coalesce(p_language, p.language),
           email_enabled = coalesce(p_email_enabled, p.email_enabled);
END
$$;
COMMENT ON FUNCTION crm.set_notification_preferences(text, boolean) IS 'The current employee''s email language (vi, en) and whether their notifications are also emailed; NULL keeps a setting';

CREATE FUNCTION crm.unsubscribe(p_token uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_email text;
BEGIN
    -- The token is the secret of one email's link: whoever holds it is its recipient.
    SELECT pg_catalog.lower(o.recipient_email) INTO v_email
      FROM crm_private.email_outbox AS o
     WHERE o.unsubscribe_token = p_token AND o.recipient_email IS NOT NULL;
    IF v_email IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO crm_private.email_unsubscribes (email, reason, recorded_by)
    VALUES (v_email, 'unsubscribe link', crm_private.acting_role())
    ON CONFLICT (email) DO NOTHING;
    RETURN true;
END
$$;
COMMENT ON FUNCTION crm.unsubscribe(uuid) IS 'Unsubscribes the address an email was sent to, from the token of its link (the app calls it for the recipient); false for an unknown token';

-- Admin API (SECURITY INVOKER: DBAs and the CLI) -----------------------------------

CREATE FUNCTION crm_admin.unsubscribe(p_email text, p_reason text DEFAULT NULL) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO crm_private.email_unsubscribes (email, reason, recorded_by)
    VALUES (pg_catalog.lower(pg_catalog.btrim(p_email)), p_reason, crm_private.acting_role())
    ON CONFLICT (email) DO UPDATE SET reason = EXCLUDED.reason
$$;
COMMENT ON FUNCTION crm_admin.unsubscribe(text, text) IS 'Stops automation emails to an address';

CREATE FUNCTION crm_admin.resubscribe(p_email text) RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (DELETE FROM crm_private.email_unsubscribes
                   WHERE email = pg_catalog.lower(pg_catalog.btrim(p_email)) RETURNING 1)
    SELECT EXISTS (SELECT FROM gone)
$$;
COMMENT ON FUNCTION crm_admin.resubscribe(text) IS 'Lets automation emails reach an address again (it asked to); false if it was not unsubscribed';

CREATE FUNCTION crm_admin.set_customer_language(p_customer_id bigint, p_language text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_language NOT IN ('vi', 'en') THEN
        RAISE EXCEPTION 'unknown language "%" (expected vi or en)', p_language
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO crm_private.customer_languages (customer_id, language)
    VALUES (p_customer_id, p_language)
    ON CONFLICT (customer_id) DO UPDATE SET language = EXCLUDED.language;
END
$$;
COMMENT ON FUNCTION crm_admin.set_customer_language(bigint, text) IS 'The language (vi, en) of emails to a customer';

CREATE FUNCTION crm_admin.requeue_email(p_id bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE crm_private.email_outbox
       SET status = 'queued', attempts = 0, next_attempt_at = pg_catalog.now(), claim_token = NULL
     WHERE id = p_id AND status IN ('dead', 'unknown');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'outbox email % is not dead or unknown (or does not exist): nothing to requeue', p_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_catalog.pg_notify('crmdb_outbox', '');
END
$$;
COMMENT ON FUNCTION crm_admin.requeue_email(bigint) IS 'Sends a dead or unknown email again (for unknown: only after the server''s log shows it never arrived)';

-- Row-level security -----------------------------------------------------------------
-- Owner policies only: no employee policy, no grant. Employees reach these through the
-- functions above.

ALTER TABLE crm_private.notification_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.notification_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.notification_settings TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.notification_emails ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.notification_emails FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.notification_emails TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.notification_preferences ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.notification_preferences FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.notification_preferences TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.customer_languages ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.customer_languages FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.customer_languages TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.email_automations ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.email_automations FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.email_automations TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.email_unsubscribes ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.email_unsubscribes FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.email_unsubscribes TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.email_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.email_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.email_outbox TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.reminders ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.reminders FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.reminders TO crmdb_owner USING (true) WITH CHECK (true);
ALTER TABLE crm_private.sla_warnings ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_private.sla_warnings FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_private.sla_warnings TO crmdb_owner USING (true) WITH CHECK (true);

-- Privileges -----------------------------------------------------------------------

GRANT EXECUTE ON FUNCTION crm.set_notification_preferences(text, boolean), crm.unsubscribe(uuid)
    TO crmdb_employee;

RESET ROLE;

-- Exports by email (migration 0011; here after the outbox, whose table it fills) ---------
-- Exports are announced by email too (crm_private.notifications_email queues one per
-- notification of these kinds, with the generic notification template).
SET ROLE crmdb_owner;
INSERT INTO crm_private.notification_emails (kind, template) VALUES ('export', 'notification');
RESET ROLE;

-- SLA fallback, routing settings, routed org units (migration 0013) -----------------------
-- An SLA hop with nobody eligible escalates at once; crm.routing_settings; the routing
-- engine owns routed customers' org units.
SET ROLE crmdb_owner;

-- 1. What assignment_history may now say -----------------------------------------

ALTER TABLE crm.assignment_history DROP CONSTRAINT assignment_history_strategy_check;
ALTER TABLE crm.assignment_history ADD CONSTRAINT assignment_history_strategy_check
    CHECK (strategy IN ('round_robin', 'least_loaded', 'weighted', 'keep_with_team',
                        'successor', 'manager', 'triage', 'project_admin', 'kept'));
ALTER TABLE crm.assignment_history DROP CONSTRAINT assignment_history_reason_check;
ALTER TABLE crm.assignment_history ADD CONSTRAINT assignment_history_reason_check
    CHECK (reason IN ('new', 'handoff', 'sla', 'escalation', 'offboarding', 'unmatched', 'overflow',
                      'sla_no_eligible'));
COMMENT ON COLUMN crm.assignment_history.strategy IS 'The rule''s strategy; successor or manager for offboarding and escalation; triage (the project''s triage queue) or project_admin for the fallbacks; kept: an SLA escalation found nobody at all, the owner keeps the customer';
COMMENT ON COLUMN crm.assignment_history.reason IS 'new customer, stage handoff, sla reassignment, sla escalation (after max_hops), offboarding; unmatched (no rule matched a new customer), overflow (its rule found nobody eligible for overflow_tries tries), sla_no_eligible (an SLA hop found nobody else eligible: escalated at once)';

INSERT INTO crm_private.notification_emails (kind, template) VALUES ('sla_missed', 'notification');

-- 2. Routing settings ------------------------------------------------------------

CREATE TABLE crm.routing_settings (
    project_id        bigint PRIMARY KEY REFERENCES crm.projects (id) ON DELETE CASCADE,
    triage_queue      text NOT NULL DEFAULT 'triage'
                      CONSTRAINT routing_settings_triage_queue_name CHECK (triage_queue ~ '^[a-z0-9][a-z0-9_.-]*$'),
    triage_templates  text[] NOT NULL DEFAULT '{admin,super_admin}'
                      CONSTRAINT routing_settings_triage_templates_names
                      CHECK (array_position(triage_templates, NULL) IS NULL),
    overflow_tries    integer NOT NULL DEFAULT 12
                      CONSTRAINT routing_settings_overflow_tries_range CHECK (overflow_tries BETWEEN 1 AND 10000),
    retry_minutes     integer NOT NULL DEFAULT 5
                      CONSTRAINT routing_settings_retry_minutes_range CHECK (retry_minutes BETWEEN 1 AND 1440),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm.routing_settings IS 'Per project: who takes what the routing rules cannot place and how long a new customer waits for its rule; managed by the project''s admins (policies/admin.yaml) or a DBA; a project without a row has the column defaults';
COMMENT ON COLUMN crm.routing_settings.triage_queue IS 'The queue (crm.routing_queue_members) whose active project members take unmatched and overflowing customers and escalations without a manager (tier 0)';
COMMENT ON COLUMN crm.routing_settings.triage_templates IS 'Role templates whose holders in the project take them when the triage queue has nobody (tier 1; strategy project_admin); empty: nobody';
COMMENT ON COLUMN crm.routing_settings.overflow_tries IS 'Tries of a new customer''s rule that found nobody eligible before it overflows to the triage (reason overflow)';
COMMENT ON COLUMN crm.routing_settings.retry_minutes IS 'Minutes between tries of an event that found nobody eligible';
CREATE TRIGGER _100_touch BEFORE UPDATE ON crm.routing_settings
    FOR EACH ROW EXECUTE FUNCTION crm_private.touch_updated_at();

CREATE FUNCTION crm_private.routing_settings_of(p_project_id bigint) RETURNS crm.routing_settings
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    -- The project's row, else the defaults (the same as the columns' DEFAULTs: a test
    -- compares them).
    SELECT coalesce(
        (SELECT s FROM crm.routing_settings AS s WHERE s.project_id = p_project_id),
        ROW(p_project_id, 'triage', '{admin,super_admin}'::text[], 12, 5,
            '-infinity'::timestamptz)::crm.routing_settings)
$$;
COMMENT ON FUNCTION crm_private.routing_settings_of(bigint) IS 'A project''s routing settings: its crm.routing_settings row, else the defaults';

-- Triage from the settings ------------------------------------------------------

CREATE OR REPLACE FUNCTION crm_private.fallback_candidates(p_project_id bigint)
RETURNS TABLE (employee_id bigint, strategy text, tier integer, open_customers bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    -- Active members of the project in its triage queue (tier 0), and its admins:
    -- members holding one of its triage templates (tier 1), with their loads; both
    -- named by crm.routing_settings (crm_private.routing_settings_of: the defaults).
    SELECT x.employee_id, x.strategy, x.tier,
           (SELECT count(*) FROM crm.customers AS c
             WHERE c.owner_id = x.employee_id AND c.stage <> 'lost')
      FROM (SELECT m.employee_id, 'triage' AS strategy, 0 AS tier
              FROM crm.routing_queue_members AS m
             WHERE m.project_id = p_project_id
               AND m.queue = (crm_private.routing_settings_of(p_project_id)).triage_queue
            UNION
            SELECT pm.employee_id, 'project_admin', 1
              FROM crm.project_members AS pm
             WHERE pm.project_id = p_project_id
               AND pm.template = ANY ((crm_private.routing_settings_of(p_project_id)).triage_templates)) AS x
      JOIN crm.employees AS e ON e.id = x.employee_id AND e.status = 'active'
     WHERE EXISTS (SELECT FROM crm.project_members AS pm
                    WHERE pm.project_id = p_project_id AND pm.employee_id = x.employee_id)
$$;
COMMENT ON FUNCTION crm_private.fallback_candidates(bigint) IS 'Who takes a project''s customers the rules cannot place: active members of its triage queue (tier 0), then its members holding a triage template (tier 1: its admins), with their open customers; queue and templates from crm.routing_settings';

-- The engine: SLA fallback, settings (route_events and assign_rule above) --------------

COMMENT ON FUNCTION crm_private.route_events(integer, timestamptz) IS 'The routing worker''s batch: claims up to p_limit due events (SKIP LOCKED), applies the rules (what they cannot place goes to the project''s triage; an SLA hop with nobody eligible escalates at once), writes owners, history, SLA clocks and notifications; p_now pins the clock (tests). Callable by crmdb_owner members that are not employees';

-- 3. A routed customer's org unit is the routing engine's ---------------------------

CREATE FUNCTION crm_private.customers_routed_unit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role name := crm_private.acting_role();
    v_unit bigint;
BEGIN
    -- The engine and DBAs (not employees) place customers as they must.
    IF NOT EXISTS (SELECT FROM crm.employees AS e WHERE e.role_name = v_role) THEN
        RETURN NEW;
    END IF;
    IF OLD.owner_id IS NULL AND NEW.owner_id IS NULL THEN
        RAISE EXCEPTION 'crmdb: customer #% waits for the routing engine, which sets its owner and org unit: % may not change its org_unit_id', NEW.id, v_role
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Leave org_unit_id as it is; the routing rules (crmdb rules) decide where new customers go.';
    END IF;
    -- Placed by the engine: its org unit follows its owner, whoever changes the owner.
    IF EXISTS (SELECT FROM crm.assignment_history AS h WHERE h.customer_id = NEW.id) THEN
        SELECT e.org_unit_id INTO v_unit FROM crm.employees AS e WHERE e.id = NEW.owner_id;
        IF NEW.org_unit_id IS DISTINCT FROM v_unit THEN
            RAISE EXCEPTION 'crmdb: customer #% was placed by the routing engine: its org unit is its owner''s (org unit #%), so % may not set org_unit_id to %', NEW.id, v_unit, v_role, NEW.org_unit_id
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Change the owner (where your role may) and set org_unit_id to the new owner''s unit, or leave it as it is.';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm_private.customers_routed_unit() IS 'BEFORE UPDATE OF org_unit_id trigger on crm.customers: an employee may not change the org unit of a customer waiting for the routing engine, nor set a routed customer''s to another than its owner''s';
REVOKE EXECUTE ON FUNCTION crm_private.customers_routed_unit(), crm_private.routing_settings_of(bigint) FROM PUBLIC;
CREATE TRIGGER _060_routed_unit BEFORE UPDATE OF org_unit_id ON crm.customers
    FOR EACH ROW WHEN (OLD.org_unit_id IS DISTINCT FROM NEW.org_unit_id)
    EXECUTE FUNCTION crm_private.customers_routed_unit();
COMMENT ON TRIGGER _060_routed_unit ON crm.customers IS 'The routing engine owns routed customers'' org units: employees'' updates may not move them elsewhere';

-- Row-level security: the owner's; employees' policies come from the role templates.

ALTER TABLE crm.routing_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.routing_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm.routing_settings TO crmdb_owner USING (true) WITH CHECK (true);

RESET ROLE;

-- Security findings (migration 0012) ------------------------------------------------------
-- Found by the attack suite (tests/security); see the migration for the reasoning.
-- crm_private.project_id answers only for one's own projects (above, with the helpers);
-- who created a row is crmdb's; a contract is in its customer's project (the foreign key
-- contracts_customer_project_fkey above, and the trigger below for a clear error).
SET ROLE crmdb_owner;

-- Who created a row is crmdb's -------------------------------------------------------

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

-- A contract is in its customer's project --------------------------------------------

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

-- The vault (migration 0017) ----------------------------------------------------------
-- crm_api's views read field groups from the rows' read copies through crm_vault.<table>:
-- partitioned tables whose only partition is crm.<table>, so the same rows under their
-- own privileges and row policies. No role but crmdb_owner has USAGE on crm_vault, so
-- nothing but a view can reach them; column privileges keep the copies from anyone
-- reading crm.<table> (docs/field-security.md). Columns of crm.customers and
-- crm.contracts are added and dropped on crm_vault's tables.

CREATE TABLE crm_vault.customers (LIKE crm.customers) PARTITION BY LIST (project_id);
ALTER TABLE crm_vault.customers ATTACH PARTITION crm.customers DEFAULT;
CREATE TABLE crm_vault.contracts (LIKE crm.contracts) PARTITION BY LIST (project_id);
ALTER TABLE crm_vault.contracts ATTACH PARTITION crm.contracts DEFAULT;
COMMENT ON TABLE crm_vault.customers IS 'crm.customers (its only partition) as crm_api.customers reads it, read copies included; row policies generated by crmdb policy apply (the table''s select policies)';
COMMENT ON TABLE crm_vault.contracts IS 'crm.contracts (its only partition) as crm_api.contracts reads it, read copies included; row policies generated by crmdb policy apply (the table''s select policies)';
ALTER TABLE crm_vault.customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_vault.customers FORCE ROW LEVEL SECURITY;
ALTER TABLE crm_vault.contracts ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_vault.contracts FORCE ROW LEVEL SECURITY;
CREATE POLICY crmdb_owner_all ON crm_vault.customers TO crmdb_owner USING (true) WITH CHECK (true);
CREATE POLICY crmdb_owner_all ON crm_vault.contracts TO crmdb_owner USING (true) WITH CHECK (true);

RESET ROLE;
