"""The Docker backend's availability, for the drill (thin glue over
quiesce.harness.servers.docker and quiesce.harness.images)."""

from __future__ import annotations


def docker_status() -> tuple[bool, str]:
    """(available, reason) from the Docker provider; never raises."""
    try:
        from quiesce.harness.servers.docker import docker_available
    except ImportError as exc:
        return False, f"the Docker backend is not available in this build ({exc})"
    return docker_available()


def docker_image(engine: str, requested: str | None) -> str:
    """The image the drill's containers run (present in the engine; pulled if it must be), or
    ImageUnavailable with one line naming how to build or pull one."""
    from quiesce.harness.images import resolve_image

    return resolve_image(engine, requested)
