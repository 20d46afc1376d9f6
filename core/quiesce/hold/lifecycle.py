"""Drive many Quiescers as one hold: parallel, all or nothing, released in reverse order.

:class:`Hold` owns the lifecycle the engine interface promises (engine.py): ``prepare`` ->
``quiesce`` -> (``check_alive``)* -> ``release`` on success, ``abort`` on every other path,
``close`` always. Rules:

- ``prepare`` runs for every instance in parallel, then, once all are prepared, ``quiesce``
  runs for every instance in parallel. A slow flush of one instance therefore never lengthens
  another's hold; each instance's hold starts when its own ``quiesce`` returns.
- Every call is bounded by a :class:`Deadline`; a call that does not return in time is a
  failure of that instance.
- All or nothing: if one instance fails, every instance already quiesced is aborted in reverse
  order (LIFO, status "aborted"), all are closed, and :class:`QuiesceFailed` names each
  failing instance and why.
- A hard cutoff (``cutoff``, monotonic): the moment by which the caller needs the hold
  complete. The core stops waiting for calls at the cutoff, or as soon as the hold is
  abandoned (``abandon``: ``post`` came early, ``pre`` gave up or died). A lock that is
  acquired after either is released at once and recorded "late"; it never becomes a hold.
- ``release_all`` goes in reverse order of quiescing; each release has its own ``try`` so one
  failure never skips another's release. Each release runs in its own thread: the next one
  starts when the previous one returns, or after RELEASE_STAGGER seconds if it has not, so a
  server that stopped answering never lengthens the other instances' hold (their writers stay
  blocked for as long as they are held) by more than that.
- A Quiescer is never called from two threads at once: ``check_alive`` (run by the holder's
  liveness thread) and ``release`` of the same instance take turns on a per-instance lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from quiesce.deadline import Deadline
from quiesce.engine import Quiescer
from quiesce.errors import EngineError, QuiesceError, SessionLost
from quiesce.hold.states import Status

PENDING = Status.PENDING
HELD = Status.HELD
RELEASED = Status.RELEASED
AUTO_RELEASED = Status.AUTO_RELEASED
LOST = Status.LOST
FAILED = Status.FAILED
SKIPPED = Status.SKIPPED
LATE = Status.LATE
ABORTED = Status.ABORTED

# Extra seconds a thread gets past its deadline before the call counts as hung (only without a
# cutoff: with one, the cutoff is final).
JOIN_GRACE = 5.0
# Period at which a join re-checks whether the hold was abandoned.
ABANDON_POLL = 0.02
# How long block_all's threads outlive their block when no release comes (see block_all).
BLOCK_THREAD_LINGER = 600.0
# How long a release that has not returned holds up the next instance's release.
RELEASE_STAGGER = 1.0
# Extra seconds a release gets past release_timeout (plugins may first wait out a liveness
# check of their own) before it counts as hung.
RELEASE_GRACE = 30.0


def describe(exc: BaseException) -> str:
    """A one-line reason for a result: the message, plus the fix when there is one."""
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, QuiesceError):
        text = f"{type(exc).__name__}: {text}"
    hint = getattr(exc, "hint", "")
    return f"{text} (fix: {hint})" if hint else text


@dataclass
class InstanceResult:
    """What happened to one instance; ``to_dict`` is the JSON shape of ``quiesce post``."""

    plugin: str
    name: str
    status: str = PENDING
    held_seconds: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        held = None if self.held_seconds is None else round(self.held_seconds, 6)
        return {
            "plugin": self.plugin,
            "name": self.name,
            "status": self.status,
            "held_seconds": held,
            "metadata": self.metadata,
            "error": self.error,
            "note": self.note,
        }


class QuiesceFailed(EngineError):
    """``pre`` could not quiesce every instance; everything taken was released again."""

    def __init__(self, results: list[InstanceResult], abandoned: str | None = None) -> None:
        self.results = results
        self.abandoned = abandoned
        failed = [r for r in results if r.status in (FAILED, LATE)]
        lines = "; ".join(f"{r.plugin}/{r.name}: {r.error}" for r in failed)
        if abandoned is not None:
            message = f"the hold was abandoned before it was complete: {abandoned}"
            if lines:
                message += f" ({lines})"
            super().__init__(message, hint="nothing is held")
            return
        super().__init__(
            f"could not quiesce {len(failed)} of {len(results)} instance(s): {lines}",
            hint="fix the instance(s) named above; nothing is held",
        )


class _Slot:
    __slots__ = ("blocked_at", "busy", "closed", "deferred", "given_up", "held_at", "quiescer",
                 "released_at", "result", "taken_order")

    def __init__(self, quiescer: Quiescer) -> None:
        self.quiescer = quiescer
        # Held while a thread is inside the quiescer after it was held (check_alive, release):
        # plugins are not thread-safe, and their calls must take turns.
        self.busy = threading.Lock()
        self.result = InstanceResult(plugin=quiescer.engine, name=quiescer.name)
        self.held_at: float | None = None  # monotonic
        self.released_at: float | None = None
        self.taken_order = -1
        self.closed = False
        # The core stopped waiting for a call still inside the plugin (its note says "hung"):
        # nobody may touch the quiescer from another thread; the late call undoes itself.
        self.given_up = False
        # The engine left its write block for block_all() (defer_block), and when it took it.
        self.deferred = False
        self.blocked_at: float | None = None

    def held_seconds(self, now: float | None = None) -> float | None:
        if self.held_at is None:
            return None
        end = self.released_at if self.released_at is not None else (now or time.monotonic())
        return max(0.0, end - self.held_at)


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Hold:
    """A set of instances quiesced together and released together."""

    def __init__(self, quiescers: Sequence[Quiescer], *, timeout: float,
                 release_timeout: float = 30.0, log: Log | None = None,
                 on_held: Callable[[Quiescer], None] | None = None,
                 cutoff: float | None = None, defer_block: bool = False) -> None:
        """``on_held`` is called (from a worker thread) the moment an instance is held, e.g.
        to hand its recovery token to a guardian before anything else can go wrong.
        ``cutoff`` (monotonic) is the hard deadline of the whole hold: see the module doc.
        ``defer_block``: the caller freezes by itself and calls :meth:`block_all` just before
        its first FIFREEZE; engines that can (``Quiescer.defer_block``) leave what stops writes
        out of ``quiesce`` until then."""
        if not quiescers:
            raise ValueError("a hold needs at least one instance")
        self.slots = [_Slot(q) for q in quiescers]
        self.timeout = float(timeout)
        self.release_timeout = float(release_timeout)
        self.log = log or _quiet
        self.on_held = on_held
        self._order = 0
        self._order_lock = threading.Lock()
        self.cutoff = cutoff
        self.abandoned: str | None = None  # why, once abandoned
        self._abandon_event = threading.Event()
        self._workers: list[threading.Thread] = []
        self.defer = defer_block
        self._blocks_done = threading.Event()  # block_all's threads may end (release_all)
        # The threads that will take the deferred blocks are started once the hold is
        # complete and wait for block_all: a thread created right before the caller's FIFREEZE
        # lengthens the freeze (docs/performance.md).
        self._block_deadline = Deadline(0)
        self._block_errors: dict[int, str] = {}
        # per slot (id): the thread, the event that lets it take its block, and the one it
        # sets when its block returned
        self._block_threads: dict[int, tuple[threading.Thread, threading.Event,
                                             threading.Event]] = {}

    def abandon(self, why: str) -> bool:
        """Stop waiting for the calls in flight: whatever they acquire from now on is released
        at once and recorded "late". False when the hold was already complete or abandoned,
        or when the cutoff has passed: then the deadline is what ended the wait (a 'pre' that
        gives up at its deadline closes its pipe and asks to abort at that very moment; which
        of the two the core noticed first must not change what is reported)."""
        with self._order_lock:
            if self.abandoned is not None:
                return False
            if self.cutoff is not None and time.monotonic() >= self.cutoff:
                return False
            self.abandoned = why
        self._abandon_event.set()
        return True

    def _late_reason(self, now: float) -> str | None:
        """Why an acquisition completing at ``now`` is late, or None (caller holds the lock)."""
        if self.cutoff is not None and now > self.cutoff:
            return f"{now - self.cutoff:.3f} s after the deadline"
        return self.abandoned

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every prepare/quiesce call still in flight (they undo
        what they took by themselves); True when none is left."""
        give_up = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(0.0, give_up - time.monotonic()))
        return not any(t.is_alive() for t in self._workers)

    # ----------------------------------------------------------------- quiesce
    def quiesce_all(self) -> list[InstanceResult]:
        """Prepare, then quiesce, every instance in parallel. Raises QuiesceFailed."""
        deadline = Deadline(self.timeout)
        if self.cutoff is not None:
            deadline.at = min(deadline.at, self.cutoff)
        if self.abandoned is not None:
            # 'post' (or the end of 'pre') came before any call started: touch no server.
            self._unwind()
            raise QuiesceFailed(self.results(), self.abandoned)
        failures = self._parallel("prepare", deadline, self.slots)
        if failures:
            self._unwind()
            raise QuiesceFailed(self.results(), self.abandoned)
        if self.abandoned is not None:
            self._unwind()
            raise QuiesceFailed(self.results(), self.abandoned)
        if self.defer:
            self._ask_deferral()
        failures = self._parallel("quiesce", deadline, self.slots)
        if failures or self.abandoned is not None:
            self._unwind()
            raise QuiesceFailed(self.results(), self.abandoned)
        for slot in self.slots:
            if slot.deferred:
                self._start_block_thread(slot)
        return self.results()

    def _parallel(self, step: str, deadline: Deadline, slots: list[_Slot]) -> list[_Slot]:
        """Run ``step`` for every slot in a thread of its own; the slots that failed, were
        late, or had not returned when the core stopped waiting."""
        threads = []
        for slot in slots:
            thread = threading.Thread(target=self._work, args=(step, slot, deadline),
                                      daemon=True,
                                      name=f"{step}-{slot.result.plugin}-{slot.result.name}")
            thread.start()
            threads.append((slot, thread))
            self._workers.append(thread)
        failed: list[_Slot] = []
        give_up = (self.cutoff if self.cutoff is not None
                   else deadline.at + JOIN_GRACE)
        for slot, thread in threads:
            while thread.is_alive() and not self._abandon_event.is_set():
                left = give_up - time.monotonic()
                if left <= 0:
                    break
                thread.join(min(left, ABANDON_POLL))
            with self._order_lock:
                if thread.is_alive():
                    self._give_up(slot, step, deadline)
            if slot.result.status in (FAILED, LATE):
                failed.append(slot)
                self.log(f"{slot.result.plugin}/{slot.result.name}: {slot.result.error}")
        return failed

    def _give_up(self, slot: _Slot, step: str, deadline: Deadline) -> None:
        """The core stops waiting for a call still inside the plugin (caller holds the lock)."""
        slot.result.status = FAILED
        if self.abandoned is not None:
            slot.result.error = f"{step} abandoned: {self.abandoned}"
        elif self.cutoff is not None:
            slot.result.error = (f"{step} had not returned at the deadline "
                                 f"({deadline.seconds:g} s)")
        else:
            slot.result.error = (f"{step} did not return within {deadline.seconds:g} s (the "
                                 "plugin ignored its deadline)")
        slot.result.note = "hung"
        slot.given_up = True

    def _work(self, step: str, slot: _Slot, deadline: Deadline) -> None:
        """One call of ``step`` in its worker thread. A lock that arrives after the core gave
        up, after the cutoff or after the hold was abandoned is undone here, at once."""
        q = slot.quiescer
        try:
            getattr(q, step)(deadline)
        except BaseException as exc:
            with self._order_lock:
                if not slot.given_up:
                    slot.result.status = FAILED
                    slot.result.error = f"{step} failed: {describe(exc)}"
            return
        with self._order_lock:
            now = time.monotonic()
            late_reason = self._late_reason(now) if step == "quiesce" else None
            late = slot.given_up or late_reason is not None
            if step == "quiesce":
                slot.held_at = now
                if late:
                    slot.result.status = LATE
                    slot.result.error = (
                        f"acquired too late ({late_reason or 'after the core gave up'}); "
                        "released at once, never part of a hold")
                    slot.result.note = None
                else:
                    slot.result.status = HELD
                    slot.taken_order = self._order
                    self._order += 1
        if late:
            self._abort(slot)
            if step == "quiesce":
                slot.released_at = time.monotonic()
                slot.result.held_seconds = slot.held_seconds()
            self._close(slot)
            return
        if step == "quiesce" and self.on_held is not None:
            try:
                self.on_held(q)
            except Exception as exc:
                self.log(f"{q.engine}/{q.name}: on_held callback failed: {describe(exc)}")

    def _unwind(self) -> None:
        """Abort what was taken (LIFO), then the failed ones, then close everything."""
        taken = sorted((s for s in self.slots if s.result.status == HELD),
                       key=lambda s: s.taken_order, reverse=True)
        why = (f"released again: {self.abandoned}" if self.abandoned is not None
               else "released again because another instance failed")
        for slot in taken:
            self._abort(slot)
            slot.released_at = time.monotonic()
            slot.result.held_seconds = slot.held_seconds()
            slot.result.status = ABORTED
            slot.result.note = why
        for slot in self.slots:
            if slot.result.status == PENDING:
                slot.result.status = SKIPPED
                slot.result.note = ("not quiesced: " + self.abandoned if self.abandoned
                                    is not None else "not quiesced because another instance "
                                    "failed")
            if slot.given_up:
                # Another thread may still be inside the plugin: touching the object now could
                # corrupt its connection. The holder exits next, which closes its sockets.
                continue
            if slot.result.status == FAILED:
                self._abort(slot)
        self.close_all()

    def _ask_deferral(self) -> None:
        for slot in self.slots:
            try:
                slot.deferred = bool(slot.quiescer.defer_block())
            except Exception as exc:  # a plugin that cannot say keeps its whole hold in pre
                slot.deferred = False
                self.log(f"{slot.result.plugin}/{slot.result.name}: defer_block raised "
                         f"{describe(exc)}; its write block is taken now")

    # ----------------------------------------------------------------- holding
    def block_missed(self) -> list[str]:
        """Instances whose deferred write block was not taken (yet), whatever their status
        now: a lost one can never be blocked, so :meth:`block_all` reports it."""
        return [f"{s.result.plugin}/{s.result.name}" for s in self.slots
                if s.deferred and s.blocked_at is None]

    def blocks_writes(self) -> bool:
        """Whether any held instance stops the application's writes right now."""
        return self._any_held("blocks_writes")

    def relies_on_freeze(self) -> bool:
        """Whether any held instance counts on the caller's freeze (a lighter level)."""
        return self._any_held("relies_on_freeze")

    def commit_paths(self) -> list[str]:
        """The held instances' commit paths (Quiescer.commit_paths), each once."""
        paths: list[str] = []
        for quiescer in self.held():
            try:
                found = [str(p) for p in quiescer.commit_paths]
            except Exception as exc:  # a preference only: none is as safe as any
                self.log(f"{quiescer.engine}/{quiescer.name}: commit_paths raised "
                         f"{describe(exc)}; no freeze order preference for it")
                continue
            paths += [p for p in found if p not in paths]
        return paths

    def _any_held(self, attribute: str) -> bool:
        for quiescer in self.held():
            try:
                if getattr(quiescer, attribute):
                    return True
            except Exception:
                return True  # cannot tell: assume it does (the safe answer for both)
        return False

    def block_all(self, timeout: float) -> list[InstanceResult]:
        """Take every deferred write block, in parallel, each under its instance's turn (the
        liveness thread may be checking it). Returns the instances that failed, or were lost
        since 'pre' (their block can never come); the caller then releases the whole hold.

        Each block runs in a thread of its own, bounded like any call (a block that returns
        after the core gave up is undone at once), started when the hold became complete and
        waiting since (creating a thread right before the caller's FIFREEZE lengthens it). The
        threads do not end when their block returns: they wait for :meth:`release_all` (at
        most BLOCK_THREAD_LINGER seconds), since a thread that ends just before the caller's
        FIFREEZE queues kernel work the freeze then waits for (docs/performance.md)."""
        deadline = Deadline(timeout)
        missed = [s for s in self.slots if s.deferred and s.blocked_at is None]
        pending = [s for s in missed if s.result.status == HELD]
        errors: dict[int, str] = {
            id(s): f"lost before its deferred write block ({s.result.status})"
            for s in missed if s.result.status != HELD}
        self._block_deadline, self._block_errors = deadline, errors
        finished: dict[int, threading.Event] = {}
        for slot in pending:
            waiting = self._block_threads.get(id(slot))
            if waiting is None or not waiting[0].is_alive() or waiting[1].is_set():
                self._start_block_thread(slot)  # none is waiting (e.g. a second call)
            _thread, go, finished[id(slot)] = self._block_threads[id(slot)]
            go.set()
        give_up = deadline.at + JOIN_GRACE
        for slot in pending:
            finished[id(slot)].wait(max(0.0, give_up - time.monotonic()))
            with self._order_lock:
                if not finished[id(slot)].is_set():
                    slot.given_up = True
                    errors.setdefault(id(slot), f"block did not return within {timeout:g} s")
        failed = []
        for slot in missed:
            if id(slot) in errors:
                slot.result.error = errors[id(slot)]
                self.log(f"{slot.result.plugin}/{slot.result.name}: {errors[id(slot)]}")
                failed.append(slot.result)
        return failed

    def _start_block_thread(self, slot: _Slot) -> None:
        go, finished = threading.Event(), threading.Event()

        def take() -> None:
            # Waits for block_all (or the release: then there is nothing to take), takes the
            # block, and stays until the release (at most BLOCK_THREAD_LINGER s).
            if not go.wait(BLOCK_THREAD_LINGER) or self._blocks_done.is_set():
                return
            try:
                self._take_block(slot, self._block_deadline, self._block_errors)
            finally:
                finished.set()
            self._blocks_done.wait(BLOCK_THREAD_LINGER)

        thread = threading.Thread(target=take, daemon=True,
                                  name=f"block-{slot.result.plugin}-{slot.result.name}")
        self._block_threads[id(slot)] = (thread, go, finished)
        thread.start()

    def _take_block(self, slot: _Slot, deadline: Deadline, errors: dict[int, str]) -> None:
        with slot.busy:
            if slot.result.status != HELD:
                errors[id(slot)] = f"not held any more ({slot.result.status})"
                return
            try:
                slot.quiescer.block(deadline)
            except BaseException as exc:
                errors[id(slot)] = (f"the write block deferred to the freeze failed: "
                                    f"{describe(exc)}")
                return
            with self._order_lock:
                late = slot.given_up
                if not late:
                    slot.blocked_at = time.monotonic()
        if late:  # the core stopped waiting: whatever it took is undone now
            self._abort(slot)

    def held(self) -> list[Quiescer]:
        return [s.quiescer for s in self.slots if s.result.status == HELD]

    def held_since(self) -> float | None:
        """Monotonic time at which the first instance became held."""
        times = [s.held_at for s in self.slots if s.held_at is not None]
        return min(times) if times else None

    def check_alive(self) -> list[InstanceResult]:
        """Poll every held instance; those whose session died become "lost" (and aborted).

        Safe to run in a thread of its own while ``release_all`` runs: an instance being
        released is skipped, and one being checked is released once its check returns.
        """
        lost = []
        for slot in self.slots:
            if slot.result.status != HELD:
                continue
            with slot.busy:
                if slot.result.status != HELD:
                    continue  # released meanwhile
                try:
                    slot.quiescer.check_alive()
                except Exception as exc:
                    kind = "session lost" if isinstance(exc, SessionLost) else "check failed"
                    with self._order_lock:
                        slot.released_at = time.monotonic()
                        slot.result.status = LOST
                        slot.result.held_seconds = slot.held_seconds()
                        slot.result.error = f"{kind} while held: {describe(exc)}"
                    self.log(f"{slot.result.plugin}/{slot.result.name}: {slot.result.error}")
                    self._abort(slot)
                    self._close(slot)
                    lost.append(slot.result)
        return lost

    # ----------------------------------------------------------------- release
    def release_all(self, status: str = RELEASED, note: str | None = None
                    ) -> list[InstanceResult]:
        """Release every held instance in reverse order of quiescing; never skips one.

        Each release runs in its own thread; the next starts once the previous returned, or
        after RELEASE_STAGGER seconds if it has not (a hung server must not keep the others
        locked). Returns when every release has returned or given up.
        """
        self._blocks_done.set()
        for _thread, go, _finished in list(self._block_threads.values()):
            go.set()  # a block thread still waiting ends now
        taken = sorted((s for s in self.slots if s.result.status == HELD),
                       key=lambda s: s.taken_order, reverse=True)
        threads: list[tuple[_Slot, threading.Thread]] = []
        for slot in taken:
            thread = threading.Thread(target=self._release_one, args=(slot, status, note),
                                      daemon=True,
                                      name=f"release-{slot.result.plugin}-{slot.result.name}")
            thread.start()
            threads.append((slot, thread))
            thread.join(RELEASE_STAGGER)
        for slot, thread in threads:
            thread.join(self.release_timeout + RELEASE_GRACE)
            if thread.is_alive():
                with self._order_lock:
                    if slot.result.status == HELD:
                        slot.released_at = time.monotonic()
                        slot.result.held_seconds = slot.held_seconds()
                        slot.result.status = FAILED
                        slot.result.note = "hung"
                        slot.given_up = True
                        slot.result.error = (
                            f"release did not return within "
                            f"{self.release_timeout + RELEASE_GRACE:g} s (the plugin ignored "
                            "its deadline); the holder's exit closes its connection")
                self.log(f"{slot.result.plugin}/{slot.result.name}: {slot.result.error}")
        return self.results()

    def _release_one(self, slot: _Slot, status: str, note: str | None) -> None:
        result = slot.result
        with slot.busy:
            if result.status != HELD:
                return  # lost while its liveness check held the turn
            outcome: str
            error: str | None
            try:
                metadata = slot.quiescer.release(Deadline(self.release_timeout))
            except SessionLost as exc:
                outcome, error, metadata = LOST, f"session lost before release: {describe(exc)}", {}
                self._abort(slot)
            except BaseException as exc:
                outcome, error, metadata = FAILED, f"release failed: {describe(exc)}", {}
                self._abort(slot)
            else:
                outcome, error = status, None
            with self._order_lock:
                if result.status != HELD:
                    return  # the core gave up on this release (hung) and reported it
                slot.released_at = time.monotonic()
                result.held_seconds = slot.held_seconds()
                result.status = outcome
                result.error = error
                if error is None:
                    result.metadata = dict(metadata or {})
                    if note:
                        result.note = note
            self._close(slot)
        if result.error:
            self.log(f"{result.plugin}/{result.name}: {result.error}")

    def results(self) -> list[InstanceResult]:
        now = time.monotonic()
        for slot in self.slots:
            if slot.result.status == HELD:
                slot.result.held_seconds = slot.held_seconds(now)
        return [s.result for s in self.slots]

    def close_all(self) -> None:
        for slot in reversed(self.slots):
            if not slot.given_up:
                self._close(slot)

    def _abort(self, slot: _Slot) -> None:
        try:
            slot.quiescer.abort()
        except Exception as exc:
            self.log(f"{slot.result.plugin}/{slot.result.name}: abort raised {describe(exc)}")

    def _close(self, slot: _Slot) -> None:
        if slot.closed:
            return
        slot.closed = True
        try:
            slot.quiescer.close()
        except Exception as exc:
            self.log(f"{slot.result.plugin}/{slot.result.name}: close raised {describe(exc)}")
