"""How long FIFREEZE takes right after a process exit, a closed socket or an ended thread,
against a quiet start (root only; creates and removes its own loop disks and server).

Why this exists: ``quiesce run`` freezes right after its pre-script exits, and completes the
databases' hold over a socket just before the first FIFREEZE. Each freeze level of FIFREEZE
waits for an RCU grace period; work the kernel queued just before (a process's or thread's
teardown, a socket's release) leaves a grace period in flight, and the freeze then waits for
it and a second one, at each level. This bench puts a number on it, side by side in one run,
with the same setup as bench_stall.py (a PostgreSQL or MariaDB server on two loop ext4 disks
whose images sit on an XFS store, 200 autocommit INSERTs/s): the freeze window (first
FIFREEZE to last FITHAW, with the snapshot copy inside) and the writer's longest commit gap.

Variants (paired: run i does each once, in an order rotated by i):
- ``quiet``: nothing before the freeze (the floor of bench_stall.py without the sync);
- ``after-exit``: spawn and reap a Python interpreter, then freeze at once;
- ``after-exit-50ms`` / ``-100ms`` / ``-200ms``: the same, then a wait (quiesce run's
  FREEZE_SETTLE_SECONDS is 100 ms);
- ``after-close``: close a socketpair, then freeze at once;
- ``after-thread``: start and join a thread, then freeze at once.

``--set block`` (MariaDB) asks instead what a commit block costs by itself, with no quiesce
process involved: the bench's own session takes the locks quiesce run takes, around the same
freeze (``quiet`` is the floor; every other variant holds ``BACKUP STAGE BLOCK_DDL`` from
FREEZE_SETTLE_SECONDS before the sync, as ``pre`` does, and ends the stage right after the thaw):
- ``block-ddl``: nothing more (the light level);
- ``block-commit``: ``BACKUP STAGE BLOCK_COMMIT`` right before the first FIFREEZE (what
  quiesce run's ``block`` does, without the request to the holder and the verification);
- ``block-commit-thread``: the same from a thread started just then, alive until the thaw
  (the holder's block threads used to be started there).

``--set backup`` (PostgreSQL) asks what the full level's backup mode costs the freeze by
itself, with no quiesce process involved (``quiet`` is the floor; the bench's own session does
the rest, ``LEAD_BEFORE_SYNC`` before the sync as ``quiesce run``'s pre-script does, and ends
backup mode right after the thaw):
- ``checkpoint``: a ``CHECKPOINT``;
- ``backup-mode``: ``pg_backup_start(label, fast => true)`` (a checkpoint, then every page's
  first change after it is logged whole: full-page writes), ``pg_backup_stop()`` after the thaw;
- ``backup-mode-stop-later``: the same, ``pg_backup_stop()`` 100 ms after the thaw.

``--set session`` asks whether quiesce's own freeze machinery costs the freeze window
anything (the runner's, with no database lock and no pre-script):
- ``freeze-session``: a :class:`~quiesce.freezing.freeze.FreezeSession` prepared (its watchdog
  process started) 200 ms before, then its ``freeze()`` (syncfs each disk, arm the watchdog,
  FIFREEZE) and ``thaw()`` around the same copy: exactly what ``quiesce run`` does;
- ``idle-processes``: the bench's own freeze with three idle Python interpreters alive (as the
  holder, the guardian and the watchdog are), started 300 ms before;
- ``idle-processes-2s``: the same, started 2 s before;
- ``idle-sleep-binaries``: three ``sleep 60`` processes instead, started 300 ms before.

    sudo .venv/bin/python bench/bench_freeze_after_exit.py [--runs 10] [--engine postgresql]
    sudo .venv/bin/python bench/bench_freeze_after_exit.py --set block --engine mysql
    sudo .venv/bin/python bench/bench_freeze_after_exit.py --set backup
    sudo .venv/bin/python bench/bench_freeze_after_exit.py --set session

Writes bench/results/freeze_after_exit.json (``--set block``: block_cost.json, ``--set
backup``: backup_mode_cost.json, ``--set session``: freeze_session_cost.json) and prints
medians and ratios to ``quiet``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "core"), str(ROOT / "plugins")]

import bench_stall as stall  # noqa: E402  (after the path set-up above)

RESULTS = {"exit": ROOT / "bench" / "results" / "freeze_after_exit.json",
           "block": ROOT / "bench" / "results" / "block_cost.json",
           "backup": ROOT / "bench" / "results" / "backup_mode_cost.json",
           "session": ROOT / "bench" / "results" / "freeze_session_cost.json"}
ENGINE_OF_SET = {"block": "mysql", "backup": "postgresql"}
#: quiesce run's pre-script takes backup mode about this long before the freeze (its exit,
#: the settle, the sync: run records of bench_stall.py).
LEAD_BEFORE_SYNC = 0.1
Step = Callable[[], None]


def _exit() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def _close() -> None:
    a, b = socket.socketpair()
    a.close()
    b.close()


def _thread() -> None:
    worker = threading.Thread(target=lambda: None)
    worker.start()
    worker.join()


def _nothing() -> None:
    pass


Freezer = Callable[[list[Any], dict[str, list[float]]],
                  contextlib.AbstractContextManager[None]]


class Variant(NamedTuple):
    """What one variant does around the freeze (the bench's own unless ``freezer``)."""

    before: Step = _nothing  # before the sync
    at_freeze: Step = _nothing  # between the sync and the first FIFREEZE
    after: Step = _nothing  # after the thaw
    freezer: Freezer | None = None  # freezes the disks instead of bench_stall.frozen


QUIET = Variant()


def variants(setup: Any) -> dict[str, Variant]:
    """Kernel work right before the freeze."""
    def exit_settled(seconds: float) -> Step:
        def run() -> None:
            _exit()
            time.sleep(seconds)
        return run

    return {
        "quiet": QUIET,
        "after-exit": Variant(_exit),
        "after-exit-50ms": Variant(exit_settled(0.05)),
        "after-exit-100ms": Variant(exit_settled(0.1)),
        "after-exit-200ms": Variant(exit_settled(0.2)),
        "after-close": Variant(_close),
        "after-thread": Variant(_thread),
    }


def block_variants(setup: Any) -> dict[str, Variant]:
    """The commit block of MariaDB's full level, taken by the bench's own session."""
    from quiesce.callers.runner import FREEZE_SETTLE_SECONDS

    session = setup.server.connect()
    session.autocommit(True)
    done = threading.Event()

    def sql(statement: str) -> Step:
        def run() -> None:
            with session.cursor() as cur:
                cur.execute(statement)
        return run

    def ddl_block() -> None:
        sql("BACKUP STAGE START")()
        sql("BACKUP STAGE BLOCK_DDL")()
        time.sleep(FREEZE_SETTLE_SECONDS)

    def commit_in_a_thread() -> None:
        done.clear()
        taken = threading.Event()

        def take() -> None:
            sql("BACKUP STAGE BLOCK_COMMIT")()
            taken.set()
            done.wait(30)

        threading.Thread(target=take, daemon=True).start()
        taken.wait(30)

    def end() -> None:
        sql("BACKUP STAGE END")()
        done.set()

    return {
        "quiet": QUIET,
        "block-ddl": Variant(ddl_block, after=end),
        "block-commit": Variant(ddl_block, sql("BACKUP STAGE BLOCK_COMMIT"), end),
        "block-commit-thread": Variant(ddl_block, commit_in_a_thread, end),
    }


def backup_variants(setup: Any) -> dict[str, Variant]:
    """PostgreSQL's full level (backup mode, its checkpoint), taken by the bench's session."""
    session = setup.server.connect(autocommit=True)

    def sql(statement: str, pause: float = 0.0) -> Step:
        def run() -> None:
            session.execute(statement)
            time.sleep(pause)
        return run

    start = sql("SELECT pg_backup_start('bench', true)", LEAD_BEFORE_SYNC)
    stop = sql("SELECT pg_backup_stop()")

    def stop_later() -> None:
        time.sleep(0.1)
        stop()

    return {
        "quiet": QUIET,
        "checkpoint": Variant(sql("CHECKPOINT", LEAD_BEFORE_SYNC)),
        "backup-mode": Variant(start, after=stop),
        "backup-mode-stop-later": Variant(start, after=stop_later),
    }


def session_variants(setup: Any) -> dict[str, Variant]:
    """quiesce's FreezeSession (and its watchdog), and idle processes, around the freeze."""
    from quiesce.freezing.freeze import FreezeSession
    from quiesce.freezing.mounts import discover_mounts

    found = {m.mount_point: m for m in discover_mounts([str(d.mount_point)
                                                         for d in setup.order])}
    mounts = [found[str(d.mount_point)] for d in setup.order]  # the floor's order
    held: dict[str, Any] = {}

    def prepare_session() -> None:
        held["session"] = FreezeSession(mounts, 60.0, sync=True)
        held["session"].prepare()
        time.sleep(0.2)

    @contextlib.contextmanager
    def session_frozen(disks: list[Any], marks: dict[str, list[float]]) -> Iterator[None]:
        session = held.pop("session")
        try:
            session.freeze()
            yield
        finally:
            session.thaw()
            start = session._first_freeze
            marks["freeze"] = [start, start + (session.window_ms or 0.0) / 1000]

    def start_idle(argv: list[str], age: float) -> Step:
        def start() -> None:
            held["idle"] = [subprocess.Popen(argv) for _ in range(3)]
            time.sleep(age)
        return start

    python = [sys.executable, "-c", "import time; time.sleep(60)"]

    def stop_idle() -> None:
        for proc in held.pop("idle", []):
            proc.kill()
            proc.wait()

    return {"quiet": QUIET,
            "freeze-session": Variant(prepare_session, freezer=session_frozen),
            "idle-processes": Variant(start_idle(python, 0.3), after=stop_idle),
            "idle-processes-2s": Variant(start_idle(python, 2.0), after=stop_idle),
            "idle-sleep-binaries": Variant(start_idle(["sleep", "60"], 0.3), after=stop_idle)}


SETS: dict[str, Callable[[Any], dict[str, Variant]]] = {
    "exit": variants, "block": block_variants, "backup": backup_variants,
    "session": session_variants}


def one_cycle(setup: Any, name: str, variant: Variant, run: int, *,
              sync: bool = False) -> dict[str, Any]:
    assert setup.writer is not None
    before, at_freeze, after, freezer = variant
    cycle = stall.Cycle(setup.engine, name, run)
    time.sleep(stall.SETTLE_S)
    cycle.t0_mono, cycle.t0_wall = time.monotonic(), time.time()
    time.sleep(stall.LEAD_S)
    before()
    if sync:  # the block set syncs as bench_stall's floor and quiesce run do
        os.sync()
    at_freeze()
    try:
        with (freezer or stall.frozen)(setup.order, cycle.marks):
            pid = os.posix_spawnp("cp", setup.snapshot_argv(), os.environ)
            os.waitpid(pid, 0)
    finally:
        after()
    time.sleep(stall.TAIL_S)
    cycle.end_mono = time.monotonic()
    data = setup.writer.dump(cycle.t0_mono, cycle.end_mono)
    setup.clear_snapshots()
    result = cycle.to_result(data["commits"])
    window = cycle.marks["freeze"][1] - cycle.marks["freeze"][0]
    return {"variant": name, "run": run, "freeze_ms": round(window * 1000, 2),
            "stall_ms": result["stall_ms"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--engine", choices=stall.ENGINES, default="postgresql")
    parser.add_argument("--set", choices=sorted(RESULTS), default="exit",
                        help="exit: kernel work right before the freeze (default); block: "
                             "what MariaDB's commit block costs by itself; backup: what "
                             "PostgreSQL's backup mode costs by itself; session: what "
                             "quiesce's FreezeSession and idle processes cost")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    wanted = ENGINE_OF_SET.get(args.set)
    if wanted is not None and args.engine != wanted:
        if args.engine != parser.get_default("engine"):
            parser.error(f"--set {args.set} needs --engine {wanted}")
        args.engine = wanted
    output = args.output or RESULTS[args.set]
    if os.geteuid() != 0:
        print("bench_freeze_after_exit: needs root (loop devices, FIFREEZE)", file=sys.stderr)
        return 2
    from quiesce.harness.disks import LoopDisk

    signal.signal(signal.SIGTERM, stall.on_sigterm)
    cleanup = stall.Cleanup()
    base = Path(tempfile.mkdtemp(prefix="quiesce-fae-", dir="/run"))
    base.chmod(0o755)
    cleanup.add(f"removing {base}", lambda: shutil.rmtree(base, ignore_errors=True))
    private = base / "private"
    private.mkdir(mode=0o700)
    images = Path(tempfile.mkdtemp(prefix="quiesce-fae-", dir="/dev/shm"))
    cleanup.add(f"removing {images}", lambda: shutil.rmtree(images, ignore_errors=True))
    rows: list[dict[str, Any]] = []
    try:
        store = LoopDisk.create(base, "store", size_mb=2048, fstype="xfs", image_dir=images)
        cleanup.add("tearing down the XFS store", store.teardown)
        setup = stall.prepare_engine(args.engine, store, base, private, levels=[],
                                     cleanup=cleanup)
        plan = SETS[args.set](setup)
        names = list(plan)
        sync = args.set != "exit"
        one_cycle(setup, "quiet", plan["quiet"], -1, sync=sync)  # warm-up, not counted
        for run in range(args.runs):
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                rows.append(one_cycle(setup, name, plan[name], run, sync=sync))
        assert setup.writer is not None
        setup.writer.close()
    finally:
        cleanup.run()
    summary: dict[str, Any] = {}
    quiet = statistics.median(r["freeze_ms"] for r in rows if r["variant"] == "quiet")
    print(f"{'variant':<20}{'freeze med':>11}{'x quiet':>9}{'stall med':>11}")
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        freeze = statistics.median(r["freeze_ms"] for r in mine)
        gap = statistics.median(r["stall_ms"] for r in mine)
        summary[name] = {"freeze_ms_median": round(freeze, 1), "stall_ms_median": round(gap, 1),
                         "ratio_to_quiet": round(freeze / quiet, 2)}
        print(f"{name:<20}{freeze:>11.1f}{freeze / quiet:>9.2f}{gap:>11.1f}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": RESULTS[args.set].stem,
        "engine": args.engine, "runs": args.runs,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary, "cycles": rows}, indent=1) + "\n")
    print(f"results in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
