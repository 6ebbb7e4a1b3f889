"""The store's side of the link between a store and its database.

:data:`LINK` is the :class:`~corestore.backends.StoreLink` every store hands its database
(:func:`corestore.database.build_database`): the only way :mod:`corestore.database` reaches the
store's machinery. Its members are plain functions taking the store first, so the link is one
shared object and the database keeps only a weak reference to its store.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .peeweetxn import abandon_direct, begin_again, commit_active, db_transaction, direct_begin, rollback_active
from .raising import translate_in_transaction, translate_open_error
from .statements import autocommit
from .transaction import set_query_only

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

__all__ = ["LINK", "StoreLinkImpl", "init_connection"]


def init_connection(store: Store, conn: Any) -> None:
    """Prepare a new driver connection: the backend's preparation (pragmas, ``busy_timeout``
    first, the journal mode under the init lock, its returned value checked), then ``on_open``."""
    store.backend.prepare_connection(store, conn)
    with store._stats_lock:
        store._stats["connections_opened"] += 1
    store.hooks.on_open(store, conn)


class StoreLinkImpl:
    """The store's :class:`~corestore.backends.StoreLink`: plain functions of the store's modules
    (:mod:`corestore.transaction`, :mod:`corestore.peeweetxn`, :mod:`corestore.statements`,
    :mod:`corestore.raising`), each taking the store first. One shared instance, :data:`LINK`."""

    __slots__ = ("init_connection", "translate_open_error", "translate_in_transaction", "autocommit",
                 "db_transaction", "direct_begin", "begin_again", "commit_active", "rollback_active",
                 "abandon_direct", "set_query_only")

    def __init__(self) -> None:
        self.init_connection = init_connection
        self.translate_open_error = translate_open_error
        self.translate_in_transaction = translate_in_transaction
        self.autocommit = autocommit
        self.db_transaction = db_transaction
        self.direct_begin = direct_begin
        self.begin_again = begin_again
        self.commit_active = commit_active
        self.rollback_active = rollback_active
        self.abandon_direct = abandon_direct
        self.set_query_only = set_query_only


#: What every store hands its database.
LINK = StoreLinkImpl()
