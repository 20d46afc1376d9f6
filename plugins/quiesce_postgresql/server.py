"""Throwaway PostgreSQL servers started from the binaries installed on this machine.

``LocalPostgres(layout)`` runs ``initdb`` (WAL in ``layout.log_dir`` through ``--waldir``) and
``postgres -D ...`` directly - not pg_ctl - in its own process group, listening on 127.0.0.1 on
a free port and on a Unix socket in ``layout.run_dir``, logging to ``run_dir/postgres.log``.
As root, every server process (initdb, postgres, pg_basebackup) runs as the ``postgres`` user
and the directories are chowned to it; PostgreSQL refuses to run as root.

``LocalPostgres.open_existing(layout)`` starts a server on a data directory that already
exists - typically a restored COPY of a snapshot at other paths: it repoints the ``pg_wal``
symlink at ``layout.log_dir``, removes a ``postmaster.pid`` that does not belong to a live
server of that directory, fixes ownership and modes, starts, and times the WAL replay
(``recovery_seconds``).

Throwaway settings: ``-A trust`` authentication on 127.0.0.1 and the socket only, small
shared_buffers. Never point this at a production data directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quiesce.errors import EngineUnavailable, ServerError
from quiesce.harness.servers.base import (
    ConnectionInfo,
    ServerLayout,
    check_reachable,
    chown_tree,
    find_binary,
    free_port,
)
from quiesce.harness.servers.process import ServiceProcess
from quiesce_postgresql.datadir import live_postmaster

if TYPE_CHECKING:
    import psycopg

SERVICE_USER = "postgres"
ACCOUNT_HINT = "install the postgresql package (it creates the user) or useradd postgres"
SUPERUSER = "postgres"
INSTALL_HINT = ("install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql), "
                "or put its bin directory on PATH")
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; ".s.PGSQL.<port>" must fit as well
DEFAULT_SETTINGS: dict[str, str] = {
    "shared_buffers": "32MB",
    "max_connections": "40",
    "max_wal_senders": "5",
    "wal_level": "replica",
    "fsync": "on",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] %q%a ",
    "dynamic_shared_memory_type": "posix",
}


def candidate_bindirs() -> list[str]:
    """Where PostgreSQL server binaries may be: pg_config --bindir, Debian's versioned dirs."""
    dirs: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=False)
            if out.returncode == 0 and out.stdout.strip():
                dirs.append(out.stdout.strip())
    versioned = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        match = re.match(r"^(\d+)", path.parent.name)
        if match:
            versioned.append((int(match.group(1)), str(path)))
    dirs.extend(path for _, path in sorted(versioned, reverse=True))
    dirs.extend(str(p) for p in sorted(Path("/usr").glob("pgsql-*/bin"), reverse=True))  # RPM
    seen: list[str] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def find_bindir(bindir: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding ``initdb`` and ``postgres`` (the newest Debian version first)."""
    if bindir:  # an explicit choice is strict: no fallback to PATH
        found = Path(bindir)
        if not os.access(found / "initdb", os.X_OK):
            raise EngineUnavailable(f"no PostgreSQL initdb binary in {found / 'initdb'}",
                                    hint=INSTALL_HINT)
    else:
        initdb = find_binary(["initdb"], candidate_bindirs(), what="PostgreSQL initdb",
                             install_hint=INSTALL_HINT)
        found = Path(initdb).resolve().parent  # /usr/local/bin/initdb may be a link
    if not (found / "postgres").is_file():
        raise EngineUnavailable(f"{found} has initdb but no postgres binary",
                                hint=INSTALL_HINT)
    return found


class LocalPostgres(ServiceProcess):
    """One throwaway PostgreSQL server owned by a test or the drill."""

    engine = "postgresql"
    backend = "local"
    service_user = SERVICE_USER
    account_hint = ACCOUNT_HINT
    stop_signal = signal.SIGINT  # fast shutdown

    def __init__(self, layout: ServerLayout, *, port: int | None = None,
                 bindir: str | os.PathLike[str] | None = None,
                 settings: Mapping[str, str] | None = None,
                 start_timeout: float = 120.0, initdb_args: Sequence[str] = ()) -> None:
        self.bindir = find_bindir(bindir)
        self.port = port or free_port()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.initdb_args = list(initdb_args)
        self._version: str | None = None
        super().__init__(layout, start_timeout=start_timeout)

    # ------------------------------------------------------------------ info
    @property
    def log_file(self) -> Path:
        return self.run_dir / "postgres.log"

    def bin(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def version(self) -> str:
        if self._version is None:
            out = subprocess.run([self.bin("postgres"), "--version"], capture_output=True,
                                 text=True, timeout=30, check=True)
            match = re.search(r"(\d+(?:\.\d+)*)", out.stdout)
            self._version = match.group(1) if match else out.stdout.strip()
        return self._version

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def connection(self) -> ConnectionInfo:
        return ConnectionInfo(host="127.0.0.1", port=self.port, user=SUPERUSER,
                              database="postgres", unix_socket=str(self.run_dir),
                              extra={"conninfo": self.conninfo})

    @property
    def conninfo(self) -> str:
        """libpq string over TCP as the superuser (trust authentication)."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"

    @property
    def socket_conninfo(self) -> str:
        return f"host={self.run_dir} port={self.port} user={SUPERUSER} dbname=postgres"

    def dsn(self, *, user: str = SUPERUSER, dbname: str = "postgres",
            tcp: bool = False) -> str:
        """libpq string for ``user``: over the Unix socket by default (trust even when TCP
        authentication was tightened with ``initdb_args``), over 127.0.0.1 with ``tcp``."""
        host = "127.0.0.1" if tcp else str(self.run_dir)
        return f"host={host} port={self.port} user={user} dbname={dbname}"

    @property
    def what(self) -> str:
        return "postgres"

    # ------------------------------------------------------------------ processes
    def search_path(self) -> str:
        return f"{self.bindir}:/usr/bin:/bin"

    def _prepare_dirs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.run_dir)) + len(f"/.s.PGSQL.{self.port}") > MAX_SOCKET_PATH:
            raise ServerError(f"run_dir {self.run_dir} is too long for a Unix socket path",
                             hint="use a shorter run directory (e.g. under /tmp)")
        os.chmod(self.run_dir, 0o700)
        chown_tree(self.run_dir, self.ids)
        for path in (self.data_dir, self.log_dir, self.run_dir):
            if path is not None:
                path.mkdir(parents=True, exist_ok=True)
                check_reachable(path, self.ids, SERVICE_USER)

    def initdb(self) -> None:
        """Create the cluster: WAL in log_dir (``--waldir``) when the layout has one."""
        self._prepare_dirs()
        for path in (self.data_dir, self.log_dir):
            if path is None:
                continue
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
            if self.ids is not None:
                os.chown(path, *self.ids)
        argv = [self.bin("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync"]
        if self.log_dir is not None:
            argv += ["--waldir", str(self.log_dir)]
        argv += self.initdb_args
        self._run(argv, timeout=300, what="initdb")

    def start(self) -> None:
        """initdb if the data directory is empty, then start and wait until ready."""
        if self.running:
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self.initdb()
        else:
            self._prepare_dirs()
        self._launch()

    def _launch(self) -> None:
        argv = [self.bin("postgres"), "-D", str(self.data_dir),
                "-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.run_dir}"]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        self._spawn(argv, self.log_file)

    def probe(self) -> str | None:
        """None once ``SELECT 1`` works over the socket (WAL replay done)."""
        import psycopg

        try:
            with psycopg.connect(self.socket_conninfo, connect_timeout=2,
                                 autocommit=True) as conn:
                conn.execute("SELECT 1")
                return None
        except psycopg.Error as exc:
            return str(exc).strip()

    # ------------------------------------------------------------------ restore
    def adopt(self) -> None:
        """Make a copied data directory startable here (see :meth:`open_existing`).

        The pg_wal symlink is repointed at ``layout.log_dir`` when the layout has one, a
        ``postmaster.pid`` that is not a live server of this directory is removed, ownership
        and modes are fixed.
        """
        data = self.data_dir
        if not (data / "PG_VERSION").is_file():
            raise ServerError(f"{data} is not a PostgreSQL data directory (no PG_VERSION)")
        live = live_postmaster(data)
        if live is not None:
            raise ServerError(f"{data} belongs to a running postmaster (pid {live})",
                             hint="stop that server first; never start two on one directory")
        with contextlib.suppress(FileNotFoundError):
            (data / "postmaster.pid").unlink()
        wal_link = data / "pg_wal"
        if self.log_dir is not None:
            if wal_link.is_symlink():
                if os.readlink(wal_link) != str(self.log_dir):
                    wal_link.unlink()
                    wal_link.symlink_to(self.log_dir)
            elif wal_link.resolve() != self.log_dir.resolve():
                raise ServerError(
                    f"{wal_link} is a directory, but the layout puts WAL in {self.log_dir}",
                    hint="give a layout without log_dir, or a data dir whose pg_wal is a link")
            if not self.log_dir.is_dir():
                raise ServerError(f"WAL directory {self.log_dir} does not exist")
            os.chmod(self.log_dir, 0o700)
            chown_tree(self.log_dir, self.ids)
        os.chmod(data, 0o700)
        chown_tree(data, self.ids)

    # ------------------------------------------------------------------ helpers for tests
    def connect(self, *, autocommit: bool = True, user: str = SUPERUSER,
                dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection:
        import psycopg

        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(user=user, dbname=dbname), autocommit=autocommit,
                               **kwargs)

    def execute(self, sql: str, params: Sequence[Any] = (), *,
                dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """One statement on a fresh superuser connection; returns its rows."""
        with self.connect(dbname=dbname) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def backends(self, application_name: str) -> list[int]:
        rows = self.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,))
        return [int(r[0]) for r in rows]

    def terminate_backends(self, application_name: str = "quiesce") -> int:
        """pg_terminate_backend every session with that application_name; returns how many."""
        rows = self.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()", (application_name,))
        return int(rows[0][0])

    def create_replica(self, layout: ServerLayout, **kwargs: Any) -> LocalPostgres:
        """pg_basebackup -R a streaming standby of this server on ``layout`` and start it."""
        replica = type(self)(layout, bindir=self.bindir, **kwargs)
        replica._prepare_dirs()
        for path in (replica.data_dir, replica.log_dir):
            if path is not None:
                path.mkdir(parents=True, exist_ok=True)
                os.chmod(path, 0o700)
                if replica.ids is not None:
                    os.chown(path, *replica.ids)
        argv = [self.bin("pg_basebackup"), "-D", str(replica.data_dir), "-R", "-X", "stream",
                "-c", "fast", "-h", str(self.run_dir), "-p", str(self.port), "-U", SUPERUSER,
                "--no-sync"]
        if replica.log_dir is not None:
            argv += ["--waldir", str(replica.log_dir)]
        replica._run(argv, timeout=300, what="pg_basebackup")
        replica.start()
        return replica

    def amcheck(self, dbname: str = "postgres", timeout: float = 600) -> str:
        """Run pg_amcheck on every relation of ``dbname`` (installs the extension first)."""
        self.execute("CREATE EXTENSION IF NOT EXISTS amcheck", dbname=dbname)
        return self._run([self.bin("pg_amcheck"), "-h", str(self.run_dir), "-p",
                          str(self.port), "-U", SUPERUSER, "--heapallindexed", dbname],
                         timeout=timeout, what="pg_amcheck")
