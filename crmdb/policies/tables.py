"""The tables role templates govern, and which column anchors each scope on each.

This is data, not SQL: the predicates themselves are jinja macros in
sql/policy/scopes.sql.j2. tests/integration/test_policy_tables.py checks that these
column lists match the database, so the two cannot drift apart.

Feature clusters: each table belongs to a solution (marketing, sales, management) or,
for directories every solution works with (customers, activities, employees, ...), to
none. A template names only tables of its own solution and directories; management
templates oversee the project and may name any (crmdb/policies/model.py). Reports are
functions in the same clusters, granted by a template's `reports:` (EXECUTE).
"""

from dataclasses import dataclass, field

SCOPES = ("own", "subordinates", "org_unit", "project", "shared", "customer", "criteria", "all")
ACTIONS = ("select", "insert", "update", "delete", "export")
# PostgreSQL commands a policy can be FOR; export is crmdb's own (see the export issue).
COMMANDS = ("select", "insert", "update", "delete")
SOLUTIONS = ("marketing", "sales", "management")
# The solution whose templates may name tables of every solution (oversight).
OVERSIGHT = "management"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    owner: str | None = None  # employee column for own / subordinates
    org_unit: str | None = None  # org unit column for org_unit
    project: str | None = None  # project column for project and the project guard
    customer: str | None = None  # customer id column for shared / customer
    # Columns that say who and where a row belongs; an update through a scope that
    # cannot insert must leave them as they are.
    anchors: tuple[str, ...] = field(default=())
    # The column that gives a row to someone (its owner, the employee who must do it,
    # who granted it). Only scopes bounded by it (own, subordinates) may choose it;
    # every other scope inserts it as the writer (or NULL where `routed`: the routing
    # engine picks) and leaves it unchanged on update. See scopes.sql.j2, keeps_assignee.
    assignee: str | None = None
    routed: bool = False  # a NULL assignee waits for the routing engine
    touch: str = "id"  # a column `crmdb policy test` sets to itself to probe UPDATE
    # False: the table has fixed policies of its own in sql/schema.sql (named crmdb_*,
    # e.g. every employee reads their own notifications); templates may not name it.
    templates: bool = True
    # A field group's side table (crm.<parent>__<group>): its policies come from the
    # scopes of `parent` that name the group; templates do not name it themselves.
    parent: str | None = None
    group: str | None = None
    # The feature cluster: a solution, or None for a directory every solution may name.
    solution: str | None = None
    # Foreign keys to other template-governed tables, (column, table): a written row may
    # point only at rows the writer sees (scopes.sql.j2, references_visible), so the
    # foreign key's error never tells a hidden row from a missing one. Templates that
    # insert or update the table must select those tables (crmdb/policies/model.py).
    references: tuple[tuple[str, str], ...] = ()

    @property
    def values(self) -> tuple[str, ...]:
        """A side table's own columns: the group's fields and its custom fields."""
        return tuple(c for c in self.columns if c != "id" and c not in self.anchors)

    @property
    def qualified(self) -> str:
        return f"crm.{self.name}"

    def scopes(self) -> tuple[str, ...]:
        """Scopes that make sense on this table."""
        allowed = ["criteria", "all"]
        if self.owner:
            allowed += ["own", "subordinates"]
        if self.org_unit:
            allowed.append("org_unit")
        if self.project:
            allowed.append("project")
        if self.customer:
            allowed.append("shared")
        if self.customer and self.name != "customers":
            # "rows of customers I can see": on customers itself it would be circular
            allowed.append("customer")
        return tuple(s for s in SCOPES if s in allowed)


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "customers",
            (
                "id",
                "project_id",
                "org_unit_id",
                "owner_id",
                "full_name",
                "province",
                "stage",
                "source",
                "score",
                "product_interest",
                "created_by",
                "assigned_at",
                "created_at",
                "updated_at",
                "phone_mask",
            ),
            owner="owner_id",
            org_unit="org_unit_id",
            project="project_id",
            customer="id",
            anchors=("owner_id", "project_id", "org_unit_id"),
            assignee="owner_id",
            routed=True,
            touch="updated_at",
        ),
        Table(
            "contracts",
            (
                "id",
                "customer_id",
                "project_id",
                "owner_id",
                "title",
                "currency",
                "status",
                "signed_at",
                "created_at",
                "updated_at",
            ),
            owner="owner_id",
            project="project_id",
            customer="customer_id",
            anchors=("owner_id", "project_id", "customer_id"),
            assignee="owner_id",
            touch="updated_at",
            solution="sales",
        ),
        Table(
            "activities",
            (
                "id",
                "customer_id",
                "employee_id",
                "kind",
                "subject",
                "body",
                "occurred_at",
                "due_at",
                "done_at",
                "duration_seconds",
                "created_at",
                "updated_at",
            ),
            owner="employee_id",
            customer="customer_id",
            anchors=("employee_id", "customer_id"),
            assignee="employee_id",
            touch="updated_at",
        ),
        Table(
            "shares",
            (
                "id",
                "customer_id",
                "grantee_employee_id",
                "grantee_org_unit_id",
                "access",
                "reason",
                "granted_by",
                "created_at",
                "expires_at",
            ),
            owner="granted_by",
            customer="customer_id",
            anchors=("customer_id", "grantee_employee_id", "grantee_org_unit_id", "granted_by"),
            assignee="granted_by",
            touch="reason",
        ),
        Table(
            "employees",
            (
                "id",
                "role_name",
                "full_name",
                "email",
                "phone",
                "title",
                "manager_id",
                "org_unit_id",
                "status",
                "departed_at",
                "created_at",
                "updated_at",
            ),
            owner="id",
            org_unit="org_unit_id",
            touch="updated_at",
        ),
        Table(
            "org_units",
            ("id", "code", "name", "kind", "parent_id", "timezone", "created_at"),
            org_unit="id",
        ),
        Table("projects", ("id", "code", "name", "description", "created_at"), project="id"),
        Table("project_solutions", ("project_id", "solution"), project="project_id"),
        Table(
            "project_members",
            ("project_id", "employee_id", "solution", "template", "added_at"),
            owner="employee_id",
            project="project_id",
        ),
        Table(
            "change_log",
            (
                "id",
                "table_name",
                "record_id",
                "action",
                "changed_fields",
                "old_values",
                "new_values",
                "actor_role",
                "actor_employee_id",
                "txid",
                "at",
                "project_id",
            ),
            owner="actor_employee_id",
            project="project_id",
            solution="management",
        ),
        Table(
            "business_hours",
            ("org_unit_id", "weekday", "opens", "closes"),
            org_unit="org_unit_id",
            solution="management",
        ),
        Table(
            "routing_rules",
            (
                "id",
                "project_id",
                "name",
                "kind",
                "on_stage",
                "priority",
                "enabled",
                "sources",
                "provinces",
                "product_interests",
                "stages",
                "min_score",
                "max_score",
                "target_org_unit_id",
                "include_sub_units",
                "target_queue",
                "strategy",
                "load_measure",
                "max_open",
                "hours_org_unit_id",
                "sla_minutes",
                "sla_business_hours",
                "sla_max_hops",
                "created_at",
                "updated_at",
            ),
            project="project_id",
            touch="updated_at",
            solution="management",
        ),
        Table(
            "routing_queue_members",
            ("project_id", "queue", "employee_id", "weight"),
            project="project_id",
            solution="management",
        ),
        Table(
            "routing_settings",
            (
                "project_id",
                "triage_queue",
                "triage_templates",
                "overflow_tries",
                "retry_minutes",
                "updated_at",
            ),
            project="project_id",
            touch="updated_at",
            solution="management",
        ),
        Table(
            "assignment_history",
            (
                "id",
                "customer_id",
                "project_id",
                "from_employee_id",
                "to_employee_id",
                "rule_id",
                "rule_name",
                "strategy",
                "reason",
                "hop",
                "event_id",
                "at",
            ),
            owner="to_employee_id",
            project="project_id",
            customer="customer_id",
            solution="management",
        ),
        Table(
            "custom_fields",
            (
                "id",
                "table_name",
                "field_group",
                "name",
                "data_type",
                "label",
                "min_value",
                "max_value",
                "max_length",
                "pattern",
                "choices",
                "created_at",
                "updated_at",
            ),
            touch="updated_at",
            solution="management",
        ),
        Table(
            "segments",
            (
                "id",
                "project_id",
                "owner_id",
                "name",
                "description",
                "created_at",
                "updated_at",
            ),
            owner="owner_id",
            project="project_id",
            anchors=("owner_id", "project_id"),
            touch="updated_at",
            solution="marketing",
        ),
        Table(
            "campaigns",
            (
                "id",
                "project_id",
                "owner_id",
                "name",
                "channel",
                "status",
                "segment_id",
                "scheduled_at",
                "created_at",
                "updated_at",
            ),
            owner="owner_id",
            project="project_id",
            anchors=("owner_id", "project_id"),
            touch="updated_at",
            solution="marketing",
            references=(("segment_id", "segments"),),
        ),
        Table(
            "campaign_audiences",
            (
                "id",
                "campaign_id",
                "customer_id",
                "project_id",
                "added_by",
                "status",
                "sent_at",
                "created_at",
                "updated_at",
            ),
            owner="added_by",  # own: the audience rows this marketer added
            project="project_id",
            customer="customer_id",
            anchors=("campaign_id", "customer_id", "project_id", "added_by"),
            touch="updated_at",
            solution="marketing",
            references=(("campaign_id", "campaigns"),),
        ),
        Table(
            "exports",
            (
                "id",
                "at",
                "employee_id",
                "actor_role",
                "table_name",
                "filter",
                "fields",
                "row_count",
                "record_ids",
                "project_ids",
                "refused",
                "reason",
                "txid",
            ),
            owner="employee_id",
            templates=False,
        ),
        Table(
            "notifications",
            (
                "id",
                "employee_id",
                "kind",
                "customer_id",
                "subject",
                "details",
                "created_at",
                "read_at",
            ),
            owner="employee_id",
            customer="customer_id",
            templates=False,
        ),
    )
}


def _side(parent: str, group: str, values: tuple[str, ...]) -> Table:
    """The side table of a field group: the parent's id, copies of its anchors, the
    group's values and a jsonb of custom fields (migrations/0006.field-groups.sql)."""
    p = TABLES[parent]
    customer = "id" if parent == "customers" else p.customer
    # In the migration's column order
    anchors = {
        "customers": ("project_id", "org_unit_id", "owner_id"),
        "contracts": ("project_id", "owner_id", "customer_id"),
    }[parent]
    return Table(
        f"{parent}__{group}",
        ("id", *anchors, *values, "custom"),
        owner=p.owner,
        org_unit=p.org_unit,
        project=p.project,
        customer=customer,
        anchors=anchors,
        touch="custom",
        templates=False,
        parent=parent,
        group=group,
        solution=p.solution,
    )


# Field groups' storage: what policies/fields.yaml may declare (it must match).
SIDE_TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        _side("customers", "contact", ("phone", "email", "address")),
        _side(
            "customers", "financial", ("bank_account", "bank_name", "tax_code", "financial_notes")
        ),
        _side("customers", "internal_notes", ("notes",)),
        _side("contracts", "financial", ("amount", "payment_method", "bank_account", "bank_name")),
    )
}
TABLES.update(SIDE_TABLES)

# Tables whose rows carry read copies of their field groups (<group>_copy columns that
# no employee may select), each with the crm_vault table over it that crm_api's view
# reads (migrations/0017.vault-reads.sql): crm.<table> -> crm_vault.<table>.
VAULT: dict[str, str] = {
    TABLES[t.parent].qualified: f"crm_vault.{t.parent}" for t in SIDE_TABLES.values() if t.parent
}


@dataclass(frozen=True)
class Report:
    """A report function templates grant with `reports: [name]` (EXECUTE). It runs as
    the caller (SECURITY INVOKER), so the template needs select on what it reads."""

    name: str
    function: str  # its signature, as GRANT names it
    solution: str
    reads: tuple[str, ...]


REPORTS: dict[str, Report] = {
    r.name: r
    for r in (
        Report(
            "pipeline",
            "crm.report_pipeline()",
            "management",
            ("customers", "contracts", "projects", "employees"),
        ),
    )
}
