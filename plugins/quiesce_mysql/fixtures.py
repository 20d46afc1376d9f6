"""pytest fixtures for throwaway MariaDB/MySQL servers (in the spirit of pytest-postgresql).

- ``mysql_layout_factory`` (function scope): ``make() -> ServerLayout`` of fresh directories
  (data, a separate redo-log dir, run dir) the ``mysql`` user can reach - pytest's own
  tmp_path is root-only (0700) - removed when the test ends.
- ``mysql_server_factory`` (function scope): ``make(layout=None, **kwargs) -> LocalMySQL``
  returning a started server; ``kwargs`` go to :class:`~quiesce_mysql.server.LocalMySQL`
  (``settings={...}``, ``plugins=[...]``, ``port``...). Every server it made is stopped and
  its directories removed when the test ends.
- ``mysql_server`` (session scope): one shared, ready server for tests that neither stop it
  nor leave it locked.

Tests using them skip, with the reason, when no server binary or no PyMySQL is found.
Importing this module imports neither PyMySQL nor the server module.

Helpers for lock tests (not fixtures): :class:`BackgroundStatement` runs one statement in a
thread on its own connection and waits, through the process list, until the server shows it
in a given state - proof that it is blocked by a lock, without sleeping and guessing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from quiesce.harness.testing.workspace import ServerWorkspace

if TYPE_CHECKING:
    from quiesce.harness.servers.base import ServerLayout
    from quiesce_mysql.server import LocalMySQL

__all__ = ["mysql_layout_factory", "mysql_server", "mysql_server_factory"]

# Process-list states of a statement waiting for a backup or global lock.
LOCK_WAIT_STATES = ("Waiting for backup lock", "Waiting for global read lock",
                    "Waiting for commit lock")


def mysql_unavailable_reason() -> str | None:
    """Why a throwaway MariaDB/MySQL server cannot start here, or None when it can."""
    try:
        import pymysql  # noqa: F401
    except ImportError:
        return "PyMySQL is not installed (pip install 'quiesce[mysql]')"
    from quiesce.errors import EngineUnavailable
    from quiesce_mysql.server import find_server_binary

    try:
        find_server_binary()
    except EngineUnavailable as exc:
        return f"no MariaDB/MySQL server binary: {exc}"
    return None


def _require_mysql() -> None:
    reason = mysql_unavailable_reason()
    if reason:
        pytest.skip(reason)


def _make(layout: ServerLayout, **kwargs: Any) -> LocalMySQL:
    from quiesce_mysql.server import LocalMySQL

    return LocalMySQL(layout, **kwargs)


def _workspace() -> ServerWorkspace[LocalMySQL]:
    """Directories under /tmp (the mysql user can reach them), removed at the end."""
    return ServerWorkspace(_make, prefix="quiesce-my-", log_name="redo")


@pytest.fixture
def mysql_layout_factory() -> Iterator[Callable[[], ServerLayout]]:
    with _workspace() as workspace:
        yield workspace.layout


@pytest.fixture
def mysql_server_factory() -> Iterator[Callable[..., LocalMySQL]]:
    _require_mysql()
    with _workspace() as workspace:
        yield workspace.server


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[LocalMySQL]:
    _require_mysql()
    with _workspace() as workspace:
        yield workspace.server()


class BackgroundStatement:
    """One statement run in a background thread on its own connection to ``server``."""

    def __init__(self, server: LocalMySQL, sql: str, *, read_timeout: int = 120) -> None:
        self.server = server
        self.sql = sql
        self.conn = server.connect(read_timeout=read_timeout)
        self.id = int(self.conn.thread_id())
        self.error: BaseException | None = None
        self.done_at: float | None = None  # time.time() when the statement returned
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.execute(self.sql)
            self.done_at = time.time()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()

    def start(self) -> BackgroundStatement:
        self.thread.start()
        return self

    def state(self) -> str | None:
        """The statement's STATE in the process list (None once its thread is gone)."""
        rows = self.server.execute("SELECT STATE FROM information_schema.PROCESSLIST "
                                   "WHERE ID = %s", (self.id,))
        return rows[0][0] if rows else None

    def wait_state(self, states: tuple[str, ...] = LOCK_WAIT_STATES,
                   timeout: float = 30) -> str:
        """Until the server shows the statement in one of ``states``; AssertionError if not."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.state()
            if last in states:
                return last
            if self.finished.is_set():
                raise AssertionError(f"{self.sql!r} finished (error: {self.error!r}) instead "
                                     f"of reaching one of {states}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.sql!r} is in state {last!r}, not one of {states}, "
                                     f"after {timeout}s")
            time.sleep(0.05)

    def join(self, timeout: float = 60) -> None:
        """Until the statement finished; AssertionError if it did not within ``timeout``."""
        if not self.finished.wait(timeout):
            raise AssertionError(f"{self.sql!r} still not finished after {timeout}s "
                                 f"(state {self.state()!r})")

    def close(self) -> None:
        """Kill the statement if it still runs, and close its connection."""
        if not self.finished.is_set():
            with contextlib.suppress(Exception):
                self.server.execute(f"KILL {self.id}")
            self.finished.wait(30)
        with contextlib.suppress(Exception):
            self.conn.close()
