"""What kind of MongoDB process answered: role from ``hello``/``isMaster``, version checks.

Pure functions over the server's reply documents, so they are unit-tested with sample replies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# fsync/fsyncUnlock on mongos lock the whole sharded cluster from these releases on
# (one per maintained branch; 7.1 and later all have it).
MONGOS_FSYNC_SINCE: tuple[tuple[int, int, int], ...] = ((5, 0, 22), (6, 0, 11), (7, 0, 2))
MONGOS_FSYNC_RELEASES = "7.1, 7.0.2, 6.0.11 or 5.0.22"
# fsync accepts fsyncLockAcquisitionTimeoutMillis from 7.1 (and 7.0.2).
LOCK_TIMEOUT_SINCE = (7, 0, 2)


@dataclass(frozen=True)
class Role:
    """The role of the process we talk to."""

    role: str  # primary | secondary | arbiter | mongos | standalone | other
    set_name: str | None = None
    state: str = ""  # a human detail: "hidden", "uninitialized", "recovering"...
    process_id: str | None = None  # topologyVersion.processId: changes when mongod restarts

    @property
    def is_replica_member(self) -> bool:
        return self.set_name is not None

    @property
    def is_mongos(self) -> bool:
        return self.role == "mongos"


def detect_role(hello: Mapping[str, Any]) -> Role:
    """The role described by a ``hello`` (or legacy ``isMaster``) reply."""
    topology = hello.get("topologyVersion")
    process_id = None
    if isinstance(topology, Mapping) and topology.get("processId") is not None:
        process_id = str(topology["processId"])
    if hello.get("msg") == "isdbgrid":
        return Role("mongos", process_id=process_id)
    set_name = hello.get("setName")
    if set_name is None:
        if hello.get("isreplicaset"):
            return Role("other", None, "replica set member not initiated (run rs.initiate())",
                        process_id)
        return Role("standalone", process_id=process_id)
    set_name = str(set_name)
    writable = hello.get("isWritablePrimary", hello.get("ismaster", False))
    if writable:
        return Role("primary", set_name, process_id=process_id)
    if hello.get("arbiterOnly"):
        return Role("arbiter", set_name, process_id=process_id)
    if hello.get("secondary"):
        return Role("secondary", set_name, "hidden" if hello.get("hidden") else "",
                    process_id)
    return Role("other", set_name, "not primary or secondary (starting, recovering or "
                "rolling back)", process_id)


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string such as "7.0.14" or "8.0.0-rc3"."""
    match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        raise ValueError(f"not a MongoDB version: {text!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def mongos_fsync_supported(version: tuple[int, int, int]) -> bool:
    """Whether fsync lock through mongos locks the whole cluster on this version."""
    if version >= (7, 1, 0):
        return True
    return any(version[:2] == since[:2] and version >= since for since in MONGOS_FSYNC_SINCE)


def lock_timeout_supported(version: tuple[int, int, int]) -> bool:
    return version >= LOCK_TIMEOUT_SINCE


def last_write_ts(hello: Mapping[str, Any]) -> Any:
    """``lastWrite.opTime.ts`` of a replica-set member's hello reply (a bson Timestamp), or None."""
    last_write = hello.get("lastWrite")
    if not isinstance(last_write, Mapping):
        return None
    op_time = last_write.get("opTime")
    if isinstance(op_time, Mapping):
        return op_time.get("ts")
    return None
