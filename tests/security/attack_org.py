"""The org attacks run in, the attackers, and the probes every attack category uses.

The org is the policy fixture org (tests/integration/policy_org.py: policies/fixture.yaml
plus its EXTRAS, shipped templates applied) with two more sales reps in unit co, each
owning one saoviet.crm customer:

  away  on leave (keeps access): owns x_away
  gone  departed: owns x_gone; their role may log in again, standing for a session
        that outlived the departure (crmdb ends those with crm_admin.end_sessions)

ATTACKERS are a sales rep, a marketing employee, a manager, the on-leave and the
departed employee. VISIBLE is what each may see of crm.customers (the ground truth the
attacks compare with, written down independently of the policies); TARGET (c3, in
project p2) is hidden from every attacker.

Marketing (migration 0010): g1 (mkt's segment), m1 (mkt's campaign on it), m2 (adm's)
in saoviet.crm, m3 in p2 as in the fixture, plus g3, an unowned segment in p2: p2's
segments and campaigns are hidden from every attacker.

Field groups (policies/fields.yaml): every customer and contract holds a distinct value
in every field (SECRETS, set by the superuser), and a contract kx on c6 (rep_c's,
shared to rep_a with edit) is added, whose money rep_a sees the row of but not the
fields. READS and WRITES say which groups each attacker may read and write on which
rows, written down from the templates (policies/*.yaml), not from the policies.
"""

import hashlib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from policy_org import VISIBLE_CUSTOMERS, PolicyOrg, build_policy_org
from psycopg import errors, sql

from crmdb import admin
from crmdb.testing.scratch import TEST_PASSWORD, ScratchDatabase

ATTACKERS = ("rep_a", "mkt", "mgr_hn", "away", "gone")
TARGET = "c3"
NEVER_USED_ID = 10**12  # an id no row has: a probe must not tell it from TARGET

_EXTRA_CUSTOMER = (
    "INSERT INTO crm.customers (project_id, org_unit_id, owner_id, full_name)"
    " VALUES (crm_private.project_id('saoviet.crm'),"
    " (SELECT id FROM crm.org_units WHERE code = 'co'), %(owner)s, %(name)s) RETURNING id"
)
_EXTRA_EMPLOYEES = {"away": "on_leave", "gone": "departed"}

P1_ALL = {"c1", "c2", "c4", "c5", "c6", "c7", "x_deep", "x_care", "x_away", "x_gone"}
VISIBLE: dict[str, frozenset[str]] = {
    "rep_a": frozenset(VISIBLE_CUSTOMERS["rep_a"]),  # own c1, c4; edit share c6
    "mkt": frozenset(P1_ALL),  # project scope: every saoviet.crm customer
    "mgr_hn": frozenset(VISIBLE_CUSTOMERS["mgr_hn"]),  # own + subordinates (any depth)
    "away": frozenset({"x_away"}),  # on leave: keeps their own
    "gone": frozenset(),  # departed: no identity, nothing
    "adm": frozenset(P1_ALL),
}


@dataclass
class AttackOrg:
    """The fixture org plus `away` and `gone`; keys as in policy_org.PolicyOrg."""

    org: PolicyOrg

    @property
    def db(self) -> ScratchDatabase:
        return self.org.db

    def role(self, key: str) -> str:
        return self.org.role(key)

    def id(self, key: str, table: str = "customers") -> int:
        return self.org.id(key, table)

    def emp(self, key: str) -> int:
        return self.org.emp(key)

    def customer_keys(self, ids: Iterable[Any]) -> set[str]:
        return self.org.keys("customers", [int(i) for i in ids])

    def superuser(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows as the superuser sees them (committed state)."""
        with self.db.connect() as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


def build_attack_org(db: ScratchDatabase) -> AttackOrg:
    org = build_policy_org(db)
    with db.connect(autocommit=False) as conn, conn.transaction():
        for key, status in _EXTRA_EMPLOYEES.items():
            role = db.role(key)
            org.loaded.roles[key] = role
            org.loaded.ids[("employees", key)] = admin.add_employee(
                conn, role, key, f"{role.lower()}@attack.test", "co",
                login=True, password=TEST_PASSWORD,
            )  # fmt: skip
            admin.add_project_member(conn, "saoviet.crm", role, "sales", "sales_rep")
            row = conn.execute(
                _EXTRA_CUSTOMER, {"owner": org.loaded.ids[("employees", key)], "name": key}
            ).fetchone()
            assert row is not None
            org.loaded.ids[("customers", f"x_{key}")] = int(row[0])
            admin.set_employee_status(conn, role, status)
        g3 = conn.execute(
            "INSERT INTO crm.segments (project_id, name, description)"
            " VALUES (crm_private.project_id('p2'), 'g3', 'p2 leads') RETURNING id"
        ).fetchone()
        assert g3 is not None
        org.loaded.ids[("segments", "g3")] = int(g3[0])
        # A session that survived the departure: log in as the departed role again.
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(db.role("gone"))))
        _field_values(conn, org)
    return AttackOrg(org)


# Field groups ---------------------------------------------------------------------

CUSTOMER_GROUPS: dict[str, tuple[str, ...]] = {
    "contact": ("phone", "email", "address"),
    "financial": ("bank_account", "bank_name", "tax_code", "financial_notes"),
    "internal_notes": ("notes",),
}
CONTRACT_COLUMNS = ("amount", "payment_method", "bank_account", "bank_name")
MASKED = {"phone": 3}  # column -> characters the mask keeps
ALL = frozenset(CUSTOMER_GROUPS)
NOTES = frozenset({"contact", "internal_notes"})
CONTACT = frozenset({"contact"})
FINANCIAL = frozenset({"financial"})

# customer key -> groups the attacker reads (rows not named: none); from the templates:
# sales_rep own: all, shared: contact and notes; marketing project: contact;
# sales_manager subordinates: all (writes contact and notes only).
READS: dict[str, dict[str, frozenset[str]]] = {
    "rep_a": {"c1": ALL, "c4": ALL, "c6": NOTES},
    "mkt": {k: CONTACT for k in P1_ALL},
    "mgr_hn": {k: ALL for k in VISIBLE["mgr_hn"]},
    "away": {"x_away": ALL},
    "gone": {},
}
WRITES: dict[str, dict[str, frozenset[str]]] = {
    "rep_a": {"c1": ALL, "c4": ALL, "c6": NOTES},
    "mkt": {},
    "mgr_hn": {k: NOTES for k in VISIBLE["mgr_hn"]},
    "away": {"x_away": ALL},
    "gone": {},
}
# contract key -> whether the attacker reads (writes) its financial group
CONTRACT_READS: dict[str, set[str]] = {
    "rep_a": {"k1", "k4"},  # own; kx (on c6) only through the customer: core
    "mkt": set(),  # no privilege on contracts at all
    "mgr_hn": {"k1", "k2", "k4"},  # subordinates: read only
    "away": set(),
    "gone": set(),
}
CONTRACT_WRITES: dict[str, set[str]] = {"rep_a": {"k1", "k4"}}


def field_value(table: str, column: str, key: str) -> str:
    """The value the fixture stores in a field of row `key`: distinct from every other
    field's, and never part of another (so finding it in any output is a leak)."""
    if column == "phone":  # phone-shaped, so its mask looks like one
        digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        return "09" + str(digest % 10**8).zfill(8)
    if column == "amount":
        return f"{sum(map(ord, key)) * 1000 + 7}.25"
    return f"S:{table}.{column}:{key}:"


def mask(value: str, keep: int) -> str:
    return "*" * max(len(value) - keep, 0) + value[len(value) - keep :]


def _field_values(conn: psycopg.Connection, org: PolicyOrg) -> None:
    ids = org.loaded.ids
    kx = conn.execute(
        "INSERT INTO crm.contracts (customer_id, project_id, owner_id, title)"
        " SELECT id, project_id, owner_id, 'kx' FROM crm.customers WHERE id = %s RETURNING id",
        (ids[("customers", "c6")],),
    ).fetchone()
    assert kx is not None
    ids[("contracts", "kx")] = int(kx[0])
    for (table, key), row_id in list(ids.items()):
        if table == "customers":
            for group, columns in CUSTOMER_GROUPS.items():
                conn.execute(
                    sql.SQL("UPDATE {} SET ({}) = ROW({}) WHERE id = %s").format(
                        sql.Identifier("crm", f"customers__{group}"),
                        sql.SQL(", ").join(map(sql.Identifier, columns)),
                        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                    ),
                    [*(field_value("customers", c, key) for c in columns), row_id],
                )
        elif table == "contracts":
            conn.execute(
                "UPDATE crm.contracts__financial SET (amount, payment_method, bank_account,"
                " bank_name) = ROW(%s::numeric, %s, %s, %s) WHERE id = %s",
                [*(field_value("contracts", c, key) for c in CONTRACT_COLUMNS), row_id],
            )


@dataclass
class Attacker:
    """An employee's own session (direct login), inside a transaction rolled back at the
    end of the attempt. `visible` and `hidden` are crm.customers ids."""

    key: str
    org: AttackOrg
    conn: psycopg.Connection

    @property
    def visible(self) -> set[int]:
        return {self.org.id(k) for k in VISIBLE[self.key]}

    @property
    def target(self) -> int:
        return self.org.id(TARGET)

    @property
    def me(self) -> int:
        return self.org.emp(self.key)

    @property
    def hidden(self) -> set[int]:
        """The fixture's customers the attacker must not see."""
        every = {i for (table, _), i in self.org.org.loaded.ids.items() if table == "customers"}
        return every - self.visible

    def leaked(self, customer_ids: Iterable[Any]) -> set[str]:
        """Keys of the hidden customers among `customer_ids` (rows the attempt made
        itself are not hidden)."""
        return self.org.customer_keys(set(customer_ids) & self.hidden)

    def reads(self, customer: str) -> frozenset[str]:
        """Field groups of customer `customer` (a key) the attacker may read."""
        return READS[self.key].get(customer, frozenset())

    def writes(self, customer: str) -> frozenset[str]:
        return WRITES[self.key].get(customer, frozenset())

    def field_values(self, *, hidden: bool) -> set[str]:
        """Every value the fixture stored in a field the attacker may not read
        (hidden=True), or may read. Finding a hidden one in any output is a leak."""
        found: set[str] = set()
        for table, key in self.org.org.loaded.ids:
            if table == "customers":
                for group, columns in CUSTOMER_GROUPS.items():
                    if (group not in self.reads(key)) == hidden:
                        found |= {field_value(table, c, key) for c in columns}
            elif table == "contracts" and (key not in CONTRACT_READS[self.key]) == hidden:
                found |= {field_value(table, c, key) for c in CONTRACT_COLUMNS}
        return found

    def leaked_values(self, told: str) -> set[str]:
        """The hidden field values in `told` (what a statement taught the attacker)."""
        return {v for v in self.field_values(hidden=True) if v in told}


@contextmanager
def attacker_session(org: AttackOrg, key: str) -> Iterator[Attacker]:
    with (
        org.db.connect_as(org.role(key), autocommit=False) as conn,
        conn.transaction(force_rollback=True),
    ):
        yield Attacker(key, org, conn)


# Probes ---------------------------------------------------------------------------


def rows(conn: psycopg.Connection, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    """What a statement returns; nothing when it is refused for lack of a privilege or
    by a policy (in a savepoint, so the attempt goes on)."""
    try:
        with conn.transaction():
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []
    except errors.InsufficientPrivilege:
        return []


def column(conn: psycopg.Connection, query: Any, params: Any = None) -> list[Any]:
    """The first column of what a statement returns (see rows)."""
    return [r[0] for r in rows(conn, query, params)]


def touched(conn: psycopg.Connection, query: Any, params: Any = None) -> int:
    """Rows a write changed; 0 when it is refused (in a savepoint)."""
    try:
        with conn.transaction():
            return conn.execute(query, params).rowcount
    except errors.InsufficientPrivilege:
        return 0


def outcome(conn: psycopg.Connection, query: Any, params: Any = None) -> str:
    """What an employee learns from a statement: its rows' count or its error, with
    ids and numbers blanked (two probes compare equal when they teach the same)."""
    try:
        with conn.transaction():
            cur = conn.execute(query, params)
            result = f"{len(cur.fetchall())} rows" if cur.description else f"{cur.rowcount}"
    except psycopg.Error as exc:
        result = f"{exc.sqlstate}: {exc.diag.message_primary} {exc.diag.message_detail or ''}"
    return re.sub(r"\d+", "N", result)


def refused(conn: psycopg.Connection, query: Any, params: Any = None) -> bool:
    """Whether a statement fails for lack of a privilege (in a savepoint)."""
    try:
        with conn.transaction():
            conn.execute(query, params)
    except errors.InsufficientPrivilege:
        return True
    return False


def warnings_of(conn: psycopg.Connection) -> list[str]:
    """Collects the notices and warnings the server sends on `conn` from now on."""
    seen: list[str] = []
    conn.add_notice_handler(lambda diag: seen.append(diag.message_primary or ""))
    return seen
