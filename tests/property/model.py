"""An independent, plain-Python model of who may see and update which customers.

Written from the template semantics (README / the property test's docstring), not
from crmdb's compiler: nothing here imports crmdb. Everything is by index: employee
i, org unit i, project i, customer i. The property test builds the same world in
PostgreSQL and compares, employee by employee.

    holds T        E has a project_members row naming T (the last one written for a
                   (project, employee, solution) wins, as add_project_member replaces)
    grant          E holds T, guard(T, S, R) and pred(S, R, E) for a scope S of T
    guard          scope all: true; otherwise R's project is one where E holds T
    pred           own, subordinates (strictly below, any depth), org_unit (E's unit,
                   or its subtree with include_sub_units), project (true), shared
                   (live shares to E or to E's exact unit; edit shares for update),
                   criteria (the where clause), all (true)
    extends        a template gets its parents' scopes; a re-declared label replaces
    departed       no identity and no template roles: every statement is refused
    privileges     SELECT (UPDATE) on crm.customers iff some held template has a
                   scope with select (update); without it the statement is refused
    sharing rules  rows matching where (in the rule's project) for the rule's audience
                   (org unit, sub-units, named employees), select, and update for edit
                   rules; only as far as the employee's table privileges go
    giving away    an employee can never make a customer someone else's beyond their
                   reach (themselves and their subordinates), whatever the scope: only
                   own and subordinates bound the owner, every other scope keeps it
                   (issue 8: a criteria scope with insert and update let the call centre
                   hand leads to anyone). Visibility and no-op updates are unchanged.

Contracts: scopes own, subordinates (the contract's owner), project, all, shared (the
contract's customer is shared to E) and customer (E sees the contract's customer).

Field groups (policies/fields.yaml): a scope names groups it reads and writes; a field
of a visible row reads as its value where a select grant on the row names its group
(a rule: its fields), as the mask where the field has one (phone: all but the last 3
characters as *), NULL otherwise. A group of a row is writable where an update grant on
the row names it in write (an edit rule: its fields, as far as E's templates grant
UPDATE on the group's table). The generator names `write` only on scopes with update.
"""

from collections.abc import Callable
from dataclasses import dataclass

STAGES = ("lead", "qualified", "opportunity", "customer", "after_sales", "lost")
SOURCES = ("chat", "call_center", "web_form", "email", "referral", "event", "import", "manual")
SOLUTIONS = ("sales", "marketing", "management")
KINDS = ("own", "subordinates", "org_unit", "project", "shared", "criteria", "all")
CONTRACT_KINDS = ("own", "subordinates", "project", "shared", "customer", "all")
GROUPS: dict[str, tuple[str, ...]] = {
    "contact": ("phone", "email", "address"),
    "financial": ("bank_account", "bank_name", "tax_code", "financial_notes"),
    "internal_notes": ("notes",),
}
CONTRACT_GROUPS: dict[str, tuple[str, ...]] = {
    "financial": ("amount", "payment_method", "bank_account", "bank_name"),
}
MASKS = {"phone": 3}  # column -> characters the mask keeps


@dataclass(frozen=True)
class Customer:
    project: int
    owner: int | None
    unit: int | None
    stage: str
    source: str
    score: int


# Criteria the generator may use, each with its meaning (SQL NULL rules included).
CRITERIA: dict[str, Callable[[Customer], bool]] = {
    "stage = 'lead'": lambda c: c.stage == "lead",
    "source IN ('chat', 'call_center')": lambda c: c.source in ("chat", "call_center"),
    "score >= 50": lambda c: c.score >= 50,
    "stage = 'customer' AND source = 'web_form'": lambda c: (
        c.stage == "customer" and c.source == "web_form"
    ),
    "stage IN ('customer', 'after_sales')": lambda c: c.stage in ("customer", "after_sales"),
    "NOT (stage = 'lost') AND score < 30": lambda c: c.stage != "lost" and c.score < 30,
    "score BETWEEN 20 AND 60": lambda c: 20 <= c.score <= 60,
    "source = 'web_form' OR score < 10": lambda c: c.source == "web_form" or c.score < 10,
    "owner_id IS NULL": lambda c: c.owner is None,
    "org_unit_id IS NOT NULL AND score > 30": lambda c: c.unit is not None and c.score > 30,
}


@dataclass(frozen=True)
class Unit:
    code: str
    parent: int | None


@dataclass(frozen=True)
class Employee:
    name: str  # logical; the database role is the scratch database's prefix + name
    unit: int
    manager: int | None


@dataclass(frozen=True)
class Scope:
    kind: str
    actions: frozenset[str]
    name: str = ""
    where: str | None = None  # criteria only: a key of CRITERIA
    include_sub_units: bool = False  # org_unit only
    read: frozenset[str] = frozenset()  # field groups (besides core) it shows
    write: frozenset[str] = frozenset()  # ... and lets write (a subset of read)

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class Template:
    name: str
    parent: str | None
    scopes: tuple[Scope, ...]
    contracts: tuple[Scope, ...] = ()  # scopes on crm.contracts


@dataclass(frozen=True)
class Contract:
    customer: int
    project: int
    owner: int | None


@dataclass(frozen=True)
class Membership:
    employee: int
    project: int
    solution: str
    template: str


@dataclass(frozen=True)
class Share:
    customer: int
    employee: int | None  # exactly one of employee and unit
    unit: int | None
    access: str  # read or edit
    state: str  # open (no end), until_tomorrow, expired (ended yesterday)
    granted_by: int | None


@dataclass(frozen=True)
class Move:
    """crm_admin.move_employee: a new manager (or clear it) and/or a new unit."""

    employee: int
    manager: int | None
    clear_manager: bool
    unit: int | None


@dataclass(frozen=True)
class Rule:
    name: str
    where: str
    project: int | None
    access: str
    unit: int | None
    include_sub_units: bool
    employees: tuple[int, ...]
    fields: frozenset[str] = frozenset()


@dataclass(frozen=True)
class World:
    units: tuple[Unit, ...]
    employees: tuple[Employee, ...]
    projects: int
    templates: tuple[Template, ...]
    memberships: tuple[Membership, ...]  # in the order they are written
    moves: tuple[Move, ...]  # after the memberships
    customers: tuple[Customer, ...]
    shares: tuple[Share, ...]
    departed: frozenset[int]  # after the moves
    rules: tuple[Rule, ...]
    apply_early: bool  # policies applied before memberships (the trigger syncs roles)
    contracts: tuple[Contract, ...] = ()


@dataclass(frozen=True)
class Access:
    visible: frozenset[int] | None  # None: no SELECT privilege (statement refused)
    updatable: frozenset[int] | None  # None: no UPDATE privilege


@dataclass(frozen=True)
class Grant:
    customer: int
    action: str  # select or update
    via: str  # e.g. "t_abc/own" or "rule r0"
    kind: str  # the scope kind, or "rule"
    groups: frozenset[str] = frozenset()  # read groups (select), write groups (update)


# Trees ------------------------------------------------------------------------


def ancestors(parent_of: list[int | None], node: int) -> list[int]:
    """Nodes strictly above `node`, nearest first."""
    found: list[int] = []
    current = parent_of[node]
    while current is not None:
        assert current not in found and current != node, "cycle"
        found.append(current)
        current = parent_of[current]
    return found


def unit_subtree(world: World, unit: int) -> set[int]:
    """`unit` and every unit below it."""
    parents = [u.parent for u in world.units]
    return {u for u in range(len(parents)) if u == unit or unit in ancestors(parents, u)}


def move_is_valid(employees: list[Employee], move: Move) -> bool:
    """Whether crm_admin.move_employee accepts the move (no self-report, no cycle)."""
    if move.manager is None:
        return True
    if move.manager == move.employee:
        return False
    managers = [e.manager for e in employees]
    return move.employee not in ancestors(managers, move.manager)


def employees_after(world: World, moves: tuple[Move, ...]) -> list[Employee]:
    """Employees once `moves` are made (moves the database refuses change nothing)."""
    employees = list(world.employees)
    for move in moves:
        if not move_is_valid(employees, move):
            continue
        e = employees[move.employee]
        manager = None if move.clear_manager else e.manager
        if move.manager is not None:
            manager = move.manager
        unit = e.unit if move.unit is None else move.unit
        employees[move.employee] = Employee(e.name, unit, manager)
    return employees


def final_employees(world: World) -> list[Employee]:
    return employees_after(world, world.moves)


def subordinates(employees: list[Employee], boss: int) -> set[int]:
    managers = [e.manager for e in employees]
    return {e for e in range(len(employees)) if boss in ancestors(managers, e)}


# Templates ----------------------------------------------------------------------


def effective_scopes(
    templates: tuple[Template, ...], name: str, table: str = "customers"
) -> tuple[Scope, ...]:
    """The template's scopes with its parent's merged in; a re-declared label replaces."""
    t = next(t for t in templates if t.name == name)
    merged = list(effective_scopes(templates, t.parent, table)) if t.parent else []
    for scope in t.scopes if table == "customers" else t.contracts:
        for i, existing in enumerate(merged):
            if existing.label == scope.label:
                merged[i] = scope
                break
        else:
            merged.append(scope)
    return tuple(merged)


def holdings(world: World, employee: int) -> dict[str, set[int]]:
    """Template -> projects where the employee holds it (last write per solution wins)."""
    seat: dict[tuple[int, int, str], str] = {}
    for m in world.memberships:
        seat[(m.employee, m.project, m.solution)] = m.template
    held: dict[str, set[int]] = {}
    for (e, project, _), name in seat.items():
        if e == employee:
            held.setdefault(name, set()).add(project)
    return held


# Access -------------------------------------------------------------------------


def _live(share: Share) -> bool:
    return share.state != "expired"


def _predicate(
    world: World, employees: list[Employee], scope: Scope, c_index: int, me: int, action: str
) -> bool:
    c = world.customers[c_index]
    if scope.kind == "own":
        return c.owner == me
    if scope.kind == "subordinates":
        return c.owner is not None and c.owner in subordinates(employees, me)
    if scope.kind == "org_unit":
        my_unit = employees[me].unit
        units = unit_subtree(world, my_unit) if scope.include_sub_units else {my_unit}
        return c.unit is not None and c.unit in units
    if scope.kind in ("project", "all"):
        return True
    if scope.kind == "shared":
        return any(
            s.customer == c_index
            and _live(s)
            and (s.employee == me or (s.unit is not None and s.unit == employees[me].unit))
            and (action == "select" or s.access == "edit")
            for s in world.shares
        )
    if scope.kind == "criteria":
        assert scope.where is not None
        return CRITERIA[scope.where](c)
    raise AssertionError(f"unknown scope kind {scope.kind}")


def in_audience(world: World, employees: list[Employee], rule: Rule, me: int) -> bool:
    if me in rule.employees:
        return True
    if rule.unit is None:
        return False
    units = unit_subtree(world, rule.unit) if rule.include_sub_units else {rule.unit}
    return employees[me].unit in units


def rules_without_audience(
    world: World, employees: list[Employee], departed: frozenset[int]
) -> set[str]:
    """Rules no active employee is in: `policy apply` refuses them."""
    return {
        r.name
        for r in world.rules
        if not any(
            in_audience(world, employees, r, e) for e in range(len(employees)) if e not in departed
        )
    }


def privileges(world: World, employee: int) -> set[str]:
    """Table privileges on crm.customers the employee has through held templates."""
    if employee in world.departed:
        return set()
    held = holdings(world, employee)
    actions: set[str] = set()
    for name in held:
        for scope in effective_scopes(world.templates, name):
            actions |= scope.actions & {"select", "update"}
    return actions


def grants(world: World, employee: int, rules: tuple[Rule, ...] | None = None) -> list[Grant]:
    """Every (customer, action) the model grants the employee, and through what."""
    if employee in world.departed:
        return []
    employees = final_employees(world)
    found: list[Grant] = []
    for name, projects in sorted(holdings(world, employee).items()):
        for scope in effective_scopes(world.templates, name):
            for action in ("select", "update"):
                if action not in scope.actions:
                    continue
                for i, c in enumerate(world.customers):
                    guard = scope.kind == "all" or c.project in projects
                    if guard and _predicate(world, employees, scope, i, employee, action):
                        groups = scope.read if action == "select" else scope.write
                        found.append(Grant(i, action, f"{name}/{scope.label}", scope.kind, groups))
    for rule in world.rules if rules is None else rules:
        if not in_audience(world, employees, rule, employee):
            continue
        actions = ("select", "update") if rule.access == "edit" else ("select",)
        for i, c in enumerate(world.customers):
            if CRITERIA[rule.where](c) and (rule.project is None or c.project == rule.project):
                found += [Grant(i, a, f"rule {rule.name}", "rule", rule.fields) for a in actions]
    return found


def access(world: World, employee: int, rules: tuple[Rule, ...] | None = None) -> Access:
    """What the employee sees and may update, by customer index."""
    have = privileges(world, employee)
    granted = grants(world, employee, rules)
    return Access(
        frozenset(g.customer for g in granted if g.action == "select")
        if "select" in have
        else None,
        frozenset(g.customer for g in granted if g.action == "update")
        if "update" in have
        else None,
    )


def out_of_reach(world: World, employee: int, customer: int) -> int | None:
    """Someone to whom `employee` may not give the customer: neither themselves, nor
    anyone below them, nor its owner already (None when there is nobody such)."""
    employees = final_employees(world)
    reach = subordinates(employees, employee) | {employee, world.customers[customer].owner}
    return next((e for e in range(len(employees)) if e not in reach), None)


def given_away(world: World, employee: int) -> frozenset[int]:
    """Customers `employee` can give to out_of_reach(): none, through any scope."""
    return frozenset()


# Fields -------------------------------------------------------------------------------


def mask(value: str, keep: int) -> str:
    return "*" * max(len(value) - keep, 0) + value[len(value) - keep :]


def field_value(table: str, column: str, index: int) -> str:
    """What the property test stores in a field of row `index` (distinct values)."""
    if column == "phone":
        return f"09{index:08d}"
    if column == "amount":
        return f"{1000 + index}.50"
    return f"{table[:2]}{index}:{column}"


def _held_side_update(world: World, employee: int, group: str) -> bool:
    """Whether a held template names `group` in a customers scope's write (the UPDATE
    privilege on its table, which edit rules need too)."""
    return any(
        group in scope.write
        for name in holdings(world, employee)
        for scope in effective_scopes(world.templates, name)
    )


@dataclass(frozen=True)
class Fields:
    """Per visible row: the groups the employee reads and may write."""

    read: dict[int, frozenset[str]]
    write: dict[int, frozenset[str]]


def customer_fields(world: World, employee: int, rules: tuple[Rule, ...] | None = None) -> Fields:
    seen = access(world, employee, rules).visible or frozenset()
    read: dict[int, set[str]] = {i: set() for i in seen}
    write: dict[int, set[str]] = {i: set() for i in seen}
    for g in grants(world, employee, rules):
        if g.customer not in seen:
            continue
        if g.action == "select":
            read[g.customer] |= g.groups
        elif g.kind != "rule":
            write[g.customer] |= g.groups
        else:  # an edit rule writes its groups where the templates grant UPDATE on them
            write[g.customer] |= {x for x in g.groups if _held_side_update(world, employee, x)}
    return Fields(
        {i: frozenset(v) for i, v in read.items()}, {i: frozenset(v) for i, v in write.items()}
    )


def customer_row(world: World, fields: Fields, index: int) -> tuple[str | None, ...]:
    """The fields of customer `index` as crm_api.customers shows them (GROUPS order)."""
    values: list[str | None] = []
    for group, columns in GROUPS.items():
        for column in columns:
            value = field_value("customers", column, index)
            if group in fields.read[index]:
                values.append(value)
            else:
                values.append(mask(value, MASKS[column]) if column in MASKS else None)
    return tuple(values)


def _contract_predicate(
    world: World, employees: list[Employee], scope: Scope, k: int, me: int, action: str
) -> bool:
    contract = world.contracts[k]
    if scope.kind == "own":
        return contract.owner == me
    if scope.kind == "subordinates":
        return contract.owner is not None and contract.owner in subordinates(employees, me)
    if scope.kind in ("project", "all"):
        return True
    if scope.kind == "shared":
        return any(
            s.customer == contract.customer
            and _live(s)
            and (s.employee == me or (s.unit is not None and s.unit == employees[me].unit))
            and (action == "select" or s.access == "edit")
            for s in world.shares
        )
    if scope.kind == "customer":
        return False  # decided by contract_access, from the customers the employee sees
    raise AssertionError(f"unknown contract scope kind {scope.kind}")


@dataclass(frozen=True)
class ContractAccess:
    visible: frozenset[int] | None  # None: no SELECT privilege on crm.contracts
    read: frozenset[int]  # contracts whose financial group the employee reads
    write: frozenset[int]  # ... and may write


def contract_access(
    world: World, employee: int, rules: tuple[Rule, ...] | None = None
) -> ContractAccess:
    if employee in world.departed:
        return ContractAccess(None, frozenset(), frozenset())
    held = holdings(world, employee)
    scopes = {name: effective_scopes(world.templates, name, "contracts") for name in held}
    if not any("select" in s.actions for ss in scopes.values() for s in ss):
        return ContractAccess(None, frozenset(), frozenset())
    employees = final_employees(world)
    customers = access(world, employee, rules).visible or frozenset()
    visible: set[int] = set()
    read: set[int] = set()
    write: set[int] = set()
    for name, projects in held.items():
        for scope in scopes[name]:
            for k, contract in enumerate(world.contracts):
                if not (scope.kind == "all" or contract.project in projects):
                    continue
                for action in ("select", "update"):
                    if action not in scope.actions:
                        continue
                    if scope.kind == "customer":
                        ok = contract.customer in customers
                    else:
                        ok = _contract_predicate(world, employees, scope, k, employee, action)
                    if ok and action == "select":
                        visible.add(k)
                        if "financial" in scope.read:
                            read.add(k)
                    elif ok and "financial" in scope.write:
                        write.add(k)
    return ContractAccess(frozenset(visible), frozenset(read), frozenset(write & visible))
