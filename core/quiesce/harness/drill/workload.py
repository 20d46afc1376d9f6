"""The drill's write workload: bounded worker threads and the client-side record of every commit.

Each worker runs one small transaction after another against the live server: move an amount
between two accounts and append the matching ledger row, in one transaction (per-engine code
in ``quiesce.harness.drill.targets``). Before sending a transaction the worker notes the ledger id
and
the monotonic start time; when the commit returns it notes the acknowledgement time. A commit
whose outcome is unknown (the connection broke after COMMIT was sent) is kept apart: it may or
may not be in a snapshot, and no check may count it either way.

The :class:`AckLog` is what the restore is verified against:
- every id acknowledged before "pre began" must be present after restore;
- nothing that was never attempted may appear;
- the restored set must be a consistent cut: if an id is present, every id acknowledged before
  that id's transaction started must be present too (a snapshot of one instant has this
  property; disks copied at different instants typically do not).
The same record gives the application's view of the hold: the longest gap between two
acknowledgements inside a window (``write_stall_ms``).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

# A transaction is bounded in time (statement/socket timeouts in the engine code) and the
# workload in count (``workers``) and rate (``pause``), so a drill cannot flood a small disk.
DEFAULT_WORKERS = 3
DEFAULT_PAUSE = 0.004


@dataclass(frozen=True)
class Ack:
    """One acknowledged commit: ledger id, when its transaction started and when it was acked."""

    id: int
    started: float
    acked: float


@dataclass(frozen=True)
class Transfer:
    """One unit of work: a ledger row that moves ``amount`` from ``src`` to ``dst``."""

    id: int
    src: int
    dst: int
    amount: int


class WorkloadSession(Protocol):
    """One worker's own connection to the server (engine specific)."""

    def transfer(self, t: Transfer) -> None:
        """Apply ``t`` in one transaction; return only once the commit is acknowledged."""

    def close(self) -> None: ...


class OutcomeUnknown(Exception):
    """The commit was sent but its result never came back: it may or may not have happened."""


class AckLog:
    """Thread-safe record of attempted, acknowledged, failed and unknown ledger ids."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acks: list[Ack] = []
        self.attempted: set[int] = set()
        self.unknown: set[int] = set()
        self.failed: set[int] = set()
        self.errors: dict[str, int] = {}

    def attempt(self, ledger_id: int) -> None:
        with self._lock:
            self.attempted.add(ledger_id)

    def ack(self, ledger_id: int, started: float, acked: float) -> None:
        with self._lock:
            self._acks.append(Ack(ledger_id, started, acked))

    def fail(self, ledger_id: int, error: BaseException, *, unknown: bool) -> None:
        with self._lock:
            (self.unknown if unknown else self.failed).add(ledger_id)
            first_line = str(error).splitlines()[0][:120] if str(error) else ""
            key = f"{type(error).__name__}: {first_line}"
            self.errors[key] = self.errors.get(key, 0) + 1

    def acks(self) -> list[Ack]:
        """All acknowledgements so far, in acknowledgement order."""
        with self._lock:
            return sorted(self._acks, key=lambda a: a.acked)

    def acked_before(self, moment: float) -> set[int]:
        return {a.id for a in self.acks() if a.acked < moment}

    def count(self) -> int:
        with self._lock:
            return len(self._acks)


def longest_gap_ms(ack_times: Iterable[float], start: float, end: float) -> float | None:
    """Longest time without any acknowledgement inside ``[start, end]``, in milliseconds.

    The window's edges count as boundaries: a window with no ack at all is one whole gap. The
    last ack before ``start`` is not used, so a gap that began before the window is counted
    only from ``start``. Returns None for an empty or inverted window.
    """
    if end <= start:
        return None
    inside = sorted(t for t in ack_times if start <= t <= end)
    points = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(points)) * 1000.0


@dataclass
class CutReport:
    """How a restored set of ledger ids compares with the client's record."""

    expected: int  # ids acked before the snapshot began
    missing: list[int] = field(default_factory=list)  # acked before pre, absent after restore
    phantoms: list[int] = field(default_factory=list)  # present but never attempted
    # (present id, id acked before it started but missing), a few examples and the count
    cut_violations: list[tuple[int, int]] = field(default_factory=list)
    cut_violation_count: int = 0


def compare_ledger(log: AckLog, present: set[int], pre_began: float) -> CutReport:
    """Check a restored set of ledger ids against the record (see the module docstring)."""
    acks = log.acks()
    expected = {a.id for a in acks if a.acked < pre_began}
    report = CutReport(expected=len(expected))
    report.missing = sorted(expected - present)
    with log._lock:
        attempted = set(log.attempted)
    report.phantoms = sorted(present - attempted)
    # Consistent cut: the earliest-acknowledged missing id bounds what may be present. Any
    # present id whose transaction started after that ack proves two different instants.
    missing_acks = [a for a in acks if a.id not in present]
    if missing_acks:
        first_missing = min(missing_acks, key=lambda a: a.acked)
        late = sorted((a.started, a.id) for a in acks
                      if a.id in present and a.started > first_missing.acked)
        report.cut_violation_count = len(late)
        report.cut_violations = [(pid, first_missing.id) for _, pid in late[:5]]
    return report


class Workload:
    """Worker threads applying transfers until stopped; bounded in count, rate and time."""

    def __init__(self, connect: Callable[[], WorkloadSession], *, accounts: int,
                 workers: int = DEFAULT_WORKERS, pause: float = DEFAULT_PAUSE,
                 seed: int | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.connect = connect
        self.accounts = accounts
        self.workers = workers
        self.pause = pause
        self.log = AckLog()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        self._ids = iter(range(1, 1 << 62))
        self._ids_lock = threading.Lock()
        self.worker_errors: list[str] = []

    def next_transfer(self) -> Transfer:
        with self._ids_lock:
            ledger_id = next(self._ids)
            src, dst = self._rng.sample(range(self.accounts), 2)
            amount = self._rng.randint(1, 50)
        return Transfer(ledger_id, src, dst, amount)

    def start(self) -> None:
        for n in range(self.workers):
            t = threading.Thread(target=self._run, name=f"drill-worker-{n}", daemon=True)
            self._threads.append(t)
            t.start()

    def wait_for_acks(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` commits have been acknowledged (or the timeout)."""
        deadline = time.monotonic() + timeout
        while self.log.count() < count:
            if time.monotonic() >= deadline or not self.alive():
                return self.log.count() >= count
            time.sleep(0.02)
        return True

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers; every transaction is bounded, so this returns within ``timeout``."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        session: WorkloadSession | None = None
        try:
            while not self._stop.is_set():
                if session is None:
                    try:
                        session = self.connect()
                    except Exception as exc:  # the server may be frozen or restarting
                        self._note(exc)
                        self._stop.wait(0.2)
                        continue
                t = self.next_transfer()
                self.log.attempt(t.id)
                started = time.monotonic()
                try:
                    session.transfer(t)
                except OutcomeUnknown as exc:
                    self.log.fail(t.id, exc.__cause__ or exc, unknown=True)
                    with contextlib.suppress(Exception):
                        session.close()
                    session = None
                    continue
                except Exception as exc:
                    # Rolled back for sure (the engine code raises OutcomeUnknown otherwise).
                    self.log.fail(t.id, exc, unknown=False)
                    continue
                self.log.ack(t.id, started, time.monotonic())
                if self.pause:
                    self._stop.wait(self.pause)
        finally:
            if session is not None:
                with contextlib.suppress(Exception):
                    session.close()

    def _note(self, exc: BaseException) -> None:
        if len(self.worker_errors) < 20:
            self.worker_errors.append(f"{type(exc).__name__}: {exc}")
