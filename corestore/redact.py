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

__all__ = ["URL_SCHEMES", "is_server_url", "split_url", "check_server_url", "redact_url", "redact_text", "MASK"]

logger = logging.getLogger(__name__)

#: URL schemes that name a PostgreSQL server (libpq accepts both).
URL_SCHEMES = ("postgresql://", "postgres://")
#: What replaces a secret.
MASK = "***"

_seen: set[str] = set()
_seen_lock = threading.Lock()
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"([?&](?:ssl)?password=|[?&]passfile_password=)([^&#]*)", re.IGNORECASE)


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


def _ports_ok(hostspec: str) -> bool:
    """Every ``host[:port]`` of a (comma-separated) host list has a numeric port or none."""
    for item in hostspec.split(","):
        if item.startswith("["):
            _, _, after = item.partition("]")
            port = after[1:] if after.startswith(":") else after
        else:
            port = item.rpartition(":")[2] if ":" in item else ""
        if port and not port.isdigit():
            return False
    return True


def _standard(rest: str) -> tuple[str | None, str, str] | None:
    """The RFC 3986 reading of ``rest`` (after ``://``): user info up to the last ``@`` before the
    first ``/``, ``?`` or ``#``; None when that reading is not a sound PostgreSQL URL (a port that
    is not a number, an ``@`` in the path, a fragment, a query that is not ``key=value`` pairs)."""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    userinfo = rest[:at] if at >= 0 else None
    hostspec, tail = rest[at + 1:end], rest[end:]
    path, _, query = tail.partition("?")
    if not _ports_ok(hostspec) or "@" in path or "#" in tail:
        return None
    if query and any("=" not in pair for pair in query.split("&") if pair):
        return None
    if "@" in query and "/" in query[query.index("@"):]:
        return None  # "?x@host/db": a password with '?' in it, not a query
    return userinfo, hostspec, tail


def split_url(url: str) -> tuple[str, str | None, str, bool] | None:
    """``(scheme://, user info or None, the rest after it, well_formed)``; None without ``://``.

    The user info is everything between ``://`` and the last ``@`` before the host part. For a
    well-formed URL that is the RFC 3986 reading; when that reading fails (an unencoded ``/``,
    ``?`` or ``#`` in a password makes the rest look like a port, a path or a query), the user info
    runs to the *last* ``@`` of the URL (``well_formed`` False): a malformed URL errs on the side
    of hiding, never on the side of showing a password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    std = _standard(rest)
    if std is not None:
        userinfo, hostspec, tail = std
        return scheme + sep, userinfo, hostspec + tail, userinfo is None or "@" not in userinfo
    at = rest.rfind("@")
    if at < 0:
        return scheme + sep, None, rest, False
    return scheme + sep, rest[:at], rest[at + 1:], False


def redact_url(url: str) -> str:
    """``url`` with its password (in the user info and in a ``password=`` / ``sslpassword=``
    parameter) replaced by ``***``; the user, host, port, database and other parameters are kept
    (they name the store). The user info is everything between ``://`` and the last ``@`` before the
    host part (:func:`split_url`), so a password with an unencoded ``/``, ``?``, ``#`` or ``@`` is
    hidden too. The password is remembered for :func:`redact_text`. A string that is not a URL is
    returned through :func:`redact_text` only."""
    if not is_server_url(url):
        return redact_text(url)
    split = split_url(url)
    assert split is not None  # is_server_url: it has "://"
    scheme, userinfo, rest, _ = split
    rest = _QUERY_SECRET.sub(_mask_query, rest)
    if userinfo is None:
        return scheme + rest
    if ":" in userinfo:
        user, _, password = userinfo.partition(":")
        _remember(password)
        userinfo = f"{user}:{MASK}"
    return f"{scheme}{userinfo}@{rest}"


def _mask_query(match: re.Match[str]) -> str:
    _remember(match.group(2))
    return match.group(1) + MASK


def check_server_url(url: str, where: str = "<profile>: url") -> None:
    """Raise :class:`~corestore.errors.ConfigError` unless ``url`` is a well-formed PostgreSQL URL
    (:func:`split_url`): the message names the redacted URL and what is allowed, never the password."""
    from .errors import ConfigError

    split = split_url(url) if is_server_url(url) else None
    if split is not None and split[3]:
        return
    if split is None:
        why = "it must start with postgresql:// or postgres://"
    else:
        userinfo = split[1] or ""
        bad = [c for c in "/?#@" if c in userinfo]
        why = (f"the user or password contains an unencoded {', '.join(repr(c) for c in bad)}" if bad else
               "a port is not a number, or the text after the host is not /DATABASE?KEY=VALUE&...")
    raise ConfigError(f"{where} = {redact_url(url)!r} is not a valid PostgreSQL URL: {why}; allowed: "
                      "postgresql://[USER[:PASSWORD]@][HOST[:PORT][,HOST[:PORT]...]][/DATABASE][?KEY=VALUE&...], "
                      "with / ? # @ in the user or password percent-encoded (%2F %3F %23 %40)")


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
