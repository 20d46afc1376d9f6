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
- ``after-exit-settled``: the same, then wait quiesce run's FREEZE_SETTLE_SECONDS;
- ``after-close``: close a socketpair, then freeze at once;
- ``after-thread``: start and join a thread, then freeze at once.

    sudo .venv/bin/python bench/bench_freeze_after_exit.py [--runs 10] [--engine postgresql]

Writes bench/results/freeze_after_exit.json and prints medians and ratios to ``quiet``.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "core"), str(ROOT / "plugins")]

import bench_stall as stall  # noqa: E402  (after the path set-up above)

RESULTS = ROOT / "bench" / "results" / "freeze_after_exit.json"


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


def variants() -> dict[str, Callable[[], None]]:
    from quiesce.callers.runner import FREEZE_SETTLE_SECONDS

    return {
        "quiet": lambda: None,
        "after-exit": _exit,
        "after-exit-settled": lambda: (_exit(), time.sleep(FREEZE_SETTLE_SECONDS)),
        "after-close": _close,
        "after-thread": _thread,
    }


def one_cycle(setup: Any, name: str, before: Callable[[], None], run: int) -> dict[str, Any]:
    assert setup.writer is not None
    cycle = stall.Cycle(setup.engine, name, run)
    time.sleep(stall.SETTLE_S)
    cycle.t0_mono, cycle.t0_wall = time.monotonic(), time.time()
    time.sleep(stall.LEAD_S)
    before()
    with stall.frozen(setup.order, cycle.marks):
        pid = os.posix_spawnp("cp", setup.snapshot_argv(), os.environ)
        os.waitpid(pid, 0)
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
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
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
        plan = variants()
        names = list(plan)
        one_cycle(setup, "quiet", plan["quiet"], -1)  # warm-up, not counted
        for run in range(args.runs):
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                rows.append(one_cycle(setup, name, plan[name], run))
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
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "freeze_after_exit", "engine": args.engine, "runs": args.runs,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary, "cycles": rows}, indent=1) + "\n")
    print(f"results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
