"""The "flock" Quiescer: a real lock another process can observe.

- ``quiesce`` takes ``flock(LOCK_EX)`` on ``path`` (retrying until ``lock_wait_seconds`` or the
  deadline); another process's ``flock(LOCK_EX|LOCK_NB)`` fails while it is held. The kernel
  drops the lock when the holding process dies, like a database session ending.
- ``sticky = true`` also writes ``<path>.held`` containing a random token: a lock that outlives
  the process (as MongoDB's fsyncLock does). ``release``/``abort`` remove it; if the holder
  dies, the guardian calls :func:`recover`, which removes it only if it still holds our token.
- ``check_alive`` raises SessionLost when the locked file was removed or replaced (the lock no
  longer protects anything), the analogue of a server restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from typing import Any

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings, Quiescer
from quiesce.errors import EngineError, LockWaitTimeout, SessionLost


class FlockQuiescer(Quiescer):
    def __init__(self, settings: InstanceSettings) -> None:
        super().__init__(settings)
        self.path = str(settings.options["path"])
        self.fd = -1
        self.token: str | None = None

    def _knob(self, step: str) -> None:
        delay = float(self.settings.options.get(f"{step}_delay", 0) or 0)
        if delay:
            time.sleep(delay)
        if self.settings.options.get("fail_in") == step:
            raise EngineError(f"{step} failed on purpose (fail_in = {step!r})",
                              hint="remove fail_in from the section")

    def prepare(self, deadline: Deadline) -> None:
        self._knob("prepare")
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EngineError(f"cannot open {self.path}: {exc.strerror}",
                              hint="point path at a writable location") from exc

    def quiesce(self, deadline: Deadline) -> None:
        self._knob("quiesce")
        wait = deadline.sooner(float(self.settings.options.get("lock_wait_seconds", 5)))
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                self._mark_waiting()
                if wait.expired():
                    raise LockWaitTimeout(
                        f"{self.path} stayed locked by another process for "
                        f"{wait.seconds:g} s", hint="find the process holding it") from None
                time.sleep(0.02)
        if self.settings.options.get("sticky"):
            self.token = secrets.token_hex(8)
            with open(self.path + ".held", "w", encoding="ascii") as handle:
                handle.write(self.token)

    def _mark_waiting(self) -> None:
        marker = str(self.settings.options.get("waiting_marker") or "")
        if marker and not os.path.exists(marker):
            with open(marker, "w", encoding="ascii"):
                pass

    def check_alive(self) -> None:
        stall = str(self.settings.options.get("stall_checks_while") or "")
        if stall and os.path.exists(stall):
            with open(stall + ".seen", "w", encoding="ascii"):
                pass
            give_up = time.monotonic() + 120
            while os.path.exists(stall) and time.monotonic() < give_up:
                time.sleep(0.05)
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            raise SessionLost(f"{self.path} was removed while locked") from None
        held = os.fstat(self.fd)
        if (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino):
            raise SessionLost(f"{self.path} was replaced while locked")

    def release(self, deadline: Deadline) -> dict[str, Any]:
        self.check_alive()
        self._knob("release")
        late = str(self.settings.options.get("release_imports_from") or "")
        if late:
            import importlib
            import sys

            sys.path.insert(0, late)
            importlib.import_module("quiesce_late_import")
        sticky = self.token is not None
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        self._drop_marker()
        return {"path": self.path, "pid": os.getpid(), "sticky": sticky}

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            if self.fd >= 0:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        self._drop_marker()

    def _drop_marker(self) -> None:
        if self.token is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + ".held")
            self.token = None

    def recovery_token(self) -> dict[str, Any] | None:
        if self.token is None:
            return None
        return {"marker": self.path + ".held", "token": self.token}

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def recover(settings: InstanceSettings, token: dict[str, Any]) -> None:
    """Remove the marker a dead holder left, but only if it is still ours."""
    marker = str(token["marker"])
    try:
        with open(marker, encoding="ascii") as handle:
            current = handle.read().strip()
    except FileNotFoundError:
        return
    if current == token["token"]:
        os.unlink(marker)
