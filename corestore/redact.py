"""Connection URLs: recognising a server URL and redacting the credentials in it.

A PostgreSQL store is named by its URL everywhere a SQLite store is named by its path: in every
error message, log line, health report, ``repr`` and metric label. That name is always the
*redacted* URL (:func:`redact_url`): the password replaced by ``***``, and a ``password=`` query
parameter likewise. The secret URL itself lives only in :attr:`corestore.Profile.url` (whose
``repr`` is redacted too) and is handed to the driver when a connection is opened.

:func:`redact_text` scrubs a free text (a driver message) of every password this process has
seen in a URL: the one helper every path that shows a driver's words uses.
"""
from __future__ import annotations

import logging
import re
import threading
import urllib.parse

__all__ = ["URL_SCHEMES", "is_server_url", "redact_url", "redact_text", "MASK"]

logger = logging.getLogger(__name__)

#: URL schemes that name a PostgreSQL server (libpq accepts both).
URL_SCHEMES = ("postgresql://", "postgres://")
#: What replaces a secret.
MASK = "***"

_SECRET_PARAMS = frozenset({"password", "sslpassword", "passfile_password"})
_seen: set[str] = set()
_seen_lock = threading.Lock()
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def is_server_url(target: object) -> bool:
    """True when ``target`` is a string naming a PostgreSQL server (``postgresql://`` or ``postgres://``)."""
    return isinstance(target, str) and target.lower().startswith(URL_SCHEMES)


def _remember(secret: str) -> None:
    if secret and secret != MASK:
        with _seen_lock:
            _seen.add(secret)
            unquoted = urllib.parse.unquote(secret)
            if unquoted:
                _seen.add(unquoted)


def redact_url(url: str) -> str:
    """``url`` with its password (in the authority and in a ``password=`` parameter) replaced by
    ``***``; the user, host, port, database and other parameters are kept (they name the store).
    The password is remembered for :func:`redact_text`. A string that is not a URL is returned
    through :func:`redact_text` only."""
    if not is_server_url(url):
        return redact_text(url)
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user, _, password = userinfo.partition(":")
            _remember(password)
            userinfo = f"{user}:{MASK}"
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        cleaned = []
        for key, value in pairs:
            if key.lower() in _SECRET_PARAMS:
                _remember(value)
                value = MASK
            cleaned.append((key, value))
        query = urllib.parse.urlencode(cleaned, safe="*")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every password seen in a URL by this process (and any ``password=...``
    key-value pair of a libpq connection string, and any server URL in it) masked."""
    if not text:
        return text
    out = _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
    if "://" in out:
        out = re.sub(r"postgres(?:ql)?://[^\s'\"]+", lambda m: redact_url(m.group(0)), out, flags=re.IGNORECASE)
    with _seen_lock:
        secrets = sorted(_seen, key=len, reverse=True)
    for secret in secrets:
        if len(secret) >= 3 and secret in out:
            out = out.replace(secret, MASK)
    return out
