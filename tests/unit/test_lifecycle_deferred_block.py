"""Hold with ``defer_block``: engines that can split their hold leave what stops writes for
``block_all`` (taken by ``quiesce run`` just before its first FIFREEZE); the others take it all
in ``quiesce`` as always. Pure logic, with in-test Quiescers that record what they were asked."""

from __future__ import annotations

import threading
import time
from typing import Any

from helpers import wait_for
from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings, Quiescer
from quiesce.errors import EngineError
from quiesce.hold.lifecycle import Hold


class Splittable(Quiescer):
    """Blocks writes only after ``block`` when deferral was accepted, at once otherwise."""

    def __init__(self, name: str, *, can_defer: bool = True, fail_block: bool = False,
                 on_block: threading.Event | None = None) -> None:
        super().__init__(InstanceSettings(engine="fake", name=name, options={}))
        self.can_defer = can_defer
        self.fail_block = fail_block
        self.on_block = on_block
        self.deferred = False
        self.writes_blocked = False
        self.calls: list[str] = []

    def prepare(self, deadline: Deadline) -> None:
        self.calls.append("prepare")

    def defer_block(self) -> bool:
        self.calls.append("defer_block")
        self.deferred = self.can_defer
        return self.can_defer

    def quiesce(self, deadline: Deadline) -> None:
        self.calls.append("quiesce")
        self.writes_blocked = not self.deferred

    def block(self, deadline: Deadline) -> None:
        self.calls.append("block")
        if self.on_block is not None:
            self.on_block.set()
        if self.fail_block:
            raise EngineError(f"{self.name}: lock wait timeout")
        self.writes_blocked = True

    @property
    def blocks_writes(self) -> bool:
        return self.writes_blocked

    def check_alive(self) -> None:
        pass

    def release(self, deadline: Deadline) -> dict[str, Any]:
        self.calls.append("release")
        return {}

    def abort(self) -> None:
        self.calls.append("abort")


def test_without_defer_block_the_whole_hold_is_taken_in_quiesce() -> None:
    q = Splittable("a")
    hold = Hold([q], timeout=10)
    hold.quiesce_all()
    assert "defer_block" not in q.calls
    assert hold.blocks_writes() and not hold.block_missed() and hold.block_missed() == []
    hold.release_all()


def test_deferred_hold_blocks_writes_only_after_block_all() -> None:
    a, b = Splittable("a"), Splittable("b")
    hold = Hold([a, b], timeout=10, defer_block=True)
    hold.quiesce_all()
    assert a.calls == ["prepare", "defer_block", "quiesce"]
    assert not hold.blocks_writes() and bool(hold.block_missed())
    assert hold.block_missed() == ["fake/a", "fake/b"]
    assert hold.block_all(5) == []
    assert hold.blocks_writes() and not hold.block_missed() and hold.block_missed() == []
    assert all(slot.blocked_at is not None for slot in hold.slots)  # when each was taken
    assert hold.block_all(5) == []  # a second request takes nothing twice
    assert a.calls.count("block") == 1
    results = hold.release_all()
    assert [r.status for r in results] == ["released", "released"]


def test_an_engine_that_cannot_split_takes_everything_in_quiesce() -> None:
    split, whole = Splittable("split"), Splittable("whole", can_defer=False)
    hold = Hold([split, whole], timeout=10, defer_block=True)
    hold.quiesce_all()
    assert hold.blocks_writes()  # 'whole' blocks already: the runner must not wait
    assert bool(hold.block_missed())
    assert hold.block_all(5) == []
    assert "block" not in whole.calls and split.calls.count("block") == 1
    hold.release_all()


def test_a_failed_block_is_reported_and_the_release_records_it_missed() -> None:
    good, bad = Splittable("good"), Splittable("bad", fail_block=True)
    hold = Hold([good, bad], timeout=10, defer_block=True)
    hold.quiesce_all()
    failed = hold.block_all(5)
    assert [r.name for r in failed] == ["bad"]
    assert "lock wait timeout" in (failed[0].error or "")
    hold.release_all()
    assert hold.block_missed() == ["fake/bad"]


def test_defer_block_raising_keeps_the_whole_hold_in_quiesce() -> None:
    class Broken(Splittable):
        def defer_block(self) -> bool:
            raise RuntimeError("cannot tell")

    q = Broken("x")
    logged: list[str] = []
    hold = Hold([q], timeout=10, defer_block=True, log=logged.append)
    hold.quiesce_all()
    assert hold.blocks_writes() and not hold.block_missed()
    assert any("defer_block raised" in line for line in logged)
    hold.release_all()


def test_blocks_run_in_parallel() -> None:
    """A slow block of one instance does not delay another's (both wait for each other)."""
    first_in = threading.Event()
    second_in = threading.Event()

    class Waits(Splittable):
        def block(self, deadline: Deadline) -> None:
            other = second_in if self.name == "one" else first_in
            (first_in if self.name == "one" else second_in).set()
            assert other.wait(5), "the blocks ran one after the other"
            super().block(deadline)

    hold = Hold([Waits("one"), Waits("two")], timeout=10, defer_block=True)
    hold.quiesce_all()
    assert hold.block_all(10) == []
    hold.release_all()


def test_an_instance_lost_before_its_block_makes_the_block_fail() -> None:
    class Dies(Splittable):
        def check_alive(self) -> None:
            from quiesce.errors import SessionLost

            raise SessionLost(f"{self.name}: server restarted")

    alive, dead = Splittable("alive"), Dies("dead")
    hold = Hold([alive, dead], timeout=10, defer_block=True)
    hold.quiesce_all()
    hold.check_alive()  # 'dead' is lost between pre and the freeze
    assert bool(hold.block_missed())
    failed = hold.block_all(5)
    assert [r.name for r in failed] == ["dead"]
    assert "lost before its deferred write block" in (failed[0].error or "")
    hold.release_all()


def test_a_block_that_returns_after_the_core_gave_up_is_undone(monkeypatch) -> None:
    from quiesce.hold import lifecycle

    monkeypatch.setattr(lifecycle, "JOIN_GRACE", 0.05)
    returned = threading.Event()

    class Slow(Splittable):
        def block(self, deadline: Deadline) -> None:
            time.sleep(0.5)  # ignores its deadline
            super().block(deadline)
            returned.set()

    q = Slow("slow")
    hold = Hold([q], timeout=10, defer_block=True)
    hold.quiesce_all()
    failed = hold.block_all(0.1)
    assert [r.name for r in failed] == ["slow"] and "did not return" in (failed[0].error or "")
    assert returned.wait(5)
    wait_for(lambda: "abort" in q.calls, 5, "the late block undone (a block taken after the "
                                            "core gave up was left held)")
    hold.release_all()


class RecordsThread(Splittable):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.block_thread: threading.Thread | None = None

    def block(self, deadline: Deadline) -> None:
        self.block_thread = threading.current_thread()
        super().block(deadline)


def _block_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"block-fake-{name}"]


def test_the_block_thread_exists_before_block_all_and_takes_the_block() -> None:
    """block_all creates no thread: the one that takes the block was started when the hold
    became complete (a thread created right before the caller's FIFREEZE lengthens it)."""
    q = RecordsThread("early")
    hold = Hold([q], timeout=10, defer_block=True)
    hold.quiesce_all()
    waiting = _block_threads("early")
    assert len(waiting) == 1 and waiting[0].is_alive()
    assert "block" not in q.calls  # it waits for block_all
    before = {t.ident for t in threading.enumerate()}
    assert hold.block_all(5) == []
    assert q.block_thread is waiting[0]
    assert {t.ident for t in threading.enumerate()} <= before
    assert waiting[0].is_alive()  # it stays until the release
    hold.release_all()
    waiting[0].join(5)
    assert not waiting[0].is_alive()


def test_a_release_without_block_ends_the_waiting_thread_without_blocking() -> None:
    q = RecordsThread("never")
    hold = Hold([q], timeout=10, defer_block=True)
    hold.quiesce_all()
    (waiting,) = _block_threads("never")
    hold.release_all()
    waiting.join(5)
    assert not waiting.is_alive()
    assert "block" not in q.calls and q.calls[-1] == "release"
    assert hold.block_missed() == ["fake/never"]


def test_a_block_thread_that_stopped_waiting_is_replaced(monkeypatch) -> None:
    """A hold older than the threads' wait (BLOCK_THREAD_LINGER) still gets its block."""
    from quiesce.hold import lifecycle

    monkeypatch.setattr(lifecycle, "BLOCK_THREAD_LINGER", 0.05)
    q = RecordsThread("late")
    hold = Hold([q], timeout=10, defer_block=True)
    hold.quiesce_all()
    (first,) = _block_threads("late")
    first.join(5)
    assert not first.is_alive()
    assert hold.block_all(5) == []
    assert q.calls.count("block") == 1 and q.block_thread is not first
    hold.release_all()
