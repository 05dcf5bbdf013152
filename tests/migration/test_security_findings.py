"""Migration 0012 on a database with data: contracts outside their customer's project.

0012 puts every contract in its customer's project (a foreign key). Contracts already
elsewhere are the DBA's to move: the migration stops and names them, and applies once
they are moved.
"""

import psycopg
import pytest

from crmdb import migrate
from crmdb.errors import CrmdbError
from crmdb.testing.scratch import ScratchFactory

ROWS = """
INSERT INTO crm.projects (id, code, name) VALUES (901, 'one', 'One'), (902, 'two', 'Two');
INSERT INTO crm.customers (id, project_id, full_name) VALUES (903, 901, 'Khách');
INSERT INTO crm.contracts (id, customer_id, project_id, title)
VALUES (904, 903, 901, 'right'), (905, 903, 902, 'elsewhere');
"""


def test_contracts_elsewhere_stop_the_migration_until_moved(scratch: ScratchFactory) -> None:
    db = scratch.migrated()
    try:
        # Back to before 0012 (the migrations after it first)
        ids = [state.id for state in migrate.status(db.target)]
        since = ids[ids.index("0012.security-findings") :]
        assert migrate.rollback(db.target, len(since)) == since[::-1]
        with db.connect() as conn:
            conn.execute(ROWS)
        # Expect the migration to refuse, naming the contract, its customer and projects
        with pytest.raises(CrmdbError, match=r"contract 905 \(project 902\) of customer 903"):
            migrate.apply(db.target)
        with db.connect() as conn:
            conn.execute("UPDATE crm.contracts SET project_id = 901 WHERE id = 905")
        assert migrate.apply(db.target) == since
        with db.connect() as conn:
            # Expect the key to hold from now on, and to follow a customer that moves
            with pytest.raises(psycopg.errors.ForeignKeyViolation, match="customer's project"):
                conn.execute("UPDATE crm.contracts SET project_id = 902 WHERE id = 904")
            conn.execute("UPDATE crm.customers SET project_id = 902 WHERE id = 903")
            moved = conn.execute("SELECT id, project_id FROM crm.contracts ORDER BY id").fetchall()
            assert moved == [(904, 902), (905, 902)]
    finally:
        db.drop()
