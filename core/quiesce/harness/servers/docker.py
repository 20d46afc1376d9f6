"""Throwaway database servers in Docker containers (testcontainers), disks bind-mounted.

One generic :class:`DockerServer` serves the official images ``postgres:16``/``postgres:17``,
``mysql:8.4``, ``mariadb:11`` and ``mongo:7`` (or any tag of those repositories). The layout's
data dir and log dir (pg_wal / InnoDB redo log / MongoDB journal) are bind-mounted from the
host, so the host can freeze and snapshot them exactly as it would a VM's disks. Everything
inside the container refers to the fixed container paths (``/qdata``, ``/qlog``), so a restore
onto copies of the disks at other host paths needs no repointing: mount the copies instead.

The data lives in a sub-directory of each mount (``/qdata/pgdata``, ``/qdata/mysql``,
``/qdata/db``) because the root of a freshly made ext4/xfs filesystem is not empty
(``lost+found``), which initdb and mysqld --initialize refuse.

testcontainers and docker are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiesce.deadline import Deadline
from quiesce.errors import EngineUnavailable, ServerError
from quiesce.harness.servers.base import ConnectionInfo, Server, ServerLayout

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DATA_MOUNT = "/qdata"
LOG_MOUNT = "/qlog"
# The service user of all four official images (postgres, mysql, mongodb) is uid/gid 999.
IMAGE_UID = 999

ENGINES = ("postgresql", "mysql", "mariadb", "mongodb")
DEFAULT_IMAGES = {
    "postgresql": "postgres:17",
    "mysql": "mysql:8.4",
    "mariadb": "mariadb:11",
    "mongodb": "mongo:7",
}
PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mongodb": 27017}
_REPOSITORIES = {"postgres": "postgresql", "mysql": "mysql", "mariadb": "mariadb",
                 "mongo": "mongodb"}


def docker_host() -> str:
    """The engine address the docker client will use."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def docker_available(timeout: float = 3.0) -> tuple[bool, str]:
    """(True, where) when a Docker engine answers a ping, else (False, the exact reason)."""
    try:
        import docker
        import testcontainers  # noqa: F401 - its absence is a reason to report
    except ImportError as exc:
        return False, (f"the Docker backend needs the docker and testcontainers packages "
                       f"({exc}); install them with: pip install 'quiesce[docker]'")
    host = docker_host()
    try:
        client = docker.from_env(timeout=max(1, int(timeout)))
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return False, f"no Docker engine at {host}: {exc}"
    return True, f"Docker engine at {host}"


def engine_for_image(image: str) -> str:
    """The engine an image runs, from its repository name ("library/postgres:16" -> postgresql)."""
    repo = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    try:
        return _REPOSITORIES[repo]
    except KeyError:
        raise ServerError(f"unknown image {image!r}: expected a postgres, mysql, mariadb or "
                         "mongo image") from None


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


def container_plan(engine: str, layout: ServerLayout, *, image: str | None = None,
                   password: str | None = None, replset: str | None = None) -> ContainerPlan:
    """The container for ``engine`` with the layout's data and log dirs bind-mounted.

    ``password`` (the superuser's; a random one when None) is for a throwaway server only.
    """
    if password is None:
        password = secrets.token_urlsafe(16)
    if engine not in ENGINES:
        raise ServerError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if replset and engine != "mongodb":
        raise ServerError("replset is a MongoDB option")
    image = image or DEFAULT_IMAGES[engine]
    data = Path(layout.data_dir)
    log = Path(layout.log_dir) if layout.log_dir is not None else None
    plan = ContainerPlan(engine, image, PORTS[engine], password=password)
    plan.volumes.append((str(data), DATA_MOUNT, "rw"))
    if log is not None:
        plan.volumes.append((str(log), LOG_MOUNT, "rw"))
    if engine == "postgresql":
        plan.user, plan.database = "postgres", "postgres"
        plan.env = {"POSTGRES_PASSWORD": password, "PGDATA": f"{DATA_MOUNT}/pgdata"}
        if log is not None:
            plan.env["POSTGRES_INITDB_WALDIR"] = f"{LOG_MOUNT}/pg_wal"
    elif engine in ("mysql", "mariadb"):
        plan.user, plan.database = "root", ""
        key = "MYSQL_ROOT_PASSWORD" if engine == "mysql" else "MARIADB_ROOT_PASSWORD"
        plan.env = {key: password}
        plan.command = [f"--datadir={DATA_MOUNT}/mysql"]
        plan.host_dirs.append(data / "mysql")
        if log is not None:
            # mysqld does not create innodb_log_group_home_dir: it must exist, owned by mysql.
            plan.command.append(f"--innodb-log-group-home-dir={LOG_MOUNT}/redo")
            plan.host_dirs.append(log / "redo")
    else:  # mongodb: no authentication (a throwaway server bound to a mapped port)
        plan.password = ""
        plan.command = ["mongod", "--dbpath", f"{DATA_MOUNT}/db", "--bind_ip_all",
                        "--wiredTigerCacheSizeGB", "0.25"]
        if replset:
            plan.command += ["--replSet", replset]
        plan.host_dirs.append(data / "db")
        if log is not None:
            # The journal is <dbpath>/journal: a symlink to the log disk, by container path,
            # so copies of the disks restore without repointing.
            plan.host_dirs.append(log / "journal")
            plan.symlinks.append((data / "db" / "journal", f"{LOG_MOUNT}/journal"))
    return plan


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


def _probe(engine: str, info: ConnectionInfo) -> str:
    """Connect once with the engine's driver; return the server version or raise."""
    if engine == "postgresql":
        import psycopg

        with psycopg.connect(host=info.host, port=info.port, user=info.user,
                             password=info.password, dbname=info.database or "postgres",
                             connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else ""
    if engine in ("mysql", "mariadb"):
        import pymysql

        conn = pymysql.connect(host=info.host, port=info.port, user=info.user,
                               password=info.password, connect_timeout=3, read_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                row = cur.fetchone()
                return str(row[0]) if row else ""
        finally:
            conn.close()
    import pymongo

    with pymongo.MongoClient(info.host, info.port, directConnection=True,
                             serverSelectionTimeoutMS=3000) as client:
        return str(client.admin.command("buildInfo").get("version", ""))


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
        self.plan = container_plan(engine, layout, image=image, password=password,
                                   replset=replset)
        self.start_timeout = start_timeout
        self._probe = probe or _probe
        self.container: Any = None
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
    def connection(self) -> ConnectionInfo:
        if self.container is None:
            raise ServerError(f"{self.engine} container is not running")
        host = self.container.get_container_host_ip()
        port = int(self.container.get_exposed_port(self.plan.port))
        extra: dict[str, Any] = {"image": self.plan.image}
        if self.engine == "mongodb":
            extra["uri"] = f"mongodb://{host}:{port}/?directConnection=true"
        return ConnectionInfo(host=host, port=port, user=self.plan.user,
                              password=self.plan.password, database=self.plan.database,
                              extra=extra)

    def start(self) -> None:
        ok, reason = docker_available()
        if not ok:
            raise EngineUnavailable(reason, hint="start the Docker engine, or use the local "
                                                 "backend (--backend local)")
        from testcontainers.core.container import DockerContainer

        prepare_host_dirs(self.plan)
        container = DockerContainer(self.plan.image).with_exposed_ports(self.plan.port)
        for key, value in self.plan.env.items():
            container = container.with_env(key, value)
        for host_path, container_path, mode in self.plan.volumes:
            container = container.with_volume_mapping(host_path, container_path, mode)
        if self.plan.command:
            container = container.with_command(self.plan.command)
        self.container = container.start()
        try:
            deadline = Deadline(self.start_timeout)
            self._wait_ready(deadline)
            if self.replset:
                self._initiate_replset(deadline)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, deadline: Deadline) -> None:
        last: Exception | None = None
        while not deadline.expired():
            try:
                self._version = self._probe(self.engine, self.connection)
                return
            except Exception as exc:
                last = exc
            with contextlib.suppress(Exception):
                self.container.reload()
                if self.container.status in ("exited", "dead"):
                    raise ServerError(f"{self.plan.image} exited while starting; logs:\n"
                                     f"{self.logs_tail()}")
            time.sleep(1.0)
        raise ServerError(f"{self.plan.image} did not accept connections in "
                         f"{deadline.seconds:g}s (last error: {last}); logs:\n"
                         f"{self.logs_tail()}")

    def _initiate_replset(self, deadline: Deadline) -> None:
        """Make the container a one-member replica set (it names itself 127.0.0.1:27017)."""
        import pymongo
        from pymongo import errors

        info = self.connection
        config = {"_id": self.replset,
                  "members": [{"_id": 0, "host": f"127.0.0.1:{PORTS['mongodb']}"}]}
        with pymongo.MongoClient(info.host, info.port, directConnection=True,
                                 serverSelectionTimeoutMS=5000) as client:
            try:
                client.admin.command({"replSetInitiate": config})
            except errors.OperationFailure as exc:
                if "already initialized" not in str(exc):
                    raise ServerError(f"replSetInitiate failed: {exc}") from exc
            while not deadline.expired():
                with contextlib.suppress(errors.PyMongoError):
                    if client.admin.command("hello").get("isWritablePrimary"):
                        return
                time.sleep(0.5)
        raise ServerError(f"the {self.plan.image} container did not become primary of "
                         f"{self.replset} in {deadline.seconds:g}s")

    def logs_tail(self, lines: int = 20) -> str:
        try:
            out, err = self.container.get_logs()
        except Exception as exc:
            return f"(no logs: {exc})"
        text = (out + err).decode(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        container, self.container = self.container, None
        if container is not None:
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
        self.container.get_wrapped_container().restart(timeout=30)
        self._wait_ready(Deadline(self.start_timeout))
