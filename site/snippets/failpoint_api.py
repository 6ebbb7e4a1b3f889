import corestore
from corestore_contrib.failpoint import FailpointVFS


def test_the_failpoint_api(tmp_path):
    fp = FailpointVFS("failpoint")              # registered now; fp.unregister() (or `with`) removes it
    store = corestore.open(corestore.Profile(path=str(tmp_path / "app.db"), driver="apsw", vfs=fp.name,
                                             pragmas={"journal_mode": "wal"}))
    store.database.execute_sql("CREATE TABLE t (x)")
    fault = fp.arm(op="write", file="wal")      # hard SQLITE_IOERR on every -wal write, until healed
    try:
        store.database.execute_sql("INSERT INTO t VALUES (1)")
    except corestore.FatalError as err:
        assert (err.classification.name, err.committed) == ("SQLITE_IOERR", None)
    fp.heal(fault)                              # or fp.heal(): every armed fault
    assert fp.counters.failed["write", "wal"] == 1   # operations failed, by (op, role)
    store.close()
    fp.unregister()
