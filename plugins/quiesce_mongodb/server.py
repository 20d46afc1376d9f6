"""A throwaway ``mongod`` started from the installed binary (the drill's local backend).

Layout: ``--dbpath`` is the layout's data_dir; the journal lives on the log disk: MongoDB keeps
it in ``<dbpath>/journal``, so before the first start ``<dbpath>/journal`` is made a symlink to
``<log_dir>/journal``. A restored copy of the disks sits at other paths and its copied symlink
still points at the old log disk: :meth:`LocalMongod.open_existing` repoints it at the new
``log_dir`` before starting. Sockets, pid file and the server log go to run_dir, never to a
disk that gets frozen.

The process runs in its own process group (no ``--fork``), bound to 127.0.0.1 on a free port.
With ``replset`` set it is a one-member replica set (so there is an oplog to record).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quiesce.deadline import Deadline
from quiesce.errors import ServerError
from quiesce.harness.servers.base import (
    ConnectionInfo,
    Server,
    ServerLayout,
    find_binary,
    free_port,
    read_tail,
    stop_process_group,
    wait_for_port,
)

INSTALL_HINT = ("install MongoDB Community Server (Debian/Ubuntu: the mongodb-org-server "
                "package from MongoDB's apt repository, which puts mongod in /usr/bin), or "
                "unpack a MongoDB tarball under /opt/mongodb*/, or use the Docker backend")
JOURNAL = "journal"


def mongod_search_dirs() -> list[str]:
    """Where mongod is looked for before PATH."""
    dirs = ["/usr/bin", "/usr/local/bin"]
    dirs += sorted(glob.glob("/opt/mongodb*/bin"), reverse=True)
    return dirs


def find_mongod() -> str:
    """The mongod binary, or EngineUnavailable listing where it looked."""
    return find_binary(["mongod"], mongod_search_dirs(), what="mongod",
                       install_hint=INSTALL_HINT)


def parse_mongod_version(output: str) -> str:
    """"7.0.14" from ``mongod --version`` output ("db version v7.0.14" ...)."""
    match = re.search(r"db version v?(\d+\.\d+(?:\.\d+)?\S*)", output)
    if not match:
        raise ServerError(f"cannot read the mongod version from: {output[:200]!r}")
    return match.group(1)


def link_journal(data_dir: Path, log_dir: Path | None) -> Path | None:
    """Make ``data_dir/journal`` a symlink to ``log_dir/journal``; repoint a stale one.

    Returns the journal directory on the log disk (None when there is no separate log disk).
    A real ``journal`` directory inside data_dir (data and journal on one disk) is left alone:
    moving it would change what a snapshot of the data disk contains.
    """
    if log_dir is None:
        return None
    target = Path(log_dir) / JOURNAL
    target.mkdir(parents=True, exist_ok=True)
    link = Path(data_dir) / JOURNAL
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return target
        link.unlink()
    elif link.exists():
        raise ServerError(f"{link} is a real directory but the layout puts the journal on "
                         f"{log_dir}", hint="start with a layout whose log_dir is None, or move "
                                            "the journal by hand")
    os.symlink(target, link)
    return target


def mongod_args(binary: str, layout: ServerLayout, port: int, run_dir: Path, *,
                replset: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The mongod command line for a layout (pure: unit-tested)."""
    args = [
        binary,
        "--dbpath", str(layout.data_dir),
        "--port", str(port),
        "--bind_ip", "127.0.0.1",
        "--unixSocketPrefix", str(run_dir),
        "--pidfilepath", str(run_dir / "mongod.pid"),
        "--logpath", str(run_dir / "mongod.log"),
        "--logappend",
        # Small and quiet: a throwaway server on a shared 2-core machine.
        "--wiredTigerCacheSizeGB", "0.25",
        "--setParameter", "diagnosticDataCollectionEnabled=false",
    ]
    if replset:
        args += ["--replSet", replset]
    args += list(extra)
    return args


class LocalMongod(Server):
    """A mongod the caller owns from start to stop."""

    engine = "mongodb"
    backend = "local"

    def __init__(self, layout: ServerLayout, *, binary: str | None = None,
                 port: int | None = None, replset: str | None = None,
                 existing: bool = False, start_timeout: float = 90.0,
                 extra_args: Sequence[str] = ()) -> None:
        self.binary = binary or find_mongod()
        self.layout = layout
        self.port = port or free_port()
        self.replset = replset
        self.existing = existing
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self._own_run_dir: tempfile.TemporaryDirectory[str] | None = None
        if layout.run_dir is None:
            self._own_run_dir = tempfile.TemporaryDirectory(prefix="quiesce-mongod-run-")
            self.run_dir = Path(self._own_run_dir.name)
        else:
            self.run_dir = Path(layout.run_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self._version: str | None = None

    @classmethod
    def open_existing(cls, layout: ServerLayout, **kwargs: Any) -> LocalMongod:
        """A server for an existing (e.g. restored) data dir; the journal link is repointed.

        A replica-set member's data starts standalone unless ``replset`` is given: its stored
        config names the old host:port, so as a member it would never become primary.
        """
        kwargs.setdefault("replset", None)
        return cls(layout, existing=True, **kwargs)

    # -- Server API ------------------------------------------------------------------------

    @property
    def version(self) -> str:
        if self._version is None:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                 timeout=30, check=False)
            self._version = parse_mongod_version(out.stdout + out.stderr)
        return self._version

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / f"mongodb-{self.port}.sock"

    @property
    def connection(self) -> ConnectionInfo:
        return ConnectionInfo(host="127.0.0.1", port=self.port, user="",
                              unix_socket=str(self.socket_path),
                              extra={"uri": self.uri, "replset": self.replset})

    @property
    def log_file(self) -> Path:
        return self.run_dir / "mongod.log"

    def args(self) -> list[str]:
        return mongod_args(self.binary, self.layout, self.port, self.run_dir,
                           replset=self.replset, extra=self.extra_args)

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        data = Path(self.layout.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        link_journal(data, self.layout.log_dir)
        console = open(self.run_dir / "mongod.console", "ab")  # noqa: SIM115 - kept by Popen
        try:
            self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=str(self.run_dir))
        finally:
            console.close()
        deadline = Deadline(self.start_timeout)
        try:
            wait_for_port("127.0.0.1", self.port, deadline, self.proc, what="mongod")
            if self.replset and not self.existing:
                self._initiate(deadline)
            if self.replset:
                self._wait_primary(deadline)
        except BaseException as exc:
            tail = self.log_tail()
            self.stop()
            if isinstance(exc, ServerError):
                raise ServerError(f"{exc}; mongod log tail:\n{tail}") from exc
            raise

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                stop_process_group(proc, term=signal.SIGTERM, grace=20.0)
        if self._own_run_dir is not None:
            with contextlib.suppress(Exception):
                self._own_run_dir.cleanup()
            self._own_run_dir = None

    def kill(self) -> None:
        """SIGKILL the server's process group (an unclean crash, for lost-session tests)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop cleanly and start again on the same directories and port."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process_group(proc, term=signal.SIGTERM, grace=20.0)
        self.existing = True
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        return read_tail(self.log_file, lines)

    # -- drivers ---------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> Any:
        """A pymongo client for this server (the caller closes it)."""
        import pymongo

        options: dict[str, Any] = {"directConnection": True, "serverSelectionTimeoutMS": 10000}
        options.update(kwargs)
        return pymongo.MongoClient("127.0.0.1", self.port, **options)

    def _initiate(self, deadline: Deadline) -> None:
        from pymongo import errors

        config = {"_id": self.replset,
                  "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}]}
        with self.client() as client:
            try:
                client.admin.command({"replSetInitiate": config})
            except errors.OperationFailure as exc:
                if "already initialized" not in str(exc):
                    raise ServerError(f"replSetInitiate failed: {exc}") from exc

    def _wait_primary(self, deadline: Deadline) -> None:
        with self.client() as client:
            while True:
                with contextlib.suppress(Exception):
                    if client.admin.command("hello").get("isWritablePrimary"):
                        return
                if deadline.expired():
                    raise ServerError(f"mongod on port {self.port} did not become primary of "
                                     f"{self.replset} in {deadline.seconds:g}s")
                time.sleep(0.2)
