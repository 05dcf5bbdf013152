def test_fresh_database_is_migrated(db):
    with db.connect() as conn:
        assert conn.execute("SELECT to_regclass('crm.customers') IS NOT NULL").fetchone() == (True,)
