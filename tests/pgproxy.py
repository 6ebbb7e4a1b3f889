"""A TCP proxy in front of a PostgreSQL server that can cut a connection around a COMMIT.

A COMMIT whose outcome the client never learns is the case exactly-once bookkeeping exists for,
and it cannot be produced on demand by stopping a server (the crash lands between statements far
more often than inside COMMIT). This proxy produces it for real, on the wire:

* ``cut("after")``: the next client message that contains ``COMMIT`` is forwarded; the server
  commits and answers; the answer is swallowed and both sockets are closed. The transaction IS
  committed, the client sees a lost connection during COMMIT (outcome unknown).
* ``cut("before")``: the next ``COMMIT`` is not forwarded; both sockets are closed. The server
  rolls the transaction back when its connection ends; the client sees the same lost connection.

Everything else is forwarded byte for byte. Each cut happens once (``cuts`` counts them); the
proxy runs on daemon threads and :meth:`PgProxy.close` stops it.
"""
from __future__ import annotations

import logging
import select
import socket
import threading

__all__ = ["PgProxy"]

logger = logging.getLogger(__name__)

_CHUNK = 65536


class PgProxy:
    """``127.0.0.1:<port>`` forwarding to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._armed: str | None = None
        self._within: bytes | None = None
        self.cuts: list[str] = []
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="pgproxy-accept", daemon=True).start()

    def cut(self, mode: str, *, within: bytes | None = None) -> None:
        """Cut the connection that sends the next COMMIT (``"after"`` or ``"before"`` it reaches
        the server); with ``within``, only a COMMIT of a transaction that sent those bytes (e.g.
        ``b"COPY "``: a batch, not a read)."""
        if mode not in ("after", "before"):
            raise ValueError(f"cut mode {mode!r}; allowed: after, before")
        with self._lock:
            self._armed, self._within = mode, within

    def _take(self, data: bytes, seen: list[bool]) -> str | None:
        """``seen[0]``: this connection sent ``within`` since its last COMMIT."""
        upper = data.upper()
        with self._lock:
            if self._within is not None and self._within.upper() in upper:
                seen[0] = True
            if b"COMMIT" not in upper:
                return None
            if self._armed is not None and (self._within is None or seen[0]):
                mode, self._armed = self._armed, None
                self.cuts.append(mode)
                return mode
            seen[0] = False
        return None

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), name="pgproxy-pump", daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        cut_after = False
        seen = [False]
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    if sock is client:
                        mode = self._take(data, seen)
                        if mode == "before":
                            return
                        server.sendall(data)
                        if mode == "after":
                            cut_after = True
                    else:
                        if cut_after:  # the server's answer to COMMIT: swallowed
                            return
                        client.sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, server):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
