"""Copy an application's tables from its SQLite store to its PostgreSQL store, in batches.

    python outgrow_copy.py /srv/app/events.db postgresql://app@db.internal:5432/events
"""
import sys

import peewee
from myapp.models import MODELS  # in dependency order: parents before children
from peewee import fn

import corestore

BATCH = 1000
old = corestore.open(sys.argv[1])
new = corestore.open(sys.argv[2])
with new.database.bind_ctx(MODELS):
    new.database.create_tables(MODELS)
for model in MODELS:
    with old.database.bind_ctx([model]), old.read():
        rows = list(model.select().order_by(model._meta.primary_key).dicts())
    with new.database.bind_ctx([model]):
        for i in range(0, len(rows), BATCH):
            with new.transaction():
                model.insert_many(rows[i:i + BATCH]).execute()
        pk = model._meta.primary_key
        if isinstance(pk, peewee.AutoField):  # the ids were copied: move the sequence past them
            sequence = fn.pg_get_serial_sequence(f'"{model._meta.table_name}"', pk.column_name)
            with new.transaction():
                model.select(fn.setval(sequence, fn.coalesce(fn.max(pk), 1))).scalar()
        with new.read():
            copied = model.select().count()
    print(f"{model._meta.table_name}: {len(rows)} rows read, {copied} on the server")
old.close()
new.close()
