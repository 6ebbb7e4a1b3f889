import os
import threading

import corestore

store = corestore.open("shared.db")
same = corestore.open("shared.db")  # same real path, same resolved profile
assert same is store  # ... the same Store, one more reference
same.close()  # releases that reference; the store stays open

store.database.execute_sql("CREATE TABLE IF NOT EXISTS hits (n INTEGER)")


def worker(n):
    for _ in range(20):  # each thread gets its own connection, registered with the store
        store.run(lambda: store.database.execute_sql("INSERT INTO hits VALUES (?)", (n,)))


threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(store.stats()["connections"], "connections open")  # one per thread that used the store

# "Reopen": idle connections close now, busy ones at the end of their transaction; the next
# statement on each thread opens a fresh connection.
store.invalidate()
with store.read():
    (count,) = store.database.execute_sql("SELECT count(*) FROM hits").fetchone()
assert count == 80

if hasattr(os, "fork"):
    # Forked while idle: the store closed its connections before fork(), so the child may use
    # the file (a file still in use at fork() would be refused in the child with a FatalError).
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            child = corestore.open("shared.db")  # a store of the child's own, fresh connections
            with child.transaction():
                child.database.execute_sql("INSERT INTO hits VALUES (-1)")
            child.close()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with store.read():
        assert store.database.execute_sql("SELECT count(*) FROM hits").fetchone()[0] == 81

store.close()
