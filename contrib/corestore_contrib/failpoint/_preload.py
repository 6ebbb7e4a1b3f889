"""The preload failpoint: libc-level faults under the stdlib ``sqlite3`` driver (Linux).

A small C shim (``preload_shim.c``, shipped as source) is compiled on first use with the system C
compiler into a cache directory and loaded with ``LD_PRELOAD`` into a *child* process, never into
the caller's. It wraps ``open``/``open64``/``openat``, ``pread``/``pread64``,
``pwrite``/``pwrite64``, ``fsync``/``fdatasync`` and ``ftruncate``/``ftruncate64`` and fails
them, for files whose path matches an armed rule, with a chosen ``errno`` while the control file
says so. SQLite's unix VFS then turns the errno into its own result code, so the faults are what a
failing disk produces, through the same libsqlite3 the application uses.

The control file is the only channel: :class:`PreloadFailpoint` rewrites it atomically
(``os.replace``) to arm or heal, from the parent or from inside the child
(:meth:`PreloadFailpoint.from_env`). The shim notices a new version on its next wrapped call.
"""
from __future__ import annotations

import errno as errno_names
import fcntl
import glob
import hashlib
import importlib.resources
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "PreloadFailpoint",
    "PreloadRule",
    "ChildResult",
    "ChildError",
    "ChildProcess",
    "ChildFailedError",
    "FailpointUnavailable",
    "CompilerNotFoundError",
    "PreloadUnsupportedError",
    "ShimBuildError",
    "PRELOAD_OPS",
    "CONTROL_ENV",
    "build_shim",
    "cache_dir",
    "run_in_child",
    "start_child",
    "preload_counters",
]

logger = logging.getLogger(__name__)

#: The environment variable naming the control file, in the child.
CONTROL_ENV = "CORESTORE_FAILPOINT_CONTROL"
#: Operations the shim can fail, in the order of its counters.
PRELOAD_OPS: tuple[str, ...] = ("open", "read", "write", "sync", "truncate")
_OP_ALIASES = {
    "open64": "open", "openat": "open", "pread": "read", "pread64": "read", "pwrite": "write",
    "pwrite64": "write", "fsync": "sync", "fdatasync": "sync", "ftruncate": "truncate",
    "ftruncate64": "truncate",
}
#: File roles, relative to a database path: the file itself, its ``-wal``, ``-journal``, ``-shm``.
_SUFFIX = {"main": "", "wal": "-wal", "journal": "-journal", "shm": "-shm"}
_SHIM_NAME = "preload_shim.c"
#: Read "errnos" that are not errors: half the bytes then end-of-file, or end-of-file at once.
_READ_SHAPES = ("short", "eof")
_CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall")
_build_lock = threading.Lock()


class FailpointUnavailable(RuntimeError):
    """This machine cannot run the preload failpoint (not Linux, or no C compiler)."""


class PreloadUnsupportedError(FailpointUnavailable):
    """The preload failpoint needs Linux (glibc's ``LD_PRELOAD`` and ``dlsym(RTLD_NEXT)``)."""


class CompilerNotFoundError(FailpointUnavailable):
    """No C compiler was found to build the shim."""


class ShimBuildError(RuntimeError):
    """The compiler was found but failed to build the shim; the message holds its output."""


class ChildFailedError(RuntimeError):
    """:meth:`ChildResult.check` on a child that raised, crashed or exited non-zero."""

    def __init__(self, message: str, result: ChildResult) -> None:
        super().__init__(message)
        self.result = result


# -- building the shim ---------------------------------------------------------------------


def cache_dir() -> Path:
    """Where the compiled shim is kept: ``$CORESTORE_CACHE``, else ``$XDG_CACHE_HOME/corestore``,
    else ``~/.cache/corestore``."""
    if os.environ.get("CORESTORE_CACHE"):
        return Path(os.environ["CORESTORE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "corestore"


def _find_compiler() -> list[str]:
    cc = os.environ.get("CC", "").strip()
    if cc:
        argv = shlex.split(cc)
        if shutil.which(argv[0]) is None:
            raise CompilerNotFoundError(
                f"$CC is set to {cc!r} but {argv[0]!r} is not an executable on PATH; "
                "fix $CC or unset it to use cc/gcc/clang"
            )
        return argv
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise CompilerNotFoundError(
        "the preload failpoint compiles a small C shim on first use, but no C compiler was found: "
        "none of $CC, cc, gcc or clang is on PATH (install one, e.g. `apt-get install gcc`, or set $CC)"
    )


def _shim_source() -> bytes:
    return importlib.resources.files(__package__).joinpath(_SHIM_NAME).read_bytes()


def build_shim(*, force: bool = False) -> Path:
    """Compile the shim if needed and return the path of the shared library.

    The library is cached as ``failpoint-shim-<hash>.so`` in :func:`cache_dir`, keyed by the
    source, the flags and the machine, so an upgrade rebuilds it and concurrent builds are safe
    (each writes a temporary file and renames it into place). Raises
    :class:`PreloadUnsupportedError` off Linux, :class:`CompilerNotFoundError` without a
    compiler and :class:`ShimBuildError` when compiling fails.
    """
    if not sys.platform.startswith("linux"):
        raise PreloadUnsupportedError(
            f"the preload failpoint needs Linux (LD_PRELOAD with glibc); this is {sys.platform}. "
            "Use the in-process FailpointVFS (apsw) instead."
        )
    source = _shim_source()
    digest = hashlib.sha256(source + repr((_CFLAGS, platform.machine())).encode()).hexdigest()[:16]
    target = cache_dir() / f"failpoint-shim-{digest}.so"
    with _build_lock:
        if target.exists() and not force:
            return target
        compiler = _find_compiler()
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="corestore-shim-") as tmp:
            src = Path(tmp) / _SHIM_NAME
            src.write_bytes(source)
            out = target.parent / f".{target.name}.{os.getpid()}.tmp"
            argv = [*compiler, *_CFLAGS, "-o", str(out), str(src), "-ldl"]
            logger.info("building the failpoint preload shim: %s", shlex.join(argv))
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                out.unlink(missing_ok=True)
                raise ShimBuildError(
                    f"{shlex.join(argv)} failed with exit status {proc.returncode}:\n{proc.stderr.strip()}"
                )
            os.replace(out, target)
    return target


# -- the control file ----------------------------------------------------------------------


@attrs.frozen
class PreloadRule:
    """One armed rule of the control file (see ``preload_shim.c`` for the format)."""

    id: int
    ops: tuple[str, ...]
    errno: int | str  # a positive errno, or "short" / "eof" for reads
    after: int
    count: int | None
    glob: str

    def line(self) -> str:
        count = -1 if self.count is None else self.count
        return f"{self.id} {','.join(self.ops)} {self.errno} {self.after} {count} {self.glob}"

    @classmethod
    def parse(cls, line: str) -> PreloadRule:
        ident, ops, err, after, count, pattern = line.split(" ", 5)
        return cls(
            id=int(ident),
            ops=tuple(ops.split(",")),
            errno=err if err in _READ_SHAPES else int(err),
            after=int(after),
            count=None if int(count) < 0 else int(count),
            glob=pattern,
        )

    @property
    def errno_name(self) -> str:
        if self.errno in _READ_SHAPES:
            return str(self.errno)
        return errno_names.errorcode.get(int(self.errno), str(self.errno))


def _normalise_ops(op: str | Iterable[str]) -> tuple[str, ...]:
    names = (op,) if isinstance(op, str) else tuple(op)
    out: list[str] = []
    for name in names:
        key = str(name).lower()
        if key in ("any", "*"):
            return PRELOAD_OPS
        key = _OP_ALIASES.get(key, key)
        if key not in PRELOAD_OPS:
            hint = (" (the shim does not wrap fstat: use the FailpointVFS for file-size faults)"
                    if key in ("size", "fstat") else "")
            raise ValueError(f"op {name!r} is not one of {', '.join(PRELOAD_OPS)} (or 'any'){hint}")
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError("op: name at least one operation")
    return tuple(out)


def _resolve_errno(value: int | str, ops: Sequence[str]) -> int | str:
    if isinstance(value, str) and value.lower() in _READ_SHAPES:
        if tuple(ops) != ("read",):
            raise ValueError(f"errno={value!r} (a short read) applies to op='read' only")
        return value.lower()
    if isinstance(value, str):
        number = getattr(errno_names, value.upper(), None)
        if not isinstance(number, int):
            raise ValueError(f"{value!r} is not an errno name (EIO, ENOSPC, EACCES, EROFS ...)")
        return number
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"errno must be a positive errno number or name, got {value!r}")
    return value


def _glob_for(file: str | os.PathLike[str], database: str | None) -> str:
    target = os.fspath(file)
    if target in ("any", "*"):
        return glob.escape(database) + "*" if database else "*"
    if target in _SUFFIX:
        if database:
            return glob.escape(database + _SUFFIX[target])
        if target == "main":
            raise ValueError("file='main' needs database= (the path of the database file)")
        return "*" + _SUFFIX[target]
    if glob.has_magic(target):
        return target
    if not os.path.isabs(target):
        raise ValueError(
            f"file {target!r} is neither a role (main, wal, journal, shm, any), an absolute path nor a glob"
        )
    return glob.escape(os.path.realpath(target))


class PreloadFailpoint:
    """Arms and heals the preload shim through one control file, and runs children under it.

    ``database`` (optional) is the database path that the roles ``"main"``, ``"wal"``,
    ``"journal"``, ``"shm"`` and ``"any"`` refer to; without it ``"wal"`` means any ``*-wal``
    file. The control file is the single source of truth: :meth:`arm` and :meth:`heal` read it,
    change it and replace it under an ``flock`` on ``<control>.lock``, so the parent and the child
    may both arm and heal.
    """

    def __init__(self, control: str | os.PathLike[str], *, database: str | os.PathLike[str] | None = None) -> None:
        self.control = Path(control).absolute()
        self.database = os.path.realpath(os.fspath(database)) if database is not None else None
        self._children: list[ChildProcess] = []

    @classmethod
    def from_env(cls, *, database: str | os.PathLike[str] | None = None) -> PreloadFailpoint:
        """The control of the failpoint this (child) process runs under, from ``$CORESTORE_FAILPOINT_CONTROL``."""
        path = os.environ.get(CONTROL_ENV)
        if not path:
            raise RuntimeError(f"${CONTROL_ENV} is not set: this process does not run under the preload failpoint")
        return cls(path, database=database)

    # -- rules -------------------------------------------------------------------------------

    @property
    def rules(self) -> tuple[PreloadRule, ...]:
        """The rules currently armed (read from the control file)."""
        return tuple(self._read())

    def arm(
        self,
        *,
        op: str | Iterable[str],
        file: str | os.PathLike[str] = "any",
        errno: int | str = "EIO",
        after: int = 0,
        count: int | None = None,
        database: str | os.PathLike[str] | None = None,
    ) -> PreloadRule:
        """Add a rule and return it.

        :param op: ``open``, ``read``, ``write``, ``sync`` (fsync and fdatasync), ``truncate``, a
            list of them, or ``"any"``; libc names (``pread64``, ``fdatasync`` ...) are accepted.
        :param file: a role (``main``, ``wal``, ``journal``, ``shm``, ``any``) relative to
            ``database``, an absolute path, or an ``fnmatch`` glob on the path SQLite opens.
        :param errno: an errno number or name (``"EIO"``, ``"ENOSPC"``, ``"EACCES"``); for op
            ``read`` also ``"short"`` (the first half of the bytes arrive, then end-of-file) or
            ``"eof"`` (end-of-file at once: nothing arrives). SQLite zero-fills what is missing and
            sees SQLITE_IOERR_SHORT_READ either way.
        :param after: let this many matching calls through first.
        :param count: fail this many matching calls, then let them through (None: until healed).
        :param database: overrides the failpoint's ``database`` for the roles.
        """
        ops = _normalise_ops(op)
        err = _resolve_errno(errno, ops)
        if after < 0:
            raise ValueError("after must be >= 0")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 (or None for no limit)")
        db = os.path.realpath(os.fspath(database)) if database is not None else self.database
        pattern = _glob_for(file, db)
        with self._locked():
            rules = self._read()
            rule = PreloadRule(
                id=max((r.id for r in rules), default=0) + 1,
                ops=ops, errno=err, after=after, count=count, glob=pattern,
            )
            self._write([*rules, rule])
        logger.info("preload failpoint armed: %s", rule.line())
        return rule

    def heal(self, rule: PreloadRule | None = None) -> None:
        """Remove one rule, or every rule when none is given."""
        with self._locked():
            rules = [r for r in self._read() if rule is not None and r.id != rule.id]
            self._write(rules)
        logger.info("preload failpoint healed %s", f"rule {rule.id}" if rule is not None else "all rules")

    def _read(self) -> list[PreloadRule]:
        try:
            text = self.control.read_text()
        except FileNotFoundError:
            return []
        return [PreloadRule.parse(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]

    def _write(self, rules: Sequence[PreloadRule]) -> None:
        self.control.parent.mkdir(parents=True, exist_ok=True)
        body = "# corestore preload failpoint: <id> <ops> <errno|short|eof> <after> <count> <glob>\n"
        body += "".join(rule.line() + "\n" for rule in rules)
        fd, tmp = tempfile.mkstemp(prefix=".control-", dir=self.control.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
        # Each version gets an mtime strictly later than the last one: the shim compares
        # (inode, size, mtime), and this way no version can look like the one it read before.
        try:
            previous = self.control.stat().st_mtime_ns
        except FileNotFoundError:
            previous = 0
        stamp = max(time.time_ns(), previous + 1)
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, self.control)

    def _locked(self) -> _FileLock:
        return _FileLock(self.control.with_name(self.control.name + ".lock"))

    # -- children ----------------------------------------------------------------------------

    def run(self, target: Callable[..., Any] | str, *, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
            env: Mapping[str, str] | None = None, timeout_s: float = 60.0,
            cwd: str | os.PathLike[str] | None = None) -> ChildResult:
        """:func:`run_in_child` under this failpoint."""
        return run_in_child(target, control=self, args=args, kwargs=kwargs, env=env, timeout_s=timeout_s, cwd=cwd)

    def start(self, target: Callable[..., Any] | str, *, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
              env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None) -> ChildProcess:
        """:func:`start_child` under this failpoint; :meth:`close` kills children still running."""
        child = start_child(target, control=self, args=args, kwargs=kwargs, env=env, cwd=cwd)
        self._children.append(child)
        return child

    def close(self) -> None:
        """Heal, and kill any child started with :meth:`start` that is still running."""
        for child in self._children:
            child.kill()
        self._children.clear()
        self.heal()

    def __repr__(self) -> str:
        return f"<PreloadFailpoint control={str(self.control)!r} database={self.database!r}>"


class _FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)  # releases the flock


# -- running a child -------------------------------------------------------------------------


@attrs.frozen
class ChildError:
    """What a child's function or script raised: the exception's type (``module.Qualname``),
    message, formatted traceback, and ``details``: the SQLite codes and corestore verdict it
    carried (``sqlite_errorcode``, ``sqlite_errorname``, ``result``, ``extendedresult``,
    ``committed``, ``classification``), and the same for its cause."""

    type: str
    message: str
    traceback: str = ""
    details: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ChildResult:
    """The outcome of a child: exit status, the JSON-decoded return value (``result`` variable for
    a script), captured output, the error if it raised, and the shim's counters at its end
    (``{"seen": {op: n}, "failed": {op: n}}``, None if the shim was not loaded)."""

    returncode: int
    result: Any
    stdout: str
    stderr: str
    error: ChildError | None = None
    counters: Mapping[str, Mapping[str, int]] | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.error is None

    def check(self) -> ChildResult:
        """Return self if the child succeeded, else raise :class:`ChildFailedError` with its
        traceback and stderr."""
        if self.ok:
            return self
        what = f"{self.error.type}: {self.error.message}\n{self.error.traceback}" if self.error else ""
        raise ChildFailedError(
            f"failpoint child exited with status {self.returncode}\n{what}\n--- stderr ---\n{self.stderr}", self
        )


_BOOTSTRAP = (
    "import json, sys\n"
    "payload = json.load(open(sys.argv[1]))\n"
    "sys.path[:] = payload['sys_path']\n"
    "from corestore_contrib.failpoint._child import main\n"
    "sys.exit(main(payload))\n"
)


class ChildProcess:
    """A child started by :func:`start_child`; :meth:`wait` returns its :class:`ChildResult`."""

    def __init__(self, popen: subprocess.Popen[str], workdir: tempfile.TemporaryDirectory[str]) -> None:
        self._popen = popen
        self._workdir = workdir
        self._result: ChildResult | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout_s: float | None = 60.0) -> ChildResult:
        """Wait for the child; on timeout it is killed and ``TimeoutError`` raised with its output."""
        if self._result is not None:
            return self._result
        try:
            stdout, stderr = self._popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            stdout, stderr = self._popen.communicate()
            self._workdir.cleanup()
            raise TimeoutError(
                f"failpoint child {self.pid} did not finish within {timeout_s} s and was killed\n"
                f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            ) from None
        self._result = _collect(self._popen.returncode, stdout, stderr, Path(self._workdir.name) / "result.json")
        self._workdir.cleanup()
        return self._result

    def kill(self) -> None:
        """Kill the child if it still runs (idempotent)."""
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.communicate()
        self._workdir.cleanup()


def _target_spec(target: Callable[..., Any] | str) -> dict[str, Any]:
    if isinstance(target, str):
        return {"kind": "script", "script": target}
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ValueError(
            f"{target!r} cannot be imported by a child process: define it at module level of an "
            "importable module (not __main__, not a lambda or nested function), or pass a script string"
        )
    return {"kind": "callable", "module": module, "qualname": qualname}


def _control_path(control: PreloadFailpoint | str | os.PathLike[str]) -> str:
    path = control.control if isinstance(control, PreloadFailpoint) else Path(control)
    return str(path.absolute())


def start_child(
    target: Callable[..., Any] | str,
    *,
    control: PreloadFailpoint | str | os.PathLike[str],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> ChildProcess:
    """Start ``target`` in a child Python (``sys.executable``) with the shim preloaded.

    ``target`` is a module-level function, called as ``target(*args, **kwargs)`` (both JSON
    values), or a script string, run with ``args`` and ``kwargs`` in its namespace and returning
    its ``result`` variable. The child gets this process's ``sys.path``, the environment plus
    ``env``, ``LD_PRELOAD`` (prepended to any existing one) and ``$CORESTORE_FAILPOINT_CONTROL``.
    """
    shim = build_shim()
    spec = _target_spec(target)
    workdir = tempfile.TemporaryDirectory(prefix="corestore-child-")
    payload = {
        **spec,
        "args": list(args),
        "kwargs": dict(kwargs or {}),
        "sys_path": [p for p in sys.path],
        "result_path": str(Path(workdir.name) / "result.json"),
    }
    payload_path = Path(workdir.name) / "payload.json"
    try:
        payload_path.write_text(json.dumps(payload))
    except TypeError as err:
        workdir.cleanup()
        raise TypeError(f"args and kwargs for a failpoint child must be JSON values: {err}") from None
    child_env = dict(os.environ)
    child_env.update(env or {})
    preload = child_env.get("LD_PRELOAD", "")
    child_env["LD_PRELOAD"] = f"{shim} {preload}".strip()
    child_env[CONTROL_ENV] = _control_path(control)
    popen = subprocess.Popen(
        [sys.executable, "-c", _BOOTSTRAP, str(payload_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env, cwd=cwd,
    )
    logger.debug("failpoint child %d started for %s", popen.pid, spec.get("qualname", "<script>"))
    return ChildProcess(popen, workdir)


def run_in_child(
    target: Callable[..., Any] | str,
    *,
    control: PreloadFailpoint | str | os.PathLike[str],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    cwd: str | os.PathLike[str] | None = None,
) -> ChildResult:
    """Run ``target`` in a child under the preload failpoint and return its :class:`ChildResult`
    (see :func:`start_child`). A child that raises is a result with ``error`` set and
    ``returncode`` 1, not an exception here; call :meth:`ChildResult.check` to raise instead."""
    return start_child(target, control=control, args=args, kwargs=kwargs, env=env, cwd=cwd).wait(timeout_s)


def _collect(returncode: int, stdout: str, stderr: str, result_path: Path) -> ChildResult:
    try:
        report = json.loads(result_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return ChildResult(
            returncode=returncode, result=None, stdout=stdout, stderr=stderr,
            error=ChildError(
                type="ChildCrashed",
                message=f"the child exited with status {returncode} without reporting a result",
            ),
        )
    error = None
    if not report.get("ok"):
        raw = report.get("error") or {}
        error = ChildError(
            type=raw.get("type", "?"), message=raw.get("message", ""),
            traceback=raw.get("traceback", ""), details=raw.get("details", {}),
        )
    return ChildResult(
        returncode=returncode, result=report.get("result"), stdout=stdout, stderr=stderr,
        error=error, counters=report.get("counters"),
    )


def preload_counters() -> dict[str, dict[str, int]] | None:
    """In a process running under the shim: ``{"seen": {op: n}, "failed": {op: n}}`` so far.
    None when the shim is not loaded in this process."""
    import ctypes

    try:
        lib = ctypes.CDLL(None)
        seen = (ctypes.c_long * len(PRELOAD_OPS)).in_dll(lib, "corestore_fp_seen")
        failed = (ctypes.c_long * len(PRELOAD_OPS)).in_dll(lib, "corestore_fp_failed")
    except (OSError, ValueError):
        return None
    return {
        "seen": {op: int(seen[i]) for i, op in enumerate(PRELOAD_OPS)},
        "failed": {op: int(failed[i]) for i, op in enumerate(PRELOAD_OPS)},
    }
