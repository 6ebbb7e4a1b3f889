import attrs
import pytest

import corestore

pytestmark = pytest.mark.corestore_profile("minimal", pragmas={"journal_mode": "wal"}, failpoint=True)


def test_only_a_restart_cures_it(tmp_store, failpoint):
    db = tmp_store.database
    db.execute_sql("CREATE TABLE event (id INTEGER PRIMARY KEY)")
    other = corestore.open(attrs.evolve(tmp_store.profile, name="reader"))  # another part of the app
    other.database.execute_sql("SELECT count(*) FROM event")  # ... holds a connection open
    fault = failpoint.arm(op="write", file="wal", heal_on_last_close=True)
    for _ in range(3):  # corestore reopens its own connections after each fault: not a restart
        with pytest.raises(corestore.FatalError), tmp_store.transaction():
            db.execute_sql("INSERT INTO event DEFAULT VALUES")
    assert fault.active
    other.close()
    tmp_store.close()  # the last connection of the process closes: that is a restart
    assert fault.healed_by == "last_close"
