"""pytest fixtures for throwaway PostgreSQL servers (in the spirit of pytest-postgresql).

- ``postgresql_server_factory`` (function scope): a callable ``make(**kwargs) -> LocalPostgres``
  returning a started server on fresh directories (data, separate WAL dir, run dir); every
  server it made is stopped and its directories removed when the test ends. ``kwargs`` go to
  :class:`~quiesce_postgresql.server.LocalPostgres` (``settings={...}``, ``port``...); pass
  ``layout=`` to choose the directories yourself.
- ``postgresql_layout_factory`` (function scope): ``make() -> ServerLayout`` of fresh
  directories the server user can reach (pytest's own tmp_path is root-only, mode 0700).
- ``postgresql_server`` (session scope): one shared, ready server for tests that neither stop
  nor break it.

Tests using them skip, with the reason, when no PostgreSQL binaries or no psycopg are found.
Importing this module imports neither psycopg nor the server module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from quiesce.harness.testing.workspace import ServerWorkspace

if TYPE_CHECKING:
    from quiesce.harness.servers.base import ServerLayout
    from quiesce_postgresql.server import LocalPostgres

__all__ = ["postgresql_layout_factory", "postgresql_server", "postgresql_server_factory"]


def _require_postgres() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'quiesce[postgresql]')")
    from quiesce.errors import EngineUnavailable
    from quiesce_postgresql.server import find_bindir

    try:
        find_bindir()
    except EngineUnavailable as exc:
        pytest.skip(f"no PostgreSQL server binaries: {exc}")


def _make(layout: ServerLayout, **kwargs: Any) -> LocalPostgres:
    from quiesce_postgresql.server import LocalPostgres

    return LocalPostgres(layout, **kwargs)


def _workspace() -> ServerWorkspace[LocalPostgres]:
    """Directories under /tmp (the postgres user can reach them), removed at the end."""
    return ServerWorkspace(_make, prefix="quiesce-pg-", log_name="wal")


@pytest.fixture
def postgresql_layout_factory() -> Iterator[Callable[[], ServerLayout]]:
    with _workspace() as workspace:
        yield workspace.layout


@pytest.fixture
def postgresql_server_factory() -> Iterator[Callable[..., LocalPostgres]]:
    _require_postgres()
    with _workspace() as workspace:
        yield workspace.server


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[LocalPostgres]:
    _require_postgres()
    with _workspace() as workspace:
        yield workspace.server()
