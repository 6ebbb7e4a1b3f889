"""The child side of :func:`corestore_contrib.failpoint.run_in_child`.

The parent starts ``python -c <bootstrap> payload.json``; the bootstrap restores the parent's
``sys.path`` and calls :func:`main`, which runs the target and writes ``result.json``: the return
value (or the error, with the SQLite codes it carried) and the shim's counters.
"""
from __future__ import annotations

import importlib
import json
import os
import traceback
from collections.abc import Mapping
from typing import Any

from ._preload import preload_counters

__all__ = ["main", "describe_error"]

_CODE_ATTRS = ("sqlite_errorcode", "sqlite_errorname", "result", "extendedresult", "committed")


def _details(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = (_CODE_ATTRS if hasattr(exc, "extendedresult")
             else tuple(n for n in _CODE_ATTRS if n not in ("result", "extendedresult")))
    for name in names:
        if hasattr(exc, name):
            value = getattr(exc, name)
            if value is None or isinstance(value, (int, str, bool)):
                out[name] = value
    verdict = getattr(exc, "classification", None)
    if verdict is not None:
        kind = getattr(verdict, "kind", None)
        out["classification"] = {
            "kind": getattr(kind, "name", str(kind)),
            "code": getattr(verdict, "code", None),
            "extended_code": getattr(verdict, "extended_code", None),
            "name": getattr(verdict, "name", None),
        }
    return out


def describe_error(exc: BaseException) -> dict[str, Any]:
    """A JSON description of an exception: type, message, traceback, codes, and its cause's."""
    details = _details(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        details["cause"] = {
            "type": f"{type(cause).__module__}.{type(cause).__qualname__}",
            "message": str(cause),
            **_details(cause),
        }
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "details": details,
    }


def _run(payload: Mapping[str, Any]) -> Any:
    args = payload.get("args", [])
    kwargs = payload.get("kwargs", {})
    if payload["kind"] == "script":
        namespace: dict[str, Any] = {"__name__": "__failpoint_child__", "args": args, "kwargs": kwargs}
        exec(compile(payload["script"], "<failpoint child script>", "exec"), namespace)
        return namespace.get("result")
    target: Any = importlib.import_module(payload["module"])
    for part in payload["qualname"].split("."):
        target = getattr(target, part)
    return target(*args, **kwargs)


def main(payload: Mapping[str, Any]) -> int:
    status = 0
    try:
        value = _run(payload)
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"the child's result is not JSON-serializable: {value!r} ({err})") from None
        report: dict[str, Any] = {"ok": True, "result": value}
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        report = {"ok": status == 0, "result": None}
        if status:
            report["error"] = describe_error(exc)
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        status = 1
        report = {"ok": False, "result": None, "error": describe_error(exc)}
    report["counters"] = preload_counters()
    path = payload["result_path"]
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(report, fh)
    os.replace(tmp, path)
    return status
