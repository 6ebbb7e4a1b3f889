"""Accounting through a disk outage: a failpoint VFS fails every write (hard SQLITE_IOERR) and a
manual clock steps through three minutes in milliseconds. The rows stay queued, the episode
escalates by count and by time, and after the disk heals every row is written once."""
import corestore
from corestore_contrib.failpoint import FailpointVFS
from corestore_plugins.accounting import ManualClock

fp = FailpointVFS("outage")  # an apsw VFS over the real one (needs corestore[apsw])
store = corestore.open(corestore.Profile(
    path="outage.db", driver="apsw", vfs="outage", plugins=("accounting",),
    pragmas={"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000},
    settings={"accounting": {"backoff_initial_s": 1, "backoff_max_s": 5}},  # escalation: the defaults
), setup=lambda s: s.database.execute_sql("CREATE TABLE events (id INTEGER PRIMARY KEY, n INTEGER)"))
acc = store.plugin("accounting")
clock = ManualClock()
acc.use_clock(clock)  # before the first submit: the writer's waits and rules follow this clock

fp.arm(op="write", file="any")  # the disk starts failing every write
for n in range(100):
    assert acc.submit("events", {"n": n})  # accepted: the caller never sees the outage
assert acc.flush(timeout=0.1) is False  # not durable yet

for second in range(181):  # three minutes, one second at a time
    if second % 15 == 0:
        st = acc.stats()
        print(f"t={second:3d}s faulted={st['faulted_batches']:2d} reopens={st['reopens']:2d} "
              f"tier={st['episode']['tier']:10s} signals={st['persistent_signals']} pending={st['pending']}")
    clock.advance(1)
    clock.wait_quiescent()  # the writer did everything that was due, and waits again
# t=  0s faulted= 1 reopens= 0 tier=failing    signals=0 pending=100
# t= 15s faulted= 5 reopens= 2 tier=degraded   signals=0 pending=100   <- reopen every 3 faults or 10 s; DEGRADED at 5
# t= 30s faulted= 8 reopens= 3 tier=degraded   signals=0 pending=100
# ...
# t=120s faulted=26 reopens=12 tier=persistent signals=1 pending=100   <- 120 s comes before 40 faults

fp.heal()  # the disk works again
clock.advance(5)
assert acc.flush(timeout=5)
print(store.database.execute_sql("SELECT count(*), count(DISTINCT n) FROM events").fetchone())  # (100, 100)
for _ in range(3):  # idle: the writer probes until healthy_to_clear batches in a row have committed
    clock.advance(1)
    clock.wait_quiescent()
print(acc.stats()["episode"]["tier"])  # none: the episode is over
store.close()
fp.unregister()
