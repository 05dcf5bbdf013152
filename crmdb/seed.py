"""Large synthetic data for benchmarks: `crmdb seed`.

The org (units, employees, projects, memberships) is built through the crm_admin API,
so roles are made exactly as the CLI makes them. Customers, contracts, activities and
shares are generated row by row and streamed into COPY: no row lists are built (a
million customers keep ~20 MB of packed arrays), and PostgreSQL parses rows while
Python makes the next ones.

Every value comes from one random.Random(seed), consumed in a fixed order, and every
time is an offset from one anchor (`now`, by default today 00:00 UTC): the same seed
and anchor give the same rows, id for id, in a fresh database.

The Vietnamese name, place and product pools here are shared with crmdb.demo.
"""

import random
import re
import unicodedata
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from crmdb.db import server_error
from crmdb.errors import CrmdbError
from crmdb.queries import query

SQL_FILE = "seed.sql"
Progress = Callable[[str, int, int], None]
Row = tuple[Any, ...]
Rand = Callable[[], float]  # random.Random.random of the one generator

PROGRESS_EVERY = 10_000
HOUR = 3600
DAY = 24 * HOUR
HISTORY = 730 * DAY  # customers were created over the past two years
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")


def expand(weighted: Sequence[tuple[str, int]]) -> tuple[str, ...]:
    """Repeat each item by its weight, so one r() picks with the right odds."""
    return tuple(item for item, weight in weighted for _ in range(weight))


def pick(r: Rand, items: Sequence[Any]) -> Any:
    return items[int(r() * len(items))]


def ascii_name(text: str) -> str:
    """'Nguyễn Thị Lan' -> 'nguyen thi lan', for emails and role names."""
    text = text.replace("Đ", "D").replace("đ", "d")
    plain = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return plain.lower()


# Vietnamese pools -----------------------------------------------------------------

FAMILY_NAMES = expand(
    [
        ("Nguyễn", 31),
        ("Trần", 11),
        ("Lê", 10),
        ("Phạm", 7),
        ("Hoàng", 4),
        ("Huỳnh", 3),
        ("Phan", 4),
        ("Vũ", 3),
        ("Võ", 3),
        ("Đặng", 2),
        ("Bùi", 2),
        ("Đỗ", 2),
        ("Hồ", 1),
        ("Ngô", 1),
        ("Dương", 1),
        ("Lý", 1),
        ("Đinh", 1),
        ("Trương", 1),
        ("Mai", 1),
        ("Cao", 1),
    ]
)
MALE_MIDDLE = ("Văn", "Hữu", "Minh", "Đức", "Quang", "Thanh", "Hoàng", "Gia", "Tuấn", "Công")
FEMALE_MIDDLE = ("Thị", "Ngọc", "Thu", "Thanh", "Minh", "Kim", "Bảo", "Mỹ", "Phương", "Hồng")
MALE_GIVEN = (
    "An",
    "Bảo",
    "Bình",
    "Cường",
    "Dũng",
    "Duy",
    "Hải",
    "Hiếu",
    "Hoàng",
    "Hùng",
    "Huy",
    "Khánh",
    "Khoa",
    "Long",
    "Minh",
    "Nam",
    "Phong",
    "Phúc",
    "Quân",
    "Quang",
    "Sơn",
    "Tài",
    "Thắng",
    "Thành",
    "Trung",
    "Tuấn",
    "Tùng",
    "Việt",
    "Vinh",
    "Đạt",
)
FEMALE_GIVEN = (
    "Anh",
    "Chi",
    "Dung",
    "Giang",
    "Hà",
    "Hạnh",
    "Hằng",
    "Hoa",
    "Hương",
    "Lan",
    "Linh",
    "Loan",
    "Mai",
    "My",
    "Ngân",
    "Ngọc",
    "Nhung",
    "Oanh",
    "Phương",
    "Quyên",
    "Tâm",
    "Thảo",
    "Thu",
    "Trang",
    "Uyên",
    "Vân",
    "Vy",
    "Yến",
    "Hiền",
    "Huyền",
)
_ASCII = {n: ascii_name(n).replace(" ", "") for n in (*FAMILY_NAMES, *MALE_GIVEN, *FEMALE_GIVEN)}

# Customers near a branch are mostly from its region: north, south, central.
REGIONS = (
    expand(
        [
            ("Hà Nội", 40),
            ("Hải Phòng", 8),
            ("Quảng Ninh", 5),
            ("Bắc Ninh", 5),
            ("Hải Dương", 4),
            ("Hưng Yên", 3),
            ("Nam Định", 3),
            ("Thái Bình", 3),
            ("Thái Nguyên", 3),
            ("Vĩnh Phúc", 3),
            ("Bắc Giang", 3),
            ("Ninh Bình", 2),
            ("Phú Thọ", 2),
            ("Hà Nam", 2),
            ("Lào Cai", 1),
            ("Lạng Sơn", 1),
            ("Thanh Hóa", 4),
            ("Nghệ An", 4),
        ]
    ),
    expand(
        [
            ("TP. Hồ Chí Minh", 45),
            ("Bình Dương", 8),
            ("Đồng Nai", 7),
            ("Bà Rịa - Vũng Tàu", 4),
            ("Long An", 3),
            ("Cần Thơ", 4),
            ("Tiền Giang", 2),
            ("An Giang", 2),
            ("Kiên Giang", 2),
            ("Tây Ninh", 2),
            ("Đồng Tháp", 1),
            ("Vĩnh Long", 1),
            ("Bến Tre", 1),
            ("Cà Mau", 1),
            ("Sóc Trăng", 1),
            ("Bình Phước", 1),
            ("Lâm Đồng", 2),
        ]
    ),
    expand(
        [
            ("Đà Nẵng", 30),
            ("Thừa Thiên Huế", 8),
            ("Quảng Nam", 8),
            ("Quảng Ngãi", 5),
            ("Bình Định", 5),
            ("Khánh Hòa", 6),
            ("Phú Yên", 2),
            ("Quảng Bình", 3),
            ("Quảng Trị", 2),
            ("Hà Tĩnh", 3),
            ("Gia Lai", 2),
            ("Đắk Lắk", 3),
            ("Kon Tum", 1),
            ("Ninh Thuận", 1),
            ("Bình Thuận", 2),
        ]
    ),
)
NORTH, SOUTH, CENTRAL = 0, 1, 2
ALL_PROVINCES = tuple(p for region in REGIONS for p in region)

STREETS = (
    "Lê Lợi",
    "Trần Hưng Đạo",
    "Nguyễn Trãi",
    "Hai Bà Trưng",
    "Lý Thường Kiệt",
    "Điện Biên Phủ",
    "Cách Mạng Tháng Tám",
    "Nguyễn Huệ",
    "Lê Duẩn",
    "Hoàng Diệu",
    "Phan Chu Trinh",
    "Quang Trung",
    "Trường Chinh",
    "Láng Hạ",
    "Nguyễn Văn Linh",
    "Võ Văn Kiệt",
    "Bạch Đằng",
    "Hùng Vương",
)
COMPANY_KINDS = expand([("Công ty TNHH", 6), ("Công ty Cổ phần", 3), ("Hộ kinh doanh", 1)])
SECTORS = (
    "Thương mại",
    "Xây dựng",
    "Công nghệ",
    "Dịch vụ",
    "Sản xuất",
    "Vận tải",
    "Giáo dục",
    "Thực phẩm",
    "Du lịch",
    "Bất động sản",
    "Nội thất",
    "Dược phẩm",
)
BRANDS = (
    "Minh Phát",
    "Hưng Thịnh",
    "Thành Công",
    "Phú Gia",
    "An Khang",
    "Đại Việt",
    "Hoàng Long",
    "Tân Tiến",
    "Vạn Phúc",
    "Sao Mai",
    "Bình Minh",
    "Trường Sơn",
    "Hồng Hà",
    "Kim Cương",
    "Phương Nam",
    "Á Châu",
    "Thiên Ân",
    "Nam Việt",
    "Hòa Bình",
    "Đông Á",
)
_BRAND_ASCII = {b: ascii_name(b).replace(" ", "") for b in BRANDS}
EMAIL_DOMAINS = expand([("gmail.com", 12), ("yahoo.com", 2), ("outlook.com", 1), ("icloud.com", 1)])
BANKS = (
    "Vietcombank",
    "Techcombank",
    "BIDV",
    "VietinBank",
    "MB Bank",
    "ACB",
    "VPBank",
    "TPBank",
    "Sacombank",
    "Agribank",
)
# (name, lowest price, highest price) in VND
PRODUCTS = (
    ("Phần mềm CRM - gói cơ bản", 6_000_000, 24_000_000),
    ("Phần mềm CRM - gói doanh nghiệp", 30_000_000, 180_000_000),
    ("Tổng đài IP (Call Center)", 10_000_000, 60_000_000),
    ("Email Marketing", 3_000_000, 30_000_000),
    ("SMS Brandname", 5_000_000, 50_000_000),
    ("Chatbot đa kênh", 8_000_000, 40_000_000),
    ("Thiết kế website", 15_000_000, 120_000_000),
    ("Máy chủ và lưu trữ đám mây", 20_000_000, 500_000_000),
)
PAYMENT_METHODS = ("Chuyển khoản", "Chuyển khoản 2 đợt", "Tiền mặt", "Trả góp 6 tháng")
CUSTOMER_NOTES = (
    "Khách hàng tiềm năng từ hội thảo",
    "Ưu tiên liên hệ buổi sáng",
    "Đang dùng sản phẩm đối thủ",
    "Cần xuất hóa đơn VAT",
    "Quan tâm chương trình khuyến mãi",
    "Người quyết định là giám đốc",
)
FINANCIAL_NOTES = ("Công nợ 30 ngày", "Thanh toán qua chuyển khoản", "Yêu cầu hóa đơn VAT đầy đủ")
SHARE_REASONS = (
    "Nghỉ phép",
    "Phối hợp chăm sóc khách hàng",
    "Hỗ trợ đàm phán hợp đồng",
    "Bàn giao tạm thời",
    "Khách hàng mở chi nhánh mới",
)

# The pipeline, in order; the index is what CustomerLog stores.
STAGES = ("lead", "qualified", "opportunity", "customer", "after_sales", "lost")
LEAD, QUALIFIED, OPPORTUNITY, CUSTOMER, AFTER_SALES, LOST = range(6)
STAGE_PICKS = tuple(
    STAGES.index(s)
    for s in expand(
        [
            ("lead", 40),
            ("qualified", 20),
            ("opportunity", 10),
            ("customer", 13),
            ("after_sales", 7),
            ("lost", 10),
        ]
    )
)
SCORE_RANGES = ((0, 40), (30, 70), (50, 85), (60, 100), (60, 100), (0, 30))
SOURCES = expand(
    [
        ("chat", 18),
        ("call_center", 16),
        ("web_form", 20),
        ("email", 8),
        ("referral", 10),
        ("event", 6),
        ("import", 12),
        ("manual", 10),
    ]
)
CAMPAIGN_SOURCES = frozenset({"web_form", "event", "email", "chat"})  # marketing made the record

ACTIVITY_COUNTS = (0, 1, 1, 2, 2, 2, 2, 3, 3, 4)  # two a customer on average
ACTIVITY_KINDS = expand(
    [
        ("call", 35),
        ("email", 20),
        ("meeting", 10),
        ("note", 15),
        ("task", 12),
        ("appointment", 8),
    ]
)
SUBJECTS = {
    "call": (
        "Gọi điện tư vấn sản phẩm",
        "Gọi lại theo yêu cầu",
        "Gọi xác nhận nhu cầu",
        "Gọi chăm sóc sau bán",
    ),
    "email": ("Gửi báo giá", "Gửi tài liệu giới thiệu", "Gửi hợp đồng nháp", "Email cảm ơn"),
    "meeting": ("Gặp khách tại văn phòng", "Demo sản phẩm", "Họp chốt hợp đồng"),
    "note": (
        "Khách quan tâm gói doanh nghiệp",
        "Khách hẹn liên hệ lại sau Tết",
        "Đã xác minh thông tin công ty",
    ),
    "task": (
        "Gửi báo giá cập nhật",
        "Nhắc khách thanh toán đợt 2",
        "Chuẩn bị hồ sơ thầu",
        "Gọi lại khách hàng",
    ),
    "appointment": ("Hẹn demo sản phẩm", "Hẹn gặp ký hợp đồng", "Hẹn khảo sát tại văn phòng khách"),
}


def person_name(r: Rand) -> tuple[str, str]:
    """A Vietnamese full name (family, middle, given) and an ascii email local part."""
    family = pick(r, FAMILY_NAMES)
    if r() < 0.5:
        middle, given = pick(r, MALE_MIDDLE), pick(r, MALE_GIVEN)
    else:
        middle, given = pick(r, FEMALE_MIDDLE), pick(r, FEMALE_GIVEN)
    return f"{family} {middle} {given}", f"{_ASCII[given]}.{_ASCII[family]}"


def company_name(r: Rand) -> tuple[str, str]:
    """A company name and an ascii domain stem."""
    brand = pick(r, BRANDS)
    return f"{pick(r, COMPANY_KINDS)} {pick(r, SECTORS)} {brand}", _BRAND_ASCII[brand]


def phone_number(n: int, offset: int) -> str:
    """09xxxxxxxx, distinct for distinct n below 10**8 (7_919_001 is prime to 10**8)."""
    return f"09{(n * 7_919_001 + offset) % 100_000_000:08d}"


# Bulk rows shared with crmdb.demo ------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """An employee who can own customers."""

    id: int
    org_unit_id: int
    manager_id: int | None
    region: int  # index into REGIONS


# (rng, customer index, stage) -> (owner index or -1 for the routing queue, project index)
Assign = Callable[[Rand, int, int], tuple[int, int]]


@dataclass(frozen=True)
class Population:
    """Who generated customers can belong to, and how they are handed out."""

    owners: Sequence[Owner]
    project_ids: Sequence[int]
    marketers: Sequence[int]  # employee ids that create leads from campaigns
    queue_unit_id: int | None  # where unassigned customers wait
    assign: Assign


class CustomerLog:
    """What the later passes need about each customer, a few bytes each in arrays:
    a million row objects would take hundreds of megabytes."""

    def __init__(self, first_id: int) -> None:
        self.first_id = first_id
        self.owner = array("i")  # index into Population.owners, -1 if unassigned
        self.project = array("b")
        self.stage = array("b")
        self.product = array("b")
        self.age = array("q")  # seconds between created_at and the anchor

    def __len__(self) -> int:
        return len(self.owner)


def _report(progress: Progress | None, step: str, done: int, total: int) -> None:
    if progress is not None and (done % PROGRESS_EVERY == 0 or done == total):
        progress(step, done, total)


def customer_rows(
    r: Rand,
    log: CustomerLog,
    pop: Population,
    count: int,
    anchor: datetime,
    *,
    phone_offset: int,
    progress: Progress | None = None,
) -> Iterator[Row]:
    """`count` customers with ids from log.first_id, recorded in `log` as they go."""
    owners, marketers = pop.owners, pop.marketers
    for i in range(count):
        stage = STAGE_PICKS[int(r() * len(STAGE_PICKS))]
        owner_index, project_index = pop.assign(r, i, stage)
        owner = owners[owner_index] if owner_index >= 0 else None
        source = SOURCES[int(r() * len(SOURCES))]
        product = int(r() * len(PRODUCTS))
        age = int(HISTORY * r() ** 1.4) + 60  # more recent customers than old ones
        assigned_age = age - int(r() * min(age, 4 * HOUR))
        created_at = anchor - timedelta(seconds=age)
        assigned_at = anchor - timedelta(seconds=assigned_age)
        log.owner.append(owner_index)
        log.project.append(project_index)
        log.stage.append(stage)
        log.product.append(product)
        log.age.append(age)

        email: str | None
        tax_code: str | None
        if r() < 0.18:
            full_name, stem = company_name(r)
            email = f"lienhe@{stem}{i % 997}.vn"
            tax_code = f"0{int(r() * 900_000_000) + 100_000_000}"
        else:
            full_name, local = person_name(r)
            email = f"{local}{i % 97}@{pick(r, EMAIL_DOMAINS)}" if r() < 0.7 else None
            tax_code = None
        # A few duplicates on purpose: the same person entered twice.
        phone = phone_number(int(r() * i) if i and r() < 0.005 else i, phone_offset)
        region = owner.region if owner is not None else NORTH
        province = pick(r, REGIONS[region] if r() < 0.8 else ALL_PROVINCES)
        address = f"Số {int(r() * 300) + 1} {pick(r, STREETS)}" if r() < 0.8 else None
        bank_account: str | None = None
        bank_name: str | None = None
        financial_notes: str | None = None
        if stage in (CUSTOMER, AFTER_SALES) and r() < 0.6:
            bank_account = str(int(r() * 9 * 10**12) + 10**12)
            bank_name = pick(r, BANKS)
            financial_notes = pick(r, FINANCIAL_NOTES) if r() < 0.3 else None
        low, high = SCORE_RANGES[stage]
        created_by = owner.id if owner is not None else None
        if marketers and source in CAMPAIGN_SOURCES and r() < 0.5:
            created_by = pick(r, marketers)
        yield (
            log.first_id + i,
            pop.project_ids[project_index],
            owner.org_unit_id if owner is not None else pop.queue_unit_id,
            owner.id if owner is not None else None,
            full_name,
            phone,
            email,
            address,
            province,
            bank_account,
            bank_name,
            tax_code,
            financial_notes,
            pick(r, CUSTOMER_NOTES) if r() < 0.2 else None,
            STAGES[stage],
            source,
            low + int(r() * (high - low + 1)),
            PRODUCTS[product][0],
            created_by,
            assigned_at if owner is not None else None,
            created_at,
            assigned_at,
        )
        _report(progress, "customers", i + 1, count)


def _contract_plan(r: Rand, stage: int) -> tuple[str, ...]:
    """Statuses of a customer's contracts: about one contract for three customers."""
    if stage in (CUSTOMER, AFTER_SALES):
        return ("won", "won") if r() < 0.1 else ("won",)
    if stage == OPPORTUNITY:
        return ("negotiating",) if r() < 0.7 else ("draft",)
    if stage == LOST and r() < 0.3:
        return ("lost",) if r() < 0.8 else ("cancelled",)
    return ()


def contract_rows(
    r: Rand,
    log: CustomerLog,
    pop: Population,
    first_id: int,
    anchor: datetime,
    *,
    progress: Progress | None = None,
) -> Iterator[Row]:
    """Contracts of the logged customers, owned by the customer's owner, amounts in VND."""
    next_id = first_id
    total = len(log)
    for i in range(total):
        owner_index = log.owner[i]
        for status in _contract_plan(r, log.stage[i]) if owner_index >= 0 else ():
            name, low, high = PRODUCTS[log.product[i]]
            age = log.age[i] - int(r() * min(log.age[i], 30 * DAY))
            signed_age = age - int(r() * min(age, 20 * DAY))
            won = status == "won"
            banked = won and r() < 0.5
            yield (
                next_id,
                log.first_id + i,
                pop.project_ids[log.project[i]],
                pop.owners[owner_index].id,
                f"Hợp đồng {name} - KH{log.first_id + i}",
                (low + int(r() * (high - low))) // 100_000 * 100_000,
                "VND",
                status,
                pick(r, PAYMENT_METHODS) if won else None,
                str(int(r() * 9 * 10**12) + 10**12) if banked else None,
                pick(r, BANKS) if banked else None,
                anchor - timedelta(seconds=signed_age) if won else None,
                anchor - timedelta(seconds=age),
                anchor - timedelta(seconds=signed_age if won else age),
            )
            next_id += 1
        _report(progress, "contracts", i + 1, total)


def _activity_times(
    r: Rand, kind: str, age: int, is_open: bool, anchor: datetime
) -> tuple[datetime | None, datetime | None, datetime | None, datetime]:
    """(occurred_at, due_at, done_at, created_at) of one activity of a customer `age` old."""
    if kind not in ("task", "appointment"):
        occurred = anchor - timedelta(seconds=int(r() * age))
        return occurred, None, None, occurred
    if is_open:  # due around today: some overdue, most in the coming days
        due = anchor + timedelta(seconds=int((r() * 13 - 3) * DAY))
        created = anchor - timedelta(seconds=int(r() * min(age, 5 * DAY)))
        return None, due, None, created
    due_age = int(r() * age)
    done_age = max(0, due_age - int(r() * DAY))
    created_age = min(age, due_age + int(r() * 7 * DAY))
    return (
        None,
        anchor - timedelta(seconds=due_age),
        anchor - timedelta(seconds=done_age),
        anchor - timedelta(seconds=created_age),
    )


def activity_rows(
    r: Rand,
    log: CustomerLog,
    pop: Population,
    first_id: int,
    anchor: datetime,
    *,
    progress: Progress | None = None,
) -> Iterator[Row]:
    """About two activities a customer; open tasks and appointments are due around now."""
    next_id = first_id
    total = len(log)
    for i in range(total):
        owner_index = log.owner[i]
        count = ACTIVITY_COUNTS[int(r() * len(ACTIVITY_COUNTS))] if owner_index >= 0 else 0
        for _ in range(count):
            owner = pop.owners[owner_index]
            kind = ACTIVITY_KINDS[int(r() * len(ACTIVITY_KINDS))]
            is_open = log.stage[i] != LOST and r() < 0.5
            occurred, due, done, created = _activity_times(r, kind, log.age[i], is_open, anchor)
            by_manager = owner.manager_id is not None and r() < 0.1
            if kind == "call":
                duration: int | None = 30 + int(r() * 1200)
            elif kind == "meeting":
                duration = 1800 + int(r() * 3600)
            else:
                duration = None
            yield (
                next_id,
                log.first_id + i,
                owner.manager_id if by_manager else owner.id,
                kind,
                pick(r, SUBJECTS[kind]),
                None,
                occurred,
                due,
                done,
                duration,
                created,
                done or created,
            )
            next_id += 1
        _report(progress, "activities", i + 1, total)


# Tables whose rows the generators produce wide (every field) but the database keeps
# split: core in the table, each field group in its side table (docs/field-security.md).
# Their rows go through a staging table and named queries that split them.
SPLIT = {
    "crm.customers": ("customers_from_stage", "customer_groups_from_stage"),
    "crm.contracts": ("contracts_from_stage", "contract_groups_from_stage"),
}


def copy_rows(
    conn: psycopg.Connection,
    name: str,
    table: str,
    rows: Iterable[Row],
    *,
    direct: bool,
    triggers_off: bool = False,
) -> int:
    """COPY rows into `table` ("crm.customers") with the named COPY query; returns the count.

    `direct` is false where RLS applies to the session (a non-superuser DBA): COPY FROM
    is refused on such tables, so rows go into a temporary staging table first. Tables
    with field groups are always staged, then split into the table and its groups; with
    `triggers_off` (session_replication_role = replica) the table's rows are written with
    the groups' read copies, which the side tables' triggers would otherwise write.
    """
    schema, relname = table.split(".")
    target = sql.Identifier(schema, relname)
    stage = sql.Identifier(f"crmdb_stage_{relname}")
    split = SPLIT.get(table)
    staged = split is not None or not direct
    if split:
        conn.execute(query(f"create_{relname}_stage", SQL_FILE).format(stage=stage))
    elif staged:
        conn.execute(query("create_stage", SQL_FILE).format(stage=stage, table=target))
    count = 0
    with (
        conn.cursor() as cur,
        cur.copy(query(name, SQL_FILE).format(table=stage if staged else target)) as copy,
    ):
        for row in rows:
            copy.write_row(row)
            count += 1
    if split:
        core, groups = split
        conn.execute(query(core, SQL_FILE).format(stage=stage), {"fill_copies": triggers_off})
        conn.execute(query(groups, SQL_FILE).format(stage=stage))
    elif staged:
        conn.execute(query("insert_from_stage", SQL_FILE).format(table=target, stage=stage))
    if staged:
        conn.execute(query("drop_stage", SQL_FILE).format(stage=stage))
    return count


def next_id(conn: psycopg.Connection, table: str) -> int:
    """The first free id of a table; the loader writes ids from there (tables locked)."""
    schema, relname = table.split(".")
    row = conn.execute(
        query("next_id", SQL_FILE).format(table=sql.Identifier(schema, relname)),
        {"table": table},
    ).fetchone()
    assert row is not None
    return int(row[0])


def sync_sequence(conn: psycopg.Connection, table: str) -> None:
    """Identity sequences do not see explicit ids: move them past what was written."""
    schema, relname = table.split(".")
    conn.execute(
        query("sync_sequence", SQL_FILE).format(table=sql.Identifier(schema, relname)),
        {"table": table},
    )


def session_privileges(conn: psycopg.Connection) -> tuple[bool, bool]:
    """(superuser, bypasses RLS) for the session's current role."""
    row = conn.execute(query("session_privileges", SQL_FILE)).fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1])


# The seed org -------------------------------------------------------------------

BRANCHES = (
    ("hn", "Chi nhánh Hà Nội", NORTH),
    ("hcm", "Chi nhánh TP. Hồ Chí Minh", SOUTH),
    ("dn", "Chi nhánh Đà Nẵng", CENTRAL),
)
# (code suffix, name, solutions, share of customers in percent)
SEED_PROJECTS = (
    ("retail", "Khách hàng bán lẻ", ("marketing", "sales", "management"), 60),
    ("enterprise", "Khách hàng doanh nghiệp", ("sales", "management"), 25),
    ("online", "Kênh online", ("marketing", "sales", "management"), 15),
)
# level -> (solution, template) of its memberships
MEMBERSHIPS = {
    "ceo": ("management", "admin"),
    "director": ("management", "director"),
    "manager": ("sales", "sales_manager"),
    "rep": ("sales", "sales_rep"),
    "marketing": ("marketing", "marketing"),
}
TITLES = {
    "ceo": "Tổng giám đốc",
    "director": "Giám đốc chi nhánh",
    "manager": "Trưởng nhóm kinh doanh",
    "rep": "Nhân viên kinh doanh",
    "marketing": "Chuyên viên marketing",
}


@dataclass(frozen=True)
class SeedEmployee:
    role: str
    level: str  # a key of MEMBERSHIPS
    full_name: str
    org_unit: str  # code
    manager: str | None  # role
    region: int


@dataclass(frozen=True)
class SeedOrg:
    """The planned org: units (code, name, kind, parent) and employees, managers first."""

    company: str
    units: tuple[tuple[str, str, str, str | None], ...]
    employees: tuple[SeedEmployee, ...]
    projects: tuple[str, ...]  # codes, in SEED_PROJECTS order


@dataclass(frozen=True)
class SeedReport:
    """What a seed made, and roles worth trying (SET ROLE) at each level."""

    role_prefix: str
    seed: int
    org_units: int
    employees: int
    directors: int
    managers: int
    reps: int
    marketing: int
    projects: int
    customers: int
    contracts: int
    activities: int
    shares: int
    rep_role: str
    manager_role: str
    director_role: str
    admin_role: str
    audited: bool  # the bulk rows went through the audit triggers (not a superuser)


def _code_stem(role_prefix: str) -> str:
    """Org unit and project codes are lowercase: 'Seed_' -> 'seed'."""
    stem = role_prefix.lower().strip("_")
    return stem if stem and stem[0].isalnum() else f"s{stem}"


def plan_org(r: Rand, employees: int, role_prefix: str) -> SeedOrg:
    """A company, 3 branches with teams (more when large) and a marketing department;
    CEO -> directors (~1/200) -> managers (~1/20) -> reps, about 2% of reps in marketing."""
    stem = _code_stem(role_prefix)
    n_directors = max(1, round(employees / 200))
    n_managers = max(1, round(employees / 20))
    n_staff = employees - 1 - n_directors - n_managers  # at least 1 from 4 employees up
    n_marketing = max(1, n_staff // 50) if n_staff >= 4 else 0
    teams_per_branch = max(2, employees // 1000)

    units: list[tuple[str, str, str, str | None]] = [
        (stem, "Công ty CP Bách Việt", "company", None)
    ]
    for code, name, _ in BRANCHES:
        units.append((f"{stem}.{code}", name, "branch", stem))
        units += [
            (f"{stem}.{code}.sales{t}", f"Nhóm kinh doanh {t}", "team", f"{stem}.{code}")
            for t in range(1, teams_per_branch + 1)
        ]
    marketing_unit = f"{stem}.hn.marketing"
    units.append((marketing_unit, "Phòng Marketing", "department", f"{stem}.hn"))

    ceo = SeedEmployee(f"{role_prefix}ceo", "ceo", person_name(r)[0], stem, None, NORTH)
    people = [ceo]
    directors = []
    for d in range(n_directors):
        code, _, region = BRANCHES[d % len(BRANCHES)]
        directors.append(
            SeedEmployee(
                f"{role_prefix}dir_{d + 1:03d}",
                "director",
                person_name(r)[0],
                f"{stem}.{code}",
                ceo.role,
                region,
            )
        )
    managers = []
    for m in range(n_managers):
        boss = directors[m % n_directors]
        team = (m // n_directors) % teams_per_branch + 1
        managers.append(
            SeedEmployee(
                f"{role_prefix}mgr_{m + 1:04d}",
                "manager",
                person_name(r)[0],
                f"{boss.org_unit}.sales{team}",
                boss.role,
                boss.region,
            )
        )
    people += directors + managers
    people += [
        SeedEmployee(
            f"{role_prefix}mkt_{k + 1:04d}",
            "marketing",
            person_name(r)[0],
            marketing_unit,
            directors[0].role,
            NORTH,
        )
        for k in range(n_marketing)
    ]
    for k in range(n_staff - n_marketing):
        boss = managers[k % n_managers]
        people.append(
            SeedEmployee(
                f"{role_prefix}rep_{k + 1:05d}",
                "rep",
                person_name(r)[0],
                boss.org_unit,
                boss.role,
                boss.region,
            )
        )
    projects = tuple(f"{stem}.{code}" for code, _, _, _ in SEED_PROJECTS)
    return SeedOrg(stem, tuple(units), tuple(people), projects)


def _check_arguments(customers: int, employees: int, role_prefix: str) -> None:
    if customers < 1:
        raise CrmdbError(f"seed needs at least 1 customer, got {customers}")
    if employees < 4:
        raise CrmdbError(
            "seed needs at least 4 employees (a CEO, a director, a manager, a rep), "
            f"got {employees}"
        )
    if not _PREFIX.match(role_prefix):
        raise CrmdbError(
            f"role prefix {role_prefix!r} must be letters, digits and _ (at most 40), "
            "not starting with a digit"
        )


def _refuse_existing(conn: psycopg.Connection, role_prefix: str, company: str) -> None:
    row = conn.execute(
        query("seed_exists", SQL_FILE), {"prefix": role_prefix, "company": company}
    ).fetchone()
    assert row is not None
    if row[0] or row[1]:
        raise CrmdbError(
            f"the database already holds seed data with role prefix {role_prefix!r} "
            f"({row[0]} employees, org unit {company!r}): seeding again would duplicate it; "
            "use another --role-prefix or a fresh database"
        )


def _batched(rows: Sequence[dict[str, Any]], size: int = 200) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _create_org(conn: psycopg.Connection, org: SeedOrg, progress: Progress | None) -> None:
    """Units, employees, projects and memberships through crm_admin, pipelined."""
    with conn.cursor() as cur:
        cur.executemany(
            query("add_org_unit", SQL_FILE),
            [{"code": c, "name": n, "kind": k, "parent": p} for c, n, k, p in org.units],
        )
        done = 0
        rows = [
            {
                "role": e.role,
                "full_name": e.full_name,
                "email": f"{e.role}@seed.example.vn",
                "org_unit": e.org_unit,
                "manager": e.manager,
                "title": TITLES[e.level],
                "login": False,
                "password": None,
            }
            for e in org.employees
        ]
        for batch in _batched(rows):
            cur.executemany(query("add_employee", SQL_FILE), batch)
            done += len(batch)
            if progress is not None:
                progress("employees", done, len(rows))
        for code, (_, name, solutions, _) in zip(org.projects, SEED_PROJECTS, strict=True):
            cur.execute(
                query("add_project", SQL_FILE),
                {"code": code, "name": name, "solutions": list(solutions)},
            )
        members = [
            {"project": code, "role": e.role, "solution": solution, "template": template}
            for code, (_, _, solutions, _) in zip(org.projects, SEED_PROJECTS, strict=True)
            for e in org.employees
            for solution, template in [MEMBERSHIPS[e.level]]
            if solution in solutions
        ]
        cur.executemany(query("add_project_member", SQL_FILE), members)


def _ids(conn: psycopg.Connection, name: str, **params: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in conn.execute(query(name, SQL_FILE), params).fetchall()}


def _population(conn: psycopg.Connection, org: SeedOrg, role_prefix: str) -> Population:
    units = _ids(conn, "org_unit_ids", codes=[u[0] for u in org.units])
    employees = _ids(conn, "employee_ids", prefix=role_prefix)
    projects = _ids(conn, "project_ids", codes=list(org.projects))
    owners = [
        Owner(
            employees[e.role],
            units[e.org_unit],
            employees[e.manager] if e.manager else None,
            e.region,
        )
        for e in org.employees
        if e.level == "rep"
    ]
    cumulative = []
    total = 0
    for index, (_, _, _, percent) in enumerate(SEED_PROJECTS):
        total += percent
        cumulative.append((total / 100, index))

    def assign(r: Rand, i: int, stage: int) -> tuple[int, int]:
        # Every rep gets one customer first, then customers land at random.
        owner = i if i < len(owners) else int(r() * len(owners))
        x = r()
        project = next((index for bound, index in cumulative if x < bound), len(cumulative) - 1)
        return owner, project

    return Population(
        owners=owners,
        project_ids=[projects[code] for code in org.projects],
        marketers=[employees[e.role] for e in org.employees if e.level == "marketing"],
        queue_unit_id=None,
        assign=assign,
    )


def share_rows(
    r: Rand,
    log: CustomerLog,
    pop: Population,
    grantees: Sequence[int],
    count: int,
    first_id: int,
    anchor: datetime,
    *,
    progress: Progress | None = None,
) -> Iterator[Row]:
    """`count` shares of random customers to random colleagues; a third expire."""
    for k in range(count):
        i = int(r() * len(log))
        owner_id = pop.owners[log.owner[i]].id
        grantee = grantees[int(r() * len(grantees))]
        if grantee == owner_id:  # share to someone else
            grantee = grantees[(grantees.index(grantee) + 1) % len(grantees)]
        age = int(r() * log.age[i])
        expires = None
        if r() < 0.3:  # some already expired, most still running
            expires = anchor - timedelta(seconds=age - HOUR - int(r() * 60 * DAY))
        yield (
            first_id + k,
            log.first_id + i,
            grantee,
            None,
            "edit" if r() < 0.2 else "read",
            pick(r, SHARE_REASONS),
            owner_id,
            anchor - timedelta(seconds=age),
            expires,
        )
        _report(progress, "shares", k + 1, count)


BULK_TABLES = ("crm.customers", "crm.contracts", "crm.activities", "crm.shares")


def _load_bulk(
    conn: psycopg.Connection,
    r: Rand,
    pop: Population,
    grantees: Sequence[int],
    customers: int,
    anchor: datetime,
    *,
    direct: bool,
    triggers_off: bool,
    progress: Progress | None,
) -> tuple[int, int, int, int]:
    """Customers, then contracts, activities and shares of them; returns the counts."""
    conn.execute(query("lock_bulk_tables", SQL_FILE))
    log = CustomerLog(next_id(conn, "crm.customers"))
    n_customers = copy_rows(
        conn,
        "copy_customers",
        "crm.customers",
        customer_rows(
            r,
            log,
            pop,
            customers,
            anchor,
            phone_offset=int(r() * 10**8),
            progress=progress,
        ),
        direct=direct,
        triggers_off=triggers_off,
    )
    n_contracts = copy_rows(
        conn,
        "copy_contracts",
        "crm.contracts",
        contract_rows(
            r,
            log,
            pop,
            next_id(conn, "crm.contracts"),
            anchor,
            progress=progress,
        ),
        direct=direct,
        triggers_off=triggers_off,
    )
    n_activities = copy_rows(
        conn,
        "copy_activities",
        "crm.activities",
        activity_rows(
            r,
            log,
            pop,
            next_id(conn, "crm.activities"),
            anchor,
            progress=progress,
        ),
        direct=direct,
    )
    n_shares = copy_rows(
        conn,
        "copy_shares",
        "crm.shares",
        share_rows(
            r,
            log,
            pop,
            grantees,
            customers // 50,
            next_id(conn, "crm.shares"),
            anchor,
            progress=progress,
        ),
        direct=direct,
    )
    for table in BULK_TABLES:
        sync_sequence(conn, table)
    return n_customers, n_contracts, n_activities, n_shares


def _today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def seed(
    conn: psycopg.Connection,
    *,
    customers: int,
    employees: int,
    seed: int = 1,
    role_prefix: str = "seed_",
    progress: Progress | None = None,
    now: datetime | None = None,
) -> SeedReport:
    """Load a synthetic org and `customers` customers with their records, in one transaction.

    `now` is the moment the data is relative to (default: today 00:00 UTC, so seeds run
    the same day match). Refuses bad sizes and a second seed with the same role prefix.
    `progress(step, done, total)` is called every 10,000 rows and at the end of each step;
    for contracts and activities, done/total count the customers already processed.
    """
    _check_arguments(customers, employees, role_prefix)
    anchor = now if now is not None else _today()
    rng = random.Random(seed)
    r = rng.random
    org = plan_org(r, employees, role_prefix)
    try:
        with conn.transaction():
            _refuse_existing(conn, role_prefix, org.company)
            _create_org(conn, org, progress)
            pop = _population(conn, org, role_prefix)
            everyone = sorted(_ids(conn, "employee_ids", prefix=role_prefix).values())
            superuser, bypasses_rls = session_privileges(conn)
            if superuser:
                # A seed is a DBA bulk load, not an audited business change: without this
                # the statement-level audit triggers would write every row a second time
                # into crm.change_log. Non-superusers cannot skip them; they pay that cost.
                conn.execute(query("bulk_load_without_triggers", SQL_FILE))
            counts = _load_bulk(
                conn,
                r,
                pop,
                everyone,
                customers,
                anchor,
                direct=bypasses_rls,
                triggers_off=superuser,
                progress=progress,
            )
            if superuser:
                conn.execute(query("bulk_load_done", SQL_FILE))
            if progress is not None:
                progress("analyze", 0, 1)
            conn.execute(query("analyze_crm", SQL_FILE))
            if progress is not None:
                progress("analyze", 1, 1)
    except psycopg.Error as exc:
        raise server_error(exc) from exc
    return _seed_report(org, role_prefix, seed, counts, audited=not superuser)


def _seed_report(
    org: SeedOrg, role_prefix: str, seed: int, counts: tuple[int, int, int, int], *, audited: bool
) -> SeedReport:
    by_level: dict[str, list[SeedEmployee]] = {}
    for e in org.employees:
        by_level.setdefault(e.level, []).append(e)
    rep = by_level["rep"][0]
    manager = next(e for e in by_level["manager"] if e.role == rep.manager)
    director = next(e for e in by_level["director"] if e.role == manager.manager)
    n_customers, n_contracts, n_activities, n_shares = counts
    return SeedReport(
        role_prefix=role_prefix,
        seed=seed,
        org_units=len(org.units),
        employees=len(org.employees),
        directors=len(by_level["director"]),
        managers=len(by_level["manager"]),
        reps=len(by_level["rep"]),
        marketing=len(by_level.get("marketing", [])),
        projects=len(org.projects),
        customers=n_customers,
        contracts=n_contracts,
        activities=n_activities,
        shares=n_shares,
        rep_role=rep.role,
        manager_role=manager.role,
        director_role=director.role,
        admin_role=by_level["ceo"][0].role,
        audited=audited,
    )
