import corestore
from corestore_contrib.failpoint import PreloadFailpoint


def commit_while_fsync_fails(path):  # runs in a child process, under the preload shim
    profile = corestore.Profile(path=path, name="minimal",
                                pragmas={"journal_mode": "wal", "synchronous": "full"})
    store = corestore.open(profile)
    store.database.execute_sql("CREATE TABLE event (id INTEGER PRIMARY KEY)")
    disk = PreloadFailpoint.from_env(database=path)
    disk.arm(op="fsync", file="wal", errno="EIO")  # fsync/fdatasync of app.db-wal -> EIO
    try:
        with store.transaction():
            store.database.execute_sql("INSERT INTO event DEFAULT VALUES")
    except corestore.FatalError as err:
        return {"code": err.classification.extended_code, "committed": err.committed}
    finally:
        disk.heal()
        store.close()


def test_fsync_failure_at_commit_is_reported_as_uncertain(preload_failpoint, tmp_path):
    child = preload_failpoint.run(commit_while_fsync_fails, args=[str(tmp_path / "app.db")])
    assert child.check().result == {"code": 1034, "committed": None}  # SQLITE_IOERR_FSYNC
