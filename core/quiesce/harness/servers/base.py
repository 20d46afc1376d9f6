"""What every throwaway server provides, and the shared helpers to build one.

A server is started on directories it is given (so the drill can put data and WAL/redo/journal
on separate disks), runs in its own process group, and is stopped - killed if it must - by
``stop()``, which is idempotent and safe to call from a ``finally``.
"""

from __future__ import annotations

import abc
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiesce.deadline import Deadline
from quiesce.errors import EngineUnavailable, ServerError


@dataclass
class ServerLayout:
    """Where a server keeps its files. ``log_dir`` may be None: data_dir is used then."""

    data_dir: Path
    log_dir: Path | None = None  # PostgreSQL pg_wal, InnoDB redo log, MongoDB journal
    run_dir: Path | None = None  # sockets, pid files: never on a disk that gets frozen


@dataclass
class ConnectionInfo:
    host: str
    port: int
    user: str
    password: str = ""
    database: str = ""
    unix_socket: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Server(abc.ABC):
    """A database server the drill or a test owns from start to stop."""

    engine: str = ""
    backend: str = "local"

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server (fast shutdown, then kill). Idempotent; never raises."""

    @property
    @abc.abstractmethod
    def version(self) -> str: ...

    @property
    @abc.abstractmethod
    def connection(self) -> ConnectionInfo: ...

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_binary(names: Sequence[str], extra_dirs: Iterable[str | Path] = (), *,
                what: str, install_hint: str) -> str:
    """The first of ``names`` found in ``extra_dirs`` then PATH, or an actionable error."""
    looked: list[str] = []
    for directory in extra_dirs:
        for name in names:
            candidate = Path(directory) / name
            looked.append(str(candidate))
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    looked.append(f"PATH ({', '.join(names)})")
    raise EngineUnavailable(
        f"no {what} binary found; looked in: {', '.join(looked)}", hint=install_hint
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, deadline: Deadline,
                  proc: subprocess.Popen[Any] | None = None, what: str = "server") -> None:
    """Wait until ``host:port`` accepts TCP connections, the process dies, or the deadline."""
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{what} exited with status {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if deadline.expired():
            raise ServerError(f"{what} did not accept connections on {host}:{port} in "
                             f"{deadline.seconds:g}s")
        time.sleep(0.05)


def stop_process_group(proc: subprocess.Popen[Any], *, term: int = signal.SIGTERM,
                       grace: float = 10.0) -> None:
    """Signal a process started with ``start_new_session=True`` and its whole group; then kill."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, term)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def service_account(user: str, *, install_hint: str) -> tuple[int, int] | None:
    """(uid, gid) a server must run as when we are root (it refuses root); None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise EngineUnavailable(
            f"running as root but there is no {user!r} user to run the server as",
            hint=install_hint,
        ) from exc
    return entry.pw_uid, entry.pw_gid


def check_reachable(path: Path, ids: tuple[int, int] | None, user: str) -> None:
    """Every parent of ``path`` must be searchable by the service account ``ids``."""
    if ids is None:
        return
    uid, gid = ids
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise ServerError(
                f"the {user} user cannot reach {path}: {parent} is mode "
                f"{st.st_mode & 0o777:o}",
                hint=f"put the server's directories somewhere {user} can traverse "
                     "(e.g. a directory made with tempfile.mkdtemp() under /tmp, chmod 755)",
            )


def chown_tree(path: Path, ids: tuple[int, int] | None) -> None:
    """Give ``path`` and everything below it to the service account (no-op when not root)."""
    if ids is None:
        return
    uid, gid = ids
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def read_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a server's log, or "(no log)" when it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


