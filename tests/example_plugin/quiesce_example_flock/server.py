"""The example engine's throwaway server (harness side): :mod:`ledgerd` as a child process.

:class:`LedgerServer` starts ``python -I ledgerd.py`` in its own process group, its output
appended to ``server.log`` in the run directory (never on a drill disk), and waits until the
server wrote its port (recovery done) and answers ``ping``. ``stop()`` signals the group
(SIGTERM, then SIGKILL) and is idempotent. :class:`LedgerClient` is one connection to it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from quiesce.deadline import Deadline
from quiesce.errors import ServerError
from quiesce.harness.servers.base import (
    ConnectionInfo,
    Server,
    ServerLayout,
    read_tail,
    stop_process_group,
)

LEDGERD = Path(__file__).with_name("ledgerd.py")
START_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
#: Longer than ledgerd's own lock wait (90 s): an answer always comes first.
REQUEST_TIMEOUT = 120.0


class Refused(Exception):
    """The server answered ``ok: false``: the request wrote nothing."""


class LedgerClient:
    """One TCP connection to a ledgerd; one request at a time."""

    def __init__(self, port: int, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb")

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the answer; Refused if the server said no. An OSError
        or a closed connection means the outcome is unknown."""
        self.sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
        line = self.reader.readline()
        if not line:
            raise ConnectionError("ledgerd closed the connection before answering")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise Refused(str(answer.get("error")))
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
        with contextlib.suppress(OSError):
            self.sock.close()


class LedgerServer(Server):
    engine = "flock"

    def __init__(self, layout: ServerLayout, *, init: bool) -> None:
        self.layout = layout
        self.data_dir = Path(layout.data_dir)
        self.log_dir = Path(layout.log_dir) if layout.log_dir else self.data_dir
        self.run_dir = Path(layout.run_dir) if layout.run_dir else self.data_dir.parent / "run"
        self.init = init
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.recovery_seconds: float | None = None

    @property
    def log_file(self) -> Path:
        return self.run_dir / "server.log"

    @property
    def lock_path(self) -> Path:
        """The file whose exclusive flock stops every commit: the flock engine's ``path``."""
        return self.data_dir / "quiesce.lock"

    @property
    def version(self) -> str:
        return f"ledgerd 0.1 on Python {sys.version.split()[0]}"

    @property
    def connection(self) -> ConnectionInfo:
        return ConnectionInfo(host="127.0.0.1", port=self.port, user="")

    def client(self, timeout: float = REQUEST_TIMEOUT) -> LedgerClient:
        return LedgerClient(self.port, timeout=timeout)

    def start(self) -> None:
        if self.proc is not None:
            return
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        port_file = self.run_dir / "port"
        port_file.unlink(missing_ok=True)
        argv = [sys.executable, "-I", str(LEDGERD), "--data", str(self.data_dir),
                "--log", str(self.log_dir), "--run", str(self.run_dir)]
        if self.init:
            argv.append("--init")
        started = time.monotonic()
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd="/",
                                         start_new_session=True)
        self.init = False  # a restart recovers what is there
        try:
            self._wait_ready(port_file, Deadline(START_TIMEOUT))
        except BaseException:
            self.stop()
            raise
        self.recovery_seconds = round(time.monotonic() - started, 3)

    def _wait_ready(self, port_file: Path, deadline: Deadline) -> None:
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServerError(f"ledgerd exited with status {self.proc.returncode} while "
                                  f"starting; log tail:\n{read_tail(self.log_file, 20)}")
            with contextlib.suppress(OSError, ValueError):
                self.port = int(port_file.read_text(encoding="ascii"))
                client = self.client(timeout=5)
                try:
                    client.call("ping")
                    return
                finally:
                    client.close()
            if deadline.expired():
                raise ServerError(f"ledgerd did not answer within {deadline.seconds:g}s; log "
                                  f"tail:\n{read_tail(self.log_file, 20)}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL. Idempotent; never raises."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                stop_process_group(proc, grace=10.0)
