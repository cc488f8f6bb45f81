"""A throwaway PostgreSQL cluster for the tests: initdb in a temp folder, one ``postgres`` child process on
127.0.0.1 and a free port (plus a unix socket in the folder), a fresh database per test, stopped and
removed at the end of the session.

The server binaries are Debian's (``apt-get install postgresql``): found on PATH or under
/usr/lib/postgresql/<version>/bin. PostgreSQL refuses to run as root, so under root the cluster runs as
the ``postgres`` user (or ``nobody``) and its folder is handed to that user. The server gets the parent-
death signal, so a test run that is killed does not leave it running. Without the binaries the tests
that need it are skipped, saying why, unless SO8T_REQUIRE_POSTGRES=1 (CI), where that is a failure.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REQUIRE_ENV = "SO8T_REQUIRE_POSTGRES"
_cluster: Cluster | None = None


def find_binaries() -> Path | None:
    """The folder holding initdb and postgres, or None."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as(user: pwd.struct_passwd | None):
    """preexec_fn: drop to ``user`` (when root), then ask for SIGINT when the test process dies
    (set after the uid change, which would clear it)."""
    def switch() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    return switch


class Cluster:
    """One running PostgreSQL server; ``database()`` gives a URL to a new, empty database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = None
        if os.geteuid() == 0:
            names = [p.pw_name for p in pwd.getpwall()]
            self.user = pwd.getpwnam("postgres" if "postgres" in names else "nobody")
        self.root = Path(tempfile.mkdtemp(prefix="so8t-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sock"
        self.sockets.mkdir()
        if self.user is not None:
            for path in (self.root, self.sockets):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = self.root / "postgres.log"

    def _call(self, *args: str) -> None:
        result = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                                preexec_fn=_run_as(self.user), cwd=self.root, timeout=180)
        if result.returncode:
            raise RuntimeError(f"{args[0]} failed: {result.stderr or result.stdout}")

    def start(self) -> Cluster:
        self._call("initdb", "-D", str(self.data), "-U", "so8t", "--auth=trust", "-E", "UTF8", "--no-locale",
                   "--no-sync")
        for _ in range(3):  # a port taken between choosing it and binding it: choose again
            self.port = _free_port()
            log = open(self.log, "ab")
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.sockets}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=80", "-c", "shared_buffers=16MB"],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_run_as(self.user), cwd=self.root)
            log.close()
            if self._wait_ready(60):
                return self
            self.proc.kill()
            self.proc.wait(30)
        raise RuntimeError(f"postgres did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def _wait_ready(self, seconds: float) -> bool:
        import psycopg

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.2)
        return False

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=so8t dbname={dbname}"

    def url(self, dbname: str) -> str:
        return f"postgresql://so8t@127.0.0.1:{self.port}/{dbname}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"q_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)


def cluster() -> Cluster:
    """The session's cluster, started on first use; skips (or fails, under SO8T_REQUIRE_POSTGRES=1)
    when PostgreSQL is not installed."""
    global _cluster
    if _cluster is None:
        bindir = find_binaries()
        if bindir is None:
            reason = "PostgreSQL server binaries not found (apt-get install postgresql)"
            if os.environ.get(REQUIRE_ENV) == "1":
                pytest.fail(f"{reason}, and {REQUIRE_ENV}=1")
            pytest.skip(reason)
        started = Cluster(bindir)
        atexit.register(started.stop)
        _cluster = started.start()
    return _cluster

