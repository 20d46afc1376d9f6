"""MongoDB on the Docker backend: the container plan, the probe and the replica-set start.

Debian packages no MongoDB server, so there is no recipe: the backend runs an official ``mongo``
image (``QUIESCE_MONGODB_IMAGE`` or ``--image`` names another), which must be in the Docker
engine already or pullable. No authentication: a throwaway server on a port published on the
engine's address only. Harness side only.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quiesce.errors import ServerError
from quiesce.harness.servers.base import ConnectionInfo, ServerLayout
from quiesce.harness.servers.docker import DATA_MOUNT, LOG_MOUNT, ContainerPlan, DockerProfile

if TYPE_CHECKING:
    from quiesce.deadline import Deadline
    from quiesce.harness.servers.docker import DockerServer


class MongoProfile(DockerProfile):
    engine = "mongodb"
    port = 27017
    official_image = "mongo:7"
    repositories = ("mongo", "mongodb")

    def plan(self, layout: ServerLayout, *, image: str | None, password: str,
             replset: str | None) -> ContainerPlan:
        plan = super().plan(layout, image=image, password=password, replset=None)
        plan.password = ""
        plan.command = ["mongod", "--dbpath", f"{DATA_MOUNT}/db", "--bind_ip_all",
                        "--wiredTigerCacheSizeGB", "0.25"]
        if replset:
            plan.command += ["--replSet", replset]
        plan.host_dirs.append(Path(layout.data_dir) / "db")
        if layout.log_dir is not None:
            # The journal is <dbpath>/journal: a symlink to the log disk, by container path,
            # so copies of the disks restore without repointing.
            plan.host_dirs.append(Path(layout.log_dir) / "journal")
            plan.symlinks.append((Path(layout.data_dir) / "db" / "journal", f"{LOG_MOUNT}/journal"))
        return plan

    def probe(self, info: ConnectionInfo) -> str:
        import pymongo

        client: Any
        with pymongo.MongoClient(info.host, info.port, directConnection=True,
                                 serverSelectionTimeoutMS=3000) as client:
            return str(client.admin.command("buildInfo").get("version", ""))

    def connection_extra(self, host: str, port: int) -> dict[str, Any]:
        return {"uri": f"mongodb://{host}:{port}/?directConnection=true"}

    def after_ready(self, server: DockerServer, deadline: Deadline) -> None:
        """Make the container a one-member replica set (it names itself 127.0.0.1:27017)."""
        if not server.replset:
            return
        import pymongo
        from pymongo import errors

        info = server.connection
        config = {"_id": server.replset,
                  "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}]}
        client: Any
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
        raise ServerError(f"the {server.plan.image} container did not become primary of "
                          f"{server.replset} in {deadline.seconds:g}s")


def profile(name: str) -> MongoProfile:
    return MongoProfile(name)
