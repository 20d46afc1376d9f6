"""Probing a MongoDB server a test locks, and unlocking it whatever the test did."""

from __future__ import annotations

from typing import Any

from quiesce.harness.servers.base import Server


def client_of(server: Server) -> Any:
    """A direct pymongo client of ``server`` (the caller closes it)."""
    import pymongo

    info = server.connection
    return pymongo.MongoClient(info.host, info.port, directConnection=True,
                               serverSelectionTimeoutMS=10000)


def is_locked(client: Any) -> bool:
    return bool(client.admin.command({"currentOp": 1, "$ownOps": True}).get("fsyncLock"))


def force_unlock(server: Server) -> None:
    """Test cleanup: unlock until the count is zero (never leave a server locked)."""
    from pymongo import errors

    with client_of(server) as client:
        for _ in range(10):
            if not is_locked(client):
                return
            try:
                client.admin.command("fsyncUnlock")
            except errors.OperationFailure:
                return


def write_blocked(client: Any, seconds: float = 1.5) -> bool:
    """True when an insert cannot complete within ``seconds`` (the server is write-locked)."""
    import pymongo
    from pymongo import errors

    try:
        with pymongo.timeout(seconds):
            client.quiesce_it.t.insert_one({"probe": True})
    except errors.PyMongoError as exc:
        if exc.timeout:
            return True
        raise
    return False
