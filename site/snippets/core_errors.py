import peewee

import corestore
from corestore import ErrorKind, StoreError
from corestore.classify import classify_code

store = corestore.open("errors.db")
store.database.execute_sql("CREATE TABLE IF NOT EXISTS t (x UNIQUE)")

# A caller error: the statement is wrong. QueryError is also peewee.OperationalError.
try:
    with store.transaction():
        store.database.execute_sql("INSERT INTO no_such_table VALUES (1)")
except corestore.QueryError as err:
    assert isinstance(err, peewee.OperationalError)
    assert err.kind is ErrorKind.PROGRAMMING and err.committed is False
    print(err.classification.name)  # SQLITE_ERROR
    print(type(err.__cause__).__name__)  # the driver's error, kept as the cause


# What the core does with a code, without raising anything:
c = classify_code(778)  # SQLITE_IOERR_WRITE
assert c.kind is ErrorKind.FATAL_IO
assert (c.retryable, c.trips_breaker, c.reopen, c.is_fault) == (False, True, True, True)


def save(x):
    """One way to handle everything a write can raise."""
    try:
        return store.run(lambda: store.database.execute_sql("INSERT INTO t VALUES (?)", (x,)), name="save")
    except corestore.ConstraintError:
        return "duplicate"  # the caller's data; nothing was written
    except corestore.CircuitOpenError as err:
        return f"storage is failing, refused without touching the file; retry in {err.retry_after} s"
    except corestore.InvariantViolation:
        raise  # committed=True: the data IS durable; never write it again
    except StoreError as err:
        if err.committed is None:
            return "unknown: the COMMIT failed; check before writing again"
        raise  # committed=False: a fault, nothing written


assert save(1) != "duplicate"
assert save(1) == "duplicate"
store.close()
