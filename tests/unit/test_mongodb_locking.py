"""The fsync lock's command documents and lock-count bookkeeping."""

from __future__ import annotations

import pytest
from bson.int64 import Int64

from quiesce.errors import EngineError
from quiesce_mongodb.locking import (
    CURRENT_OP,
    UNLOCK,
    LockLedger,
    decide_recovery_unlock,
    is_not_locked_error,
    lock_command,
    reply_lock_count,
    reported_locked,
)


def test_lock_command_bounds_the_wait_where_supported() -> None:
    assert lock_command((7, 0, 14), 2.5) == {"fsync": 1, "lock": True,
                                             "fsyncLockAcquisitionTimeoutMillis": 2500}
    # Older servers would reject an unknown field: leave it out there.
    assert lock_command((6, 0, 20), 2.5) == {"fsync": 1, "lock": True}
    assert next(iter(lock_command((8, 0, 0), 1))) == "fsync"  # command name first
    # fsync.idl types the timeout as a 32-bit int: a huge wait must not become an int64
    huge = lock_command((8, 0, 0), 10**9)["fsyncLockAcquisitionTimeoutMillis"]
    assert huge == 2**31 - 1


def test_other_commands() -> None:
    assert UNLOCK == {"fsyncUnlock": 1}
    assert CURRENT_OP["$ownOps"] is True and next(iter(CURRENT_OP)) == "currentOp"


def test_reported_locked() -> None:
    assert reported_locked({"inprog": [], "fsyncLock": True, "info": "use fsyncUnlock", "ok": 1})
    assert not reported_locked({"inprog": [], "ok": 1})


def test_reply_lock_count_accepts_int64_and_refuses_missing() -> None:
    assert reply_lock_count({"lockCount": Int64(2), "ok": 1.0}, "fsync") == 2
    with pytest.raises(EngineError, match="without a lockCount"):
        reply_lock_count({"ok": 1.0}, "fsync")
    with pytest.raises(EngineError):
        reply_lock_count({"lockCount": True}, "fsync")


def test_not_locked_error() -> None:
    assert is_not_locked_error(20, "fsyncUnlock called when not locked")
    assert is_not_locked_error(None, "fsyncUnlock called when not locked")
    assert not is_not_locked_error(13, "not authorized on admin")


def test_ledger_clean_cycle() -> None:
    ledger = LockLedger()
    ledger.record_lock(1)
    ledger.record_unlock(0)
    assert ledger.before == 0
    assert ledger.release_findings() == []
    assert ledger.as_metadata() == {"lock_count_before": 0, "lock_count_after_lock": 1,
                                    "lock_count_after_unlock": 0}
    assert not ledger.someone_else_locked


def test_ledger_on_a_server_locked_before() -> None:
    ledger = LockLedger(locked_before=True)
    ledger.record_lock(3)
    ledger.record_unlock(2)
    assert ledger.before == 2 and ledger.release_findings() == []
    assert not ledger.someone_else_locked


def test_ledger_detects_a_race_before_our_lock() -> None:
    ledger = LockLedger(locked_before=False)
    ledger.record_lock(2)
    assert ledger.someone_else_locked


def test_ledger_reports_other_clients_during_the_hold() -> None:
    more = LockLedger()
    more.record_lock(1)
    more.record_unlock(1)
    assert "stays write-locked" in more.release_findings()[0]
    fewer = LockLedger(locked_before=True)
    fewer.record_lock(2)
    fewer.record_unlock(0)
    assert "writes may have run" in fewer.release_findings()[0]


def test_ledger_refuses_an_impossible_count() -> None:
    with pytest.raises(EngineError):
        LockLedger().record_lock(0)


@pytest.mark.parametrize("locked, current, left, unlock, word", [
    (True, 1, 1, True, "unlocking once"),
    (True, 3, 3, True, "unlocking once"),
    (True, 2, 1, False, "someone else locked"),
    (True, 1, 2, False, "someone else unlocked"),
    (False, None, 1, False, "not fsync-locked"),
    (True, 0, 1, False, "not fsync-locked"),
])
def test_recovery_unlocks_only_on_an_exact_count(locked: bool, current: int | None, left: int,
                                                 unlock: bool, word: str) -> None:
    decision = decide_recovery_unlock(locked, current, left)
    assert decision.unlock is unlock
    assert word in decision.reason
