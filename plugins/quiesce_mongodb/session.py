"""One bounded connection to one MongoDB process, with driver errors turned into ours.

pymongo is imported here, inside functions only: the plugin module must load without it.
The client talks to exactly one server (``directConnection=True``), keeps at most one socket,
never retries reads or writes by itself, and every call runs under a client-side operation
timeout (``pymongo.timeout``) derived from the caller's deadline, which pymongo also sends to
the server as maxTimeMS.

pymongo reconnects a dropped socket on the next call; for MongoDB that is not a silent loss of
the lock (the fsync lock belongs to the server process, not to the connection), and a restart
of the server - which does drop the lock - is caught by comparing ``topologyVersion.processId``
and by asking currentOp whether the server is still locked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from quiesce.deadline import Deadline
from quiesce.errors import EngineError, LockWaitTimeout
from quiesce.redact import redact
from quiesce_mongodb.config import redact_uri

# Error codes worth a specific hint.
AUTH_FAILED = 18
UNAUTHORIZED = 13
COMMAND_NOT_FOUND = 59
PRIVILEGES = ("fsync, unlock, serverStatus on the cluster, find on local.oplog.rs; see the "
              "MongoDB section of docs/engines.md")


class MongoSession:
    """A single-server pymongo client bounded by deadlines."""

    def __init__(self, uri: str, *, connect_timeout: float, what: str = "mongodb") -> None:
        import pymongo

        self.what = what
        self.redacted = redact_uri(uri)
        timeout_ms = max(100, int(connect_timeout * 1000))
        try:
            self.client: Any = pymongo.MongoClient(
                uri,
                directConnection=True,
                appname="quiesce",
                connectTimeoutMS=timeout_ms,
                serverSelectionTimeoutMS=timeout_ms,
                maxPoolSize=1,
                minPoolSize=0,
                retryReads=False,
                retryWrites=False,
                connect=False,
            )
        except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI, ValueError,
                TypeError) as exc:
            raise EngineError(f"{what}: cannot use the URI {self.redacted}: "
                              f"{redact(str(exc), uri)}",
                              hint="fix the connection string (uri or the content of "
                                   "uri_file)") from exc

    def _bounded(self, deadline: Deadline, doing: str) -> Any:
        import pymongo

        remaining = deadline.remaining()
        if remaining <= 0:
            raise EngineError(f"{self.what}: no time left to {doing}",
                              hint="raise the phase timeout")
        return pymongo.timeout(remaining)

    def translate(self, exc: Exception, doing: str, *, lock_wait: bool = False) -> EngineError:
        """Our error for a driver error, with a hint saying what to do."""
        from pymongo import errors

        code = getattr(exc, "code", None)
        # pymongo appends its whole topology description to selection errors: keep the cause.
        detail = str(exc).split(", Timeout: ")[0].split(", Topology Description: ")[0]
        message = f"{self.what} ({self.redacted}): {doing} failed: {detail}"
        if isinstance(exc, errors.ServerSelectionTimeoutError):
            return EngineError(f"{self.what}: cannot reach {self.redacted} ({doing}): {detail}",
                               hint="check that the server is up and that the URI names the "
                                    "right host and port, or raise connect_timeout")
        if isinstance(exc, errors.PyMongoError) and exc.timeout:
            if lock_wait:
                return LockWaitTimeout(
                    f"{self.what}: the fsync lock was not granted in time ({exc})",
                    hint="a long operation holds the server; find it with db.currentOp() or "
                         "raise lock_wait_seconds")
            return EngineError(f"{message} (timed out)",
                               hint="check that the server is up and reachable, or raise "
                                    "connect_timeout / the phase timeout")
        if code == AUTH_FAILED:
            return EngineError(message, hint="check the user and password in uri_file and "
                                             "the authSource option")
        if code == UNAUTHORIZED:
            return EngineError(message, hint=f"grant the quiesce user {PRIVILEGES}")
        if lock_wait and "timed out" in str(exc).lower():
            return LockWaitTimeout(f"{self.what}: the fsync lock was not granted in time "
                                   f"({exc})",
                                   hint="a long operation holds the server; find it with "
                                        "db.currentOp() or raise lock_wait_seconds")
        if isinstance(exc, errors.ConnectionFailure):
            return EngineError(message, hint="check that the server is up and that the URI "
                                             "names the right host and port")
        return EngineError(message)

    def command(self, deadline: Deadline, document: Mapping[str, Any], *,
                doing: str = "", lock_wait: bool = False) -> dict[str, Any]:
        """Run one admin command within ``deadline``; raise EngineError on any failure."""
        from pymongo import errors

        doing = doing or next(iter(document))
        with self._bounded(deadline, doing):
            try:
                return dict(self.client.admin.command(dict(document)))
            except errors.PyMongoError as exc:
                raise self.translate(exc, doing, lock_wait=lock_wait) from exc

    def command_raw(self, deadline: Deadline, document: Mapping[str, Any]) -> dict[str, Any]:
        """Like :meth:`command` but let the driver's OperationFailure through (callers that
        must tell one server error from another)."""
        with self._bounded(deadline, next(iter(document))):
            return dict(self.client.admin.command(dict(document)))

    def hello(self, deadline: Deadline) -> dict[str, Any]:
        from pymongo import errors

        try:
            return self.command_raw(deadline, {"hello": 1})
        except errors.OperationFailure as exc:
            if exc.code != COMMAND_NOT_FOUND:
                raise self.translate(exc, "hello") from exc
        except errors.PyMongoError as exc:
            raise self.translate(exc, "hello") from exc
        return self.command(deadline, {"isMaster": 1})

    def newest_oplog_ts(self, deadline: Deadline) -> Any:
        """``ts`` of the newest local.oplog.rs entry (a bson Timestamp), or None if empty."""
        from pymongo import errors

        with self._bounded(deadline, "read the newest oplog entry"):
            try:
                doc = self.client.local["oplog.rs"].find_one(
                    {}, projection={"ts": 1, "_id": 0}, sort=[("$natural", -1)])
            except errors.PyMongoError as exc:
                raise self.translate(exc, "read the newest oplog entry") from exc
        return None if doc is None else doc.get("ts")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing is best effort by contract
            self.client.close()
