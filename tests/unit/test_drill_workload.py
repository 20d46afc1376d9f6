"""Workload bookkeeping: acks, unknown outcomes, write-stall gaps, consistent-cut comparison."""

from __future__ import annotations

import threading

import pytest

from quiesce.harness.drill.workload import (
    AckLog,
    OutcomeUnknown,
    Transfer,
    Workload,
    compare_ledger,
    longest_gap_ms,
)


def _log(*acks: tuple[int, float, float]) -> AckLog:
    log = AckLog()
    for ledger_id, started, acked in acks:
        log.attempt(ledger_id)
        log.ack(ledger_id, started, acked)
    return log


def test_longest_gap_counts_window_edges() -> None:
    assert longest_gap_ms([1.0, 1.1, 1.5], 1.0, 2.0) == pytest.approx(500.0)
    assert longest_gap_ms([0.5, 1.9], 1.0, 2.0) == pytest.approx(900.0)  # from the window start
    assert longest_gap_ms([], 1.0, 1.25) == pytest.approx(250.0)  # nothing acked at all
    assert longest_gap_ms([1.0], 2.0, 1.0) is None


def test_compare_ledger_all_present() -> None:
    log = _log((1, 0.0, 0.1), (2, 0.1, 0.2), (3, 0.3, 0.4))
    report = compare_ledger(log, {1, 2, 3}, pre_began=0.35)
    assert report.expected == 2
    assert not report.missing and not report.phantoms and not report.cut_violation_count


def test_compare_ledger_acked_after_pre_may_be_missing() -> None:
    log = _log((1, 0.0, 0.1), (2, 0.1, 0.2), (3, 0.3, 0.4))
    report = compare_ledger(log, {1, 2}, pre_began=0.35)
    assert not report.missing and not report.cut_violation_count


def test_compare_ledger_missing_acked_write() -> None:
    log = _log((1, 0.0, 0.1), (2, 0.1, 0.2))
    report = compare_ledger(log, {1}, pre_began=0.5)
    assert report.missing == [2]


def test_compare_ledger_phantom() -> None:
    log = _log((1, 0.0, 0.1))
    report = compare_ledger(log, {1, 99}, pre_began=0.5)
    assert report.phantoms == [99]


def test_compare_ledger_unknown_outcome_is_not_a_phantom() -> None:
    log = _log((1, 0.0, 0.1))
    log.attempt(2)
    log.fail(2, RuntimeError("connection lost at commit"), unknown=True)
    assert compare_ledger(log, {1, 2}, pre_began=0.5).phantoms == []
    assert compare_ledger(log, {1}, pre_began=0.5).missing == []
    assert log.unknown == {2}


def test_compare_ledger_detects_torn_cut() -> None:
    # id 2 was acknowledged at 0.2; id 3 started at 0.3, after that. A single-instant
    # snapshot holding 3 must hold 2 as well.
    log = _log((1, 0.0, 0.1), (2, 0.1, 0.2), (3, 0.3, 0.4))
    report = compare_ledger(log, {1, 3}, pre_began=0.05)
    assert report.cut_violation_count == 1
    assert report.cut_violations == [(3, 2)]


def test_compare_ledger_concurrent_transactions_are_not_a_violation() -> None:
    # 3 started before 2 was acknowledged: either order of commit is a valid instant.
    log = _log((2, 0.1, 0.3), (3, 0.2, 0.25))
    assert compare_ledger(log, {3}, pre_began=0.0).cut_violation_count == 0


class _Session:
    """Acks every transfer except those whose id the test marks; counts what it saw."""

    def __init__(self, unknown_ids: set[int], failing_ids: set[int],
                 seen: list[Transfer]) -> None:
        self.unknown_ids = unknown_ids
        self.failing_ids = failing_ids
        self.seen = seen
        self.closed = False

    def transfer(self, t: Transfer) -> None:
        self.seen.append(t)
        if t.id in self.failing_ids:
            raise ValueError("rolled back")
        if t.id in self.unknown_ids:
            raise OutcomeUnknown("no answer to COMMIT")

    def close(self) -> None:
        self.closed = True


def test_workload_records_acks_failures_and_unknowns() -> None:
    seen: list[Transfer] = []
    lock = threading.Lock()
    sessions: list[_Session] = []

    def connect() -> _Session:
        with lock:
            s = _Session({5}, {7}, seen)
            sessions.append(s)
            return s

    w = Workload(connect, accounts=4, workers=2, pause=0.0, seed=1)
    w.start()
    assert w.wait_for_acks(50, timeout=30)
    w.stop(timeout=30)
    assert not w.alive()
    log = w.log
    acked = {a.id for a in log.acks()}
    assert 5 not in acked and 7 not in acked
    assert log.unknown == {5} and log.failed == {7}
    assert acked | log.unknown | log.failed == log.attempted
    assert all(t.src != t.dst and 0 <= t.src < 4 and 0 <= t.dst < 4 for t in seen)
    assert all(a.started <= a.acked for a in log.acks())
    # The session whose commit had an unknown outcome was closed and replaced.
    assert len(sessions) >= 2 and all(s.closed for s in sessions)


def test_workload_keeps_trying_when_connect_fails() -> None:
    attempts = []

    def connect() -> _Session:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("server frozen")
        return _Session(set(), set(), [])

    w = Workload(connect, accounts=3, workers=1, pause=0.0)
    w.start()
    assert w.wait_for_acks(5, timeout=30)
    w.stop()
    assert len(w.worker_errors) == 2


def test_workload_rejects_zero_workers() -> None:
    with pytest.raises(ValueError):
        Workload(lambda: _Session(set(), set(), []), accounts=2, workers=0)
