import pytest

import corestore
from corestore_contrib.failpoint import FailpointVFS


def test_my_store_reports_a_disk_wedge_and_recovers(tmp_path):
    with FailpointVFS("disk") as disk:  # the default VFS, plus faults on demand
        profile = corestore.Profile(path=str(tmp_path / "app.db"), driver="apsw", vfs=disk.name,
                                    pragmas={"journal_mode": "wal", "synchronous": "full"})
        store = corestore.open(profile)
        db = store.database
        db.execute_sql("CREATE TABLE event (id INTEGER PRIMARY KEY, kind TEXT)")

        disk.arm(op="write", file="wal")  # every -wal write: a hard SQLITE_IOERR
        for _ in range(3):  # a wedge: retrying does not help
            with pytest.raises(corestore.FatalError) as wedge, store.transaction():
                db.execute_sql("INSERT INTO event (kind) VALUES ('lost?')")
            assert wedge.value.committed is None  # the COMMIT itself failed: outcome unknown

        disk.heal()
        with store.transaction():
            db.execute_sql("INSERT INTO event (kind) VALUES ('after')")
        assert db.execute_sql("SELECT kind FROM event").fetchall() == [("after",)]
        store.close()
