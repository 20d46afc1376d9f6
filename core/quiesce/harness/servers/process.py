"""The process mechanics shared by the servers run straight from the installed binaries.

:class:`ServiceProcess` is a :class:`~quiesce.harness.servers.base.Server` whose server runs as one
process (no wrapper, no ``--fork``) in its own process group, as the engine's service account
when we are root. It owns that process: start it and time it until a query works, wait,
stop (the engine's clean-shutdown signal, then SIGKILL of the group), kill (a crash) and
restart, run the engine's tools as the service account, and start a server on an existing
(restored) data directory. An engine's class adds what differs: its binaries, command line,
directory preparation, readiness probe and :meth:`~ServiceProcess.adopt`.
"""

from __future__ import annotations

import abc
import contextlib
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar, Self

from quiesce.deadline import Deadline
from quiesce.errors import ServerError
from quiesce.harness.servers.base import (
    Server,
    ServerLayout,
    read_tail,
    service_account,
    stop_process_group,
)


class ServiceProcess(Server):
    """A local server process this object starts, stops and kills."""

    service_user: ClassVar[str]
    account_hint: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    tools_own_session: ClassVar[bool] = False  # start_new_session for the engine's tools

    def __init__(self, layout: ServerLayout, *, start_timeout: float) -> None:
        """Subclasses call this last: their binary errors come before the account's."""
        self.layout = layout
        self.data_dir = Path(layout.data_dir)
        self.log_dir = Path(layout.log_dir) if layout.log_dir else None
        self.run_dir = Path(layout.run_dir) if layout.run_dir else self.data_dir.parent / "run"
        self.start_timeout = start_timeout
        self.ids = service_account(self.service_user, install_hint=self.account_hint)
        self.proc: subprocess.Popen[bytes] | None = None
        self.recovery_seconds: float | None = None

    # ------------------------------------------------------------------ what an engine adds
    @property
    @abc.abstractmethod
    def log_file(self) -> Path:
        """The server's own log, whose tail goes into every start-up error."""

    @property
    @abc.abstractmethod
    def what(self) -> str:
        """How errors name the server ("postgres", "the mariadb server")."""

    @abc.abstractmethod
    def search_path(self) -> str:
        """PATH for the server and its tools."""

    @abc.abstractmethod
    def probe(self) -> str | None:
        """None once a query works; otherwise why not ("" when there is nothing new to say)."""

    @abc.abstractmethod
    def adopt(self) -> None:
        """Make a copied data directory startable here (see :meth:`open_existing`)."""

    # ------------------------------------------------------------------ info
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return read_tail(self.log_file, lines)

    # ------------------------------------------------------------------ processes
    def _as_service_user(self) -> dict[str, Any]:
        if self.ids is None:
            return {}
        uid, gid = self.ids
        return {"user": uid, "group": gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {"PATH": self.search_path(), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        if self.ids is not None:
            env["HOME"] = pwd.getpwuid(self.ids[0]).pw_dir
        return env

    def _run(self, argv: list[str], *, timeout: float, what: str) -> str:
        """Run one of the engine's tools as the service user; its output is the error."""
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 check=False, cwd="/", env=self._env(),
                                 start_new_session=self.tools_own_session,
                                 **self._as_service_user())
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"{what} did not finish in {timeout:g}s: {' '.join(argv)}") from exc
        if out.returncode != 0:
            raise ServerError(f"{what} failed (exit {out.returncode}): "
                             f"{(out.stderr or out.stdout).strip()[-2000:]}")
        return str(out.stdout)

    def _spawn(self, argv: list[str], output: Path) -> None:
        """Start the server (stdout and stderr appended to ``output``) and wait until a query
        works; ``recovery_seconds`` is the time that took. Stopped again if it never does."""
        with open(output, "ab") as out:
            if self.ids is not None:
                os.fchown(out.fileno(), *self.ids)
            started = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd="/", env=self._env(),
                                         start_new_session=True, **self._as_service_user())
        try:
            self.wait_ready(Deadline(self.start_timeout))
        except BaseException:
            self.stop()
            raise
        self.recovery_seconds = round(time.monotonic() - started, 3)

    def wait_ready(self, deadline: Deadline) -> None:
        """Until a query works (crash recovery done), the server dies, or the deadline."""
        last = ""
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServerError(f"{self.what} exited with status {code} while starting; "
                                 f"log tail:\n{self.log_tail()}")
            why = self.probe()
            if why is None:
                return
            last = why or last
            if deadline.expired():
                raise ServerError(f"{self.what} did not accept connections within "
                                 f"{deadline.seconds:g}s ({last}); log tail:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Clean shutdown (``stop_signal``), then SIGKILL of the group. Idempotent; never
        raises."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(Exception):
            stop_process_group(proc, term=self.stop_signal, grace=60.0)

    def kill(self) -> None:
        """SIGKILL the whole server (a crash): the next start runs crash recovery."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(Exception):
            stop_process_group(proc, term=signal.SIGKILL, grace=10.0)

    def restart(self) -> None:
        """Stop and start on the same port and directories (sessions are lost)."""
        self.stop()
        self.start()

    # ------------------------------------------------------------------ restore
    @classmethod
    def open_existing(cls, layout: ServerLayout, **kwargs: Any) -> Self:
        """Start a server on an existing (e.g. restored, copied) data directory: made
        startable here by :meth:`adopt`; ``recovery_seconds`` holds the time to the first
        query."""
        server = cls(layout, **kwargs)
        server.adopt()
        server.start()
        return server
