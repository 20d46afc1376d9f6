"""Benchmark how fast `quiesce run` reads a chatty script's output, side by side in one run.

A script prints N bytes of 26-byte lines (`yes 0123456789012345678901234 | head -c N`), the
shape of the issue-12 post-script that was killed at its timeout. Three readers consume it:

- ``cat``: the same script piped into `cat > /dev/null` (the pipe's own speed, the floor);
- ``new``: :func:`quiesce.callers.scripts.run_script` as the runner calls it, its sink writing to
a real
  :class:`quiesce.callers.runner.RunLog` (on /dev/null);
- ``old``: the same with the previous scripts.py (line by line into the log, every line kept),
  loaded from git (``--old-rev``); skipped when git or that revision is not available. At
  100 MB it needs minutes and gigabytes, so it runs there only with ``--old-100``.

Each trial runs in a fresh Python process, which reports the wall time and the growth of its
peak RSS (VmHWM) during the read. Sizes 10 MB and 100 MB. Ratios, not absolute times, are the
result: new/cat (goal: the pipe's speed, within a small factor) and old/new.

    .venv/bin/python bench/bench_script_output.py [--trials 3] [--old-100]

Writes bench/results/script_output.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "script_output.json"
SIZES = (10_000_000, 100_000_000)
OLD_REV = "870ab1e"  # the last revision with the line-by-line reader

TRIAL = r"""
import importlib.util, json, os, sys, time
reader, script = sys.argv[1], sys.argv[2]
if reader == "old":
    spec = importlib.util.spec_from_file_location("old_scripts", sys.argv[3])
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_scripts"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    run_script = module.run_script
else:
    from quiesce.callers.scripts import run_script
from quiesce.callers.runner import RunLog

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

log = RunLog(open(os.devnull, "w"))
before = hwm_kib()
t0 = time.monotonic()
result = run_script("post", script, [], timeout=3600, sink=lambda s, l: log(f"post {s}: {l}"))
elapsed = time.monotonic() - t0
print(json.dumps({"seconds": elapsed, "rss_growth_mib": (hwm_kib() - before) / 1024,
                  "ok": result.ok, "log_lines": len(log.lines)}))
"""


def write_script(path: Path, body: str) -> Path:
    path.write_text(body)
    os.chmod(path, 0o700)
    return path


def old_module(directory: Path, rev: str) -> Path | None:
    """The previous scripts.py from git, or None when it cannot be had."""
    try:
        # The old reader predates the move into quiesce.callers.
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:core/quiesce/scripts.py"],
                              capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    path = directory / "old_scripts.py"
    path.write_text(text)
    return path


def cat_trial(script: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    with open(os.devnull, "wb") as devnull:
        producer = subprocess.Popen([str(script)], stdout=subprocess.PIPE)
        consumer = subprocess.run(["cat"], stdin=producer.stdout, stdout=devnull, check=False)
        assert producer.stdout is not None
        producer.stdout.close()
        producer.wait()
    return {"seconds": time.monotonic() - t0, "ok": consumer.returncode == 0}


def reader_trial(reader: str, script: Path, old: Path | None) -> dict[str, Any]:
    argv = [sys.executable, "-c", TRIAL, reader, str(script)]
    if old is not None:
        argv.append(str(old))
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{reader} trial failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--old-rev", default=OLD_REV)
    parser.add_argument("--old-100", action="store_true",
                        help="also run the old reader at 100 MB (minutes, gigabytes of RSS)")
    args = parser.parse_args()

    results: dict[str, Any] = {
        "benchmark": "script_output",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "trials": args.trials,
        "line_bytes": 26,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="quiesce-bench-output-") as tmp:
        directory = Path(tmp)
        old = old_module(directory, args.old_rev)
        for size in SIZES:
            script = write_script(directory / f"chatty-{size}.sh",
                                  f"#!/bin/sh\nyes 0123456789012345678901234 | head -c {size}\n")
            readers = ["cat", "new"]
            if old is not None and (size < 50_000_000 or args.old_100):
                readers.append("old")
            runs: dict[str, list[dict[str, Any]]] = {r: [] for r in readers}
            for _ in range(args.trials):  # interleaved: every reader sees the same load
                for reader in readers:
                    if reader == "cat":
                        runs[reader].append(cat_trial(script))
                    else:
                        runs[reader].append(reader_trial(reader, script,
                                                         old if reader == "old" else None))
            entry: dict[str, Any] = {}
            for reader, trials in runs.items():
                seconds = [t["seconds"] for t in trials]
                entry[reader] = {"seconds": summary(seconds),
                                 "mb_per_s": round(size / 1e6 / statistics.median(seconds), 1)}
                if reader != "cat":
                    entry[reader]["rss_growth_mib"] = summary(
                        [t["rss_growth_mib"] for t in trials])
                    entry[reader]["log_lines"] = trials[0]["log_lines"]
            med = {r: entry[r]["seconds"]["median"] for r in entry}
            entry["ratio_new_to_cat"] = round(med["new"] / med["cat"], 2)
            if "old" in med:
                entry["ratio_old_to_new"] = round(med["old"] / med["new"], 1)
            results["sizes"][f"{size // 1_000_000}MB"] = entry

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'size':>6} {'reader':>6} {'median s':>9} {'MB/s':>8} {'RSS+ MiB':>9} "
          f"{'log lines':>10}")
    for size, entry in results["sizes"].items():
        for reader in ("cat", "new", "old"):
            if reader not in entry:
                continue
            row = entry[reader]
            rss = row.get("rss_growth_mib", {}).get("median", "")
            print(f"{size:>6} {reader:>6} {row['seconds']['median']:>9} {row['mb_per_s']:>8} "
                  f"{rss!s:>9} {row.get('log_lines', '')!s:>10}")
        ratios = f"new/cat {entry['ratio_new_to_cat']}"
        if "ratio_old_to_new" in entry:
            ratios += f", old/new {entry['ratio_old_to_new']}"
        print(f"{size:>6} ratios: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
