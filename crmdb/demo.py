"""A realistic demo company to explore crmdb with: `crmdb demo`.

Công ty TNHH Sao Việt, a Vietnamese SME selling CRM, call-center and marketing
services: a head office, branches in Hà Nội and TP. Hồ Chí Minh with marketing, sales,
customer care and call-center teams, 32 employees who can log in, and a few thousand
customers with contracts, activities and shares. One employee is on leave and a
colleague covers her customer through a share that expires.

Loading is idempotent (the company's org unit marks a loaded demo) and happens in one
transaction. The data is fixed (one random seed); times are relative to now, so open
tasks are always due around today.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from crmdb import seed as bulk
from crmdb.db import as_role, server_error
from crmdb.queries import query
from crmdb.seed import AFTER_SALES, LEAD, NORTH, SOUTH, Owner, Population, Progress, Rand

SQL_FILE = "demo.sql"
COMPANY = "saoviet"
COMPANY_NAME = "Công ty TNHH Sao Việt"
EMAIL_DOMAIN = "saoviet.vn"
RANDOM_SEED = 2025
CUSTOMERS = 3000
DEFAULT_PASSWORD = "demo"

# (code suffix, name, kind, parent suffix); "" is the company itself
UNITS = (
    ("", COMPANY_NAME, "company", None),
    ("hn", "Chi nhánh Hà Nội", "branch", ""),
    ("hn.marketing", "Phòng Marketing", "department", "hn"),
    ("hn.sales1", "Nhóm Kinh doanh 1", "team", "hn"),
    ("hn.sales2", "Nhóm Kinh doanh 2", "team", "hn"),
    ("hn.cskh", "Phòng Chăm sóc khách hàng", "department", "hn"),
    ("hn.callcenter", "Tổng đài (Call Center)", "team", "hn"),
    ("hcm", "Chi nhánh TP. Hồ Chí Minh", "branch", ""),
    ("hcm.sales1", "Nhóm Kinh doanh 1", "team", "hcm"),
    ("hcm.sales2", "Nhóm Kinh doanh 2", "team", "hcm"),
    ("hcm.cskh", "Nhóm Chăm sóc khách hàng", "team", "hcm"),
)

# (key, full name, title, unit suffix, manager key, kind); managers come before their staff.
# The role is <prefix><key>, the email <given>.<family>@saoviet.vn.
STAFF = (
    ("bao_tran", "Trần Quốc Bảo", "Tổng giám đốc", "", None, "ceo"),
    ("khoa_do", "Đỗ Minh Khoa", "Quản trị hệ thống CRM", "", "bao_tran", "it"),
    ("ha_nguyen", "Nguyễn Thu Hà", "Giám đốc chi nhánh Hà Nội", "hn", "bao_tran", "director"),
    (
        "mai_pham",
        "Phạm Thị Mai",
        "Trưởng phòng Marketing",
        "hn.marketing",
        "ha_nguyen",
        "marketing",
    ),
    ("nam_le", "Lê Hoàng Nam", "Chuyên viên Marketing", "hn.marketing", "mai_pham", "marketing"),
    ("anh_vu", "Vũ Thị Ngọc Ánh", "Chuyên viên nội dung", "hn.marketing", "mai_pham", "marketing"),
    (
        "dung_hoang",
        "Hoàng Văn Dũng",
        "Trưởng nhóm Kinh doanh 1",
        "hn.sales1",
        "ha_nguyen",
        "sales_lead",
    ),
    ("lan_nguyen", "Nguyễn Thị Lan", "Nhân viên kinh doanh", "hn.sales1", "dung_hoang", "sales"),
    ("anh_bui", "Bùi Đức Anh", "Nhân viên kinh doanh", "hn.sales1", "dung_hoang", "sales"),
    (
        "nhung_dang",
        "Đặng Thị Hồng Nhung",
        "Nhân viên kinh doanh",
        "hn.sales1",
        "dung_hoang",
        "sales",
    ),
    ("tuan_phan", "Phan Minh Tuấn", "Nhân viên kinh doanh", "hn.sales1", "dung_hoang", "sales"),
    (
        "tung_ly",
        "Lý Thanh Tùng",
        "Trưởng nhóm Kinh doanh 2",
        "hn.sales2",
        "ha_nguyen",
        "sales_lead",
    ),
    ("trang_ngo", "Ngô Thị Thu Trang", "Nhân viên kinh doanh", "hn.sales2", "tung_ly", "sales"),
    ("huy_dinh", "Đinh Quang Huy", "Nhân viên kinh doanh", "hn.sales2", "tung_ly", "sales"),
    ("long_trinh", "Trịnh Văn Long", "Nhân viên kinh doanh", "hn.sales2", "tung_ly", "sales"),
    (
        "hanh_duong",
        "Dương Thị Hạnh",
        "Trưởng phòng Chăm sóc khách hàng",
        "hn.cskh",
        "ha_nguyen",
        "care",
    ),
    ("ngan_luu", "Lưu Bảo Ngân", "Nhân viên chăm sóc khách hàng", "hn.cskh", "hanh_duong", "care"),
    ("yen_ta", "Tạ Thị Yến", "Nhân viên chăm sóc khách hàng", "hn.cskh", "hanh_duong", "care"),
    ("son_ho", "Hồ Văn Sơn", "Trưởng nhóm Tổng đài", "hn.callcenter", "ha_nguyen", "call"),
    ("phuong_mai", "Mai Thị Phương", "Điện thoại viên", "hn.callcenter", "son_ho", "call"),
    ("hieu_cao", "Cao Minh Hiếu", "Điện thoại viên", "hn.callcenter", "son_ho", "call"),
    (
        "phong_vo",
        "Võ Thanh Phong",
        "Giám đốc chi nhánh TP. Hồ Chí Minh",
        "hcm",
        "bao_tran",
        "director",
    ),
    (
        "quan_huynh",
        "Huỳnh Ngọc Quân",
        "Trưởng nhóm Kinh doanh 1",
        "hcm.sales1",
        "phong_vo",
        "sales_lead",
    ),
    (
        "chi_truong",
        "Trương Thị Kim Chi",
        "Nhân viên kinh doanh",
        "hcm.sales1",
        "quan_huynh",
        "sales",
    ),
    ("huy_lam", "Lâm Gia Huy", "Nhân viên kinh doanh", "hcm.sales1", "quan_huynh", "sales"),
    (
        "viet_nguyen",
        "Nguyễn Hoàng Việt",
        "Nhân viên kinh doanh",
        "hcm.sales1",
        "quan_huynh",
        "sales",
    ),
    (
        "thang_pham",
        "Phạm Minh Thắng",
        "Trưởng nhóm Kinh doanh 2",
        "hcm.sales2",
        "phong_vo",
        "sales_lead",
    ),
    ("van_le", "Lê Thị Bích Vân", "Nhân viên kinh doanh", "hcm.sales2", "thang_pham", "sales"),
    ("cuong_tran", "Trần Đức Cường", "Nhân viên kinh doanh", "hcm.sales2", "thang_pham", "sales"),
    ("linh_doan", "Đoàn Thị Linh", "Nhân viên kinh doanh", "hcm.sales2", "thang_pham", "sales"),
    (
        "linh_chau",
        "Châu Mỹ Linh",
        "Trưởng nhóm Chăm sóc khách hàng",
        "hcm.cskh",
        "phong_vo",
        "care",
    ),
    ("yen_to", "Tô Hải Yến", "Nhân viên chăm sóc khách hàng", "hcm.cskh", "linh_chau", "care"),
)
ON_LEAVE = "trang_ngo"
COVER = "huy_dinh"  # covers ON_LEAVE's customer through an expiring share
SAMPLE_REP, SAMPLE_MANAGER, SAMPLE_MARKETING = "lan_nguyen", "dung_hoang", "nam_le"

# (code suffix, name, solutions)
PROJECTS = (
    ("crm", "CRM Sao Việt", ("marketing", "sales", "management")),
    ("events", "Hội thảo khách hàng", ("marketing", "sales")),
)
# kind -> (project, solution, template) memberships
MEMBERSHIPS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "ceo": tuple((p, s, "super_admin") for p, _, solutions in PROJECTS for s in solutions),
    "it": (("crm", "management", "admin"),),
    "director": (("crm", "sales", "sales_manager"), ("crm", "management", "admin")),
    "sales_lead": (("crm", "sales", "sales_manager"),),
    "sales": (("crm", "sales", "sales_rep"),),
    "marketing": (("crm", "marketing", "marketing"), ("events", "marketing", "marketing")),
    "care": (("crm", "sales", "customer_care"),),
    "call": (("crm", "sales", "call_center"), ("events", "sales", "call_center")),
}
EVENTS_SALES_UNIT = "hn.sales1"  # this team also sells the customer events


def unit_code(suffix: str) -> str:
    return f"{COMPANY}.{suffix}" if suffix else COMPANY


def project_code(suffix: str) -> str:
    return f"{COMPANY}.{suffix}"


def staff_email(key: str) -> str:
    return f"{key.replace('_', '.')}@{EMAIL_DOMAIN}"


@dataclass(frozen=True)
class DemoEmployee:
    role: str
    full_name: str
    title: str
    org_unit: str  # code


@dataclass(frozen=True)
class OrgUnitLine:
    """One unit of the org tree, with the people heading it."""

    depth: int
    code: str
    name: str
    heads: tuple[tuple[str, str], ...]  # (full name, role)
    staff: int


@dataclass(frozen=True)
class DemoReport:
    company: str
    reused: bool  # the demo was already there: nothing was loaded
    password: str  # what the demo employees log in with, if loaded with this call's default
    org_units: int
    employees: int
    customers: int
    contracts: int
    activities: int
    shares: int
    sales_rep: DemoEmployee
    manager: DemoEmployee
    marketing: DemoEmployee
    org_tree: tuple[OrgUnitLine, ...]

    @property
    def sample_rep_role(self) -> str:
        return self.sales_rep.role


def _memberships(unit: str, kind: str) -> tuple[tuple[str, str, str], ...]:
    extra: tuple[tuple[str, str, str], ...] = ()
    if unit == EVENTS_SALES_UNIT:
        extra = (("events", "sales", "sales_manager" if kind == "sales_lead" else "sales_rep"),)
    return MEMBERSHIPS[kind] + extra


def _create_org(
    conn: psycopg.Connection, role_prefix: str, password: str, progress: Progress | None
) -> None:
    """Units, employees (LOGIN), projects and memberships through crm_admin."""
    with conn.cursor() as cur:
        cur.executemany(
            query("add_org_unit", bulk.SQL_FILE),
            [
                {
                    "code": unit_code(s),
                    "name": n,
                    "kind": k,
                    "parent": unit_code(p) if p is not None else None,
                }
                for s, n, k, p in UNITS
            ],
        )
        for done, (key, name, title, unit, manager, _) in enumerate(STAFF, start=1):
            cur.execute(
                query("add_employee", bulk.SQL_FILE),
                {
                    "role": role_prefix + key,
                    "full_name": name,
                    "email": staff_email(key),
                    "org_unit": unit_code(unit),
                    "title": title,
                    "manager": f"{role_prefix}{manager}" if manager is not None else None,
                    "login": True,
                    "password": password,
                },
            )
            if progress is not None:
                progress("employees", done, len(STAFF))
        for suffix, name, solutions in PROJECTS:
            cur.execute(
                query("add_project", bulk.SQL_FILE),
                {"code": project_code(suffix), "name": name, "solutions": list(solutions)},
            )
        cur.executemany(
            query("add_project_member", bulk.SQL_FILE),
            [
                {
                    "project": project_code(p),
                    "role": role_prefix + key,
                    "solution": s,
                    "template": t,
                }
                for key, _, _, unit, _, kind in STAFF
                for p, s, t in _memberships(unit, kind)
            ],
        )
        cur.execute(
            query("set_employee_status", bulk.SQL_FILE),
            {"role": role_prefix + ON_LEAVE, "status": "on_leave"},
        )


def _ids(conn: psycopg.Connection, name: str, **params: Any) -> dict[str, int]:
    rows = conn.execute(query(name, bulk.SQL_FILE), params).fetchall()
    return {str(k): int(v) for k, v in rows}


def _weighted(indices: Sequence[int], leads: Sequence[int]) -> tuple[int, ...]:
    """Staff get three customers for each one a team lead gets."""
    return tuple(i for i in indices for _ in range(1 if i in leads else 3))


class _Owners:
    """The demo's customer owners and who gets which customer."""

    def __init__(self, ids: dict[str, int], units: dict[str, int], role_prefix: str) -> None:
        owning = [s for s in STAFF if s[5] in ("sales_lead", "sales", "care", "call")]
        self.keys = [s[0] for s in owning]
        self.owners = [
            Owner(
                ids[role_prefix + key],
                units[unit_code(unit)],
                ids[f"{role_prefix}{manager}"] if manager is not None else None,
                SOUTH if unit.startswith("hcm") else NORTH,
            )
            for key, _, _, unit, manager, _ in owning
        ]
        heads = {s[4] for s in STAFF}
        leads = [i for i, s in enumerate(owning) if s[0] in heads]
        by_kind = {
            kind: [i for i, s in enumerate(owning) if s[5] in kinds]
            for kind, kinds in (
                ("sales", ("sales", "sales_lead")),
                ("care", ("care",)),
                ("call", ("call",)),
            )
        }
        events = [i for i, s in enumerate(owning) if s[3] == EVENTS_SALES_UNIT or s[5] == "call"]
        self.sales = _weighted(by_kind["sales"], leads)
        self.care = _weighted(by_kind["care"], leads)
        self.call = _weighted(by_kind["call"], leads)
        self.events = _weighted(events, leads)

    def index(self, key: str) -> int:
        return self.keys.index(key)

    def assign(self, r: Rand, i: int, stage: int) -> tuple[int, int]:
        """Leads partly wait in the call-center queue or sit with the call center;
        after-sales customers are with customer care; the rest are with sales."""
        project = 1 if r() < 0.12 else 0
        if stage == LEAD:
            x = r()
            if x < 0.04:
                return -1, project
            if x < 0.3:
                return bulk.pick(r, self.call), project
        if stage == AFTER_SALES and project == 0:
            return bulk.pick(r, self.care), project
        return bulk.pick(r, self.events if project else self.sales), project


def _customer_of(log: bulk.CustomerLog, owner: int, nth: int = 0) -> int:
    """The id of an owner's nth customer among those older than a month (older than
    the shares made on them)."""
    found = [i for i in range(len(log)) if log.owner[i] == owner and log.age[i] > 30 * bulk.DAY]
    return log.first_id + found[nth]


def _share_rows(
    log: bulk.CustomerLog,
    owners: _Owners,
    ids: dict[str, int],
    units: dict[str, int],
    role_prefix: str,
    first_id: int,
    now: datetime,
) -> list[bulk.Row]:
    """A handful of hand-made shares; the leave cover is the one that expires."""

    def emp(key: str) -> int:
        return ids[role_prefix + key]

    def customer(key: str, nth: int = 0) -> int:
        return _customer_of(log, owners.index(key), nth)

    day = timedelta(days=1)
    # (customer, grantee employee, grantee unit, access, reason, granted by, created, expires)
    shares: list[tuple[int, int | None, int | None, str, str, int, datetime, datetime | None]] = [
        (
            customer(ON_LEAVE),
            emp(COVER),
            None,
            "edit",
            "Nghỉ phép: anh Huy chăm sóc khách hàng thay chị Trang",
            emp("tung_ly"),
            now - 2 * day,
            now + 12 * day,
        ),
        (
            customer(SAMPLE_REP),
            emp("chi_truong"),
            None,
            "read",
            "Khách hàng mở văn phòng tại TP. Hồ Chí Minh",
            emp(SAMPLE_REP),
            now - 20 * day,
            None,
        ),
        (
            customer(SAMPLE_MANAGER),
            None,
            units[unit_code("hn.cskh")],
            "read",
            "Chuẩn bị bàn giao chăm sóc sau bán",
            emp(SAMPLE_MANAGER),
            now - 9 * day,
            None,
        ),
        (
            customer(SAMPLE_REP, 1),
            emp(SAMPLE_MARKETING),
            None,
            "read",
            "Phối hợp chiến dịch email tri ân khách hàng",
            emp(SAMPLE_REP),
            now - 5 * day,
            None,
        ),
        (
            customer("quan_huynh"),
            emp("tung_ly"),
            None,
            "edit",
            "Hỗ trợ đàm phán hợp đồng lớn",
            emp("quan_huynh"),
            now - 3 * day,
            None,
        ),
    ]
    return [(first_id + k, *share) for k, share in enumerate(shares)]


def _load_records(
    conn: psycopg.Connection, role_prefix: str, now: datetime, progress: Progress | None
) -> None:
    """Customers, contracts, activities and shares, generated from a fixed seed."""
    r = random.Random(RANDOM_SEED).random
    ids = _ids(conn, "employee_ids", prefix=role_prefix)
    units = _ids(conn, "org_unit_ids", codes=[unit_code(u[0]) for u in UNITS])
    projects = _ids(conn, "project_ids", codes=[project_code(p[0]) for p in PROJECTS])
    owners = _Owners(ids, units, role_prefix)
    pop = Population(
        owners=owners.owners,
        project_ids=[projects[project_code(p[0])] for p in PROJECTS],
        marketers=[ids[role_prefix + s[0]] for s in STAFF if s[5] == "marketing"],
        queue_unit_id=units[unit_code("hn.callcenter")],
        assign=owners.assign,
    )
    _, bypasses_rls = bulk.session_privileges(conn)
    conn.execute(query("lock_bulk_tables", bulk.SQL_FILE))
    log = bulk.CustomerLog(bulk.next_id(conn, "crm.customers"))
    bulk.copy_rows(
        conn,
        "copy_customers",
        "crm.customers",
        bulk.customer_rows(
            r,
            log,
            pop,
            CUSTOMERS,
            now,
            phone_offset=RANDOM_SEED,
            progress=progress,
        ),
        direct=bypasses_rls,
    )
    bulk.copy_rows(
        conn,
        "copy_contracts",
        "crm.contracts",
        bulk.contract_rows(
            r,
            log,
            pop,
            bulk.next_id(conn, "crm.contracts"),
            now,
            progress=progress,
        ),
        direct=bypasses_rls,
    )
    bulk.copy_rows(
        conn,
        "copy_activities",
        "crm.activities",
        bulk.activity_rows(
            r,
            log,
            pop,
            bulk.next_id(conn, "crm.activities"),
            now,
            progress=progress,
        ),
        direct=bypasses_rls,
    )
    shares = _share_rows(
        log, owners, ids, units, role_prefix, bulk.next_id(conn, "crm.shares"), now
    )
    bulk.copy_rows(conn, "copy_shares", "crm.shares", shares, direct=bypasses_rls)
    if progress is not None:
        progress("shares", len(shares), len(shares))
    for table in bulk.BULK_TABLES:
        bulk.sync_sequence(conn, table)


def _employee(conn: psycopg.Connection, key: str) -> DemoEmployee:
    row = conn.execute(query("demo_employee", SQL_FILE), {"email": staff_email(key)}).fetchone()
    assert row is not None, f"demo employee {key} is missing"
    return DemoEmployee(*row)


def _report(conn: psycopg.Connection, *, reused: bool, password: str) -> DemoReport:
    """What is in the database now, read back rather than remembered."""
    counts = conn.execute(
        query("demo_counts", SQL_FILE),
        {
            "company": COMPANY,
            "projects": [project_code(p[0]) for p in PROJECTS],
        },
    ).fetchone()
    assert counts is not None
    tree = tuple(
        OrgUnitLine(depth, code, name, tuple(zip(names, roles, strict=True)), staff)
        for depth, code, name, names, roles, staff in conn.execute(
            query("demo_org_tree", SQL_FILE), {"company": COMPANY}
        ).fetchall()
    )
    org_units, employees, customers, contracts, activities, shares = (int(c) for c in counts)
    return DemoReport(
        company=COMPANY_NAME,
        reused=reused,
        password=password,
        org_units=org_units,
        employees=employees,
        customers=customers,
        contracts=contracts,
        activities=activities,
        shares=shares,
        sales_rep=_employee(conn, SAMPLE_REP),
        manager=_employee(conn, SAMPLE_MANAGER),
        marketing=_employee(conn, SAMPLE_MARKETING),
        org_tree=tree,
    )


def load_demo(
    conn: psycopg.Connection,
    *,
    progress: Progress | None = None,
    role_prefix: str = "demo_",
    password: str = DEFAULT_PASSWORD,
    now: datetime | None = None,
) -> DemoReport:
    """Load the demo company unless it is there; either way report what is there.

    Everything is loaded in one transaction (a savepoint if the caller has one open),
    so a failure leaves nothing half-loaded.
    """
    moment = now if now is not None else datetime.now(UTC).replace(microsecond=0)
    try:
        with conn.transaction():
            row = conn.execute(
                query("demo_company_exists", SQL_FILE), {"company": COMPANY}
            ).fetchone()
            reused = bool(row and row[0])
            if not reused:
                _create_org(conn, role_prefix, password, progress)
                _load_records(conn, role_prefix, moment, progress)
            return _report(conn, reused=reused, password=password)
    except psycopg.Error as exc:
        raise server_error(exc) from exc


@dataclass(frozen=True)
class AccessLine:
    """What one sample employee sees, checked two independent ways."""

    employee: DemoEmployee
    visible: int  # customers SELECT returns as the employee: the policies decide
    by_rules: int  # customers explain_access finds a select path for
    paths: tuple[tuple[str, int], ...]  # (template / scope, customers)


def access_report(conn: psycopg.Connection, report: DemoReport) -> tuple[AccessLine, ...]:
    """For each sample employee, RLS's answer next to the rules' (explain_access)."""
    lines = []
    codes = [project_code(p[0]) for p in PROJECTS]
    projects = list(_ids(conn, "project_ids", codes=codes).values())
    for employee in (report.sales_rep, report.manager, report.marketing):
        params = {"role": employee.role, "projects": projects}
        with as_role(conn, employee.role):
            row = conn.execute(query("demo_visible_customers", SQL_FILE), params).fetchone()
        by_rules = conn.execute(query("demo_customers_by_rules", SQL_FILE), params).fetchone()
        paths = conn.execute(query("demo_access_paths", SQL_FILE), params).fetchall()
        assert row is not None and by_rules is not None
        by_path = tuple((p, int(n)) for p, n in paths)
        lines.append(AccessLine(employee, int(row[0]), int(by_rules[0]), by_path))
    return tuple(lines)


def render_access(lines: tuple[AccessLine, ...]) -> str:
    out = ["What each sample employee sees (customers):"]
    for line in lines:
        verdict = "as the rules say" if line.visible == line.by_rules else "MISMATCH"
        out.append(
            f"  {line.employee.full_name} ({line.employee.role}): {line.visible} visible "
            f"through RLS, {line.by_rules} by the rules: {verdict}"
        )
        out += [f"      {n:>5}  {path}" for path, n in line.paths]
    return "\n".join(out)


def render_report(report: DemoReport, psql_command: str) -> str:
    """A short text report: counts, the org tree with its heads, roles to try, psql."""
    state = "already there, nothing loaded" if report.reused else "loaded"
    lines = [
        f"Demo company: {report.company} ({state})",
        f"  {report.org_units} org units, {report.employees} employees, "
        f"{report.customers} customers, {report.contracts} contracts, "
        f"{report.activities} activities, {report.shares} shares",
        "",
        "Org tree (unit [code], staff: head):",
    ]
    for unit in report.org_tree:
        heads = ", ".join(f"{name} ({role})" for name, role in unit.heads) or "-"
        lines.append(f"  {'  ' * unit.depth}{unit.name} [{unit.code}], {unit.staff}: {heads}")
    lines += ["", f"Try these employees (password '{report.password}'):"]
    for label, e in (
        ("sales rep", report.sales_rep),
        ("manager", report.manager),
        ("marketing", report.marketing),
    ):
        lines.append(f"  {label:<10} {e.role:<24} {e.full_name}, {e.title} [{e.org_unit}]")
    lines += ["", f"Connect as {report.sales_rep.full_name}:", f"  {psql_command}"]
    return "\n".join(lines)
