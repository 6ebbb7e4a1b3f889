"""peewee's server-side cursors (``playhouse.postgres_ext.ServerSide``) through a PostgreSQL
store: the query streams through a named cursor inside ``store.transaction()`` / ``store.read()``
as it does on plain peewee (the one difference peewee's own ``postgres`` tests found, issue 22).
peewee 4.x only: 3.17's ``postgres_ext`` is psycopg2's."""
from __future__ import annotations

import peewee
import pytest

import corestore

pytestmark = pytest.mark.skipif(int(peewee.__version__.split(".")[0]) < 4,
                                reason="server-side cursors with psycopg 3 need peewee 4.x (3.17's postgres_ext is psycopg2's)")


class Register(peewee.Model):
    value = peewee.IntegerField()


def test_server_side_query_streams_through_a_named_cursor(pg_url: str) -> None:
    pytest.importorskip("psycopg")
    from playhouse.postgres_ext import FetchManyCursor, ServerSide, ServerSideQuery

    store = corestore.open(pg_url)
    try:
        with store.database.bind_ctx([Register]):
            store.database.create_tables([Register])
            with store.transaction():
                Register.insert_many([{"value": i} for i in range(100)]).execute()
            query = Register.select(Register.value).order_by(Register.value)
            with store.transaction():
                cursor = ServerSideQuery(query, array_size=10)._execute(store.database).cursor
                assert isinstance(cursor, FetchManyCursor)
                assert cursor.fetchone() == (0,)
                cursor.close()
            with store.read():
                it = iter(ServerSide(query, array_size=10))
                assert next(it).value == 0
                open_cursors = store.database.execute_sql("SELECT count(*) FROM pg_cursors").fetchone()[0]
                assert open_cursors == 1  # the rows come from the server 10 at a time, not all at once
                assert [r.value for r in it] == list(range(1, 100))
    finally:
        store.close()
