"""The fsync lock's commands and its lock-count bookkeeping (pure logic, no driver).

MongoDB keeps one anonymous lock count per server: every ``{fsync: 1, lock: true}`` adds one,
every ``fsyncUnlock`` removes one, and writes resume only at zero. The count survives the
session that took the lock, and nothing says whose lock is whose. quiesce therefore:

- reads the count our lock produced (the ``lockCount`` of the fsync reply) and infers the count
  before it (one less);
- unlocks exactly once, and checks the unlock reply's count is back to the count before;
- when unlocking from another process (the guardian, after the holder died), unlocks only if
  the server's current count is exactly the count our lock left: any other value means someone
  else locked or unlocked since, and unlocking could release *their* lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quiesce.errors import EngineError
from quiesce_mongodb.topology import lock_timeout_supported

FLUSH = {"fsync": 1}
UNLOCK = {"fsyncUnlock": 1}
# $ownOps keeps the reply tiny (only our own currentOp) and needs no inprog privilege; the
# server appends the top-level fsyncLock flag whatever the filter.
CURRENT_OP = {"currentOp": 1, "$ownOps": True}
# Checked in MongoDB's source (src/mongo/db/commands/current_op.cpp): mongod's currentOp appends
# ``fsyncLock: true`` whenever lockedForWriting(), and accepts ``$ownOps`` from any
# authenticated user without the ``inprog`` privilege. mongos's currentOp
# (src/mongo/s/commands/cluster_current_op.cpp) appends no fsyncLock flag and requires
# ``inprog`` - so on a mongos currentOp can never say whether the cluster is locked.

# fsyncUnlock on a server that is not locked fails with IllegalOperation (20).
NOT_LOCKED_CODES = (20,)
NOT_LOCKED_TEXT = "not locked"


# fsync.idl (MongoDB 8.x) types the timeout as IDL ``int``: a BSON int64 is refused with
# TypeMismatch, and the Python driver sends an int above 2**31-1 as int64.
INT32_MAX = 2**31 - 1


def lock_command(version: tuple[int, int, int], wait_seconds: float) -> dict[str, Any]:
    """``{fsync: 1, lock: true}``, with a lock-acquisition timeout where the server knows one.

    Uncertain, checked against MongoDB's source: the 7.x fsync command
    (src/mongo/db/commands/fsync.cpp) applies ``fsyncLockAcquisitionTimeoutMillis`` only when
    the internal ``forBackup`` flag is set, which mongos adds when it forwards a cluster lock;
    sent straight to a mongod the field is ignored and the lock waits without a server-side
    bound (the manual documents no such restriction). Releases before the option ignore the
    unknown field. So the field is sent (it bounds the wait through mongos and wherever a
    mongod honours it) but never relied on: the client-side operation timeout bounds quiesce's
    own wait, and a lock whose outcome is unknown stays 'uncertain' for abort and recovery.
    """
    command: dict[str, Any] = {"fsync": 1, "lock": True}
    if lock_timeout_supported(version):
        command["fsyncLockAcquisitionTimeoutMillis"] = min(INT32_MAX,
                                                           max(1, int(wait_seconds * 1000)))
    return command


def reported_locked(current_op: Mapping[str, Any]) -> bool:
    """Whether a currentOp reply says the server is fsync-locked (the flag is absent if not)."""
    return bool(current_op.get("fsyncLock", False))


def shard_lock_counts(reply: Mapping[str, Any]) -> dict[str, int]:
    """The per-shard ``lockCount`` values of a mongos fsync/fsyncUnlock reply.

    mongos forwards the command to the config server and every shard and returns their
    replies, not a count of its own (src/mongo/s/commands/cluster_fsync_cmd.cpp: ``{numFiles,
    all: {raw: {<shard>: reply}}}``; cluster_fsync_unlock_cmd.cpp: ``{raw: {<shard>: reply}}``,
    both built by appendRawResponses). Replies without a lockCount are left out.
    """
    raw: Any = reply.get("raw")
    everything = reply.get("all")
    if raw is None and isinstance(everything, Mapping):
        raw = everything.get("raw", everything)
    counts: dict[str, int] = {}
    if isinstance(raw, Mapping):
        for shard, shard_reply in raw.items():
            if isinstance(shard_reply, Mapping):
                count = shard_reply.get("lockCount")
                if isinstance(count, int) and not isinstance(count, bool):
                    counts[str(shard)] = int(count)
    return counts


def reply_lock_count(reply: Mapping[str, Any], command: str, *, mongos: bool = False) -> int:
    """The ``lockCount`` of an fsync/fsyncUnlock reply; an error if it is missing.

    Through a mongos it is the highest per-shard count (see :func:`shard_lock_counts`): a
    count above the one quiesce expects on any shard means a lock quiesce does not own.
    """
    if mongos and "lockCount" not in reply:
        counts = shard_lock_counts(reply)
        if not counts:
            raise EngineError(f"{command} through mongos replied without any shard's lockCount "
                              f"({dict(reply)!r})",
                              hint="check db.currentOp() on each shard's primary")
        return max(counts.values())
    count = reply.get("lockCount")
    if isinstance(count, bool) or not isinstance(count, int):
        raise EngineError(
            f"{command} replied without a lockCount ({dict(reply)!r})",
            hint="quiesce needs MongoDB 3.4 or newer, whose fsync reports its lock count",
        )
    return int(count)


def is_not_locked_error(code: int | None, message: str) -> bool:
    return code in NOT_LOCKED_CODES or NOT_LOCKED_TEXT in message.lower()


@dataclass
class LockLedger:
    """The lock counts of one quiesce cycle, as recorded in the metadata."""

    locked_before: bool = False  # currentOp said the server was locked before our lock
    before: int | None = None  # the count just before our lock
    after_lock: int | None = None  # the count our lock left
    after_unlock: int | None = None  # the count our unlock left

    def record_lock(self, count: int) -> None:
        if count < 1:
            raise EngineError(f"fsync lock replied lockCount {count}; a lock must count >= 1")
        self.after_lock = count
        self.before = count - 1

    def record_unlock(self, count: int) -> None:
        self.after_unlock = count

    @property
    def someone_else_locked(self) -> bool:
        """Another lock was taken between our check and our lock."""
        return self.before is not None and self.before > 0 and not self.locked_before

    def release_findings(self) -> list[str]:
        """What the counts say about other clients during the hold (empty: nothing odd)."""
        if self.after_unlock is None or self.before is None:
            return []
        if self.after_unlock == self.before:
            return []
        if self.after_unlock > self.before:
            return [f"another client took {self.after_unlock - self.before} fsync lock(s) "
                    f"during the hold; the server stays write-locked (lockCount "
                    f"{self.after_unlock}) until they are unlocked"]
        return [f"another client ran fsyncUnlock {self.before - self.after_unlock} time(s) "
                "during the hold: writes may have run while the snapshot was taken"]

    def as_metadata(self) -> dict[str, Any]:
        return {
            "lock_count_before": self.before,
            "lock_count_after_lock": self.after_lock,
            "lock_count_after_unlock": self.after_unlock,
        }


@dataclass(frozen=True)
class UnlockDecision:
    unlock: bool
    reason: str


def decide_recovery_unlock(locked: bool, current: int | None, left: int) -> UnlockDecision:
    """Whether a process other than the holder may undo our lock.

    ``locked``: currentOp's fsyncLock flag now; ``current``: the server's lock count now (None
    when not locked); ``left``: the count our lock left. Unlock only on an exact match.
    """
    if not locked or not current:
        return UnlockDecision(False, "the server is not fsync-locked any more: nothing to undo")
    if current == left:
        return UnlockDecision(True, f"lockCount is {current}, the count quiesce's lock left: "
                                    "unlocking once")
    if current > left:
        return UnlockDecision(False, f"lockCount is {current} but quiesce's lock left {left}: "
                                     "someone else locked since; not unlocking (it could "
                                     "release their lock). Unlock by hand once their backup "
                                     "is done: db.fsyncUnlock()")
    return UnlockDecision(False, f"lockCount is {current} but quiesce's lock left {left}: "
                                 "someone else unlocked since; the remaining lock(s) are not "
                                 "known to be quiesce's. Check db.currentOp() and unlock by "
                                 "hand if they are stale: db.fsyncUnlock()")
