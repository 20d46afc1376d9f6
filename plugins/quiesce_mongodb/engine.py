"""The MongoDB Quiescer: ``fsync`` with ``lock: true`` around the snapshot, counted exactly.

Lifecycle (driven by the core, in the holder process):

- ``prepare``: read the URI (``uri`` or the trusted ``uri_file``), connect to the one server,
  detect its role with ``hello`` (primary, secondary, standalone, mongos), its version and
  storage engine; refuse an arbiter, an unstable member, an in-memory engine, a mongos unless
  ``allow_mongos`` (and then only on releases where fsync through mongos locks the cluster),
  and a server already fsync-locked unless ``allow_locked``. On mongos, stop the balancer
  (remembering its mode). Finally a plain ``fsync`` flushes, so the locked one is quick.
- ``quiesce``: ``{fsync: 1, lock: true}``; record the lockCount it returns, then verify with
  currentOp that the server reports itself locked. Record the newest oplog timestamp of a
  replica-set member while locked (the point in time the snapshot holds).
- ``check_alive``: ``hello`` (same ``topologyVersion.processId``: not restarted) and currentOp
  (still locked). Either failing raises SessionLost: the snapshot would not be consistent.
- ``release``: ``fsyncUnlock`` exactly once; check the count went back to its value before our
  lock; restore the balancer; return the metadata.
- ``abort``: undo whatever was taken, only where it is provably ours; never raises.
- ``recovery_token``: what :func:`quiesce_mongodb.recovery.recover` needs to undo our lock from
  a fresh process if the holder dies (the fsync lock outlives every session).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings, Quiescer
from quiesce.errors import EngineError, QuiesceError, SessionLost
from quiesce_mongodb import locking
from quiesce_mongodb.config import redact_uri, resolve_uri, uri_host
from quiesce_mongodb.locking import LockLedger
from quiesce_mongodb.session import MongoSession
from quiesce_mongodb.topology import (
    MONGOS_FSYNC_RELEASES,
    Role,
    detect_role,
    last_write_ts,
    mongos_fsync_supported,
    parse_version,
)

log = logging.getLogger("quiesce.mongodb")

REFUSED_STORAGE_ENGINES = {
    "inMemory": "the in-memory storage engine keeps no data files to snapshot",
    "ephemeralForTest": "the ephemeralForTest storage engine keeps no data files to snapshot",
}
# How long abort/recovery may spend (they run on failure paths with no deadline of their own).
CLEANUP_SECONDS = 15.0
# A bound on reading the oplog timestamp while locked: metadata must not lengthen the hold much.
OPLOG_READ_SECONDS = 2.0


def timestamp_json(ts: Any) -> dict[str, int] | None:
    """A bson Timestamp as JSON: seconds since the epoch and the increment within it."""
    if ts is None:
        return None
    return {"t": int(ts.time), "i": int(ts.inc)}


class MongoQuiescer(Quiescer):
    """One ``[[mongodb]]`` instance."""

    # How a connection is made: (uri, connect_timeout=, what=) -> MongoSession.
    session_factory: Callable[..., MongoSession] = MongoSession

    def __init__(self, settings: InstanceSettings) -> None:
        super().__init__(settings)
        opts = settings.options
        self.allow_locked = bool(opts.get("allow_locked", False))
        self.allow_mongos = bool(opts.get("allow_mongos", False))
        self.connect_timeout = float(opts.get("connect_timeout", 5))
        self.lock_wait_seconds = float(opts.get("lock_wait_seconds", 30))
        self.balancer_stop_seconds = float(opts.get("balancer_stop_seconds", 60))
        self.what = f"mongodb {settings.name!r}"
        self.session: MongoSession | None = None
        self.uri_source = "uri_file" if "uri_file" in opts else "uri"
        self.host = ""
        self.role: Role | None = None
        self.version_text = ""
        self.version: tuple[int, int, int] = (0, 0, 0)
        self.storage_engine: str | None = None
        self.ledger = LockLedger()
        # none -> uncertain (lock sent, reply unknown) -> held -> released
        self.lock_state = "none"
        self.balancer_was: str | None = None  # mode before we stopped it (mongos only)
        self.balancer_restored = False
        self.oplog_ts: dict[str, int] | None = None
        self.oplog_source: str | None = None
        self.notes: list[str] = []

    # -- helpers -----------------------------------------------------------------------

    def _session(self) -> MongoSession:
        if self.session is None:
            raise EngineError(f"{self.what}: not connected (prepare was not run)")
        return self.session

    @property
    def is_mongos(self) -> bool:
        return self.role is not None and self.role.is_mongos

    def _is_locked(self, deadline: Deadline) -> bool:
        reply = self._session().command(deadline, locking.CURRENT_OP, doing="currentOp")
        return locking.reported_locked(reply)

    # -- lifecycle ---------------------------------------------------------------------

    def prepare(self, deadline: Deadline) -> None:
        uri = resolve_uri(self.settings.options, f"mongodb[{self.name}]")
        self.host = uri_host(uri)
        self.session = self.session_factory(uri, connect_timeout=self.connect_timeout,
                                            what=self.what)
        session = self.session
        log.debug("%s: connecting to %s", self.what, redact_uri(uri))
        hello = session.hello(deadline.sooner(self.connect_timeout * 2))
        role = self.role = detect_role(hello)
        build = session.command(deadline, {"buildInfo": 1})
        self.version_text = str(build.get("version", ""))
        try:
            self.version = parse_version(self.version_text)
        except ValueError as exc:
            raise EngineError(f"{self.what}: unexpected server version "
                              f"{self.version_text!r}") from exc

        if role.role == "arbiter":
            raise EngineError(f"{self.what}: {self.host} is an arbiter, which holds no data",
                              hint="point the URI at a data-bearing member (preferably the "
                                   "secondary whose disks are snapshotted)")
        if role.role == "other":
            raise EngineError(f"{self.what}: {self.host} is in no state to lock: {role.state}",
                              hint="wait until the member is PRIMARY or SECONDARY")
        if role.is_mongos:
            if not self.allow_mongos:
                raise EngineError(
                    f"{self.what}: {self.host} is a mongos; locking through it locks the whole "
                    "sharded cluster",
                    hint="set allow_mongos = true to lock the cluster (the balancer is "
                         "stopped first and restored after), or point the URI at a mongod")
            if not mongos_fsync_supported(self.version):
                raise EngineError(
                    f"{self.what}: mongos {self.version_text} cannot fsync-lock the cluster",
                    hint=f"upgrade to MongoDB {MONGOS_FSYNC_RELEASES} or newer, or lock each "
                         "shard's mongod instead")
        else:
            status = session.command(deadline, {"serverStatus": 1, "repl": 0, "metrics": 0,
                                                "locks": 0, "wiredTiger": 0},
                                     doing="serverStatus")
            engine = status.get("storageEngine", {})
            self.storage_engine = engine.get("name") if isinstance(engine, dict) else None
            if self.storage_engine in REFUSED_STORAGE_ENGINES:
                raise EngineError(f"{self.what}: "
                                  f"{REFUSED_STORAGE_ENGINES[self.storage_engine]}",
                                  hint="remove this instance from quiesce.toml")

        # A mongos's currentOp never reports fsyncLock (and needs inprog): through a mongos a
        # lock someone else holds shows only in the counts our own lock returns, where
        # quiesce() refuses it (someone_else_locked) unless allow_locked.
        self.ledger.locked_before = False if role.is_mongos else self._is_locked(deadline)
        if self.ledger.locked_before and not self.allow_locked:
            raise EngineError(
                f"{self.what}: {self.host} is already fsync-locked (lockCount > 0) by someone "
                "else, so it may be left over from a failed backup",
                hint="find out who locked it (db.currentOp()), run db.fsyncUnlock() once per "
                     "stale lock, or set allow_locked = true to add quiesce's lock to theirs")

        if role.is_mongos:
            self._stop_balancer(deadline)
        # Flush first so the locked fsync that follows has little to write.
        session.command(deadline, locking.FLUSH, doing="fsync (flush before locking)")

    def _stop_balancer(self, deadline: Deadline) -> None:
        session = self._session()
        status = session.command(deadline, {"balancerStatus": 1})
        mode = str(status.get("mode", "off"))
        self.balancer_was = mode
        if mode == "off":
            return
        # The operation timeout (sent as maxTimeMS) bounds how long balancerStop waits for a
        # running round to finish.
        session.command(deadline.sooner(self.balancer_stop_seconds), {"balancerStop": 1},
                        doing="balancerStop (waits for the running round)")

    def _restore_balancer(self, deadline: Deadline) -> None:
        if self.balancer_was in (None, "off") or self.balancer_restored:
            return
        self._session().command(deadline, {"balancerStart": 1}, doing="balancerStart")
        self.balancer_restored = True

    def quiesce(self, deadline: Deadline) -> None:
        session = self._session()
        wait = min(self.lock_wait_seconds, deadline.remaining())
        command = locking.lock_command(self.version, wait)
        self.lock_state = "uncertain"
        reply = session.command(deadline.sooner(self.lock_wait_seconds + self.connect_timeout),
                                command, doing="fsync lock", lock_wait=True)
        count = locking.reply_lock_count(reply, "fsync lock", mongos=self.is_mongos)
        self.ledger.record_lock(count)
        self.lock_state = "held"
        if self.is_mongos:
            shards = locking.shard_lock_counts(reply)
            unlocked = sorted(name for name, n in shards.items() if n < 1)
            if unlocked:
                raise EngineError(f"{self.what}: fsync lock through mongos left "
                                  f"{', '.join(unlocked)} unlocked; not trusting this lock")
        if self.ledger.someone_else_locked and not self.allow_locked:
            raise EngineError(
                f"{self.what}: another client fsync-locked {self.host} between quiesce's check "
                f"and its lock (lockCount {count})",
                hint="find out who locks this server during backups, or set allow_locked")
        if not self.is_mongos and not self._is_locked(deadline):
            raise EngineError(f"{self.what}: fsync returned lockCount {count} but currentOp "
                              "does not report the server locked; not trusting this lock")
        if self.role is not None and self.role.is_replica_member:
            self._record_oplog_ts(deadline)
        log.info("%s: fsync-locked %s (lockCount %s)", self.what, self.host, count)

    def _record_oplog_ts(self, deadline: Deadline) -> None:
        session = self._session()
        try:
            self.oplog_ts = timestamp_json(session.newest_oplog_ts(
                deadline.sooner(OPLOG_READ_SECONDS)))
            self.oplog_source = "local.oplog.rs"
        except EngineError as exc:
            # Reading the oplog is metadata, not the lock: fall back to hello's lastWrite.
            self.notes.append(f"could not read local.oplog.rs ({exc}); used hello.lastWrite")
            try:
                hello = session.hello(deadline.sooner(OPLOG_READ_SECONDS))
            except EngineError as exc2:
                self.notes.append(f"hello failed too: {exc2}")
                return
            self.oplog_ts = timestamp_json(last_write_ts(hello))
            self.oplog_source = "hello.lastWrite"

    def check_alive(self) -> None:
        deadline = Deadline(max(self.connect_timeout, 1.0) * 2)
        session = self._session()
        try:
            hello = session.hello(deadline)
            # Through a mongos nothing tells whether the shards are still locked (no fsyncLock
            # in its currentOp), and a restarted mongos does not drop the shards' locks: only
            # reachability is checked; a foreign unlock shows in the counts at release.
            locked = True if self.is_mongos else self._is_locked(deadline)
        except EngineError as exc:
            raise SessionLost(f"{self.what}: cannot reach {self.host} while holding the lock: "
                              f"{exc}") from exc
        if self.is_mongos:
            return
        now = detect_role(hello)
        expected = self.role.process_id if self.role else None
        if expected and now.process_id and now.process_id != expected:
            self.lock_state = "lost"
            raise SessionLost(f"{self.what}: {self.host} restarted during the hold; its fsync "
                              "lock is gone and writes may have run")
        if not locked:
            self.lock_state = "lost"
            raise SessionLost(f"{self.what}: {self.host} is no longer fsync-locked (someone "
                              "ran fsyncUnlock, or the server restarted)")

    def release(self, deadline: Deadline) -> dict[str, Any]:
        from pymongo import errors

        session = self._session()
        if self.lock_state != "held":
            raise EngineError(f"{self.what}: release without a held lock "
                              f"(state {self.lock_state})")
        try:
            reply = session.command_raw(deadline, locking.UNLOCK)
        except errors.OperationFailure as exc:
            if locking.is_not_locked_error(exc.code, str(exc)):
                self.lock_state = "lost"
                raise SessionLost(f"{self.what}: {self.host} was not locked at release: "
                                  "someone else unlocked it or it restarted, so writes may have "
                                  "run during the snapshot") from exc
            raise session.translate(exc, "fsyncUnlock") from exc
        except errors.PyMongoError as exc:
            # The unlock may or may not have happened: leave the state 'held' so abort()
            # checks the count and unlocks only if our lock is provably still there.
            raise session.translate(exc, "fsyncUnlock") from exc
        self.lock_state = "released"
        self.ledger.record_unlock(locking.reply_lock_count(reply, "fsyncUnlock",
                                                           mongos=self.is_mongos))
        self.notes.extend(self.ledger.release_findings())
        if self.balancer_was not in (None, "off"):
            try:
                self._restore_balancer(deadline)
            except EngineError as exc:
                self.notes.append(f"could not restart the balancer: {exc}")
                log.warning("%s: could not restart the balancer: %s", self.what, exc)
        log.info("%s: fsync-unlocked %s (lockCount %s)", self.what, self.host,
                 self.ledger.after_unlock)
        return self.metadata()

    def metadata(self) -> dict[str, Any]:
        role = self.role
        meta: dict[str, Any] = {
            "host": self.host,
            "role": role.role if role else None,
            "set_name": role.set_name if role else None,
            "version": self.version_text,
            "storage_engine": self.storage_engine,
            **self.ledger.as_metadata(),
            "last_oplog_ts": self.oplog_ts,
            "last_oplog_ts_source": self.oplog_source,
        }
        if self.balancer_was is not None:
            meta["balancer"] = {"before": self.balancer_was, "restored": self.balancer_restored}
        if self.notes:
            meta["warnings"] = list(self.notes)
        return meta

    def recovery_token(self) -> dict[str, Any] | None:
        if self.lock_state not in ("held", "uncertain"):
            return None
        return {
            "uri_source": self.uri_source,
            "host": self.host,
            "process_id": self.role.process_id if self.role else None,
            "lock_count_after_lock": self.ledger.after_lock,
            "locked_before": self.ledger.locked_before,
            "balancer_was": self.balancer_was,
        }

    def abort(self) -> None:
        if self.session is None:
            return
        deadline = Deadline(CLEANUP_SECONDS)
        try:
            if self.lock_state in ("held", "uncertain"):
                expected = self.ledger.after_lock
                if expected is None and not self.ledger.locked_before:
                    expected = 1  # the lock reply was lost; on an unlocked server ours is 1
                if expected is None:
                    log.warning("%s: a lock request's outcome is unknown on a server that was "
                                "already locked; not unlocking anything (check db.currentOp())",
                                self.what)
                else:
                    outcome = unlock_if_ours(self._session(), expected, deadline,
                                             mongos=self.is_mongos)
                    log.warning("%s: abort: %s", self.what, outcome)
                    self.lock_state = "released"
        except QuiesceError as exc:
            log.error("%s: abort could not check or undo the lock: %s", self.what, exc)
        except Exception:
            log.exception("%s: abort failed", self.what)
        try:
            self._restore_balancer(deadline)
        except Exception as exc:  # abort never raises
            log.error("%s: abort could not restart the balancer: %s", self.what, exc)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def probe_lock_count(session: MongoSession, deadline: Deadline, *,
                     mongos: bool = False) -> int:
    """The current lock count of a server that currentOp reports locked.

    MongoDB has no read-only way to ask for the count, so take one more lock (its reply says
    the count with it) and give it straight back. On a mongod only ever called on a server
    that is already locked: the extra lock blocks nothing that was not already blocked.
    Through a mongos (whose currentOp cannot tell) the cluster may be unlocked: the probe then
    blocks writes for the length of one lock and unlock, and reads 0.
    """
    reply = session.command(deadline, {"fsync": 1, "lock": True}, doing="fsync lock (count)")
    with_probe = locking.reply_lock_count(reply, "fsync lock", mongos=mongos)
    back = session.command(deadline, locking.UNLOCK, doing="fsyncUnlock (count)")
    after = locking.reply_lock_count(back, "fsyncUnlock", mongos=mongos)
    if after != with_probe - 1:
        raise EngineError(f"lock count moved while being read ({with_probe - 1} -> {after}); "
                          "another client is locking or unlocking right now")
    return after


def unlock_if_ours(session: MongoSession, left: int, deadline: Deadline, *,
                   mongos: bool = False) -> str:
    """Unlock once if the server's lock count is exactly ``left``; say what was done.

    Raises EngineError when the count says the remaining lock may not be ours.
    """
    if not mongos and not locking.reported_locked(session.command(
            deadline, locking.CURRENT_OP, doing="currentOp")):
        return "the server is not fsync-locked: nothing to undo"
    current = probe_lock_count(session, deadline, mongos=mongos)
    if current == 0:
        return "the cluster is not fsync-locked: nothing to undo"
    decision = locking.decide_recovery_unlock(True, current, left)
    if not decision.unlock:
        raise EngineError(f"{session.what}: {decision.reason}")
    reply = session.command(deadline, locking.UNLOCK, doing="fsyncUnlock")
    after = locking.reply_lock_count(reply, "fsyncUnlock", mongos=mongos)
    return f"{decision.reason}; lockCount now {after}"
