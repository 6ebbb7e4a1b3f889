"""A throwaway PostgreSQL cluster for drills that stop, restart or kill a server.

The shared server on 127.0.0.1:5432 must never be restarted under other tests, so a drill that
needs a server to go away makes its own: :class:`PgCluster` runs ``initdb`` into a temporary
directory, starts ``postgres`` on a free port of 127.0.0.1 with trust authentication (and its
socket in that directory, not in /var/run/postgresql), and :meth:`PgCluster.stop` /
:meth:`PgCluster.start` / :meth:`PgCluster.restart` it with ``pg_ctl`` (every wait bounded:
``pg_ctl -w -t``, and a ``subprocess`` timeout above it). :meth:`PgCluster.remove` stops it and
deletes the directory; the :func:`pg_cluster` context manager does that at the end whatever
happened.

``initdb`` refuses to run as root, so as root every server program runs as the ``postgres``
user (``runuser -u postgres --``) and the directory is handed to that user first.

Where the programs are: the newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout),
else ``initdb`` / ``pg_ctl`` on ``PATH``. When there are none, :func:`require_cluster_tools`
skips the test with the reason — except under ``CORESTORE_REQUIRE_POSTGRES=1`` (``.ci/run``),
where a missing tool fails it.

Use it as a module (``from pgcluster import pg_cluster``), or through a fixture::

    @pytest.fixture
    def cluster(tmp_path):
        with pg_cluster() as c:
            yield c
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

__all__ = ["PgCluster", "ClusterTools", "find_cluster_tools", "require_cluster_tools", "pg_cluster", "free_port"]

logger = logging.getLogger(__name__)

#: seconds pg_ctl may wait for a start or a stop (``pg_ctl -t``)
PG_CTL_WAIT_S = 60
_RUN_USER = "postgres"


class ClusterTools:
    """Where ``initdb`` and ``pg_ctl`` are, and the user to run them as (None: this one)."""

    def __init__(self, bindir: str | None, initdb: str, pg_ctl: str, user: str | None) -> None:
        self.bindir = bindir
        self.initdb = initdb
        self.pg_ctl = pg_ctl
        self.user = user

    def program(self, name: str) -> str:
        """The path of another server program (``pg_basebackup``...) beside initdb."""
        beside = os.path.join(os.path.dirname(self.initdb), name)
        if os.access(beside, os.X_OK):
            return beside
        found = shutil.which(name)
        if found is None:
            raise AssertionError(f"{name} not found beside {self.initdb} nor on PATH")
        return found

    def command(self, program: str, *args: str) -> list[str]:
        """``program args`` as the user the server must run as."""
        cmd = [program, *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return cmd

    def __repr__(self) -> str:
        return f"<ClusterTools {self.initdb} as {self.user or 'this user'}>"


def find_cluster_tools() -> tuple[ClusterTools | None, str]:
    """The tools, or None and the reason they cannot be used."""
    initdb = pg_ctl = None
    bindir = None
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[-2].split(".")])
    for candidate in reversed(versions):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK) and os.access(os.path.join(candidate, "pg_ctl"), os.X_OK):
            bindir = candidate
            initdb, pg_ctl = os.path.join(candidate, "initdb"), os.path.join(candidate, "pg_ctl")
            break
    if initdb is None:
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        return None, "no initdb/pg_ctl (looked in /usr/lib/postgresql/*/bin and on PATH): install PostgreSQL's server package"
    user: str | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pwd.getpwnam(_RUN_USER)
        except KeyError:
            return None, f"running as root and there is no {_RUN_USER!r} user to run initdb as"
        if shutil.which("runuser") is None:
            return None, "running as root and there is no runuser to run initdb as the postgres user"
        user = _RUN_USER
    return ClusterTools(bindir, initdb, pg_ctl, user), ""


def require_cluster_tools() -> ClusterTools:
    """The tools, or skip the test with the reason (fail under ``CORESTORE_REQUIRE_POSTGRES=1``)."""
    tools, reason = find_cluster_tools()
    if tools is None:
        if os.environ.get("CORESTORE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CORESTORE_REQUIRE_POSTGRES=1 but a throwaway cluster cannot be made: {reason}")
        pytest.skip(f"throwaway PostgreSQL cluster unavailable: {reason}")
    return tools


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One throwaway cluster: a data directory, a port, trust authentication on 127.0.0.1."""

    def __init__(self, tools: ClusterTools, *, port: int | None = None, base: str | None = None) -> None:
        self.tools = tools
        self.base = tempfile.mkdtemp(prefix="corestore-pgcluster-", dir=base)
        self.datadir = os.path.join(self.base, "data")
        self.logfile = os.path.join(self.base, "server.log")
        self.port = port if port is not None else free_port()
        self.running = False
        self._initialised = False

    @property
    def url(self) -> str:
        """The URL of its ``postgres`` database (user ``postgres``, no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        cmd = self.tools.command(program, *args)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"{' '.join(cmd)} did not finish within {timeout} s ({self.log_tail()})") from err
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]} "
                                 f"{self.log_tail()}")
        return done

    def log_tail(self, chars: int = 1500) -> str:
        """The end of the server's log (for error messages)."""
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return "no server log"
        return "server log: ..." + text[-chars:]

    def init(self) -> PgCluster:
        """``initdb`` (trust authentication, UTF8, no fsync of the new files: it is thrown away)."""
        if self.tools.user is not None:
            entry = pwd.getpwnam(self.tools.user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        os.chmod(self.base, 0o700)
        self._run(self.tools.initdb, "-D", self.datadir, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions", timeout=PG_CTL_WAIT_S * 2)
        self._initialised = True
        return self

    def start(self) -> None:
        """Start the server and wait (bounded) until it accepts connections."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off "
                   "-c max_connections=40 -c shared_buffers=16MB")
        self._run(self.tools.pg_ctl, "-D", self.datadir, "-l", self.logfile, "-o", options, "-w",
                  "-t", str(PG_CTL_WAIT_S), "start", timeout=PG_CTL_WAIT_S + 15)
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast``; ``immediate`` is a crash: no checkpoint,
        recovery at the next start) and wait, bounded, until it is gone."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"pg_ctl stop mode {mode!r}; allowed: smart, fast, immediate")
        self._run(self.tools.pg_ctl, "-D", self.datadir, "-m", mode, "-w", "-t", str(PG_CTL_WAIT_S), "stop",
                  timeout=PG_CTL_WAIT_S + 15)
        self.running = False

    def make_standby(self) -> PgCluster:
        """A new cluster made from this running one with ``pg_basebackup -R`` (streaming
        replication, trust on 127.0.0.1 as initdb set it up): start it, and it is a hot standby
        (``pg_is_in_recovery()``) following this one. Remove it with :meth:`remove`."""
        standby = PgCluster(self.tools)
        if self.tools.user is not None:
            entry = pwd.getpwnam(self.tools.user)
            os.chown(standby.base, entry.pw_uid, entry.pw_gid)
        os.chmod(standby.base, 0o700)
        standby._run(self.tools.program("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                     "-D", standby.datadir, "-R", "-X", "stream", "--no-sync", timeout=PG_CTL_WAIT_S * 2)
        standby._initialised = True
        return standby

    def restart(self, mode: str = "fast") -> None:
        """:meth:`stop` then :meth:`start` (same port)."""
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        """Stop the server if it runs (immediate: nothing to keep) and delete the directory."""
        try:
            if self.running or (self._initialised and os.path.exists(os.path.join(self.datadir, "postmaster.pid"))):
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<PgCluster 127.0.0.1:{self.port} {self.datadir} {'running' if self.running else 'stopped'}>"


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A started throwaway cluster, stopped and removed at the end (skips the test when the
    tools are missing; see :func:`require_cluster_tools`)."""
    tools = require_cluster_tools()
    cluster = PgCluster(tools)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
