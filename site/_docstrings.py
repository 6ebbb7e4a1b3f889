"""Griffe extension for the corestore site (``extensions:`` of mkdocstrings in mkdocs.yml).

corestore's docstrings are reST-flavoured (``:param x:`` fields, ``:class:`~corestore.Store```
roles), written for readers of the source. mkdocstrings' Sphinx parser would show the roles
verbatim and glue any paragraph that follows the last field onto that field. This extension
rewrites each docstring before it is parsed: roles become code spans (``~`` keeps the last
component, as Sphinx does) and field paragraphs move to the end.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["ReSTDocstrings", "rewrite"]

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")
_FIELD = re.compile(
    r"^:(?:param|parameter|arg|argument|key|keyword|type|raises?|except|exception|var|ivar|cvar|"
    r"vartype|returns?|rtype|yields?)\b"
)


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def rewrite(text: str) -> str:
    """The docstring ``text`` with roles as code spans and field paragraphs last."""
    text = _ROLE.sub(_role, text)
    paragraphs = re.split(r"\n[ \t]*\n", text)
    body = [p for p in paragraphs if not _FIELD.match(p.lstrip())]
    fields = [p for p in paragraphs if _FIELD.match(p.lstrip())]
    return "\n\n".join(body + (["\n".join(fields)] if fields else []))


class ReSTDocstrings(griffe.Extension):
    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = rewrite(obj.docstring.value)
