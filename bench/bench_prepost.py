"""Benchmark `quiesce pre` and `quiesce post` for 1, 4 and 8 instances of an engine (root only).

Each instance is its own throwaway server, started from the installed binaries through the
project's providers (quiesce_postgresql.server.LocalPostgres, quiesce_mysql.server.LocalMySQL):
N sections point at N servers, as a DBA with N clusters on one VM would configure them. The
1-instance configuration uses server 1, the 4-instance one servers 1-4, and so on.

One trial = `quiesce pre --json` as a subprocess, a short pause standing in for the snapshot,
then `quiesce post --json` as a subprocess, each timed from fork to exit. Rounds interleave the
instance counts in a rotating order so every count sees the same machine load. Besides the
wall time of each command the benchmark derives, from what quiesce itself reports:

- pre -> held: from invoking `pre` until the last instance is held (the holder's readiness
  time minus each instance's held_seconds at readiness, both in the run record / pre's JSON);
- post -> released: from invoking `post` until the last instance is released. PostgreSQL: the
  latest `stopped_at` (pg_backup_stop returned) in post's metadata. MariaDB: measured from the
  outside too - one INSERT per instance, blocked by the hold before `post` is invoked, and the
  time at which the last of them returns;
- per-phase timings of `pre` from the holder's run record (holder start, runtime dir/socket/
  guardian, configuration + plugin loading, prepare + quiesce of every instance, reporting).

Goal (issue 3): 8 instances take under 2x the time of 1.

    sudo .venv/bin/python bench/bench_prepost.py [--engines postgresql,mariadb] [--rounds 7]
        [--counts 1,4,8] [--hold 0.5] [--servers-on-tmpfs]

Writes bench/results/prepost.json and prints a table. Every server, holder and directory it
creates is removed at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quiesce_mysql.fixtures import BackgroundStatement

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "prepost.json"
RATIO_GOAL = 2.0
COMMAND_TIMEOUT = 180.0
HOLDER_EXIT_TIMEOUT = 30.0


# ---------------------------------------------------------------------------------- helpers
def parse_iso(text: str | None) -> float | None:
    """ISO 8601 (as quiesce writes it: UTC, milliseconds, 'Z' or +00:00) -> epoch seconds."""
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pid_alive(pid: int | None) -> bool:
    from quiesce.processes import pid_alive as process_exists

    if not pid or not process_exists(pid):
        return False
    # A zombie no one reaps is gone for our purposes.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields and fields[0] == "Z":
            return False
    return True


def wait_gone(pids: list[int], timeout: float) -> bool:
    give_up = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > give_up:
            return False
        time.sleep(0.02)
    return True


def summary(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    ordered = sorted(values)
    p90 = (statistics.quantiles(ordered, n=10, method="inclusive")[8]
           if len(ordered) > 1 else ordered[0])
    return {"median": round(statistics.median(ordered), 1), "p90": round(p90, 1),
            "min": round(ordered[0], 1), "max": round(ordered[-1], 1), "n": len(ordered)}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string of plain text is a TOML basic string


# ---------------------------------------------------------------------------------- fleets
class Fleet:
    """N throwaway servers of one engine, and what the benchmark needs from them."""

    engine = ""  # the quiesce.toml section / plugin name
    label = ""

    def __init__(self, base: Path) -> None:
        from quiesce.harness.testing.workspace import ServerWorkspace

        self.base = base
        self.servers: list[Any] = []
        self.dirs: ServerWorkspace[Any] = ServerWorkspace(None, prefix=f"{self.engine}-",
                                                          log_name="wal", base=base)

    def start(self, count: int) -> None:
        raise NotImplementedError

    def section(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def version(self) -> str:
        return str(self.servers[0].version) if self.servers else "?"

    def block_writes(self, count: int) -> list[BackgroundStatement]:
        """Writers blocked by the hold right now (one per instance), or [] if none apply."""
        return []

    def released_at(self, post: dict[str, Any]) -> list[float]:
        """Engine-reported wall times at which each instance's lock ended (may be empty)."""
        return []

    def stop(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        self.dirs.close()


def start_with_retry(make: Callable[[], Any], servers: list[Any]) -> Any:
    """Start a server on fresh directories; once more on new ones if that fails (the machine
    is shared: another test's clean-up of /tmp has broken a MariaDB initialisation here)."""
    for attempt in (1, 2):
        server = make()
        servers.append(server)
        try:
            server.start()
            return server
        except Exception as exc:
            server.stop()
            servers.remove(server)
            if attempt == 2:
                raise
            print(f"server start failed, retrying once: {str(exc)[-300:]}", file=sys.stderr)
    raise AssertionError("unreachable")


class PostgresFleet(Fleet):
    """PostgreSQL in backup mode (the default): pg_backup_start / pg_backup_stop per server."""

    engine = "postgresql"
    label = "PostgreSQL backup mode"

    def start(self, count: int) -> None:
        from quiesce_postgresql.server import LocalPostgres

        for _ in range(count):
            start_with_retry(lambda: LocalPostgres(self.dirs.layout(),
                                                   settings={"max_connections": "20"}),
                             self.servers)

    def section(self, index: int) -> dict[str, Any]:
        server = self.servers[index]
        return {"name": f"pg{index + 1}", "conninfo": server.socket_conninfo}

    def released_at(self, post: dict[str, Any]) -> list[float]:
        stamps = [parse_iso((i.get("metadata") or {}).get("stopped_at"))
                  for i in post.get("instances") or []]
        return [s for s in stamps if s is not None]


class MariaDBFleet(Fleet):
    """MariaDB with lock = "auto" (BACKUP STAGE START + BLOCK_COMMIT): writes really block."""

    engine = "mysql"
    label = "MariaDB lock=auto"

    def start(self, count: int) -> None:
        from quiesce_mysql.server import LocalMySQL

        for _ in range(count):
            server = start_with_retry(lambda: LocalMySQL(self.dirs.layout()), self.servers)
            if not server.is_mariadb:
                raise SystemExit(f"bench_prepost: {server.binary} is {server.flavour}, "
                                 "not MariaDB; this benchmark only covers MariaDB")
            server.execute("CREATE DATABASE bench")
            server.execute("CREATE TABLE bench.w (id INT AUTO_INCREMENT PRIMARY KEY, "
                           "at DOUBLE) ENGINE=InnoDB")

    def section(self, index: int) -> dict[str, Any]:
        server = self.servers[index]
        return {"name": f"maria{index + 1}", "unix_socket": str(server.socket),
                "user": "root"}

    def block_writes(self, count: int) -> list[BackgroundStatement]:
        """One INSERT per instance on its own connection, each seen waiting for the hold's
        lock; ``done_at`` is when it returned."""
        from quiesce_mysql.fixtures import LOCK_WAIT_STATES, BackgroundStatement

        writers = [BackgroundStatement(server, "INSERT INTO bench.w (at) VALUES "
                                       "(UNIX_TIMESTAMP(NOW(6)))",
                                       read_timeout=int(COMMAND_TIMEOUT))
                   for server in self.servers[:count]]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.wait_state(LOCK_WAIT_STATES, timeout=30.0)
        return writers


FLEETS: dict[str, Callable[[Path], Fleet]] = {"postgresql": PostgresFleet,
                                               "mariadb": MariaDBFleet}


# ---------------------------------------------------------------------------------- quiesce
class Workspace:
    """quiesce.toml (root, 0600) per instance count in a root-owned 0700 dir under /run,
    with its own runtime dir and state dir."""

    def __init__(self, root: Path, fleet: Fleet, count: int) -> None:
        self.dir = root / f"{fleet.engine}-{count}"
        self.dir.mkdir(mode=0o700)
        self.config = self.dir / "quiesce.toml"
        self.rundir = self.dir / "rt"
        self.state = self.dir / "state"
        self.count = count
        self.holders: list[int] = []  # holder and guardian pids this workspace saw
        lines = ["max_hold_seconds = 120", "pre_timeout_seconds = 60",
                 f"state_dir = {toml_value(self.state)}"]
        for index in range(count):
            lines += ["", f"[[{fleet.engine}]]"]
            lines += [f"{key} = {toml_value(value)}"
                      for key, value in fleet.section(index).items()]
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def argv(self, command: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "quiesce", command, "--config", str(self.config),
                "--runtime-dir", str(self.rundir), *extra]

    def run(self, command: str) -> tuple[float, float, float, dict[str, Any], str]:
        """(wall start, ms, wall end, JSON answer, stderr) of one command with --json."""
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run(self.argv(command, "--json"), capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
        elapsed = (time.perf_counter() - t0) * 1000
        ended = time.time()
        try:
            answer = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            answer = {}
        if proc.returncode != 0:
            raise RuntimeError(f"quiesce {command} ({self.count} instances) exited "
                               f"{proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return started, elapsed, ended, answer, proc.stderr

    def release_leftovers(self) -> None:
        """After a failure: post whatever is still held, then make sure no holder survives."""
        if self.rundir.exists():
            with contextlib.suppress(Exception):
                subprocess.run(self.argv("post", "--json"), capture_output=True, timeout=150,
                               check=False, stdin=subprocess.DEVNULL)
        if not wait_gone(self.holders, 15):
            for pid in self.holders:  # only processes this benchmark's pre started
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)


def log_times(record: dict[str, Any]) -> list[tuple[float, str]]:
    """(epoch, message) of every line of the holder's in-memory log, from its run record."""
    out = []
    for line in record.get("log") or []:
        stamp, _, message = line.partition(" ")
        when = parse_iso(stamp)
        if when is not None:
            out.append((when, message))
    return out


def first(lines: list[tuple[float, str]], prefix: str) -> float | None:
    return next((t for t, m in lines if m.startswith(prefix)), None)


def ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 1)


def trial(fleet: Fleet, ws: Workspace, hold: float) -> dict[str, Any]:
    pre_start, pre_ms, pre_end, ready, _ = ws.run("pre")
    holder_pid, guardian_pid = ready.get("holder_pid"), ready.get("guardian_pid")
    ws.holders += [p for p in (holder_pid, guardian_pid) if p]
    held = [i for i in ready.get("instances") or [] if i.get("status") == "held"]
    if not ready.get("ok") or len(held) != ws.count:
        raise RuntimeError(f"pre did not hold {ws.count} instances: {ready}")
    writers: list[BackgroundStatement] = []
    try:
        time.sleep(hold)  # the snapshot
        writers = fleet.block_writes(ws.count)
        post_start, post_ms, post_end, outcome, _ = ws.run("post")
        for writer in writers:
            writer.finished.wait(COMMAND_TIMEOUT)
    finally:
        for writer in writers:
            writer.close()
    if not outcome.get("consistent") or len(outcome.get("instances") or []) != ws.count:
        raise RuntimeError(f"post was not consistent for {ws.count} instances: {outcome}")
    if not wait_gone([p for p in (holder_pid, guardian_pid) if p], HOLDER_EXIT_TIMEOUT):
        raise RuntimeError(f"holder {holder_pid} / guardian {guardian_pid} still alive "
                           f"{HOLDER_EXIT_TIMEOUT:g}s after post")
    record: dict[str, Any] = {}
    if outcome.get("record"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(Path(outcome["record"]).read_text())
    lines = log_times(record)
    holder_started = parse_iso(record.get("started_at"))
    guardian_up = first(lines, "guardian started")
    quiescing = first(lines, "quiescing ")
    ready_at = first(lines, "holding until")
    released_log = first(lines, "released by 'post'")
    held_at = ([ready_at - float(i["held_seconds"]) for i in held]
               if ready_at is not None else [])
    engine_released = fleet.released_at(outcome)
    writes_through = [w.done_at for w in writers if w.done_at is not None]
    if writers and len(writes_through) != len(writers):
        errors = [repr(w.error) for w in writers if w.error is not None]
        raise RuntimeError(f"not every blocked write went through after post: {errors}")
    return {
        "instances": ws.count,
        "pre_ms": round(pre_ms, 1),
        "post_ms": round(post_ms, 1),
        "pre_to_first_held_ms": ms(pre_start, min(held_at)) if held_at else None,
        "pre_to_all_held_ms": ms(pre_start, max(held_at)) if held_at else None,
        "post_to_all_released_ms": ms(post_start, max(engine_released))
        if engine_released else None,
        "post_to_writes_through_ms": ms(post_start, max(writes_through))
        if writes_through else None,
        "pre_phases_ms": {
            "start_to_holder_running": ms(pre_start, holder_started),
            "runtime_dir_socket_guardian": ms(holder_started, guardian_up),
            "config_and_plugins_in_holder": ms(guardian_up, quiescing),
            "prepare_and_quiesce_all": ms(quiescing, max(held_at)) if held_at else None,
            "held_to_pre_exit": ms(max(held_at) if held_at else None, pre_end),
            "first_to_last_instance_held": ms(min(held_at), max(held_at)) if held_at else None,
        },
        "post_phases_ms": {
            "start_to_release_logged": ms(post_start, released_log),
            "released_to_post_exit": ms(released_log, post_end),
            "first_to_last_instance_released": ms(min(engine_released), max(engine_released))
            if engine_released else None,
        },
    }


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the quiesce code had uncommitted changes."""
    repo = HERE.parent

    def git(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True,
                                  text=True, timeout=10, check=False).stdout.strip()
        return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes_in": git("status", "--porcelain", "--", "core",
                                          "plugins").splitlines()}


def python_floor_ms() -> float:
    """`python -m quiesce --version`: interpreter start-up plus the CLI table, nothing else."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quiesce", "--version"], capture_output=True,
                   check=True, timeout=60)
    return (time.perf_counter() - t0) * 1000


def rotations(counts: list[int], rounds: int) -> Iterator[list[int]]:
    """Round r runs the counts rotated by r (1,4,8 / 4,8,1 / 8,1,4 / ...)."""
    for r in range(rounds):
        k = r % len(counts)
        yield counts[k:] + counts[:k]


# ---------------------------------------------------------------------------------- report
METRICS = [("pre_ms", "pre (wall)"), ("post_ms", "post (wall)"),
           ("pre_to_all_held_ms", "pre -> all held"),
           ("post_to_all_released_ms", "post -> all released (engine)"),
           ("post_to_writes_through_ms", "post -> blocked writes through")]
PHASES = ["start_to_holder_running", "runtime_dir_socket_guardian",
          "config_and_plugins_in_holder", "prepare_and_quiesce_all", "held_to_pre_exit",
          "first_to_last_instance_held"]
POST_PHASES = ["start_to_release_logged", "released_to_post_exit",
               "first_to_last_instance_released"]


def summarise(trials: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    by_count: dict[str, Any] = {}
    for count in counts:
        rows = [t for t in trials if t["instances"] == count]
        entry: dict[str, Any] = {}
        for key, _ in METRICS:
            entry[key] = summary([t[key] for t in rows if t[key] is not None])
        entry["pre_phases_ms"] = {p: summary([t["pre_phases_ms"][p] for t in rows
                                              if t["pre_phases_ms"][p] is not None])
                                  for p in PHASES}
        entry["post_phases_ms"] = {
            p: summary([t["post_phases_ms"][p] for t in rows
                        if t["post_phases_ms"][p] is not None])
            for p in POST_PHASES}
        by_count[str(count)] = entry
    lo, hi = str(min(counts)), str(max(counts))
    ratios = {}
    for key, _ in METRICS:
        a, b = by_count[lo][key], by_count[hi][key]
        if lo != hi and a and b and a["median"] > 0:
            ratios[key] = round(b["median"] / a["median"], 2)
    goal = {key: ratios[key] < RATIO_GOAL for key in ("pre_ms", "post_ms") if key in ratios}
    return {"by_instances": by_count, f"ratio_{hi}_to_{lo}": ratios,
            "goal_met": goal}


def print_table(engine: str, result: dict[str, Any], counts: list[int]) -> None:
    print(f"\n{result['label']} ({result['server_version']}), {result['rounds']} rounds")
    header = "metric (ms)".ljust(34) + "".join(f"{f'{c} inst median/p90':>24}" for c in counts)
    hi, lo = max(counts), min(counts)
    print(header + f"{f'{hi}/{lo}':>8}")
    ratios = result[f"ratio_{hi}_to_{lo}"]
    for key, title in METRICS:
        cells = []
        for count in counts:
            s = result["by_instances"][str(count)][key]
            cells.append(f"{s['median']:>10.1f} / {s['p90']:<10.1f}" if s else f"{'-':>23}")
        if all(c.strip() == "-" for c in cells):
            continue
        ratio = ratios.get(key)
        print(title.ljust(34) + " ".join(f"{c:>23}" for c in cells)
              + (f"{ratio:>8.2f}" if ratio else ""))
    for command, key, phases in (("pre", "pre_phases_ms", PHASES),
                                 ("post", "post_phases_ms", POST_PHASES)):
        print(f"{command} phases (median ms):")
        for phase in phases:
            cells = []
            for count in counts:
                s = result["by_instances"][str(count)][key][phase]
                cells.append(f"{s['median']:>10.1f}" if s else f"{'-':>10}")
            print(f"  {phase}".ljust(34) + " ".join(f"{c:>23}" for c in cells))
    floor = result.get("python_floor_ms")
    if floor:
        print(f"python -m quiesce --version (floor): median {floor['median']:.1f} ms")


# ---------------------------------------------------------------------------------- main
def run_engine(name: str, root: Path, server_base: Path, *, counts: list[int], rounds: int,
               hold: float) -> dict[str, Any]:
    fleet = FLEETS[name](server_base)
    workspaces: list[Workspace] = []
    try:
        started = time.monotonic()
        fleet.start(max(counts))
        print(f"{name}: {len(fleet.servers)} servers up in {time.monotonic() - started:.1f}s",
              file=sys.stderr)
        workspaces = [Workspace(root, fleet, c) for c in counts]
        by_count = dict(zip(counts, workspaces, strict=True))
        for ws in workspaces:  # warm-up (page cache, .pyc, first checkpoint): not counted
            trial(fleet, ws, hold)
        trials: list[dict[str, Any]] = []
        floors: list[float] = []
        for r, order in enumerate(rotations(counts, rounds)):
            floors.append(python_floor_ms())
            for count in order:
                result = trial(fleet, by_count[count], hold)
                result["round"] = r
                trials.append(result)
                print(f"  round {r + 1}/{rounds} {name} x{count}: pre {result['pre_ms']:.0f} ms,"
                      f" post {result['post_ms']:.0f} ms", file=sys.stderr)
        out = {"engine": fleet.engine, "label": fleet.label,
               "server_version": fleet.version(), "rounds": rounds,
               "python_floor_ms": summary(floors)}
        out.update(summarise(trials, counts))
        out["trials"] = trials
        return out
    finally:
        for ws in workspaces:
            ws.release_leftovers()
        fleet.stop()


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="postgresql,mariadb",
                        help="comma-separated: postgresql, mariadb (default: both)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--counts", default="1,4,8", help="instance counts (default 1,4,8)")
    parser.add_argument("--hold", type=float, default=0.5,
                        help="seconds between pre and post, standing in for the snapshot")
    parser.add_argument("--servers-on-tmpfs", action="store_true",
                        help="server data on /dev/shm instead of the disk (/var/tmp)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_prepost: needs root (quiesce pre/post run as root)", file=sys.stderr)
        return 2
    # Ctrl-C, SIGTERM and SIGHUP all unwind through the finally blocks below, so every holder
    # and server is still released and stopped (SIGINT too when started in the background,
    # where the shell would have it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in FLEETS]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; choose from {sorted(FLEETS)}")
    counts = sorted({int(c) for c in args.counts.split(",")})
    if counts[0] < 1:  # one count (e.g. --counts 1) measures latency alone, without a ratio
        parser.error("--counts needs positive counts, e.g. 1,4,8")

    # quiesce.toml must be root-owned 0600 in a root-owned directory no one else can enter.
    root = Path(tempfile.mkdtemp(prefix="quiesce-bench-pp-", dir="/run"))
    os.chmod(root, 0o700)
    server_base = Path(tempfile.mkdtemp(
        prefix="quiesce-bench-pp-", dir="/dev/shm" if args.servers_on_tmpfs else "/var/tmp"))
    server_base.chmod(0o755)  # the postgres / mysql users must reach their directories
    results: dict[str, Any] = {}
    try:
        for engine in engines:
            try:
                results[engine] = run_engine(engine, root, server_base, counts=counts,
                                             rounds=args.rounds, hold=args.hold)
            except Exception as exc:  # keep the other engines' results
                print(f"bench_prepost: {engine} failed: {exc}", file=sys.stderr)
                results[engine] = {"error": str(exc)[-2000:]}
                continue
            print_table(engine, results[engine], counts)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(server_base, ignore_errors=True)

    document = {
        "benchmark": "prepost",
        "code": code_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                        * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "servers_on": "tmpfs (/dev/shm)" if args.servers_on_tmpfs else "disk (/var/tmp)",
        "counts": counts,
        "rounds": args.rounds,
        "hold_seconds": args.hold,
        "ratio_goal": RATIO_GOAL,
        "engines": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(f"bench_prepost: interrupted ({exc or 'SIGINT'}); servers and holders were "
              "cleaned up, no results written", file=sys.stderr)
        sys.exit(130)
