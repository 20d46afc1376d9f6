"""The MongoQuiescer's control flow against a model of MongoDB's documented lock semantics.

No mongod exists on this machine. ``ModelServer`` is a small in-memory model of what the
MongoDB manual documents for the commands the engine uses (one anonymous lock count per
server: ``fsync lock`` adds one and replies the new count, ``fsyncUnlock`` removes one and
replies the remaining count or fails with IllegalOperation when not locked; ``currentOp``
reports ``fsyncLock: true`` only while locked; the balancer's mode). What these tests check is
the engine's own logic on top of those semantics - which commands it sends in which order,
what it refuses, what it records, what it unlocks and what it never unlocks. The same
behaviour is checked against a real server by tests/integration/test_mongodb_*.py wherever a
mongod or a Docker engine exists.

The model plugs in below the engine's real MongoSession code (error translation and hello
fallback are the production code paths); it raises real pymongo exception types.
"""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId, Timestamp
from pymongo import errors

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings
from quiesce.errors import EngineError, LockWaitTimeout, SessionLost
from quiesce_mongodb.engine import MongoQuiescer, unlock_if_ours
from quiesce_mongodb.session import MongoSession


class ModelServer:
    def __init__(self, *, role: str = "primary", version: str = "7.0.14",
                 storage: str = "wiredTiger", balancer: str = "full") -> None:
        self.role = role
        self.version = version
        self.storage = storage
        self.balancer = balancer
        self.lock_count = 0
        self.process_id = ObjectId()
        self.oplog_ts = Timestamp(1_700_000_000, 3)
        self.history: list[str] = []
        self.lose_lock_reply = False  # the fsync lock happens but its reply never arrives

    def restart(self) -> None:
        self.lock_count = 0
        self.process_id = ObjectId()

    @staticmethod
    def raw(shard: dict[str, Any]) -> dict[str, Any]:
        return {f"{name}/{name}-a:27018": dict(shard) for name in ("config", "shard0", "shard1")}

    def hello(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"topologyVersion": {"processId": self.process_id,
                                                     "counter": 0}, "ok": 1.0}
        if self.role == "mongos":
            reply.update(isWritablePrimary=True, msg="isdbgrid")
        elif self.role == "standalone":
            reply.update(isWritablePrimary=True)
        else:
            reply.update(setName="rs0", isWritablePrimary=self.role == "primary",
                         secondary=self.role == "secondary",
                         arbiterOnly=self.role == "arbiter",
                         lastWrite={"opTime": {"ts": self.oplog_ts, "t": 1}})
        return reply

    def run(self, doc: dict[str, Any]) -> dict[str, Any]:
        name = next(iter(doc))
        self.history.append(f"{name}{'+lock' if doc.get('lock') else ''}")
        if name == "hello":
            return self.hello()
        if name == "buildInfo":
            return {"version": self.version, "ok": 1.0}
        if name == "serverStatus":
            if self.role == "mongos":
                return {"ok": 1.0}
            return {"storageEngine": {"name": self.storage}, "ok": 1.0}
        if name == "currentOp":
            # mongos's currentOp carries no fsyncLock flag (cluster_current_op.cpp).
            locked = self.lock_count and self.role != "mongos"
            return {"inprog": [], **({"fsyncLock": True} if locked else {}), "ok": 1.0}
        if name == "fsync":
            if not doc.get("lock"):
                return {"numFiles": 1, "ok": 1.0}
            self.lock_count += 1
            if self.lose_lock_reply:
                self.lose_lock_reply = False
                raise errors.AutoReconnect("connection closed")
            shard = {"info": "now locked against writes", "lockCount": self.lock_count,
                     "ok": 1.0}
            if self.role == "mongos":
                # cluster_fsync_cmd.cpp: the shards' replies under all.raw, no own lockCount.
                return {"numFiles": 1, "all": {"raw": self.raw(shard)}, "ok": 1.0}
            return shard
        if name == "fsyncUnlock":
            if not self.lock_count:
                raise errors.OperationFailure("fsyncUnlock called when not locked", code=20)
            self.lock_count -= 1
            shard = {"info": "fsyncUnlock completed", "lockCount": self.lock_count, "ok": 1.0}
            if self.role == "mongos":
                return {"raw": self.raw(shard), "ok": 1.0}  # cluster_fsync_unlock_cmd.cpp
            return shard
        if name == "balancerStatus":
            return {"mode": self.balancer, "inBalancerRound": False, "ok": 1.0}
        if name == "balancerStop":
            self.balancer = "off"
            return {"ok": 1.0}
        if name == "balancerStart":
            self.balancer = "full"
            return {"ok": 1.0}
        raise errors.OperationFailure(f"no such command: '{name}'", code=59)


class ModelSession(MongoSession):
    """The production MongoSession with the wire replaced by the model."""

    def __init__(self, server: ModelServer, what: str = "mongodb 'main'") -> None:
        self.server = server
        self.what = what
        self.redacted = "mongodb://model:27017/"
        self.closed = False

    def command_raw(self, deadline: Deadline, document: Any) -> dict[str, Any]:
        return self.server.run(dict(document))

    def command(self, deadline: Deadline, document: Any, *, doing: str = "",
                lock_wait: bool = False) -> dict[str, Any]:
        try:
            return self.command_raw(deadline, document)
        except errors.PyMongoError as exc:
            raise self.translate(exc, doing or next(iter(document)),
                                 lock_wait=lock_wait) from exc

    def newest_oplog_ts(self, deadline: Deadline) -> Any:
        return self.server.oplog_ts

    def close(self) -> None:
        self.closed = True


def quiescer(server: ModelServer, **options: Any) -> MongoQuiescer:
    q = MongoQuiescer(InstanceSettings("mongodb", "main",
                                       {"uri": "mongodb://model:27017/", **options}))
    q.session_factory = lambda uri, **kw: ModelSession(server)  # type: ignore[method-assign]
    return q


def cycle(q: MongoQuiescer) -> dict[str, Any]:
    q.prepare(Deadline(10))
    q.quiesce(Deadline(10))
    q.check_alive()
    return q.release(Deadline(10))


def test_clean_cycle_on_a_primary() -> None:
    server = ModelServer()
    q = quiescer(server)
    meta = cycle(q)
    assert server.lock_count == 0
    assert server.history.count("fsync+lock") == 1
    assert server.history.count("fsyncUnlock") == 1
    # A plain flush comes before the lock, and the lock is verified with currentOp.
    assert server.history.index("fsync") < server.history.index("fsync+lock")
    assert server.history[server.history.index("fsync+lock") + 1] == "currentOp"
    assert meta["role"] == "primary" and meta["set_name"] == "rs0"
    assert (meta["lock_count_before"], meta["lock_count_after_lock"],
            meta["lock_count_after_unlock"]) == (0, 1, 0)
    assert meta["last_oplog_ts"] == {"t": 1_700_000_000, "i": 3}
    assert "balancer" not in meta and "warnings" not in meta
    assert q.recovery_token() is None  # released: nothing for the guardian to undo


def test_token_while_held_names_the_count_and_process() -> None:
    server = ModelServer(role="secondary")
    q = quiescer(server)
    q.prepare(Deadline(10))
    q.quiesce(Deadline(10))
    token = q.recovery_token()
    assert token == {"uri_source": "uri", "host": "model:27017",
                     "process_id": str(server.process_id), "lock_count_after_lock": 1,
                     "locked_before": False, "balancer_was": None}
    q.release(Deadline(10))


@pytest.mark.parametrize("role, storage, word", [
    ("arbiter", "wiredTiger", "arbiter"),
    ("primary", "inMemory", "in-memory"),
])
def test_servers_that_cannot_be_snapshotted_are_refused(role: str, storage: str,
                                                         word: str) -> None:
    server = ModelServer(role=role, storage=storage)
    with pytest.raises(EngineError, match=word):
        quiescer(server).prepare(Deadline(10))
    assert server.lock_count == 0


def test_mongos_needs_opt_in_and_a_recent_release() -> None:
    with pytest.raises(EngineError, match="is a mongos") as info:
        quiescer(ModelServer(role="mongos")).prepare(Deadline(10))
    assert "allow_mongos = true" in info.value.hint and "balancer" in info.value.hint
    old = ModelServer(role="mongos", version="7.0.1")
    with pytest.raises(EngineError, match="cannot fsync-lock the cluster"):
        quiescer(old, allow_mongos=True).prepare(Deadline(10))
    assert old.balancer == "full"  # refused before touching anything


def test_mongos_stops_the_balancer_first_and_restores_it_after_unlock() -> None:
    server = ModelServer(role="mongos", version="7.0.14", balancer="full")
    meta = cycle(quiescer(server, allow_mongos=True))
    h = server.history
    assert h.index("balancerStop") < h.index("fsync+lock") < h.index("fsyncUnlock") \
        < h.index("balancerStart")
    assert server.balancer == "full" and server.lock_count == 0
    assert meta["balancer"] == {"before": "full", "restored": True}
    assert meta["role"] == "mongos"


def test_a_stopped_balancer_stays_stopped() -> None:
    server = ModelServer(role="mongos", version="8.0.0", balancer="off")
    meta = cycle(quiescer(server, allow_mongos=True))
    assert "balancerStart" not in server.history and "balancerStop" not in server.history
    assert meta["balancer"] == {"before": "off", "restored": False}


def test_abort_on_mongos_restores_the_balancer() -> None:
    server = ModelServer(role="mongos", version="7.1.0")
    q = quiescer(server, allow_mongos=True)
    q.prepare(Deadline(10))
    assert server.balancer == "off"
    q.abort()
    assert server.balancer == "full" and server.lock_count == 0


def test_already_locked_server_is_refused_or_shared() -> None:
    server = ModelServer()
    server.lock_count = 1  # someone else's lock
    with pytest.raises(EngineError, match="already fsync-locked"):
        quiescer(server).prepare(Deadline(10))
    assert server.lock_count == 1 and "fsync+lock" not in server.history
    meta = cycle(quiescer(server, allow_locked=True))
    assert (meta["lock_count_before"], meta["lock_count_after_unlock"]) == (1, 1)
    assert server.lock_count == 1  # theirs is still there


def test_a_lock_taken_between_check_and_lock_is_refused_and_ours_undone() -> None:
    server = ModelServer()
    q = quiescer(server)
    q.prepare(Deadline(10))
    server.lock_count = 1  # another client locks right after our check
    with pytest.raises(EngineError, match="between quiesce's check and its lock"):
        q.quiesce(Deadline(10))
    q.abort()
    assert server.lock_count == 1  # ours undone, theirs kept


def test_foreign_unlock_during_the_hold_is_lost() -> None:
    server = ModelServer()
    q = quiescer(server)
    q.prepare(Deadline(10))
    q.quiesce(Deadline(10))
    server.lock_count = 0  # someone ran fsyncUnlock
    with pytest.raises(SessionLost, match="no longer fsync-locked"):
        q.check_alive()
    q2 = quiescer(server)
    q2.prepare(Deadline(10))
    q2.quiesce(Deadline(10))
    server.lock_count = 0
    with pytest.raises(SessionLost, match="not locked at release"):
        q2.release(Deadline(10))


def test_restart_during_the_hold_is_lost() -> None:
    server = ModelServer()
    q = quiescer(server)
    q.prepare(Deadline(10))
    q.quiesce(Deadline(10))
    server.restart()
    server.lock_count = 1  # even if someone locked the new process, it is not our lock
    with pytest.raises(SessionLost, match="restarted"):
        q.check_alive()


def test_other_clients_during_the_hold_are_reported() -> None:
    server = ModelServer()
    q = quiescer(server)
    q.prepare(Deadline(10))
    q.quiesce(Deadline(10))
    server.lock_count += 1  # another backup tool locks too
    meta = q.release(Deadline(10))
    assert server.lock_count == 1  # exactly one unlock: theirs stays
    assert any("stays write-locked" in w for w in meta["warnings"])


def test_a_lost_lock_reply_is_undone_by_abort() -> None:
    server = ModelServer()
    server.lose_lock_reply = True
    q = quiescer(server)
    q.prepare(Deadline(10))
    with pytest.raises(EngineError):
        q.quiesce(Deadline(10))
    assert server.lock_count == 1 and q.lock_state == "uncertain"
    assert q.recovery_token()["lock_count_after_lock"] is None
    q.abort()
    assert server.lock_count == 0


def test_a_lock_wait_timeout_is_reported_as_such() -> None:
    class Slow(ModelServer):
        def run(self, doc: dict[str, Any]) -> dict[str, Any]:
            if doc.get("lock"):
                raise errors.OperationFailure("Fsync lock timed out", code=50)
            return super().run(doc)

    server = Slow()
    q = quiescer(server)
    q.prepare(Deadline(10))
    with pytest.raises(LockWaitTimeout) as info:
        q.quiesce(Deadline(10))
    assert "lock_wait_seconds" in info.value.hint
    q.abort()  # nothing was locked: nothing unlocked
    assert "fsyncUnlock" not in server.history


@pytest.mark.parametrize("count, left, unlocked, error", [
    (1, 1, True, None),
    (2, 1, False, "someone else locked"),
    (1, 2, False, "someone else unlocked"),
    (0, 1, False, None),
])
def test_unlock_if_ours(count: int, left: int, unlocked: bool, error: str | None) -> None:
    server = ModelServer()
    server.lock_count = count
    session = ModelSession(server)
    if error:
        with pytest.raises(EngineError, match=error):
            unlock_if_ours(session, left, Deadline(10))
        assert server.lock_count == count  # the probe gave its lock back; nothing else moved
    else:
        unlock_if_ours(session, left, Deadline(10))
        assert server.lock_count == (count - 1 if unlocked else count)


def test_recovery_through_the_plugin_unlocks_a_dead_holders_lock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from quiesce_mongodb import recovery

    server = ModelServer()
    q = quiescer(server)
    q.prepare(Deadline(10))
    q.quiesce(Deadline(10))
    token = q.recovery_token()
    monkeypatch.setattr(recovery, "MongoSession", lambda uri, **kw: ModelSession(server))
    outcome = recovery.recover(q.settings, token)
    assert "unlocking once" in outcome and server.lock_count == 0


def test_recovery_leaves_a_restarted_server_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from quiesce_mongodb import recovery

    server = ModelServer()
    q = quiescer(server)
    q.prepare(Deadline(10))
    q.quiesce(Deadline(10))
    token = q.recovery_token()
    server.restart()
    server.lock_count = 1  # a lock on the new process belongs to someone else
    monkeypatch.setattr(recovery, "MongoSession", lambda uri, **kw: ModelSession(server))
    outcome = recovery.recover(q.settings, token)
    assert "restarted" in outcome and server.lock_count == 1


def test_mongos_lock_counts_come_from_the_shards_replies() -> None:
    server = ModelServer(role="mongos", version="7.0.14")
    q = quiescer(server, allow_mongos=True)
    meta = cycle(q)
    assert meta["lock_count_after_lock"] == 1 and meta["lock_count_after_unlock"] == 0
    assert server.lock_count == 0 and "warnings" not in meta
    # mongos's currentOp cannot tell whether the cluster is locked: it is never asked
    assert "currentOp" not in server.history


def test_a_failure_after_the_mongos_lock_unlocks_the_cluster() -> None:
    server = ModelServer(role="mongos", version="7.1.0")
    server.lock_count = 1  # someone else's cluster lock, visible only in the counts
    q = quiescer(server, allow_mongos=True)
    q.prepare(Deadline(10))
    with pytest.raises(EngineError, match="between quiesce's check and its lock"):
        q.quiesce(Deadline(10))
    q.abort()
    assert server.lock_count == 1 and server.balancer == "full"  # ours undone, theirs kept


def test_a_lost_mongos_lock_reply_is_undone_by_abort() -> None:
    server = ModelServer(role="mongos", version="7.1.0")
    q = quiescer(server, allow_mongos=True)
    q.prepare(Deadline(10))
    server.lose_lock_reply = True
    with pytest.raises(EngineError):
        q.quiesce(Deadline(10))
    q.abort()
    assert server.lock_count == 0


def test_recovery_through_a_restarted_mongos_still_unlocks_the_shards(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from quiesce_mongodb import recovery

    server = ModelServer(role="mongos", version="7.1.0")
    q = quiescer(server, allow_mongos=True)
    q.prepare(Deadline(10))
    q.quiesce(Deadline(10))
    token = q.recovery_token()
    server.process_id = ObjectId()  # the mongos restarted; the shards kept their locks
    monkeypatch.setattr(recovery, "MongoSession", lambda uri, **kw: ModelSession(server))
    outcome = recovery.recover(q.settings, token)
    assert "unlocking once" in outcome and server.lock_count == 0
    assert server.balancer == "full"


def test_shard_lock_counts_parse_both_mongos_reply_shapes() -> None:
    from quiesce_mongodb import locking

    lock = {"numFiles": 1, "all": {"raw": {"s0/h:1": {"lockCount": 2}, "s1/h:2":
                                           {"lockCount": 1}}}, "ok": 1.0}
    assert locking.shard_lock_counts(lock) == {"s0/h:1": 2, "s1/h:2": 1}
    assert locking.reply_lock_count(lock, "fsync lock", mongos=True) == 2
    unlock = {"raw": {"s0/h:1": {"lockCount": 0}}, "ok": 1.0}
    assert locking.reply_lock_count(unlock, "fsyncUnlock", mongos=True) == 0
    with pytest.raises(EngineError, match="without any shard's lockCount"):
        locking.reply_lock_count({"numFiles": 1, "ok": 1.0}, "fsync lock", mongos=True)
    with pytest.raises(EngineError, match="without a lockCount"):
        locking.reply_lock_count(lock, "fsync lock")  # a mongod reply must carry its own
