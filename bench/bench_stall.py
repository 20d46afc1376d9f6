"""The application's write stall of one backup cycle, side by side in one run (root only).

A writer process does ~200 autocommit INSERTs per second against a throwaway server (MariaDB
and/or PostgreSQL from the installed binaries) whose data and redo/WAL sit on two loop ext4
disks. The disks' images sit on an XFS store, itself a loop filesystem the bench creates
(image on tmpfs by default), so a snapshot is an instant reflink copy of the two images
(``cp --reflink=always``). The figure is the **stall**: the longest gap between two completed
commits during one backup cycle. Approaches, per engine:

- ``floor``: ``sync``, FIFREEZE both disks in the default order (``discover_mounts``: the
  later-mounted disk first, here the WAL/redo disk), the same ``cp --reflink=always``
  snapshot, FITHAW in reverse; no database lock at all: a bare freeze;
- ``floor-log-last``: the same, but the data disk frozen first and the WAL/redo disk last
  (thawed first): what the freeze order alone is worth. ``quiesce run`` uses this order
  when the holder names the WAL/redo disk as the commit path (PostgreSQL's pg_wal; MariaDB's
  redo and binlog directories at the light level only, and its binlog is on the data disk);
- ``run``: ``quiesce run`` with the wrappers of ``quiesce install azure --prefix`` as pre/post
  scripts, ``--freeze-mount`` on the two disks and the ``cp`` snapshot command; it must report
  the snapshot application-consistent (checked, and the run record must say consistent);
- ``run-auto``: the same with ``level = "auto"`` in quiesce.toml (the light level where pre
  verifies it), when the engine's schema has ``level``;
- ``azure-<p>s`` / ``azure-<p>s-auto``: an emulated Azure cycle (tests/helpers/azure_emulator.py,
  ScriptsExecutionPollTimeSeconds = p) through the same wrappers, fsFreezeEnabled true: the
  bench freezes the two disks around the emulator's snapshot step (the emulator itself freezes
  nothing). Azure's own rule leaves loop devices out of its freeze, so for the ``-auto``
  variant the bench tells ``pre`` what it really freezes the way ``quiesce run`` does
  (QUIESCE_FREEZE_MOUNTS + QUIESCE_RUN_ID), standing in for the block devices a real VM has.

Runs are paired and interleaved (run i does every approach once, the order rotated by i) so
machine noise hits all alike. Reports medians, ratios to the floor and the issue-10 goals:
``quiesce run`` stall <= 1.2 x floor + 5 ms; the Azure-emulated stall <= 500 ms. Every
commit's (start, latency) of every cycle is kept for bench/plot_stall.py.

    sudo .venv/bin/python bench/bench_stall.py [--runs 5] [--engine postgresql|mysql|all]
    sudo .venv/bin/python bench/bench_stall.py --quick --engine postgresql   # smoke test

Safety: only the loop filesystems this bench created are ever frozen (checked against the
mount table before each FIFREEZE); they are thawed, unmounted and detached in cleanup, also
after an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import fcntl
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"

INTERVAL = 0.005  # the writer's pace: 200 commits/s
SETTLE_S = 0.5  # between cycles (a FIFREEZE right after a FITHAW skips RCU grace periods)
LEAD_S = 0.2  # writer baseline before each cycle
TAIL_S = 0.3  # after each cycle: the commits a release let through complete
GOAL_RATIO, GOAL_EXTRA_MS = 1.2, 5.0
AZURE_GOAL_MS = 500.0
ENGINES = ("postgresql", "mysql")
ENGINE_NAMES = {"postgresql": "PostgreSQL", "mysql": "MariaDB"}
MAX_HOLD = 60
FREEZE_TIMEOUT = 30


class BenchError(Exception):
    """The bench cannot go on (a cycle failed, a claim did not hold)."""


# ---------------------------------------------------------------------------- the writer
WRITER_TABLE = "bench_stall"


def writer_main(engine: str, conn: dict[str, Any]) -> int:
    """The writer process: paced autocommit INSERTs in a thread; on stdin, ``dump A B``
    prints the commits that overlap [A, B] (monotonic seconds) as JSON, ``quit`` ends."""
    payload = "x" * 64
    if engine == "postgresql":
        import psycopg

        db = psycopg.connect(conn["dsn"], autocommit=True)

        def insert() -> None:
            db.execute(f"INSERT INTO {WRITER_TABLE} (note) VALUES (%s)", (payload,))
    else:
        import pymysql

        db = pymysql.connect(unix_socket=conn["socket"], user="root", database="bench",
                             autocommit=True, read_timeout=300, write_timeout=300)
        cur = db.cursor()

        def insert() -> None:
            cur.execute(f"INSERT INTO {WRITER_TABLE} (note) VALUES (%s)", (payload,))

    commits: list[tuple[float, float]] = []
    pending: list[float] = []  # the commit in flight, if any
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def loop() -> None:
        due = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            start = time.monotonic()
            with lock:
                pending[:] = [start]
            try:
                insert()
            except Exception as exc:  # reported on the next dump; the bench stops
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                return
            done = time.monotonic()
            with lock:
                commits.append((start, done))
                pending.clear()
            # Blocked: go on at the pace from now, no burst to catch up.
            due = max(due + INTERVAL, done)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "dump":
            lo, hi = float(words[1]), float(words[2])
            with lock:
                chosen = [c for c in commits if c[1] >= lo and c[0] <= hi]
                commits[:] = [c for c in commits if c[1] >= lo - 5]
                out = {"commits": chosen, "pending": list(pending), "errors": list(errors)}
            print(json.dumps(out), flush=True)
    stop.set()
    thread.join(5)
    return 0


class Writer:
    """The writer process, seen from the bench."""

    def __init__(self, engine: str, conn: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_writer", engine, json.dumps(conn)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self._readline(60)
        if line.strip() != "ready":
            self.close()
            raise BenchError(f"the {engine} writer did not start: {line!r}")

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not result:
            raise BenchError(f"the writer gave no answer within {timeout:g} s")
        return result[0]

    def dump(self, lo: float, hi: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"dump {lo!r} {hi!r}\n")
        self.proc.stdin.flush()
        data = json.loads(self._readline(60))
        if data["errors"]:
            raise BenchError(f"the writer failed: {data['errors']}")
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# ---------------------------------------------------------------------------- freezing
def _loop_mounts() -> dict[str, str]:
    """mount point -> source, for every mount of a /dev/loop device."""
    from quiesce.freezing.mounts import parse_mountinfo

    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        return {e.mount_point: e.source for e in parse_mountinfo(fh.read())
                if e.source.startswith("/dev/loop")}


@contextlib.contextmanager
def frozen(disks: list[Any], marks: dict[str, list[float]]) -> Iterator[None]:
    """FIFREEZE the bench's own loop disks (checked against the mount table), FITHAW them in
    reverse order whatever happens. ``marks['freeze']`` = [first FIFREEZE, last FITHAW done]."""
    from quiesce.freezing.watchdog import FIFREEZE, FITHAW

    mounted = _loop_mounts()
    for disk in disks:
        if mounted.get(str(disk.mount_point)) != disk.device:
            raise BenchError(f"refusing to freeze {disk.mount_point}: not the bench's loop "
                             f"mount of {disk.device}")
    fds = [os.open(d.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for d in disks]
    done: list[int] = []
    start = time.monotonic()
    try:
        for fd in fds:
            fcntl.ioctl(fd, FIFREEZE, 0)
            done.append(fd)
        yield
    finally:
        for fd in reversed(done):
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: not frozen
                    raise
        marks["freeze"] = [start, time.monotonic()]
        for fd in fds:
            os.close(fd)


# ---------------------------------------------------------------------------- setup
@dataclass
class EngineSetup:
    engine: str
    disks: list[Any]  # data, log
    server: Any
    writer: Writer | None
    snapdir: Path
    jails: dict[str, Jail] = field(default_factory=dict)  # level -> jail
    order: list[Any] = field(default_factory=list)  # the disks in quiesce run's freeze order

    @property
    def mounts(self) -> list[str]:
        return [str(d.mount_point) for d in self.disks]

    def snapshot_argv(self) -> list[str]:
        return ["cp", "--reflink=always", *[str(d.image) for d in self.disks],
                f"{self.snapdir}/"]

    def clear_snapshots(self) -> list[str]:
        names = sorted(p.name for p in self.snapdir.iterdir())
        for path in self.snapdir.iterdir():
            path.unlink()
        return names


class Jail:
    """`quiesce install azure --prefix` into a private root-only tree, quiesce.toml written
    for one server at one level; runtime dir and state dir inside."""

    def __init__(self, root: Path, engine: str, server: Any, level: str) -> None:
        self.root = root
        self.prefix = root / "jail"
        self.rundir = root / "rt"
        self.state = root / "state"
        self.azure = self.prefix / "etc/azure/VMSnapshotScriptPluginConfig.json"
        self.toml = self.prefix / "etc/quiesce/quiesce.toml"
        self.level = level
        out = subprocess.run([sys.executable, "-m", "quiesce", "install", "azure", "--prefix",
                              str(self.prefix), "--plugins", engine,
                              "--max-hold-seconds", str(MAX_HOLD)],
                             capture_output=True, text=True, timeout=120, cwd="/", check=False)
        if out.returncode != 0:
            raise BenchError(f"quiesce install azure failed: {out.stdout}{out.stderr}")
        lines = [f"max_hold_seconds = {MAX_HOLD}", f'state_dir = "{self.state}"', "",
                 f"[[{engine}]]", 'name = "bench"']
        if engine == "postgresql":
            lines.append(f'conninfo = "{server.socket_conninfo}"')
        else:
            lines += [f'unix_socket = "{server.socket}"', 'user = "root"']
        if level != "full":
            lines.append(f'level = "{level}"')
        self.toml.write_text("\n".join(lines) + "\n")
        os.chmod(self.toml, 0o600)
        doc = json.loads(self.azure.read_text())
        doc.update({"timeoutInSeconds": 60, "continueBackupOnFailure": False,
                    "preScriptParams": [], "postScriptParams": ["--json"]})
        self.azure.write_text(json.dumps(doc, indent=4) + "\n")
        os.chmod(self.azure, 0o600)

    def azure_config(self, poll: float) -> Path:
        """A copy of the installed Azure config with this poll (the emulator reads it)."""
        path = self.prefix / f"etc/azure/emulated-poll{poll:g}.json"
        if not path.exists():
            doc = json.loads(self.azure.read_text())
            doc["ScriptsExecutionPollTimeSeconds"] = poll
            path.write_text(json.dumps(doc, indent=4) + "\n")
            os.chmod(path, 0o600)
        return path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("QUIESCE_RUN_ID", "QUIESCE_FREEZE_MOUNTS",
                            "QUIESCE_AZURE_FS_FREEZE")}
        env["QUIESCE_RUNTIME_DIR"] = str(self.rundir)
        return env

    def record(self, run_id: str, timeout: float = 15) -> dict[str, Any]:
        """The run record of ``run_id`` (the holder writes it after the release)."""
        path = self.state / "runs" / f"{run_id}.json"
        give_up = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                return json.loads(path.read_text())
            if time.monotonic() > give_up:
                found = sorted(p.name for p in (self.state / "runs").glob("*.json")) \
                    if (self.state / "runs").is_dir() else []
                raise BenchError(f"no run record for {run_id} after {timeout:g} s "
                                 f"(records: {found})")
            time.sleep(0.05)

    def release_leftover(self) -> None:
        """Cleanup: a hold still in place (after an error) is released with `post`."""
        if not self.rundir.exists():
            return
        with contextlib.suppress(Exception):
            subprocess.run([sys.executable, "-m", "quiesce", "post", "--config", str(self.toml),
                            "--runtime-dir", str(self.rundir), "--json"], capture_output=True,
                           timeout=60, check=False, cwd="/")


def schema_has_level(engine: str) -> bool:
    """Whether the engine's quiesce.toml schema knows ``level`` (the light level exists)."""
    if engine == "postgresql":
        from quiesce_postgresql import config
    else:
        from quiesce_mysql import config
    return "level" in config.SCHEMA.fields


def start_server(engine: str, disks: list[Any], run_dir: Path) -> Any:
    from quiesce.harness.servers.base import ServerLayout

    layout = ServerLayout(data_dir=disks[0].mount_point / "db",
                          log_dir=disks[1].mount_point / "log", run_dir=run_dir)
    if engine == "postgresql":
        from quiesce_postgresql.server import LocalPostgres

        server = LocalPostgres(layout)
        server.start()
        server.execute(f"CREATE TABLE {WRITER_TABLE} (id bigserial PRIMARY KEY, "
                       "at timestamptz NOT NULL DEFAULT now(), note text)")
    else:
        from quiesce_mysql.server import LocalMySQL

        server = LocalMySQL(layout)
        server.start()
        server.execute("CREATE DATABASE bench")
        server.execute(f"CREATE TABLE bench.{WRITER_TABLE} (id bigint AUTO_INCREMENT PRIMARY "
                       "KEY, at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), note text) "
                       "ENGINE=InnoDB")
    return server


def writer_conn(engine: str, server: Any) -> dict[str, Any]:
    if engine == "postgresql":
        return {"dsn": server.socket_conninfo}
    return {"socket": str(server.socket)}


# ---------------------------------------------------------------------------- one cycle
@dataclass
class Cycle:
    engine: str
    approach: str
    run: int
    t0_mono: float = 0.0
    t0_wall: float = 0.0
    end_mono: float = 0.0
    marks: dict[str, list[float]] = field(default_factory=dict)  # name -> [start, end] mono
    info: dict[str, Any] = field(default_factory=dict)

    def wall_to_mono(self, wall: float) -> float:
        return self.t0_mono + (wall - self.t0_wall)

    def to_result(self, commits: list[list[float]]) -> dict[str, Any]:
        done = sorted(c[1] for c in commits if self.t0_mono <= c[1] <= self.end_mono)
        gaps = [b - a for a, b in itertools.pairwise(done)]
        worst = max(range(len(gaps)), key=gaps.__getitem__) if gaps else None

        def rel(t: float) -> float:
            return round((t - self.t0_mono) * 1000, 2)

        return {
            "engine": self.engine, "approach": self.approach, "run": self.run,
            "stall_ms": round(max(gaps) * 1000, 2) if gaps else None,
            "stall_at_ms": [rel(done[worst]), rel(done[worst + 1])] if worst is not None
            else None,
            "commits": len(done),
            "duration_ms": rel(self.end_mono),
            "marks_ms": {k: [rel(v[0]), rel(v[1])] for k, v in self.marks.items()},
            "info": self.info,
            # [start ms, latency ms] of every commit of the cycle (0.1 ms), for the plot
            "timeline": [[round(rel(c[0]), 1), round((c[1] - c[0]) * 1000, 1)]
                         for c in sorted(commits) if c[1] >= self.t0_mono],
        }


def parse_stamp(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.UTC).timestamp()


def hold_marks(cycle: Cycle, record: dict[str, Any]) -> None:
    """The hold and the commit block, from the run record. Both end at the unlock: the
    record's ``released_at`` comes later (after the release was confirmed from a second
    session), so the ends are the starts plus the engines' own held_seconds."""
    since, released = parse_stamp(record.get("since")), parse_stamp(record.get("released_at"))
    metadata = [inst.get("metadata") or {} for inst in record.get("instances", [])]
    held = [m.get("held_seconds") for m in metadata]
    held = [h for h in held if isinstance(h, (int, float))]
    if since is not None and (held or released is not None):
        start = cycle.wall_to_mono(since)
        end = start + max(held) if held else cycle.wall_to_mono(released or since)
        cycle.marks["hold"] = [start, end]
    blocks = [(m.get("commit_block") or {}).get("held_seconds") for m in metadata]
    blocks = [b for b in blocks if isinstance(b, (int, float))]
    block_ms = ((cycle.info.get("hold") or {}).get("block") or {}).get("ms")
    if blocks and "freeze" in cycle.marks and isinstance(block_ms, (int, float)):
        # Taken during the runner's 'block' request, which ends right before the first
        # FIFREEZE: drawn from the request's start (at most block_ms early).
        start = cycle.marks["freeze"][0] - block_ms / 1000
        cycle.marks["commit-block"] = [start, start + max(blocks)]
    levels = []
    for inst in record.get("instances", []):
        level = (inst.get("metadata") or {}).get("level") or {}
        levels.append({"chosen": level.get("chosen"), "setting": level.get("setting"),
                       "reason": level.get("reason")})
    cycle.info["levels"] = levels
    cycle.info["record_consistent"] = record.get("consistent")


def do_floor(setup: EngineSetup, cycle: Cycle, order: list[Any]) -> None:
    cycle.info["freeze_order"] = [str(d.mount_point) for d in order]
    os.sync()
    with frozen(order, cycle.marks):
        t = time.monotonic()
        pid = os.posix_spawnp("cp", setup.snapshot_argv(), os.environ)
        _, status = os.waitpid(pid, 0)
        cycle.marks["snapshot"] = [t, time.monotonic()]
    if os.waitstatus_to_exitcode(status) != 0:
        raise BenchError(f"the snapshot copy failed: {setup.snapshot_argv()}")


def do_run(setup: EngineSetup, cycle: Cycle, level: str) -> None:
    jail = setup.jails[level]
    argv = [sys.executable, "-m", "quiesce", "run", "--config", str(jail.azure), "--json",
            "--freeze-timeout", str(FREEZE_TIMEOUT),
            "--snapshot-command", " ".join(setup.snapshot_argv())]
    for mount in setup.mounts:
        argv += ["--freeze-mount", mount]
    t = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False,
                          env=jail.env(), cwd="/")
    cycle.marks["command"] = [t, time.monotonic()]
    try:
        status = json.loads(proc.stdout)
    except ValueError:
        status = {}
    if proc.returncode != 0 or status.get("consistency") != "application":
        raise BenchError(f"quiesce run did not report an application-consistent snapshot "
                         f"(exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    for phase in status.get("phases", []):
        start, ms = parse_stamp(phase.get("start")), phase.get("duration_ms")
        if start is not None and isinstance(ms, (int, float)):
            begin = cycle.wall_to_mono(start)
            cycle.marks[f"run-{phase['name']}"] = [begin, begin + ms / 1000]
    window = (status.get("freeze") or {}).get("window_ms")
    if "run-thaw" in cycle.marks and isinstance(window, (int, float)):
        # First FIFREEZE to last FITHAW, which comes first in the thaw phase (the phase then
        # stands the watchdog down). The freeze phase before the window also syncs and starts
        # the watchdog: kept as 'run-freeze'.
        end = cycle.marks["run-thaw"][0]
        cycle.marks["freeze"] = [end - window / 1000, end]
    if "run-snapshot" in cycle.marks:
        cycle.marks["snapshot"] = cycle.marks.pop("run-snapshot")
    cycle.info["run_id"] = status.get("run_id")
    cycle.info["consistency"] = status["consistency"]
    cycle.info["hold"] = status.get("hold")
    cycle.info["freeze_window_ms"] = (status.get("freeze") or {}).get("window_ms")
    record = jail.record(status["run_id"])
    hold_marks(cycle, record)
    if record.get("consistent") is not True:
        raise BenchError(f"the run record of {status['run_id']} does not say consistent")


def do_azure(setup: EngineSetup, cycle: Cycle, level: str, poll: float) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.azure_emulator import AzureEmulator

    jail = setup.jails[level]
    env = jail.env()
    if level == "auto":
        # Azure's rule freezes no loop device; the emulated caller freezes exactly these two
        # mounts together, and says so as quiesce run does (run id and mount list).
        from quiesce.hold.records import new_run_id

        run_id = new_run_id()
        env["QUIESCE_RUN_ID"] = run_id
        env["QUIESCE_FREEZE_MOUNTS"] = json.dumps({"run_id": run_id, "mounts": setup.mounts})

    def snapshot() -> None:
        os.sync()
        with frozen(setup.order, cycle.marks):
            t = time.monotonic()
            subprocess.run(setup.snapshot_argv(), check=True, timeout=60)
            cycle.marks["snapshot"] = [t, time.monotonic()]

    backup = AzureEmulator(jail.azure_config(poll), env=env, snapshot=snapshot).backup()
    try:
        backup.wait_scripts(60)
    finally:
        backup.kill_scripts()
    for name in ("pre", "post"):
        phase = getattr(backup, name)
        cycle.marks[f"azure-{name}"] = [phase.started_mono, phase.decided_mono]
        if phase.run.started_mono is not None and phase.run.exited_mono is not None:
            cycle.marks[f"{name}-script"] = [phase.run.started_mono, phase.run.exited_mono]
    if backup.snapshot.error is not None:
        raise BenchError(f"the emulated snapshot failed: {backup.snapshot.error}")
    if backup.pre.status != "success" or backup.post.status != "success" or \
            backup.snapshot.consistency != "application":
        raise BenchError(f"the emulated Azure backup was not application-consistent:\n"
                         f"{backup.describe()}")
    report = json.loads(backup.post.run.stdout.decode() or "{}")
    if report.get("consistent") is not True:
        raise BenchError(f"post did not report consistent: {report}")
    cycle.info["run_id"] = report.get("run_id")
    cycle.info["consistency"] = "application"
    hold_marks(cycle, jail.record(report["run_id"]))


def run_cycle(setup: EngineSetup, approach: str, run: int) -> dict[str, Any]:
    assert setup.writer is not None
    cycle = Cycle(setup.engine, approach, run)
    time.sleep(SETTLE_S)
    cycle.t0_mono, cycle.t0_wall = time.monotonic(), time.time()
    time.sleep(LEAD_S)
    if approach == "floor":
        do_floor(setup, cycle, setup.order)
    elif approach == "floor-log-last":
        do_floor(setup, cycle, setup.disks)  # data first; the WAL/redo disk last, thawed first
    elif approach.startswith("run"):
        do_run(setup, cycle, "auto" if approach.endswith("-auto") else "full")
    else:
        poll = float(approach.split("-")[1].rstrip("s"))
        do_azure(setup, cycle, "auto" if approach.endswith("-auto") else "full", poll)
    time.sleep(TAIL_S)
    cycle.end_mono = time.monotonic()
    data = setup.writer.dump(cycle.t0_mono, cycle.end_mono)
    if data["pending"] and data["pending"][0] < cycle.end_mono - TAIL_S:
        raise BenchError(f"{approach}: a commit is still blocked {TAIL_S:g} s after the cycle")
    copies = setup.clear_snapshots()
    if len(copies) != len(setup.disks):
        raise BenchError(f"{approach}: the snapshot left {copies}, not one copy per disk")
    return cycle.to_result(data["commits"])


# ---------------------------------------------------------------------------- summary
def summarize(cycles: list[dict[str, Any]], engines: list[str],
              approaches: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for engine in engines:
        mine = [c for c in cycles if c["engine"] == engine]
        floor = [c["stall_ms"] for c in mine if c["approach"] == "floor"]
        floor_med = statistics.median(floor) if floor else None
        rows: dict[str, Any] = {}
        for approach in approaches:
            these = [c for c in mine if c["approach"] == approach]
            stalls = [c["stall_ms"] for c in these if c["stall_ms"] is not None]
            if not stalls:
                continue
            med = statistics.median(stalls)
            holds = [c["marks_ms"]["hold"][1] - c["marks_ms"]["hold"][0] for c in these
                     if "hold" in c["marks_ms"]]
            freezes = [c["marks_ms"]["freeze"][1] - c["marks_ms"]["freeze"][0] for c in these
                       if "freeze" in c["marks_ms"]]
            blocks = [c["marks_ms"]["commit-block"][1] - c["marks_ms"]["commit-block"][0]
                      for c in these if "commit-block" in c["marks_ms"]]
            row: dict[str, Any] = {
                "stall_ms": {"median": round(med, 1), "min": round(min(stalls), 1),
                             "max": round(max(stalls), 1), "n": len(stalls),
                             "all": stalls},
                "hold_ms_median": round(statistics.median(holds), 1) if holds else None,
                "freeze_ms_median": round(statistics.median(freezes), 1) if freezes else None,
                "commit_block_ms_median": round(statistics.median(blocks), 1) if blocks
                else None,
                "levels": sorted({lv.get("chosen") or "?" for c in these
                                  for lv in c["info"].get("levels", [])}),
            }
            if floor_med and approach != "floor":
                row["ratio_to_floor"] = round(med / floor_med, 2)
                pairs = {c["run"]: c["stall_ms"] for c in mine if c["approach"] == "floor"}
                ratios = [c["stall_ms"] / pairs[c["run"]] for c in these
                          if c["run"] in pairs and pairs[c["run"]]]
                row["paired_ratio_median"] = round(statistics.median(ratios), 2) \
                    if ratios else None
            if approach.startswith("run") and floor_med is not None:
                limit = GOAL_RATIO * floor_med + GOAL_EXTRA_MS
                row["goal"] = f"<= {GOAL_RATIO:g} x floor + {GOAL_EXTRA_MS:g} ms = {limit:.1f} ms"
                row["met"] = med <= limit
            elif approach.startswith("azure"):
                row["goal"] = f"<= {AZURE_GOAL_MS:g} ms"
                row["met"] = med <= AZURE_GOAL_MS
            rows[approach] = row
        out[engine] = rows
    return out


def print_table(summary: dict[str, Any]) -> None:
    head = (f"{'engine':<11}{'approach':<15}{'stall med':>10}{'min':>8}{'max':>8}"
            f"{'x floor':>9}{'hold med':>10}{'block':>7}{'freeze':>8}  {'level':<12}goal")
    print(head)
    print("-" * (len(head) + 30))
    for engine, rows in summary.items():
        for approach, row in rows.items():
            s = row["stall_ms"]
            ratio = f"{row['ratio_to_floor']:.2f}" if "ratio_to_floor" in row else "1"
            hold = "-" if row["hold_ms_median"] is None else f"{row['hold_ms_median']:.0f}"
            freeze = "-" if row["freeze_ms_median"] is None else f"{row['freeze_ms_median']:.0f}"
            block = row.get("commit_block_ms_median")
            block = "-" if block is None else f"{block:.0f}"
            goal = ""
            if "goal" in row:
                goal = f"{row['goal']}: {'met' if row['met'] else 'NOT met'}"
            print(f"{ENGINE_NAMES[engine]:<11}{approach:<15}{s['median']:>10.1f}{s['min']:>8.1f}"
                  f"{s['max']:>8.1f}{ratio:>9}{hold:>10}{block:>7}{freeze:>8}  "
                  f"{','.join(row['levels']) or '-':<12}{goal}")
    print("stall = longest gap between two completed commits in the cycle (ms); hold = lock/"
          "backup mode held (run record); block = commit block deferred to the freeze, held "
          "(run record); freeze = first FIFREEZE to last FITHAW")


# ---------------------------------------------------------------------------- main
class Cleanup:
    """Everything the bench made, undone in reverse order (each step on its own)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], Any]]] = []
        self.problems: list[str] = []

    def add(self, what: str, step: Callable[[], Any]) -> None:
        self.steps.append((what, step))

    def run(self) -> None:
        while self.steps:
            what, step = self.steps.pop()
            try:
                step()
            except BaseException as exc:  # keep undoing the rest
                self.problems.append(f"{what}: {exc}")


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def kill_processes_under(path: Path) -> None:
    """Cleanup after an error: SIGKILL the processes (holder, guardian, scripts) whose command
    line names this bench's own private directory."""
    needle = str(path).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    os.kill(int(entry), signal.SIGKILL)


def prepare_engine(engine: str, store: Any, base: Path, private: Path, *, levels: list[str],
                   cleanup: Cleanup) -> EngineSetup:
    from quiesce.harness.disks import LoopDisk

    disks = []
    for name, size in ((f"{engine}-data", 512), (f"{engine}-log", 512)):
        disk = LoopDisk.create(base, name, size_mb=size, fstype="ext4",
                               image_dir=store.mount_point)
        cleanup.add(f"tearing down {disk.mount_point}", disk.teardown)
        disks.append(disk)
    snapdir = store.mount_point / f"{engine}-snapshots"
    snapdir.mkdir()
    run_dir = base / f"{engine}-run"
    server = start_server(engine, disks, run_dir)
    cleanup.add(f"stopping the {engine} server", server.stop)
    setup = EngineSetup(engine, disks, server, None, snapdir)
    from quiesce.freezing.freeze import discover_mounts

    by_mount = {str(d.mount_point): d for d in disks}
    setup.order = [by_mount[m.mount_point] for m in discover_mounts(setup.mounts)]
    for level in levels:
        root = private / f"{engine}-{level}"
        root.mkdir(mode=0o700)
        jail = Jail(root, engine, server, level)
        cleanup.add(f"releasing a leftover {engine} hold", jail.release_leftover)
        setup.jails[level] = jail
    writer = Writer(engine, writer_conn(engine, server))
    cleanup.add(f"stopping the {engine} writer", writer.close)
    setup.writer = writer
    return setup


def dump_result(result: dict[str, Any]) -> str:
    """The result as JSON: the summary indented, each cycle (with its timeline) on one line."""
    head = {k: v for k, v in result.items() if k != "cycles"}
    text = json.dumps(head, indent=1)
    cycles = ",\n".join("  " + json.dumps(c, separators=(",", ":")) for c in result["cycles"])
    return f'{text[:-2]},\n "cycles": [\n{cycles}\n ]\n}}\n'


def code_version() -> dict[str, Any]:
    """The commit measured, and whether core/ or plugins/ differed from it (a shared tree)."""
    def git(*words: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["git", "-C", str(ROOT), *words], capture_output=True,
                                 text=True, timeout=30, check=False)
            if out.returncode == 0:
                return out.stdout.strip()
        return ""

    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "core_or_plugins_modified": bool(git("status", "--porcelain", "--", "core",
                                                 "plugins"))}


def approaches_for(levels: list[str], polls: list[float]) -> list[str]:
    out = ["floor", "floor-log-last", "run"]
    if "auto" in levels:
        out.append("run-auto")
    for poll in polls:
        out.append(f"azure-{poll:g}s")
        if "auto" in levels:
            out.append(f"azure-{poll:g}s-auto")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="paired runs per approach "
                        "(default 5)")
    parser.add_argument("--quick", action="store_true", help="one run of each (smoke test)")
    parser.add_argument("--engine", choices=[*ENGINES, "all"], default="all")
    parser.add_argument("--polls", default="1,3",
                        help="Azure poll seconds to emulate, comma-separated (default 1,3; "
                             "empty: no Azure cycle)")
    parser.add_argument("--approaches", default="",
                        help="only these approaches, comma-separated (e.g. floor,run,azure-1s)")
    parser.add_argument("--level", choices=["both", "full"], default="both",
                        help="'both' adds the level = \"auto\" variants when the engines' "
                             "schemas have level (default); 'full' only the default level")
    parser.add_argument("--store-on-disk", action="store_true",
                        help="put the XFS store's image on /var/tmp instead of tmpfs")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON result (default bench/results/stall.json, with --quick "
                             "stall-quick.json)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_stall: needs root (loop devices, FIFREEZE, throwaway servers)",
              file=sys.stderr)
        return 2
    runs = 1 if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be at least 1")
    try:
        polls = [float(p) for p in args.polls.split(",") if p.strip()]
    except ValueError:
        parser.error(f"--polls takes numbers like 1,3, not {args.polls!r}")
    if any(not 1 <= p <= 5 for p in polls):
        parser.error("Azure accepts ScriptsExecutionPollTimeSeconds from 1 to 5")
    output = args.output or RESULTS_DIR / ("stall-quick.json" if args.quick else "stall.json")
    engines = list(ENGINES) if args.engine == "all" else [args.engine]
    for path in (ROOT / "core", ROOT / "plugins"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    levels_by_engine = {e: ["full", "auto"] if args.level == "both" and schema_has_level(e)
                        else ["full"] for e in engines}
    wanted = [a.strip() for a in args.approaches.split(",") if a.strip()]

    from quiesce.harness.disks import LoopDisk

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)  # also when started with SIGINT ignored
    cleanup = Cleanup()
    base = Path(tempfile.mkdtemp(prefix="quiesce-stall-", dir="/run"))
    base.chmod(0o755)  # the servers' accounts reach their disks' mount points through it
    cleanup.add(f"removing {base}", lambda: shutil.rmtree(base, ignore_errors=True))
    private = base / "private"
    private.mkdir(mode=0o700)
    cleanup.add("killing leftover processes", lambda: kill_processes_under(private))
    image_dir = Path(tempfile.mkdtemp(prefix="quiesce-stall-",
                                      dir="/var/tmp" if args.store_on_disk else "/dev/shm"))
    cleanup.add(f"removing {image_dir}", lambda: shutil.rmtree(image_dir, ignore_errors=True))
    cycles: list[dict[str, Any]] = []
    plan: dict[str, list[str]] = {}
    versions: dict[str, str] = {}
    started = time.time()
    try:
        store = LoopDisk.create(base, "store", size_mb=4096, fstype="xfs", image_dir=image_dir)
        cleanup.add("tearing down the XFS store", store.teardown)
        for engine in engines:
            setup = prepare_engine(engine, store, base, private,
                                   levels=levels_by_engine[engine], cleanup=cleanup)
            versions[engine] = f"{getattr(setup.server, 'flavour', engine)} " \
                               f"{setup.server.version}"
            approaches = approaches_for(levels_by_engine[engine], polls)
            if wanted:
                unknown = sorted(set(wanted) - set(approaches))
                if unknown:
                    raise BenchError(f"unknown approach(es) {unknown}; this run has "
                                     f"{approaches}")
                approaches = [a for a in approaches if a in wanted]
            plan[engine] = approaches
            run_cycle(setup, "floor", -1)  # warm-up (page cache, pyc), not counted
            for run in range(runs):
                shift = run % len(approaches)
                for approach in approaches[shift:] + approaches[:shift]:
                    result = run_cycle(setup, approach, run)
                    cycles.append(result)
                    print(f"  {ENGINE_NAMES[engine]} run {run + 1}/{runs} {approach:<14} "
                          f"stall {result['stall_ms']} ms", flush=True)
            assert setup.writer is not None
            setup.writer.close()
    except KeyboardInterrupt:
        print("bench_stall: interrupted; cleaning up", file=sys.stderr)
        cleanup.run()
        return 130
    finally:
        cleanup.run()
        if cleanup.problems:
            print("bench_stall: cleanup left problems:\n  " + "\n  ".join(cleanup.problems),
                  file=sys.stderr)

    all_approaches = list(dict.fromkeys(a for e in engines for a in plan[e]))
    summary = summarize(cycles, engines, all_approaches)
    result = {
        "benchmark": "stall",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "code": code_version(),
        "runs": runs,
        "quick": args.quick,
        "writer_rate_per_s": round(1 / INTERVAL),
        "store": "XFS loop store, image on " + ("/var/tmp" if args.store_on_disk
                                                else "tmpfs (/dev/shm)"),
        "engines": {e: {"version": versions.get(e), "levels": levels_by_engine[e],
                        "approaches": plan.get(e, [])} for e in engines},
        "goals": {"run": f"stall <= {GOAL_RATIO:g} x floor + {GOAL_EXTRA_MS:g} ms",
                  "azure": f"stall <= {AZURE_GOAL_MS:g} ms"},
        "summary": summary,
        "cycles": cycles,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(dump_result(result))
    print_table(summary)
    print(f"results in {output}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_writer":
        sys.exit(writer_main(sys.argv[2], json.loads(sys.argv[3])))
    sys.exit(main())
