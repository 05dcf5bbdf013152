-- Named queries of the outbox worker, automations and `crmdb outbox` (crmdb/outbox/).
-- Format: a `-- name --` line, a one-line description, then the SQL (crmdb/queries.py).
--
-- Every read of a customer's fields for an email is here, in the "Records" section.
-- Contact and financial fields live in field groups (docs/field-security.md): an
-- employee's email reads crm_api (their own row policies and field groups decide:
-- hidden fields NULL, the phone masked); a customer's own email reads the groups as the
-- worker (the customer's own data).

-- Records (what an email may show) -------------------------------------------------

-- customer_for_employee --
-- A customer as an employee recipient sees it: run under SET LOCAL ROLE, so row-level
-- security decides (no row: the email shows only the id)
SELECT c.id, c.full_name, c.phone, c.email, c.province, c.stage::text AS stage
  FROM crm_api.customers AS c
 WHERE c.id = %(id)s

-- customer_for_customer --
-- A customer's own name and address, for emails to that customer (nothing internal)
SELECT c.id, c.full_name, g.email
  FROM crm.customers AS c
  LEFT JOIN crm.customers__contact AS g ON g.id = c.id
 WHERE c.id = %(id)s

-- contract_for_customer --
-- A customer's own contract (their order), for emails to that customer
SELECT k.id, k.title, f.amount, k.currency::text AS currency, k.signed_at
  FROM crm.contracts AS k
  LEFT JOIN crm.contracts__financial AS f ON f.id = k.id
 WHERE k.id = %(id)s AND k.customer_id = %(customer)s

-- Worker -----------------------------------------------------------------------------

-- listen_outbox --
-- Wake up when a transaction queues an email
LISTEN crmdb_outbox

-- recover_emails --
-- Emails whose worker died mid-send become unknown (never sent twice)
SELECT crm_private.recover_emails()

-- claim_emails --
-- Claim up to `limit` due emails (committed as sending before any SMTP traffic)
SELECT id, claim_token, template, language, recipient_employee_id, recipient_role,
       recipient_name, recipient_departed, recipient_customer_id, recipient_email, customer_id, contract_id,
       automation, context, attempts, unsubscribe_token
  FROM crm_private.claim_emails(%(limit)s, coalesce(%(now)s::timestamptz, pg_catalog.clock_timestamp()),
                                %(worker)s)

-- transmitting_email --
-- Mark a claimed email as going on the wire now (committed before the message is sent)
SELECT crm_private.transmitting_email(%(id)s, %(token)s,
                                      coalesce(%(now)s::timestamptz, pg_catalog.clock_timestamp()))

-- finish_email --
-- Record what became of a claimed email and release it
SELECT crm_private.finish_email(%(id)s, %(token)s, %(outcome)s::crm_private.email_status, %(error)s,
                                coalesce(%(now)s::timestamptz, pg_catalog.clock_timestamp()),
                                %(recipient)s, %(max_attempts)s, %(backoff)s)

-- email_unsubscribed --
-- Whether an address unsubscribed from automation emails
SELECT EXISTS (SELECT FROM crm_private.email_unsubscribes WHERE email = pg_catalog.lower(%(email)s))

-- notify_due --
-- Due reminders and SLA warnings become notifications (and emails)
SELECT reminders, warnings
  FROM crm_private.notify_due(%(limit)s, coalesce(%(now)s::timestamptz, pg_catalog.clock_timestamp()))

-- next_outbox_due --
-- When the next reminder or SLA warning, and the next queued email, fall due
SELECT notifications, emails FROM crm_private.next_outbox_due()

-- crmdb outbox ------------------------------------------------------------------------

-- outbox_counts --
-- Emails per status
SELECT status::text, count(*) FROM crm_private.email_outbox GROUP BY status ORDER BY status

-- outbox_list --
-- Emails in one status, newest first
SELECT id, template, language, coalesce(recipient_email, '(customer #' || recipient_customer_id || ')'),
       attempts, next_attempt_at, last_error
  FROM crm_private.email_outbox
 WHERE status = %(status)s::crm_private.email_status
 ORDER BY id DESC
 LIMIT %(limit)s

-- requeue_email --
-- Send a dead or unknown email again
SELECT crm_admin.requeue_email(%(id)s)

-- unsubscribe --
-- Stop automation emails to an address
SELECT crm_admin.unsubscribe(%(email)s, %(reason)s)

-- Automations (crmdb automations plan/apply) -----------------------------------------

-- automations_lock --
-- Serialise automation applies: one at a time per database
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('crmdb automations apply'))

-- automations_current --
-- The automations of some projects, by project code
SELECT p.code AS project, a.name, a.event::text, a.template, a.enabled,
       a.sources::text[], a.provinces, a.stages::text[]
  FROM crm_private.email_automations AS a
  JOIN crm.projects AS p ON p.id = a.project_id
 WHERE p.code = ANY (%(projects)s::text[])
 ORDER BY 1, 2

-- automations_unknown_projects --
-- Which of the projects automation files name do not exist
SELECT x FROM unnest(%(projects)s::text[]) AS x
 WHERE NOT EXISTS (SELECT FROM crm.projects WHERE code = x)
 ORDER BY 1
