"""Is a SQL statement a read? The classification of autocommit statements.

A statement that runs outside any transaction (``db.execute_sql(...)``, a model call) is one
operation of its own, and plugins see its kind: ``"read"`` runs no post-commit invariant and is
counted on the breaker's read lane, anything else is a ``"write"``. So the answer must be right
for every form SQLite accepts, and when in doubt it is *write* (a write reported as a read would
skip the write policies; a read reported as a write only costs a check).

Reads: ``SELECT``, ``VALUES``, ``EXPLAIN ...`` (it describes, never runs, the statement), a
``WITH`` whose main statement is a ``SELECT`` or ``VALUES`` (``WITH ... DELETE/INSERT/UPDATE/
REPLACE`` is a write), and ``PRAGMA name`` or ``PRAGMA name(arg)`` of a pragma that only reports
(``table_info(t)``, ``integrity_check``...). Everything else is a write, including pragmas that
set a value (``PRAGMA x = y``) or act (``wal_checkpoint``, ``optimize``, ``incremental_vacuum``,
``shrink_memory``), ``ANALYZE``, ``VACUUM``, DDL and transaction control.

Comments, string literals and quoted identifiers are skipped; the answer for a given text is
cached (peewee sends the same statement text again and again).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

__all__ = ["is_read_sql"]

logger = logging.getLogger(__name__)

#: pragmas that change something even without "= value"
_ACTING_PRAGMAS = frozenset({
    "wal_checkpoint", "optimize", "incremental_vacuum", "shrink_memory", "analysis_limit",
})


def _skip_space(sql: str, i: int) -> int:
    """Index of the next character that is not white space or inside a comment."""
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            break
    return i


def _skip_quoted(sql: str, i: int) -> int:
    """``sql[i]`` opens a literal or quoted identifier: the index after its end."""
    close = {"'": "'", '"': '"', "`": "`", "[": "]"}[sql[i]]
    n = len(sql)
    i += 1
    while i < n:
        if sql[i] == close:
            if close != "]" and i + 1 < n and sql[i + 1] == close:  # a doubled quote is an escaped one
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _tokens(sql: str) -> Iterator[str]:
    """Top-level tokens: words (upper-cased), single punctuation, and ``"()"`` for a whole
    parenthesised group (its content is skipped: a sub-query never decides the statement)."""
    n = len(sql)
    i = _skip_space(sql, 0)
    while i < n:
        ch = sql[i]
        if ch.isalpha() or ch == "_":
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            yield sql[i:j].upper()
            i = j
        elif ch in "'\"`[":
            i = _skip_quoted(sql, i)
            yield "QUOTED"
        elif ch == "(":
            depth = 0
            while i < n:
                c = sql[i]
                if c in "'\"`[":
                    i = _skip_quoted(sql, i)
                    continue
                if sql.startswith("--", i) or sql.startswith("/*", i):
                    i = _skip_space(sql, i)
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
            yield "()"
        else:
            yield ch
            i += 1
        i = _skip_space(sql, i)


def _main_after_with(tokens: Iterator[str]) -> str | None:
    """After ``WITH``: skip ``[RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED] (...)`` items
    separated by commas; the keyword that follows is the main statement's."""
    expect_item = True
    for tok in tokens:
        if tok == "RECURSIVE":
            continue
        if expect_item:
            # name [(columns)] AS [NOT] [MATERIALIZED] (body)
            for inner in tokens:
                if inner == "()":
                    # either the column list or the body: the body is the group after AS [...]
                    continue
                if inner == "AS":
                    for body in tokens:
                        if body in ("NOT", "MATERIALIZED"):
                            continue
                        break  # the body group
                    break
            expect_item = False
            continue
        if tok == ",":
            expect_item = True
            continue
        return tok
    return None


@functools.lru_cache(maxsize=2048)
def is_read_sql(sql: str) -> bool:
    """True when ``sql`` (one statement) only reads; False for anything that may write or when
    unsure."""
    tokens = _tokens(sql)
    first = next(tokens, None)
    if first in ("SELECT", "VALUES", "EXPLAIN"):
        return True
    if first == "WITH":
        return _main_after_with(tokens) in ("SELECT", "VALUES")
    if first == "PRAGMA":
        name = next(tokens, None)
        following = next(tokens, None)
        if following == ".":  # schema.name
            name = next(tokens, None)
            following = next(tokens, None)
        if name is None or name.lower() in _ACTING_PRAGMAS:
            return False
        return following in (None, "()", ";")
    return False
