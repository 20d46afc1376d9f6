"""Throwaway MySQL/MariaDB servers started from the binaries installed on this machine.

``LocalMySQL(layout)`` initialises a data directory (MariaDB: ``mariadb-install-db``; MySQL:
``mysqld --initialize-insecure``) with the InnoDB redo log in ``layout.log_dir``
(``innodb_log_group_home_dir``), then runs the server directly in its own process group,
listening on 127.0.0.1 on a free port and on a Unix socket in ``layout.run_dir``, with the pid
file and the error log (``mysqld.log``) there too, so nothing but data lives on the data and
log disks. The binary log is on (``log-bin``, relative to the data directory) so binlog
coordinates exist, with ``sync_binlog=1`` and ``innodb_flush_log_at_trx_commit=1`` so every
acknowledged commit is durable - the drill checks exactly that.

As root the server and the initialisation run as the ``mysql`` user (set as the process's
uid/gid, no root process at all) and the directories are chowned to it.

``LocalMySQL.open_existing(layout)`` starts a server on a data directory that already exists,
typically a restored COPY of a snapshot at other paths: the redo log directory is passed
again on the command line (nothing in the data directory records its absolute path; the
binlog index holds paths relative to the data directory), stale pid/socket files are
removed, ownership is fixed, and InnoDB crash recovery runs at start (``recovery_seconds``
times it).

Throwaway settings: ``root`` without a password, no name resolution, small buffer pool. Every
option comes from the command line (``--no-defaults``): no my.cnf of the machine is read. Never
point this at a production data directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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

SERVICE_USER = "mysql"
ACCOUNT_HINT = ("install the mariadb-server or mysql-server package (it creates the user) "
                "or useradd --system mysql")
SUPERUSER = "root"
INSTALL_HINT = ("install a MariaDB or MySQL server (Debian/Ubuntu: apt-get install "
                "mariadb-server), or put the directory holding mariadbd/mysqld on PATH")
SERVER_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/libexec", "/usr/local/mysql/bin",
               "/usr/local/mariadb/bin", "/opt/mysql/bin")
TOOL_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/local/mysql/scripts", "/usr/local/mysql/bin",
             "/usr/local/mariadb/scripts", "/usr/local/mariadb/bin")
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes
SOCKET_NAME = "mysqld.sock"
DEFAULT_SETTINGS: dict[str, str] = {
    "innodb-buffer-pool-size": "64M",
    "max-connections": "200",
    "innodb-flush-log-at-trx-commit": "1",
    "sync-binlog": "1",
    "log-bin": "mysql-bin",
    "server-id": "1",
    "character-set-server": "utf8mb4",
    "lock-wait-timeout": "3600",
}


def find_server_binary(binary: str | os.PathLike[str] | None = None) -> str:
    if binary:
        path = Path(binary)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EngineUnavailable(f"{path} is not an executable server binary",
                                    hint=INSTALL_HINT)
        return str(path)
    return find_binary(["mariadbd", "mysqld"], SERVER_DIRS, what="MariaDB/MySQL server",
                       install_hint=INSTALL_HINT)


def server_flavour(binary: str) -> tuple[str, str]:
    """("mariadb" | "mysql", version) from ``<binary> --version``."""
    try:
        out = subprocess.run([binary, "--no-defaults", "--version"], capture_output=True,
                             text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineUnavailable(f"cannot run {binary} --version: {exc}",
                                hint=INSTALL_HINT) from exc
    text = (out.stdout or out.stderr).strip()
    match = re.search(r"Ver\s+(\d+\.\d+\.\d+)", text) or re.search(r"(\d+\.\d+\.\d+)", text)
    if not match:
        raise EngineUnavailable(f"cannot read a version from {binary} --version: {text!r}",
                                hint=INSTALL_HINT)
    return ("mariadb" if "mariadb" in text.lower() else "mysql"), match.group(1)


def live_server(data_dir: Path) -> int | None:
    """The pid of a mariadbd/mysqld whose working directory is ``data_dir``, or None.

    The server chdirs into its data directory; scanning /proc finds it even when its pid file
    lives elsewhere (as ours does, in run_dir).
    """
    target = os.path.realpath(data_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm not in ("mariadbd", "mysqld"):
                continue
            if os.path.realpath(os.readlink(entry / "cwd")) == target:
                return int(entry.name)
        except OSError:
            continue
    return None


class LocalMySQL(ServiceProcess):
    """One throwaway MariaDB (or MySQL) server owned by a test or the drill."""

    engine = "mysql"
    backend = "local"
    service_user = SERVICE_USER
    account_hint = ACCOUNT_HINT
    tools_own_session = True

    def __init__(self, layout: ServerLayout, *, port: int | None = None,
                 binary: str | os.PathLike[str] | None = None,
                 settings: Mapping[str, str] | None = None,
                 plugins: Sequence[str] = (), start_timeout: float = 180.0) -> None:
        self.binary = find_server_binary(binary)
        self.flavour, self._version = server_flavour(self.binary)
        self.port = port or free_port()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.plugins = list(plugins)
        super().__init__(layout, start_timeout=start_timeout)

    # ------------------------------------------------------------------ info
    @property
    def is_mariadb(self) -> bool:
        return self.flavour == "mariadb"

    @property
    def version(self) -> str:
        return self._version

    @property
    def socket(self) -> Path:
        return self.run_dir / SOCKET_NAME

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "mysqld.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "mysqld.log"

    @property
    def connection(self) -> ConnectionInfo:
        return ConnectionInfo(host="127.0.0.1", port=self.port, user=SUPERUSER,
                              unix_socket=str(self.socket),
                              extra={"flavour": self.flavour})

    @property
    def what(self) -> str:
        return f"the {self.flavour} server"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    def initialized(self) -> bool:
        return (self.data_dir / "mysql").is_dir()

    # ------------------------------------------------------------------ processes
    def search_path(self) -> str:
        return "/usr/sbin:/usr/bin:/sbin:/bin"

    def _prepare_dirs(self) -> None:
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise ServerError(f"run_dir {self.run_dir} is too long for a Unix socket path",
                             hint="use a shorter run directory (e.g. under /tmp)")
        for path in (self.data_dir, self.log_dir, self.run_dir):
            if path is None:
                continue
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o750 if path != self.run_dir else 0o755)
            check_reachable(path, self.ids, SERVICE_USER)
        chown_tree(self.run_dir, self.ids)
        chown_tree(self.data_dir, self.ids)
        if self.log_dir is not None:
            chown_tree(self.log_dir, self.ids)

    def _layout_args(self) -> list[str]:
        args = [f"--datadir={self.data_dir}"]
        if self.log_dir is not None:
            args.append(f"--innodb-log-group-home-dir={self.log_dir}")
        return args

    def initialize(self) -> None:
        """Create the system tables: root@localhost without a password."""
        self._prepare_dirs()
        if any(self.data_dir.iterdir()):
            raise ServerError(f"{self.data_dir} is not empty; refusing to initialise over it",
                             hint="use open_existing() to start a server on existing data")
        if self.is_mariadb:
            tool = find_binary(["mariadb-install-db", "mysql_install_db"],
                               [*TOOL_DIRS, str(Path(self.binary).parent)],
                               what="mariadb-install-db", install_hint=INSTALL_HINT)
            argv = [tool, "--no-defaults", *self._layout_args(),
                    "--auth-root-authentication-method=normal", "--skip-test-db",
                    "--skip-name-resolve", "--innodb-buffer-pool-size=64M"]
        else:
            argv = [self.binary, "--no-defaults", *self._layout_args(),
                    "--initialize-insecure", "--innodb-buffer-pool-size=64M",
                    f"--log-error={self.run_dir / 'initialize.log'}"]
        self._run(argv, timeout=300, what="initialising the data directory")

    def start(self) -> None:
        """Initialise if the data directory is empty, then start and wait until ready."""
        if self.running:
            return
        if not self.initialized():
            self.initialize()
        else:
            self._prepare_dirs()
        self._launch()

    def server_args(self) -> list[str]:
        args = [self.binary, "--no-defaults", *self._layout_args(),
                f"--socket={self.socket}", f"--pid-file={self.pid_file}",
                f"--port={self.port}", "--bind-address=127.0.0.1",
                f"--log-error={self.log_file}", f"--tmpdir={self.run_dir}"]
        if self.is_mariadb:
            args.append("--skip-name-resolve")
        else:
            args.append("--mysqlx=OFF")
        for key, value in self.settings.items():
            args.append(f"--{key}={value}")
        for plugin in self.plugins:
            args.append(f"--plugin-load-add={plugin}.so")
        return args

    def _launch(self) -> None:
        for stale in (self.pid_file, self.socket, Path(f"{self.socket}.lock")):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self._spawn(self.server_args(), self.run_dir / "mysqld.stdout")

    def probe(self) -> str | None:
        """None once ``SELECT 1`` works over the socket (crash recovery done)."""
        import pymysql

        if not self.socket.exists():
            return ""
        try:
            conn = self.connect(connect_timeout=2)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return None
            finally:
                conn.close()
        except pymysql.err.MySQLError as exc:
            return str(exc)

    # ------------------------------------------------------------------ restore
    def adopt(self) -> None:
        """Make a copied data directory startable here (see :meth:`open_existing`).

        The redo log directory comes from ``layout.log_dir`` (passed on the command line, so a
        copy at another path just works), stale pid files are removed (the socket's at each
        start) and ownership is fixed.
        """
        if not self.initialized():
            raise ServerError(f"{self.data_dir} is not a MySQL/MariaDB data directory "
                             "(no mysql/ system schema)")
        live = live_server(self.data_dir)
        if live is not None:
            raise ServerError(f"{self.data_dir} belongs to a running server (pid {live})",
                             hint="stop that server first; never start two on one directory")
        redo_home = self.log_dir or self.data_dir
        if not _has_redo_log(redo_home):
            where = "log_dir" if self.log_dir else "data_dir (the layout has no log_dir)"
            raise ServerError(f"no InnoDB redo log in {redo_home} ({where})",
                             hint="give the layout the directory holding ib_logfile0 or "
                                  "#innodb_redo as log_dir")
        for stale in self.data_dir.glob("*.pid"):
            with contextlib.suppress(OSError):
                stale.unlink()
        self._prepare_dirs()

    # ------------------------------------------------------------------ helpers for tests
    def connect(self, *, user: str = SUPERUSER, password: str = "", database: str | None = None,
                autocommit: bool = True, tcp: bool = False, **kwargs: Any) -> Any:
        """A PyMySQL connection (over the socket unless ``tcp``)."""
        import pymysql

        kwargs.setdefault("connect_timeout", 10)
        kwargs.setdefault("read_timeout", 120)
        kwargs.setdefault("write_timeout", 120)
        where: dict[str, Any] = ({"host": "127.0.0.1", "port": self.port} if tcp
                                 else {"unix_socket": str(self.socket)})
        return pymysql.connect(user=user, password=password, database=database,
                               autocommit=autocommit, charset="utf8mb4", **where, **kwargs)

    def execute(self, sql: str, params: Sequence[Any] | None = None, *,
                database: str | None = None) -> list[tuple[Any, ...]]:
        """One statement on a fresh root connection; returns its rows."""
        conn = self.connect(database=database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def create_user(self, name: str, password: str, grants: Sequence[str]) -> None:
        """CREATE USER name@'%' and GRANT each privilege list (e.g. "RELOAD, PROCESS ON *.*")."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password))
                cur.execute("CREATE USER %s@'localhost' IDENTIFIED BY %s", (name, password))
                for grant in grants:
                    for host in ("%", "localhost"):
                        cur.execute(f"GRANT {grant} TO %s@%s", (name, host))
        finally:
            conn.close()

    def threads(self) -> list[tuple[Any, ...]]:
        """(id, user, command, time, state, info) of every client thread."""
        return self.execute("SELECT ID, USER, COMMAND, TIME, STATE, INFO FROM "
                            "information_schema.PROCESSLIST")

    def check_tables(self, database: str) -> list[tuple[Any, ...]]:
        """CHECK TABLE every base table of ``database``; rows whose Msg_text is not OK."""
        tables = [r[0] for r in self.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
            "AND TABLE_TYPE = 'BASE TABLE'", (database,))]
        bad: list[tuple[Any, ...]] = []
        for table in tables:
            quoted = "`" + database.replace("`", "``") + "`.`" + table.replace("`", "``") + "`"
            for row in self.execute(f"CHECK TABLE {quoted} EXTENDED"):
                if row[2] in ("error", "warning") or (row[2] == "status" and row[3] != "OK"):
                    bad.append(row)
        return bad


def _has_redo_log(directory: Path) -> bool:
    return (directory / "ib_logfile0").exists() or (directory / "#innodb_redo").is_dir()
