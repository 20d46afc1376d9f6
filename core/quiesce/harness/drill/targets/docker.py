"""Docker-backed servers for the drill (thin glue over quiesce.harness.servers.docker)."""

from __future__ import annotations

from quiesce.harness.servers.base import Server, ServerLayout


def docker_status() -> tuple[bool, str]:
    """(available, reason) from the Docker provider; never raises."""
    try:
        from quiesce.harness.servers.docker import docker_available
    except ImportError as exc:
        return False, f"the Docker backend is not available in this build ({exc})"
    return docker_available()


def docker_server(engine: str, image: str | None, layout: ServerLayout, *, fresh: bool) -> Server:
    """A started container whose data/log dirs are ``layout``'s host directories."""
    from quiesce.harness.servers.docker import DockerServer

    server = (DockerServer(engine, layout, image=image) if fresh
              else DockerServer.open_existing(engine, layout, image=image))
    server.start()
    return server
