"""The shipped rules (rules/saoviet.crm.yaml) against the demo company they are written for."""

import shutil
from pathlib import Path

from routing_org import MONDAY, at

from crmdb.demo import load_demo
from crmdb.resources import resource_dir
from crmdb.routing import plan
from crmdb.routing.model import load_rules
from crmdb.testing.scratch import TEST_PASSWORD
from crmdb.worker.batch import drain

HOT_LEAD = (
    "INSERT INTO crm.customers (project_id, full_name, source, score)"
    " VALUES (crm_private.project_id('saoviet.crm'), 'Nguyễn Văn A', 'web_form', 80)"
    " RETURNING id"
)
OWNER_UNIT = (
    "SELECT u.code FROM crm.customers AS c JOIN crm.employees AS e ON e.id = c.owner_id"
    " JOIN crm.org_units AS u ON u.id = e.org_unit_id WHERE c.id = %s"
)


def shipped_rules(tmp_path: Path, prefix: str) -> Path:
    """rules/ with the demo's role prefix replaced by this database's."""
    directory = tmp_path / "rules"
    shutil.copytree(resource_dir("rules"), directory)
    for path in directory.glob("*.yaml"):
        path.write_text(path.read_text(encoding="utf-8").replace("demo_", prefix), encoding="utf-8")
    return directory


def test_the_shipped_rules_route_the_demo_company(db, tmp_path):
    with db.connect() as conn:
        load_demo(conn, role_prefix=db.role("demo_"), password=TEST_PASSWORD)
    rules = load_rules(shipped_rules(tmp_path, db.role("demo_")))
    applied = plan.apply(db.target, rules)
    # Expect the rules to apply, and then nothing left to change
    assert applied.statements and plan.plan(db.target, rules).empty
    with db.connect() as conn:
        drain(conn, now=at(MONDAY, 1))  # what the demo itself left unowned
        row = conn.execute(HOT_LEAD).fetchone()
        assert row is not None
        # Expect a hot web lead at 10:00 on a Monday to go to Sales team 1
        drain(conn, now=at(MONDAY, 1))
        assert conn.execute(OWNER_UNIT, [row[0]]).fetchone() == ("saoviet.hn.sales1",)
