"""pytest fixtures for throwaway MongoDB servers: a local mongod, else a mongo:7 container.

- ``mongodb_backend`` (session scope): ``"local"`` when a mongod binary is found, ``"docker"``
  when a Docker engine answers; otherwise tests using it skip with the exact reason
  ("no mongod on PATH (looked in ...) and no Docker engine at unix:///var/run/docker.sock: ...").
- ``mongodb_layout_factory`` (function scope): ``make() -> ServerLayout`` of fresh directories
  (data, separate journal dir, run dir), removed at test end.
- ``mongodb_server_factory`` (function scope): ``make(layout=None, replset=None, **kwargs)``
  returning a started server (LocalMongod or DockerServer); all stopped at test end.
- ``mongodb_server`` (session scope): one shared one-member replica set ("rs0") for tests that
  neither stop nor lock-and-forget it.

Importing this module imports neither pymongo nor docker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from quiesce.harness.testing.workspace import ServerWorkspace

if TYPE_CHECKING:
    from quiesce.harness.servers.base import Server, ServerLayout

__all__ = ["mongodb_backend", "mongodb_layout_factory", "mongodb_server",
           "mongodb_server_factory"]


def mongodb_unavailable_reason() -> tuple[str | None, str]:
    """(backend, "") when a MongoDB server can be started here, else (None, the reason)."""
    try:
        import pymongo  # noqa: F401
    except ImportError:
        return None, "pymongo is not installed (pip install 'quiesce[mongodb]')"
    from quiesce.errors import EngineUnavailable
    from quiesce.harness.servers.docker import docker_available
    from quiesce_mongodb.server import find_mongod, mongod_search_dirs

    try:
        find_mongod()
        return "local", ""
    except EngineUnavailable:
        pass
    ok, reason = docker_available()
    if ok:
        from quiesce.harness.images import ImageUnavailable, resolve_image

        try:  # an engine that answers is not enough: it needs a MongoDB image too
            resolve_image("mongodb")
            return "docker", ""
        except ImageUnavailable as exc:
            reason = f"a Docker engine answers but {exc}"
    looked = ", ".join(dict.fromkeys([*mongod_search_dirs(), "/opt/mongodb*/bin"]))
    return None, f"no mongod on PATH (looked in {looked}) and {reason}"


def make_mongodb(backend: str, layout: ServerLayout, *, replset: str | None = None,
                 **kwargs: Any) -> Server:
    """An unstarted MongoDB server of ``backend`` on ``layout``."""
    if backend == "local":
        from quiesce_mongodb.server import LocalMongod

        return LocalMongod(layout, replset=replset, **kwargs)
    from quiesce.harness.servers.docker import DockerServer

    return DockerServer("mongodb", layout, replset=replset, **kwargs)


def _workspace(backend: str | None) -> ServerWorkspace[Server]:
    """Directories under /tmp, removed at the end; servers of ``backend`` (None: none)."""
    make = None if backend is None else functools.partial(make_mongodb, backend)
    return ServerWorkspace(make, prefix="quiesce-mongo-", log_name="journal", mode=None)


@pytest.fixture(scope="session")
def mongodb_backend() -> str:
    backend, reason = mongodb_unavailable_reason()
    if backend is None:
        pytest.skip(reason)
    return backend


@pytest.fixture
def mongodb_layout_factory() -> Iterator[Callable[[], ServerLayout]]:
    with _workspace(None) as workspace:
        yield workspace.layout


@pytest.fixture
def mongodb_server_factory(mongodb_backend: str) -> Iterator[Callable[..., Server]]:
    with _workspace(mongodb_backend) as workspace:
        yield workspace.server


@pytest.fixture(scope="session")
def mongodb_server(mongodb_backend: str) -> Iterator[Server]:
    with _workspace(mongodb_backend) as workspace:
        yield workspace.server(replset="rs0")
