import pytest

import corestore

# Your own profile (a name; add config="corestore.toml" if it is defined there), over the failpoint VFS.
pytestmark = pytest.mark.corestore_profile("minimal", pragmas={"journal_mode": "wal"}, failpoint=True)


def test_a_wedge_fails_loudly_until_the_disk_heals(tmp_store, failpoint):
    db = tmp_store.database
    db.execute_sql("CREATE TABLE event (id INTEGER PRIMARY KEY)")
    failpoint.arm(op="write", file="wal")  # a hard SQLITE_IOERR on every -wal write
    with pytest.raises(corestore.FatalError) as err, tmp_store.transaction():
        db.execute_sql("INSERT INTO event DEFAULT VALUES")
    assert err.value.classification.kind is corestore.ErrorKind.FATAL_IO
    failpoint.heal()
    with tmp_store.transaction():
        db.execute_sql("INSERT INTO event DEFAULT VALUES")
