"""Hold: parallel prepare/quiesce, all-or-nothing unwind, reverse release, lost sessions.

Pure logic, driven with small in-test Quiescer classes that record what the core asked them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings, Quiescer
from quiesce.errors import EngineError, SessionLost
from quiesce.hold import lifecycle
from quiesce.hold.lifecycle import Hold, QuiesceFailed


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def add(self, name: str, step: str) -> None:
        with self.lock:
            self.calls.append((name, step))

    def steps(self, step: str) -> list[str]:
        return [n for n, s in self.calls if s == step]

    def index(self, name: str, step: str) -> int:
        return self.calls.index((name, step))


class Fake(Quiescer):
    def __init__(self, name: str, rec: Recorder, *, fail: str = "", lose: bool = False,
                 wait: dict[str, Any] | None = None) -> None:
        super().__init__(InstanceSettings(engine="fake", name=name, options={}))
        self.rec = rec
        self.fail = fail
        self.lose = lose
        self.wait = wait or {}

    def _step(self, step: str) -> None:
        hook = self.wait.get(step)
        if hook is not None:
            hook()
        self.rec.add(self.name, step)
        if self.fail == step:
            raise EngineError(f"{self.name} refuses to {step}")

    def prepare(self, deadline: Deadline) -> None:
        self._step("prepare")

    def quiesce(self, deadline: Deadline) -> None:
        self._step("quiesce")

    def check_alive(self) -> None:
        hook = self.wait.get("check_alive")
        if hook is not None:
            hook()
        self.rec.add(self.name, "check_alive")
        if self.lose:
            raise SessionLost(f"{self.name}: server restarted")

    def release(self, deadline: Deadline) -> dict[str, Any]:
        self._step("release")
        if self.fail == "release-lost":
            raise SessionLost("gone before release")
        return {"instance": self.name}

    def abort(self) -> None:
        self.rec.add(self.name, "abort")

    def close(self) -> None:
        self.rec.add(self.name, "close")


def test_all_held_then_released_in_reverse_order_of_quiescing() -> None:
    rec = Recorder()
    hold = Hold([Fake("a", rec), Fake("b", rec), Fake("c", rec)], timeout=10)
    results = hold.quiesce_all()
    assert [r.status for r in results] == ["held"] * 3
    quiesced = rec.steps("quiesce")
    results = hold.release_all()
    assert rec.steps("release") == list(reversed(quiesced))
    assert [r.status for r in results] == ["released"] * 3
    assert [r.metadata for r in results] == [{"instance": n} for n in "abc"]
    assert all(r.held_seconds is not None and r.held_seconds >= 0 for r in results)
    assert sorted(rec.steps("close")) == ["a", "b", "c"]
    assert rec.steps("abort") == []


def test_no_instance_locks_before_every_instance_is_prepared() -> None:
    """A slow prepare (flush) of one instance must not lengthen another's hold."""
    rec = Recorder()
    slow_started = threading.Event()
    release_slow = threading.Event()

    def slow_prepare() -> None:
        slow_started.set()
        assert release_slow.wait(10)

    slow = Fake("slow", rec, wait={"prepare": slow_prepare})
    fast = Fake("fast", rec)
    hold = Hold([fast, slow], timeout=20)
    worker = threading.Thread(target=hold.quiesce_all)
    worker.start()
    assert slow_started.wait(10)
    # While "slow" is still preparing, "fast" must not have locked anything yet.
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert rec.steps("quiesce") == []
        time.sleep(0.01)
    release_slow.set()
    worker.join(20)
    assert not worker.is_alive()
    assert rec.index("fast", "quiesce") > rec.index("slow", "prepare")
    hold.release_all()


def test_quiesce_runs_in_parallel() -> None:
    """Each quiesce waits for the other to start: only parallel calls can both succeed."""
    rec = Recorder()
    barrier = threading.Barrier(2, timeout=10)
    hold = Hold([Fake("a", rec, wait={"quiesce": barrier.wait}),
                 Fake("b", rec, wait={"quiesce": barrier.wait})], timeout=20)
    assert [r.status for r in hold.quiesce_all()] == ["held", "held"]
    hold.release_all()


def test_one_failing_quiesce_releases_the_others_and_names_the_failure() -> None:
    rec = Recorder()
    gate = threading.Event()
    # "b" fails only after "a" and "c" are held, so there is something to unwind.
    def late() -> None:
        deadline = time.monotonic() + 10
        while len(rec.steps("quiesce")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()

    hold = Hold([Fake("a", rec), Fake("b", rec, fail="quiesce", wait={"quiesce": late}),
                 Fake("c", rec)], timeout=20)
    with pytest.raises(QuiesceFailed) as caught:
        hold.quiesce_all()
    assert gate.is_set()
    message = str(caught.value)
    assert "fake/b" in message and "refuses to quiesce" in message
    assert "fake/a" not in message.split("instance(s):")[1]
    held_order = [n for n in rec.steps("quiesce") if n != "b"]
    aborted = rec.steps("abort")
    # LIFO: the instances that were held are aborted newest first, then the failed one.
    assert aborted[:2] == list(reversed(held_order))
    assert "b" in aborted
    assert sorted(rec.steps("close")) == ["a", "b", "c"]
    assert rec.steps("release") == []
    statuses = {r.name: r.status for r in caught.value.results}
    assert statuses == {"a": "aborted", "b": "failed", "c": "aborted"}


def test_failing_prepare_locks_nothing() -> None:
    rec = Recorder()
    hold = Hold([Fake("a", rec), Fake("b", rec, fail="prepare")], timeout=10)
    with pytest.raises(QuiesceFailed) as caught:
        hold.quiesce_all()
    assert rec.steps("quiesce") == []
    assert {r.name: r.status for r in caught.value.results} == {"a": "skipped", "b": "failed"}
    assert sorted(rec.steps("close")) == ["a", "b"]


def test_a_plugin_ignoring_its_deadline_fails_the_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "JOIN_GRACE", 0.2)
    rec = Recorder()
    stuck = threading.Event()
    hold = Hold([Fake("a", rec), Fake("stuck", rec, wait={"quiesce": lambda: stuck.wait(30)})],
                timeout=0.3)
    try:
        with pytest.raises(QuiesceFailed) as caught:
            hold.quiesce_all()
    finally:
        stuck.set()
    result = {r.name: r for r in caught.value.results}
    assert result["stuck"].status == "failed"
    assert "did not return within" in (result["stuck"].error or "")
    assert result["a"].status == "aborted"
    assert "a" in rec.steps("abort")
    # The late call finally returns with its lock taken: nobody else will release it, so the
    # worker undoes it by itself, and the result says it was acquired late.
    deadline = time.monotonic() + 10
    while "stuck" not in rec.steps("close") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "stuck" in rec.steps("abort") and "stuck" in rec.steps("close")
    assert hold.settle(5)
    assert result["stuck"].status == "late"
    assert "released at once" in (result["stuck"].error or "")


def test_an_acquisition_after_the_cutoff_is_late_and_released_at_once() -> None:
    """The plugin honours its own (longer) budget, but the caller's cutoff has passed when its
    lock is granted: it must never count as held."""
    rec = Recorder()
    hold = Hold([Fake("quick", rec),
                 Fake("slow", rec, wait={"quiesce": lambda: time.sleep(0.5)})],
                timeout=30, cutoff=time.monotonic() + 0.2)
    with pytest.raises(QuiesceFailed) as caught:
        hold.quiesce_all()
    assert hold.settle(5)
    statuses = {r.name: r.status for r in caught.value.results}
    assert statuses == {"quick": "aborted", "slow": "late"}
    # Both locks were undone: the quick one by the unwind, the late one by its own worker.
    assert sorted(rec.steps("abort")) == ["quick", "slow"]
    assert hold.held() == []
    assert "nothing is held" in (caught.value.hint or "")


def test_the_cutoff_bounds_the_wait_even_without_grace() -> None:
    """quiesce_all returns at the cutoff, not JOIN_GRACE later: pre must answer its caller in
    time."""
    rec = Recorder()
    release = threading.Event()
    hold = Hold([Fake("stuck", rec, wait={"quiesce": lambda: release.wait(10)})],
                timeout=30, cutoff=time.monotonic() + 0.3)
    started = time.monotonic()
    try:
        with pytest.raises(QuiesceFailed):
            hold.quiesce_all()
        waited = time.monotonic() - started
    finally:
        release.set()
    assert waited < lifecycle.JOIN_GRACE  # generous bound: the cutoff, not the grace, ended it
    assert hold.settle(5)
    assert [r.status for r in hold.results()] == ["late"]


def test_abandon_stops_the_wait_and_makes_a_later_grant_late() -> None:
    """'post' came (or pre died) while one lock was still waiting: the core stops waiting at
    once; the held instance is aborted; the late grant is released by its worker."""
    rec = Recorder()
    grant = threading.Event()
    hold = Hold([Fake("a", rec), Fake("b", rec, wait={"quiesce": lambda: grant.wait(10)})],
                timeout=30)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            hold.quiesce_all()
        except QuiesceFailed as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 5
    while "a" not in rec.steps("quiesce") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hold.abandon("'post' came while 'pre' was still acquiring")
    assert not hold.abandon("twice")
    worker.join(5)
    assert not worker.is_alive()
    assert outcome and "abandoned" in str(outcome[0])
    grant.set()
    assert hold.settle(5)
    statuses = {r.name: r.status for r in hold.results()}
    assert statuses == {"a": "aborted", "b": "late"}
    assert "post" in (hold.results()[1].error or "")
    assert sorted(rec.steps("abort")) == ["a", "b"]


def test_abandon_between_prepare_and_quiesce_takes_no_lock() -> None:
    rec = Recorder()
    hold = Hold([Fake("a", rec)], timeout=30)

    def prepare_then_abandon() -> None:
        hold.abandon("'pre' exited")

    hold.slots[0].quiescer.wait["prepare"] = prepare_then_abandon  # type: ignore[attr-defined]
    with pytest.raises(QuiesceFailed):
        hold.quiesce_all()
    assert rec.steps("quiesce") == []
    assert [r.status for r in hold.results()] == ["skipped"]


def test_abandon_before_any_call_prepares_nothing() -> None:
    """'post' reached the holder before it called any plugin (it read "quiescing" early):
    no server is touched, and every instance reads "skipped", not "failed"."""
    rec = Recorder()
    hold = Hold([Fake("a", rec), Fake("b", rec)], timeout=30)
    assert hold.abandon("'post' came while 'pre' was still acquiring")
    with pytest.raises(QuiesceFailed) as failed:
        hold.quiesce_all()
    assert failed.value.abandoned is not None and "post" in failed.value.abandoned
    assert [s for _n, s in rec.calls if s != "close"] == []
    assert [r.status for r in hold.results()] == ["skipped", "skipped"]
    assert all("post" in (r.note or "") for r in hold.results())


def test_release_failure_never_skips_another_release() -> None:
    rec = Recorder()
    hold = Hold([Fake("a", rec), Fake("b", rec, fail="release"),
                 Fake("c", rec, fail="release-lost")], timeout=10)
    hold.quiesce_all()
    results = {r.name: r for r in hold.release_all()}
    assert sorted(rec.steps("release")) == ["a", "b", "c"]
    assert results["a"].status == "released"
    assert results["b"].status == "failed" and "refuses to release" in results["b"].error
    assert results["c"].status == "lost"
    assert sorted(rec.steps("close")) == ["a", "b", "c"]
    assert sorted(rec.steps("abort")) == ["b", "c"]


def test_lost_session_is_reported_and_the_others_stay_held() -> None:
    rec = Recorder()
    lost = Fake("lost", rec)
    hold = Hold([Fake("a", rec), lost], timeout=10)
    hold.quiesce_all()
    assert hold.check_alive() == []
    lost.lose = True
    newly = hold.check_alive()
    assert [r.name for r in newly] == ["lost"]
    assert "server restarted" in newly[0].error
    assert [q.name for q in hold.held()] == ["a"]
    assert "lost" in rec.steps("abort") and "lost" in rec.steps("close")
    results = {r.name: r.status for r in hold.release_all()}
    assert results == {"a": "released", "lost": "lost"}
    assert rec.steps("release") == ["a"]


def test_auto_release_status_and_note() -> None:
    rec = Recorder()
    hold = Hold([Fake("a", rec)], timeout=10)
    hold.quiesce_all()
    [result] = hold.release_all(lifecycle.AUTO_RELEASED, note="deadline")
    assert result.status == "auto-released" and result.note == "deadline"
    assert result.to_dict()["status"] == "auto-released"


def test_on_held_sees_each_instance_as_soon_as_it_is_held() -> None:
    rec = Recorder()
    seen: list[str] = []
    hold = Hold([Fake("a", rec), Fake("b", rec)], timeout=10,
                on_held=lambda q: seen.append(q.name))
    hold.quiesce_all()
    assert sorted(seen) == ["a", "b"]
    hold.release_all()


def _run_in_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _wait_until(condition: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_hung_liveness_check_does_not_delay_the_other_instances_release() -> None:
    """A server that stops answering one check must not keep the other servers locked."""
    rec = Recorder()
    in_check = threading.Event()
    unblock = threading.Event()

    def hang() -> None:
        in_check.set()
        assert unblock.wait(30)

    stalled = Fake("stalled", rec)
    hold = Hold([Fake("other", rec), stalled], timeout=10)
    hold.quiesce_all()
    stalled.wait["check_alive"] = hang
    checker = _run_in_thread(hold.check_alive)
    try:
        assert in_check.wait(10)
        releaser = _run_in_thread(hold.release_all)
        # "other" is released while the check of "stalled" is still blocked.
        _wait_until(lambda: "other" in rec.steps("release"), "the other instance's release")
        assert not unblock.is_set() and "stalled" not in rec.steps("release")
    finally:
        unblock.set()
    checker.join(10)
    releaser.join(10)
    assert not releaser.is_alive()
    # Once its check returned, the stalled instance was released too (never concurrently).
    assert {r.name: r.status for r in hold.results()} == {"other": "released",
                                                         "stalled": "released"}
    assert rec.index("stalled", "release") > rec.index("stalled", "check_alive")


def test_a_hung_release_does_not_hold_up_the_next_one_and_order_is_kept() -> None:
    rec = Recorder()
    in_release = threading.Event()
    unblock = threading.Event()

    def hang() -> None:
        in_release.set()
        assert unblock.wait(30)

    hold = Hold([Fake("first", rec), Fake("last", rec, wait={"release": hang})], timeout=10)
    hold.quiesce_all()
    for order, slot in enumerate(hold.slots):  # "last" was quiesced last: released first
        slot.taken_order = order
    releaser = _run_in_thread(hold.release_all)
    try:
        assert in_release.wait(10)
        _wait_until(lambda: "first" in rec.steps("release"), "the next release to start")
        assert not unblock.is_set() and "last" not in rec.steps("release")
    finally:
        unblock.set()
    releaser.join(10)
    assert not releaser.is_alive()
    assert [r.status for r in hold.results()] == ["released", "released"]


def test_a_release_that_never_returns_is_failed_not_waited_for_forever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "RELEASE_GRACE", 0.2)
    monkeypatch.setattr(lifecycle, "RELEASE_STAGGER", 0.05)
    rec = Recorder()
    unblock = threading.Event()
    hold = Hold([Fake("ok", rec), Fake("stuck", rec, wait={"release": lambda: unblock.wait(30)})],
                timeout=10, release_timeout=0.1)
    hold.quiesce_all()
    try:
        results = {r.name: r for r in hold.release_all()}
    finally:
        unblock.set()
    assert results["ok"].status == "released"
    assert results["stuck"].status == "failed"
    assert "release did not return" in (results["stuck"].error or "")
    assert results["stuck"].held_seconds is not None
