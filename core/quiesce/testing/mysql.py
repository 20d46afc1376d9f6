"""pytest fixtures for throwaway MariaDB/MySQL servers (in the spirit of pytest-postgresql).

- ``mysql_layout_factory`` (function scope): ``make() -> ServerLayout`` of fresh directories
  (data, a separate redo-log dir, run dir) the ``mysql`` user can reach - pytest's own
  tmp_path is root-only (0700) - removed when the test ends.
- ``mysql_server_factory`` (function scope): ``make(layout=None, **kwargs) -> LocalMySQL``
  returning a started server; ``kwargs`` go to :class:`~quiesce.servers.mysql.LocalMySQL`
  (``settings={...}``, ``plugins=[...]``, ``port``...). Every server it made is stopped and
  its directories removed when the test ends.
- ``mysql_server`` (session scope): one shared, ready server for tests that neither stop it
  nor leave it locked.

Tests using them skip, with the reason, when no server binary or no PyMySQL is found.
Importing this module imports neither PyMySQL nor the server module.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from quiesce.servers.base import ServerLayout
    from quiesce.servers.mysql import LocalMySQL

__all__ = ["mysql_layout_factory", "mysql_server", "mysql_server_factory"]


def mysql_unavailable_reason() -> str | None:
    """Why a throwaway MariaDB/MySQL server cannot start here, or None when it can."""
    try:
        import pymysql  # noqa: F401
    except ImportError:
        return "PyMySQL is not installed (pip install 'quiesce[mysql]')"
    from quiesce.errors import EngineUnavailable
    from quiesce.servers.mysql import find_server_binary

    try:
        find_server_binary()
    except EngineUnavailable as exc:
        return f"no MariaDB/MySQL server binary: {exc}"
    return None


def _require_mysql() -> None:
    reason = mysql_unavailable_reason()
    if reason:
        pytest.skip(reason)


class _Workspace:
    """Temp directories under /tmp (traversable by the mysql user), removed at the end."""

    def __init__(self) -> None:
        self.roots: list[Path] = []
        self.servers: list[LocalMySQL] = []

    def layout(self) -> ServerLayout:
        from quiesce.servers.base import ServerLayout

        root = Path(tempfile.mkdtemp(prefix="quiesce-my-"))
        root.chmod(0o755)
        self.roots.append(root)
        return ServerLayout(data_dir=root / "data", log_dir=root / "redo", run_dir=root / "run")

    def server(self, layout: ServerLayout | None = None, **kwargs: Any) -> LocalMySQL:
        from quiesce.servers.mysql import LocalMySQL

        server = LocalMySQL(layout or self.layout(), **kwargs)
        self.servers.append(server)
        server.start()
        return server

    def close(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        for root in self.roots:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)


@pytest.fixture
def mysql_layout_factory() -> Iterator[Callable[[], ServerLayout]]:
    workspace = _Workspace()
    try:
        yield workspace.layout
    finally:
        workspace.close()


@pytest.fixture
def mysql_server_factory() -> Iterator[Callable[..., LocalMySQL]]:
    _require_mysql()
    workspace = _Workspace()
    try:
        yield workspace.server
    finally:
        workspace.close()


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[LocalMySQL]:
    _require_mysql()
    workspace = _Workspace()
    try:
        yield workspace.server()
    finally:
        workspace.close()
