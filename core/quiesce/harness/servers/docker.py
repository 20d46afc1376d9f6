"""Throwaway database servers in Docker containers (testcontainers), disks bind-mounted.

One generic :class:`DockerServer` runs any engine whose plugin provides a
:class:`DockerProfile` (its ``image.py``, named by its drill target's ``docker_profile``): the
profile knows the engine's port, container plan (environment, command, bind mounts), readiness
probe and default official image, and, when the distribution packages the engine, the recipe of
the image ``quiesce images build`` makes (:mod:`quiesce.harness.images`). This module knows no
engine.

The layout's data dir and log dir (pg_wal / InnoDB redo log / MongoDB journal) are bind-mounted
from the host, so the host can freeze and snapshot them exactly as it would a VM's disks.
Everything inside the container refers to the fixed container paths (``/qdata``, ``/qlog``),
so a restore onto copies of the disks at other host paths needs no repointing: mount the
copies instead.

Containers are named ``quiesce-drill-<engine>-<pid>-<random>`` and labelled
``io.quiesce.drill=1`` with the owning process and host (:data:`LABEL`), so a crashed run's
leftovers can be found (``docker ps -a --filter label=io.quiesce.drill``); a new server removes
the leftovers of dead processes of this host before it starts. ``stop()`` removes the container
and its anonymous volumes on every exit path of its caller.

testcontainers' reaper (Ryuk) is used only when its image is already present: it is never
pulled. testcontainers and docker are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from quiesce.deadline import Deadline
from quiesce.errors import EngineUnavailable, ServerError
from quiesce.harness.servers.base import ConnectionInfo, Server, ServerLayout
from quiesce.processes import pid_alive

if TYPE_CHECKING:
    from quiesce.harness.images import ImageRecipe

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DATA_MOUNT = "/qdata"
LOG_MOUNT = "/qlog"
#: The service user of the official images and of the images quiesce builds.
IMAGE_UID = 999
LABEL = "io.quiesce.drill"
LABEL_PID = "io.quiesce.pid"
LABEL_HOST = "io.quiesce.host"
LABEL_ENGINE = "io.quiesce.engine"


def docker_host() -> str:
    """The engine address the docker client will use."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def docker_client(timeout: float = 60.0) -> Any:
    """A docker SDK client for :func:`docker_host` (the caller closes it)."""
    import docker

    return docker.from_env(timeout=max(1, int(timeout)))


def docker_available(timeout: float = 3.0) -> tuple[bool, str]:
    """(True, where) when a Docker engine answers a ping, else (False, the exact reason)."""
    try:
        import docker  # noqa: F401
        import testcontainers  # noqa: F401 - its absence is a reason to report
    except ImportError as exc:
        return False, (f"the Docker backend needs the docker and testcontainers packages "
                       f"({exc}); install them with: pip install 'quiesce[docker]'")
    host = docker_host()
    try:
        client = docker_client(timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return False, f"no Docker engine at {host}: {exc}"
    return True, f"Docker engine at {host}"


@dataclass
class ContainerPlan:
    """Everything needed to run one engine's container on a layout (pure data, unit-tested)."""

    engine: str
    image: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    # (host path, container path, mode)
    volumes: list[tuple[str, str, str]] = field(default_factory=list)
    # host directories to create (and hand to IMAGE_UID when root) before the start
    host_dirs: list[Path] = field(default_factory=list)
    # (link path on the host, target path inside the container)
    symlinks: list[tuple[Path, str]] = field(default_factory=list)
    user: str = ""
    password: str = ""
    database: str = ""


class DockerProfile:
    """What the Docker backend needs to know about one engine; each engine plugin provides
    one (``quiesce_<engine>.image``). Subclasses set the class attributes and ``plan_env``."""

    engine: str = ""
    port: int = 0
    #: The image used when none is given and quiesce built none (e.g. ``postgres:17``).
    official_image: str = ""
    #: Repository names that identify the engine in an image reference (``postgres``).
    repositories: tuple[str, ...] = ()

    def __init__(self, engine: str | None = None) -> None:
        if engine:
            self.engine = engine

    def plan(self, layout: ServerLayout, *, image: str | None, password: str,
             replset: str | None) -> ContainerPlan:
        """The container for ``layout``: both disks bind-mounted; subclasses add the rest."""
        if replset:
            raise ServerError(f"replset is a MongoDB option, not one of {self.engine}")
        plan = ContainerPlan(self.engine, image or self.official_image, self.port,
                             password=password)
        plan.volumes.append((str(layout.data_dir), DATA_MOUNT, "rw"))
        if layout.log_dir is not None:
            plan.volumes.append((str(layout.log_dir), LOG_MOUNT, "rw"))
        return plan

    def probe(self, info: ConnectionInfo) -> str:
        """Connect once with the engine's driver; return the server version or raise."""
        raise NotImplementedError

    def after_ready(self, server: DockerServer, deadline: Deadline) -> None:
        """Anything to do once the server answers (MongoDB: initiate the replica set)."""

    def connection_extra(self, host: str, port: int) -> dict[str, Any]:
        return {}

    def recipe(self) -> ImageRecipe | None:
        """How ``quiesce images build`` makes this engine's image from the distribution's
        packages; None when the distribution has no package for it."""
        return None


@functools.cache
def docker_profile(engine: str) -> DockerProfile:
    """The profile of ``engine``, from the plugin whose drill target has that name."""
    from quiesce.errors import DrillError
    from quiesce.harness.drill.targets import drill_targets

    try:
        return drill_targets().docker_profile(engine)
    except DrillError as exc:
        raise ServerError(f"unknown engine {engine!r}: {exc}", hint=exc.hint) from exc


def engine_for_image(image: str, engines: tuple[str, ...] | None = None) -> str:
    """The engine an image runs, from its repository name ("library/postgres:16" ->
    postgresql; "quiesce-drill/mariadb:10.11" -> mariadb)."""
    from quiesce.harness.drill.targets import drill_targets

    repo = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    names = engines if engines is not None else tuple(drill_targets().names())
    for name in names:
        with contextlib.suppress(ServerError):
            profile = docker_profile(name)
            if repo == name or repo in profile.repositories:
                return name
    raise ServerError(f"unknown image {image!r}: its repository {repo!r} is none of the "
                      f"engines' images", hint="pass --engine with the engine it runs")


def container_plan(engine: str, layout: ServerLayout, *, image: str | None = None,
                   password: str | None = None, replset: str | None = None) -> ContainerPlan:
    """The container for ``engine`` with the layout's data and log dirs bind-mounted.

    ``password`` (the superuser's; a random one when None) is for a throwaway server only.
    ``image`` None: the engine's official image (the choice between a built and an official
    image is :func:`quiesce.harness.images.resolve_image`'s).
    """
    if password is None:
        password = secrets.token_urlsafe(16)
    return docker_profile(engine).plan(layout, image=image, password=password, replset=replset)


def prepare_host_dirs(plan: ContainerPlan) -> None:
    """Create the plan's host directories and symlinks; chown them to the image user as root."""
    for directory in plan.host_dirs:
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(directory, IMAGE_UID, IMAGE_UID)
    for link, target in plan.symlinks:
        if link.is_symlink():
            if os.readlink(link) == target:
                continue
            link.unlink()
        os.symlink(target, link)
        if os.geteuid() == 0:
            os.lchown(link, IMAGE_UID, IMAGE_UID)


def container_labels(engine: str) -> dict[str, str]:
    return {LABEL: "1", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname(),
            LABEL_ENGINE: engine}


def leftover_containers(client: Any, *, all_hosts: bool = False) -> list[Any]:
    """Containers a quiesce process of this host (any host: ``all_hosts``) started and that
    process is gone."""
    found = []
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        labels = container.labels or {}
        if not all_hosts and labels.get(LABEL_HOST) != socket.gethostname():
            continue
        try:
            pid = int(labels.get(LABEL_PID, ""))
        except ValueError:
            pid = 0
        if all_hosts or not pid or not pid_alive(pid):
            found.append(container)
    return found


def remove_leftovers(client: Any, *, all_hosts: bool = False) -> list[str]:
    """Remove :func:`leftover_containers` (with their anonymous volumes); their names."""
    removed = []
    for container in leftover_containers(client, all_hosts=all_hosts):
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)
            removed.append(container.name)
    return removed


def published_address(ports: dict[str, Any], port: int, host: str | None = None) -> tuple[str,
                                                                                          int]:
    """(host, port) to reach ``port``/tcp from here, from a container's NetworkSettings.Ports.

    An engine bound to one address (``dockerd --ip=127.0.0.1``) publishes there; a wildcard
    binding is reached on 127.0.0.1 for a local engine, on the DOCKER_HOST's host otherwise.
    testcontainers' own guess is not used: where ``/.dockerenv`` exists it assumes it runs
    inside a container and connects to the bridge's gateway.
    """
    bindings = ports.get(f"{port}/tcp") or []
    if not bindings:
        raise ServerError(f"the container publishes no port for {port}/tcp")
    ipv4 = [b for b in bindings if ":" not in (b.get("HostIp") or "")] or bindings
    binding = ipv4[0]
    address = binding.get("HostIp") or ""
    if address in ("", "0.0.0.0", "::"):  # noqa: S104 - reading a binding, not binding
        url = urlparse(host or docker_host())
        address = url.hostname if url.scheme in ("tcp", "http", "https") and url.hostname \
            else "127.0.0.1"
    return address, int(binding["HostPort"])


def _configure_testcontainers(client: Any) -> None:
    """Use Ryuk only when its image is here (it is never pulled); otherwise quiesce's own
    names, labels and cleanup are what removes containers."""
    from testcontainers.core.config import testcontainers_config as config

    if "TESTCONTAINERS_RYUK_DISABLED" in os.environ:
        return
    try:
        client.images.get(config.ryuk_image)
    except Exception:
        config.ryuk_disabled = True


class DockerServer(Server):
    """A database in a container; the data and log dirs are the host's directories."""

    backend = "docker"

    def __init__(self, engine: str, layout: ServerLayout, *, image: str | None = None,
                 password: str | None = None, start_timeout: float = 240.0,
                 replset: str | None = None,
                 probe: Callable[[str, ConnectionInfo], str] | None = None) -> None:
        self.engine = engine
        self.layout = layout
        self.replset = replset
        self.profile = docker_profile(engine)
        self.requested_image = image
        self.plan = container_plan(engine, layout, image=image, password=password,
                                   replset=replset)
        self.start_timeout = start_timeout
        self._probe = probe
        self.container: Any = None
        self._address: tuple[str, int] | None = None
        self._version = ""

    @classmethod
    def open_existing(cls, engine: str, layout: ServerLayout, **kwargs: Any) -> DockerServer:
        """A container on existing (e.g. restored) disks: the entrypoints skip initialisation
        when they find a data directory, and container paths never change."""
        return cls(engine, layout, **kwargs)

    @property
    def version(self) -> str:
        return self._version

    @property
    def name(self) -> str:
        return getattr(self.container, "_name", None) or ""

    @property
    def connection(self) -> ConnectionInfo:
        if self.container is None or self._address is None:
            raise ServerError(f"{self.engine} container is not running")
        host, port = self._address
        extra: dict[str, Any] = {"image": self.plan.image,
                                 **self.profile.connection_extra(host, port)}
        return ConnectionInfo(host=host, port=port, user=self.plan.user,
                              password=self.plan.password, database=self.plan.database,
                              extra=extra)

    def start(self) -> None:
        ok, reason = docker_available()
        if not ok:
            raise EngineUnavailable(reason, hint="start the Docker engine, or use the local "
                                                 "backend (--backend local)")
        from testcontainers.core.container import DockerContainer

        from quiesce.harness.images import resolve_image

        self.plan.image = resolve_image(self.engine, self.requested_image)
        client = docker_client()
        try:
            remove_leftovers(client)
            _configure_testcontainers(client)
        finally:
            client.close()
        prepare_host_dirs(self.plan)
        name = f"quiesce-drill-{self.engine}-{os.getpid()}-{secrets.token_hex(3)}"
        container = (DockerContainer(self.plan.image).with_exposed_ports(self.plan.port)
                     .with_name(name)
                     .with_kwargs(labels=container_labels(self.engine)))
        for key, value in self.plan.env.items():
            container = container.with_env(key, value)
        for host_path, container_path, mode in self.plan.volumes:
            container = container.with_volume_mapping(host_path, container_path, mode)
        if self.plan.command:
            container = container.with_command(self.plan.command)
        # Registered before it exists: a failure (or a signal) inside start() still removes
        # whatever testcontainers created.
        self.container = container
        try:
            container.start()
            wrapped = container.get_wrapped_container()
            wrapped.reload()
            self._address = published_address(wrapped.attrs["NetworkSettings"]["Ports"],
                                               self.plan.port)
            deadline = Deadline(self.start_timeout)
            self._wait_ready(deadline)
            self.profile.after_ready(self, deadline)
        except BaseException:
            self.stop()
            raise

    def _probe_once(self) -> str:
        if self._probe is not None:
            return self._probe(self.engine, self.connection)
        return self.profile.probe(self.connection)

    def _wait_ready(self, deadline: Deadline) -> None:
        last: Exception | None = None
        while not deadline.expired():
            try:
                self._version = self._probe_once()
                return
            except Exception as exc:
                last = exc
            status = ""
            with contextlib.suppress(Exception):
                self.container.reload()
                status = self.container.status
            if status in ("exited", "dead"):
                raise ServerError(f"{self.plan.image} exited while starting; logs:\n"
                                  f"{self.logs_tail()}")
            time.sleep(0.5)
        raise ServerError(f"{self.plan.image} did not accept connections in "
                         f"{deadline.seconds:g}s (last error: {last}); logs:\n"
                         f"{self.logs_tail()}")

    def logs_tail(self, lines: int = 20) -> str:
        try:
            out, err = self.container.get_logs()
        except Exception as exc:
            return f"(no logs: {exc})"
        text = (out + err).decode(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """Remove the container (SIGKILL if it does not stop) and its anonymous volumes."""
        container, self.container = self.container, None
        self._address = None
        if container is None:
            return
        wrapped = getattr(container, "_container", None)
        if wrapped is not None:
            # A clean shutdown first (a restored copy is only reused by tests that ask for
            # it, but a server killed mid-write would log recovery on the next start).
            with contextlib.suppress(Exception):
                wrapped.stop(timeout=30)
        with contextlib.suppress(Exception):
            container.stop()

    def kill(self) -> None:
        """SIGKILL the database (an unclean crash); the container is removed by stop()."""
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.get_wrapped_container().kill()

    def restart(self) -> None:
        if self.container is None:
            self.start()
            return
        wrapped = self.container.get_wrapped_container()
        wrapped.restart(timeout=30)
        wrapped.reload()
        self._address = published_address(wrapped.attrs["NetworkSettings"]["Ports"],
                                          self.plan.port)
        self._wait_ready(Deadline(self.start_timeout))
