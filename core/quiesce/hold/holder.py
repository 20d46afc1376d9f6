"""The session holder: the process that keeps database sessions locked between pre and post.

Started by ``quiesce pre`` as ``python -m quiesce.hold.holder --config X --runtime-dir D
--ready-fd N`` in its own session, with stdin/stdout/stderr on /dev/null (an orchestrator reads
``pre``'s stdout until EOF: the holder must not keep it open). It:

1. takes ``holder.lock`` in the runtime dir (one hold at a time; the kernel drops the lock if
   the holder dies, so it never goes stale), binds ``holder.sock`` (0600, peers checked with
   SO_PEERCRED: root or the holder's own uid), starts the guardian (guardian.py);
2. loads quiesce.toml and the selected plugins, builds one Quiescer per instance and quiesces
   them all (lifecycle.Hold: parallel, all or nothing);
3. writes one JSON line on the readiness pipe (held instances, or the failure with every
   instance's reason) and closes it: that is the moment ``pre`` returns;
4. serves the socket: ``status``, ``release`` and ``block`` requests (``block``: ``quiesce
   run`` completing, just before its first FIFREEZE, a hold whose write block was deferred
   from ``pre``: protocol.DEFER_BLOCK_ENV), and releases everything by itself
   at ``max_hold_seconds`` ("auto-released"), then lingers so ``post`` can still learn that
   (the result also goes to ``result.json`` in the runtime dir). A liveness thread polls
   ``check_alive`` about once a second (a dead session becomes "lost", the others stay held);
   it runs beside the socket loop, so a server that stops answering a check never delays
   ``post``, ``status`` or the deadline, and never lengthens the other instances' hold;
5. after the release, writes the run record and its log to the state dir and exits.

While anything is held it writes nothing but the runtime dir (tmpfs, never frozen): log lines
stay in memory until the release.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from quiesce.errors import HoldActive, HolderError, QuiesceError
from quiesce.freezing.freeze_set import LEVEL_LIGHT
from quiesce.hold import protocol as proto
from quiesce.hold import warmup
from quiesce.hold.lifecycle import (
    ABORTED,
    AUTO_RELEASED,
    FAILED,
    RELEASED,
    SKIPPED,
    Hold,
    QuiesceFailed,
    describe,
)
from quiesce.hold.records import (
    RunRecord,
    base_run_id,
    new_run_id,
    next_attempt_id,
    valid_run_id,
    write_record,
)
from quiesce.hold.requests import Inbox, Request
from quiesce.hold.states import MAY_HOLD, HoldState
from quiesce.hold.trace import clear_trace, write_trace
from quiesce.timefmt import iso

POLL_SECONDS = 1.0  # check_alive period while holding
# At most this long for the write blocks deferred to the caller's freeze ('block'): the
# caller's freeze waits for them, and a lock that queues longer is better refused.
BLOCK_SECONDS = 10.0
ANSWER_POLL_SECONDS = 0.01  # wake-up period of the thread answering status while busy
LOCK_WAIT_SECONDS = 10.0  # how long a new holder waits for a finishing one
REQUEST_READ_TIMEOUT = 2.0
MIN_LINGER_SECONDS = 600.0
RECORD_WAIT_SECONDS = 10.0  # how long 'post' waits for the run record to be on disk
RECORD_RETRY_SECONDS = 600.0  # how long the holder keeps trying to write the run record
RECORD_RETRY_PERIOD = 2.0
SETTLE_SECONDS = 30.0  # how long a failed hold waits for calls still in flight
RUN_ID_ENV = "QUIESCE_RUN_ID"


def guardian_grace(max_hold: float) -> float:
    """Seconds past the deadline before the guardian kills a holder that did not release."""
    return max(10.0, min(60.0, max_hold * 0.25))


class MemoryLog:
    """Log lines kept in memory while a filesystem may be frozen; written after release."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        stamp = iso(time.time())
        self.lines.append(f"{stamp} {message}")


def runtime_fs_type(path: str) -> str | None:
    """The filesystem type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best, fstype = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount_point = fields[4].replace("\\040", " ")
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, right.split()[0]
    except OSError:
        return None
    return fstype


def prepare_runtime_dir(rundir: str) -> list[str]:
    """Create the runtime dir 0700, owned by the user we run as (root in production); return
    warnings (e.g. not on tmpfs).

    Every directory on the way must pass :func:`quiesce.hold.protocol.open_runtime_dir`
    (owned by root or us, not writable by group/other unless sticky with our entry in it),
    checked before anything is created in it. An existing runtime dir must be ours and mode
    0700; it is never adopted or chmod-ed: the hint says to inspect and remove it.
    """
    import stat as _stat

    with proto.open_runtime_dir(rundir, create=True) as rd:
        st = rd.stat
        me = os.geteuid()
        mode = _stat.S_IMODE(st.st_mode)
        adopt_never = (f"someone else made it or could have filled it: inspect it (ls -la "
                       f"{rd.path}), then remove it (rm -r {rd.path}) and run 'quiesce pre' "
                       "again, or choose another --runtime-dir (or QUIESCE_RUNTIME_DIR); "
                       "never chown it")
        if st.st_uid != me:
            raise HolderError(f"runtime dir {rd.path} is owned by uid {st.st_uid}, not by us "
                              f"(uid {me})", hint=adopt_never)
        if mode & 0o022:
            raise HolderError(f"runtime dir {rd.path} has mode {mode:04o}: writable by "
                              "group/other, so others may have put files in it",
                              hint=adopt_never)
        if mode != 0o700:
            if not rd.created:  # e.g. --runtime-dir /run by mistake: never chmod that
                raise HolderError(
                    f"runtime dir {rd.path} has mode {mode:04o}, not 0700: quiesce makes its "
                    "runtime dir itself, so this directory is not one it made",
                    hint="pass a --runtime-dir that does not exist yet (e.g. /run/quiesce), "
                         f"or chmod 700 {rd.path} if that directory is meant only for quiesce")
            os.chmod(rd.via_fd, 0o700)  # just made, and the umask took owner bits
    warnings = []
    fstype = runtime_fs_type(rundir)
    if fstype not in ("tmpfs", "ramfs"):
        warnings.append(
            f"runtime dir {rundir} is on {fstype or 'an unknown filesystem'}, not tmpfs: if "
            "that filesystem gets frozen, the holder cannot record an automatic release "
            "until it is thawed (use /run, or mount a tmpfs there)")
    return warnings


def take_lock(rundir: str) -> int:
    """flock holder.lock; wait a little for a holder that is finishing, refuse an active one.

    The lock is opened relative to the checked runtime dir's descriptor (O_NOFOLLOW)."""
    with proto.open_runtime_dir(rundir) as rd:
        path = os.path.join(rd.path, proto.LOCK_NAME)
        try:
            fd = os.open(proto.LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, 0o600, dir_fd=rd.fd)
        except OSError as exc:  # a symlink (ELOOP), a FIFO (ENXIO), ...
            raise HolderError(f"cannot open {path}: {exc.strerror}",
                              hint=f"inspect and remove {path}") from exc
    import stat as _stat

    if not _stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HolderError(f"{path} is not a regular file", hint=f"inspect and remove {path}")
    give_up = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        state = None
        with contextlib.suppress(QuiesceError):
            state = proto.request(rundir, "status", timeout=2.0).get("state")
        if state in MAY_HOLD or time.monotonic() > give_up:
            os.close(fd)
            raise HoldActive(
                f"a hold is already active in {rundir}"
                + (f" (state: {state})" if state else " (its holder or guardian is busy)"),
                hint="run 'quiesce post' (or wait for it) before the next 'pre'; "
                     "'quiesce status' shows what is held")
        time.sleep(0.05)


class GuardianLink:
    """The holder's end of the pipe to its guardian; writes never block the holder for long."""

    def __init__(self, fd: int, process: subprocess.Popen[bytes] | None) -> None:
        self.fd = fd
        self.process = process

    def send(self, **message: Any) -> None:
        if self.fd < 0:
            return
        data = json.dumps(message, default=str).encode() + b"\n"
        with contextlib.suppress(OSError):
            os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def start_guardian(rundir: str, lock_fd: int, log: MemoryLog) -> GuardianLink:
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-B", "-m", "quiesce.hold.guardian", "--pipe-fd", str(read_fd),
            "--lock-fd", str(lock_fd), "--holder-pid", str(os.getpid()),
            "--runtime-dir", rundir]
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(read_fd, lock_fd), start_new_session=True,
            cwd="/")
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise HolderError(f"cannot start the guardian: {exc}") from exc
    os.close(read_fd)
    log(f"guardian started (pid {process.pid})")
    return GuardianLink(write_fd, process)


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def peer_allowed(uid: int) -> bool:
    """Root, or the uid the holder itself runs as: a holder started by root answers root only;
    one started by a non-root user (quiesce without root) answers that user and root."""
    return uid in (0, os.geteuid())


class Holder:
    """One hold: quiesce, serve, release, record."""

    def __init__(self, config: str, rundir: str, plugins: list[str] | None, *,
                 cutoff: float | None = None, ready_fd: int = -1) -> None:
        self.config = config
        self.rundir = rundir
        self.plugins = plugins
        self.log = MemoryLog()
        self.run_id = new_run_id()
        self.state: HoldState = HoldState.STARTING
        self.started_at = time.time()
        self.hold: Hold | None = None
        self.settings: Any = None
        # The caller's hard deadline (monotonic; CLOCK_MONOTONIC is one clock for every process
        # on the machine, so 'pre' can hand it over as a number).
        self.cutoff = cutoff
        self.ready_fd = ready_fd
        self.deadline: float | None = None  # monotonic: max_hold_seconds
        self.until: float | None = None  # wall clock
        self.since: float | None = None  # wall clock
        self.final: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self.lock_fd = -1
        self.listener: socket.socket | None = None
        self.inbox: Inbox | None = None
        self.guardian = GuardianLink(-1, None)
        self.stop_signal: int | None = None
        self.linger_until: float | None = None
        self.result_file_written = False
        self.collected = False  # the outcome reached 'post' directly
        self.record_thread: threading.Thread | None = None
        self.record_error: str | None = None
        self.record_outcome: list[str | None] = []
        # Requests that arrived while busy, answered once the main thread is free.
        self.pending: list[Request] = []
        self.liveness_stop = threading.Event()
        self.liveness: threading.Thread | None = None

    # ------------------------------------------------------------------ startup
    def _choose_run_id(self) -> None:
        """QUIESCE_RUN_ID (set by 'quiesce run' for its scripts) names the hold, so the run's
        status, this hold's record and 'status' join on one id; a retried pre-script of the
        same run gets an attempt suffix instead of overwriting the earlier attempt's record."""
        wanted = os.environ.get(RUN_ID_ENV, "")
        if not valid_run_id(wanted) or self.settings is None:
            if wanted:
                self.log(f"ignoring {RUN_ID_ENV}={wanted!r}: not a run id")
            return
        self.run_id = next_attempt_id(self.settings.state_dir, wanted)

    def _defer_requested(self) -> bool:
        """'quiesce run' runs the freeze itself and asks (for this run id only) that what stops
        writes be taken at its freeze, over this socket ('block'), instead of now."""
        wanted = os.environ.get(proto.DEFER_BLOCK_ENV, "")
        if not wanted:
            return False
        if not proto.defer_block_for(wanted, base_run_id(self.run_id), self.rundir):
            self.log(f"ignoring {proto.DEFER_BLOCK_ENV}={wanted!r}: not this run's id and "
                     "runtime dir")
            return False
        return True

    def _trace(self) -> None:
        """(Re)write hold.json: the sign that a hold exists, until its outcome is handed over."""
        trace = {"run_id": self.run_id, "holder_pid": os.getpid(), "uid": os.geteuid(),
                 "state": self.state, "started_at": iso(self.started_at),
                 "since": iso(self.since), "until": iso(self.until), "config": self.config,
                 "deadline": iso(self._wall(self.cutoff)),
                 "state_dir": self.settings.state_dir if self.settings is not None else None}
        try:
            write_trace(self.rundir, trace)
        except OSError as exc:
            self.log(f"cannot write the hold trace: {exc}")

    @staticmethod
    def _wall(monotonic: float | None) -> float | None:
        return None if monotonic is None else time.time() + (monotonic - time.monotonic())

    def start(self) -> dict[str, Any]:
        """Everything up to readiness; returns the readiness message (ok or not)."""
        from quiesce.settings import load_settings

        self.warnings = prepare_runtime_dir(self.rundir)
        self.lock_fd = take_lock(self.rundir)
        # The trace names this holder's pid before the socket exists: a client that checks
        # who answers (SO_PEERCRED against the trace) never sees an older hold's pid here.
        self.state = HoldState.QUIESCING
        self._trace()
        self._bind()
        # An older uncollected result belongs to a previous hold; a new hold supersedes it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.rundir, proto.RESULT_NAME))
        self.guardian = start_guardian(self.rundir, self.lock_fd, self.log)
        self.settings = load_settings(self.config, plugins=self.plugins)
        settings = self.settings
        self._choose_run_id()
        self._trace()
        budget = settings.pre_timeout_seconds
        if self.cutoff is not None:
            budget = min(budget, self.cutoff - time.monotonic())
        if budget <= 0:
            return self._failure("the deadline had passed before anything could be quiesced",
                                 self._not_attempted(settings.instances, "no time was left"))
        self.guardian.send(op="start", run_id=self.run_id, config=settings.path,
                           state_dir=settings.state_dir,
                           max_hold_seconds=settings.max_hold_seconds,
                           backstop=time.monotonic() + budget
                           + guardian_grace(settings.max_hold_seconds) + 30)
        quiescers, errors = self._engines(settings)
        if errors:
            for q in quiescers:
                with contextlib.suppress(Exception):
                    q.close()
            names = {(e["plugin"], e["name"]) for e in errors}
            skipped = self._not_attempted(
                [i for i in settings.instances if (i.engine, i.name) not in names],
                "not quiesced because another instance failed")
            return self._failure("could not create every engine", errors + skipped)

        return self._quiesce(quiescers, budget)

    def _quiesce(self, quiescers: list[Any], budget: float) -> dict[str, Any]:
        """Quiesce every instance (lifecycle.Hold); the readiness message, ok or not."""
        settings = self.settings
        by_key = {(i.engine, i.name): i for i in settings.instances}

        def on_held(q: Any) -> None:
            token = q.recovery_token()
            if token is not None:
                instance = by_key[(q.engine, q.name)]
                self.guardian.send(op="token", plugin=q.engine, name=q.name,
                                   options=dict(instance.options), token=token)

        self.hold = Hold(quiescers, timeout=budget, log=self.log, on_held=on_held,
                         cutoff=self.cutoff, defer_block=self._defer_requested())
        self.log(f"quiescing {len(quiescers)} instance(s) from {settings.path}"
                 + (f", deadline in {budget:.3f} s" if self.cutoff is not None else ""))
        try:
            with self._answering():
                self.hold.quiesce_all()
        except QuiesceFailed as exc:
            self.guardian.send(op="released")
            state = HoldState.ABORTED if exc.abandoned is not None else HoldState.FAILED
            return self._failure(str(exc), [r.to_dict() for r in exc.results], state)
        if self.stop_signal is not None:
            # Told to stop while quiescing: do not report a hold that is about to end.
            name = signal.Signals(self.stop_signal).name
            self.hold.release_all(ABORTED, note=f"the holder received {name}")
            self.guardian.send(op="released")
            return self._failure(f"the holder received {name} while quiescing",
                                 [r.to_dict() for r in self.hold.results()],
                                 HoldState.ABORTED)
        return self._holding(quiescers)

    def _holding(self, quiescers: list[Any]) -> dict[str, Any]:
        """Every instance is held: arm the deadline and the guardian; the ok message."""
        assert self.hold is not None
        settings = self.settings
        held_since = self.hold.held_since() or time.monotonic()
        self.deadline = held_since + settings.max_hold_seconds
        self.since = time.time() - (time.monotonic() - held_since)
        self.until = self.since + settings.max_hold_seconds
        self.state = HoldState.HOLDING
        # The trace is rewritten once 'pre' has its answer (main): the lock is held, and
        # every millisecond before 'pre' exits is part of the application's write stall.
        self.guardian.send(op="hold", deadline=self.deadline,
                           backstop=self.deadline + guardian_grace(settings.max_hold_seconds),
                           since=self.since, until=self.until,
                           instances=[{"plugin": q.engine, "name": q.name} for q in quiescers])
        self.log(f"holding until {iso(self.until)}")
        return {
            "ok": True,
            "run_id": self.run_id,
            "holder_pid": os.getpid(),
            "guardian_pid": self.guardian.process.pid if self.guardian.process else None,
            "runtime_dir": self.rundir,
            "config": settings.path,
            "since": iso(self.since),
            "until": iso(self.until),
            "deadline": iso(self._wall(self.cutoff)),
            "max_hold_seconds": settings.max_hold_seconds,
            "instances": [r.to_dict() for r in self.hold.results()],
            "warnings": self.warnings,
        }

    @staticmethod
    def _engines(settings: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        quiescers: list[Any] = []
        errors: list[dict[str, Any]] = []
        for instance in settings.instances:
            try:
                quiescers.append(settings.engine_of(instance).factory(instance))
            except Exception as exc:
                errors.append({"plugin": instance.engine, "name": instance.name,
                               "status": FAILED, "held_seconds": None, "metadata": {},
                               "error": f"cannot create the engine: {describe(exc)}",
                               "note": None})
        return quiescers, errors

    @staticmethod
    def _not_attempted(instances: Any, why: str) -> list[dict[str, Any]]:
        return [{"plugin": i.engine, "name": i.name, "status": SKIPPED, "held_seconds": None,
                 "metadata": {}, "error": None, "note": why} for i in instances]

    def _answer_while_quiescing(self, done: threading.Event) -> None:
        """While the main thread quiesces or releases: answer ``status`` at once; while
        quiescing, a ``release`` (post came early) or ``abort`` (pre gave up) abandons the
        hold and is answered at once, and a ``pre`` that died abandons it too. Other requests
        wait for the main thread."""
        assert self.inbox is not None
        client = select.poll()
        if self.ready_fd >= 0:
            client.register(self.ready_fd, 0)  # only POLLERR: the reading end was closed
        while not done.is_set():
            for request in self.inbox.wait(ANSWER_POLL_SECONDS):
                self._answer_early(request)
            if (self.state == HoldState.QUIESCING and self.ready_fd >= 0 and self.hold is not None
                    and client.poll(0)):
                self.hold.abandon("'pre' exited before the hold was complete, so nobody "
                                  "relies on it")

    def _answer_early(self, request: Request) -> None:
        if request.op == "status":
            request.answer(self._status())
            request.close()
        elif request.op in ("release", "abort") and self.state == HoldState.QUIESCING:
            why = ("'post' came while 'pre' was still acquiring" if request.op == "release"
                   else "'pre' gave up at its deadline")
            if self.hold is not None:
                self.hold.abandon(why)
            if request.op == "release":
                self.collected = True
                request.answer(self._early_outcome(why))
            else:
                request.answer({"ok": True, "state": HoldState.ABORTED})
            request.close()
        else:
            self.pending.append(request)

    def _early_outcome(self, why: str) -> dict[str, Any]:
        """What 'post' learns when it comes before the hold was complete: never consistent."""
        instances = [r.to_dict() for r in self.hold.results()] if self.hold else []
        return {"ok": True, "state": HoldState.ABORTED, "consistent": False,
                "message": f"{why}: nothing was held for the snapshot; it is NOT "
                           "application-consistent (locks acquired from now on are released "
                           "at once)",
                "run_id": self.run_id, "holder_pid": os.getpid(), "config": self.config,
                "since": None, "until": None, "released_at": iso(time.time()),
                "instances": instances, "record": self._record_path(),
                "record_note": "written once the abandoned acquisition has finished"}

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """Keep answering ``status`` in a thread while the main thread is busy."""
        done = threading.Event()
        answerer = threading.Thread(target=self._answer_while_quiescing, args=(done,),
                                    daemon=True, name="answer-while-busy")
        answerer.start()
        try:
            yield
        finally:
            done.set()
            answerer.join()

    def _failure(self, message: str, instances: list[dict[str, Any]],
                 state: HoldState = HoldState.FAILED) -> dict[str, Any]:
        """The readiness message of a hold that did not come about. Its record and result are
        written by :meth:`finish_failure`, after 'pre' has its answer."""
        self.state = state
        self.final = {"ok": False, "state": state, "consistent": False, "error": message,
                      "message": f"{message}: nothing was held for the snapshot; it is NOT "
                                 "application-consistent",
                      "run_id": self.run_id, "holder_pid": os.getpid(),
                      "config": self.config, "released_at": iso(time.time()),
                      "instances": instances, "record": self._record_path()}
        self.log(f"pre failed: {message}")
        return {"ok": False, "state": state, "run_id": self.run_id,
                "holder_pid": os.getpid(), "error": message, "instances": instances,
                "warnings": self.warnings, "record": self._record_path()}

    def finish_failure(self) -> None:
        """After a failed 'pre': let calls still in flight finish (each undoes a late lock by
        itself), then record the outcome and leave it for 'post' to report."""
        assert self.final is not None
        if self.hold is not None and not self.hold.settle(SETTLE_SECONDS):
            self.log(f"a call was still in flight after {SETTLE_SECONDS:g} s; the holder's "
                     "exit closes its connection")
        if self.hold is not None:
            self.final["instances"] = [r.to_dict() for r in self.hold.results()]
        self._record()
        if not self.collected:
            self._leave_result()
        clear_trace(self.rundir)

    def _bind(self) -> None:
        path = proto.socket_path(self.rundir)
        if len(os.fsencode(path)) >= 108:  # sizeof(sun_path)
            raise HolderError(f"the socket path {path} is longer than a Unix socket allows",
                              hint="choose a shorter --runtime-dir (e.g. under /run)")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: we hold the lock, so no live holder owns it
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        self.listener = listener
        self.inbox = Inbox(listener, peer_allowed, self.log)

    # ------------------------------------------------------------------ serving
    def serve(self) -> None:
        """Answer requests until the outcome is collected; the dead-man release never waits
        for a client (requests are read in threads of their own: holder_requests)."""
        assert self.hold is not None and self.settings is not None and self.inbox is not None
        self.liveness = threading.Thread(target=self._watch_sessions, daemon=True,
                                         name="liveness")
        self.liveness.start()
        queued, self.pending = self.pending, []
        while True:
            for index, request in enumerate(queued):
                if self._dispatch(request):
                    for other in queued[index + 1:]:
                        other.close()
                    return
            now = time.monotonic()
            if self.stop_signal is not None and self.state == HoldState.HOLDING:
                name = signal.Signals(self.stop_signal).name
                self._auto_release(f"the holder received {name} before 'post'")
                return
            if self.stop_signal is not None:
                return
            holding = self.state == HoldState.HOLDING
            if holding and self.deadline is not None and now >= self.deadline:
                self._auto_release(
                    f"max_hold_seconds ({self.settings.max_hold_seconds:g} s) passed before "
                    "'post' came")
                continue
            if self.state == HoldState.HOLDING and not self.hold.held():
                self._finish_without_post("every held session was lost")
            if self.linger_until is not None and now >= self.linger_until:
                self.log("nobody collected the result; exiting (result.json keeps it)")
                return
            waits = [POLL_SECONDS]
            if self.state == HoldState.HOLDING and self.deadline is not None:
                waits.append(self.deadline - now)
            if self.linger_until is not None:
                waits.append(self.linger_until - now)
            queued = self.inbox.wait(max(0.0, min(waits)))

    def _watch_sessions(self) -> None:
        """Liveness thread: poll every held session about once a second until released."""
        assert self.hold is not None
        while not self.liveness_stop.wait(POLL_SECONDS):
            if self.state != HoldState.HOLDING:
                return
            for result in self.hold.check_alive():
                self.guardian.send(op="dropped", plugin=result.plugin, name=result.name)

    def _dispatch(self, request: Request) -> bool:
        """Answer one request; True when the holder should exit afterwards. A lingering
        request's connection is closed by its reader once the client closes it."""
        if request.linger:
            return self._dispatch_open(request)
        with contextlib.closing(request.conn):
            return self._dispatch_open(request)

    def _dispatch_open(self, request: Request) -> bool:
        op = request.op
        if op == "status":
            request.answer(self._status())
            return False
        if op == "abort":
            # 'pre' gave up at its deadline after the hold was complete (its answer came too
            # late): its caller snapshots without us, so this hold must not be relied on.
            if self.state == HoldState.HOLDING:
                self._release_as(ABORTED, "'pre' gave up at its deadline before it learned "
                                          "the hold was complete")
            request.answer({"ok": True, "state": self.state})
            return False
        if op == "release":
            foreign = self._foreign_run(request.fields.get("run_id"))
            if foreign is not None:
                request.answer(foreign)
                return False
            keep = request.fields.get("keep") is True
            if self.state == HoldState.HOLDING:
                answer = self._release(self._releaser(request.fields, keep))
            else:
                answer = dict(self.final or {})
                answer["collected_from"] = "holder"
            self._note_freeze(request.fields, answer)
            failed = request.fields.get("caller_failed")
            if isinstance(failed, str) and failed.strip() and self.final is not None:
                # The snapshot agent says its snapshot failed (VMware's freezeFail): whatever
                # was held, the run is recorded NOT consistent, with the agent's reason.
                note = f"the snapshot agent reported a failure ({failed[:500]})"
                self.final.update(consistent=False, caller_failed=failed[:500], message=(
                    f"{note}: the snapshot is NOT application-consistent, whatever quiesce "
                    f"held ({self.final.get('message')})"))
                answer.update(consistent=False, caller_failed=failed[:500],
                              message=self.final["message"])
                self.log(note)
            if keep:
                # 'quiesce run' released at the thaw; its post-script collects the outcome.
                request.answer({"ok": True, "state": self.state, "run_id": self.run_id})
                self._record_bounded(0)
                self.linger_until = time.monotonic() + max(MIN_LINGER_SECONDS,
                                                           self.settings.max_hold_seconds)
                return False
            # Locks are already released: now make the run record exist before 'post' returns
            # (so 'post && quiesce restore-label' works), bounded in case the state dir's
            # filesystem is still frozen.
            written = self._record_bounded(RECORD_WAIT_SECONDS)
            answer["record"] = written
            if written is None:
                answer["record_error"] = (
                    f"the run record was not written within {RECORD_WAIT_SECONDS:g} s"
                    + (f": {self.record_error}" if self.record_error else
                       f" (is {self.settings.state_dir} frozen?)")
                    + f"; the holder keeps trying for {RECORD_RETRY_SECONDS:g} s. Keep this "
                      "output: it is the only copy of the metadata (e.g. the backup_label)")
            request.answer(answer)
            self.collected = True
            if self.result_file_written:
                proto.consume_result(self.rundir)
            clear_trace(self.rundir)
            return True
        if op == "block":
            request.answer(self._block(request.fields.get("run_id")))
            return False
        if op == "retire":
            if self.state == HoldState.HOLDING:
                request.answer({"ok": False, "error": "a hold is active"})
                return False
            request.answer({"ok": True})
            self.log("retired by a new 'pre' before anyone collected the result")
            return True
        request.answer({"ok": False, "error": f"unknown op {op!r}"})
        return False

    def _foreign_run(self, wanted: Any) -> dict[str, Any] | None:
        """The refusal for a request naming another run's id (None: it names this hold's run,
        or none at all)."""
        if wanted and valid_run_id(str(wanted)) and base_run_id(self.run_id) != wanted:
            return {"ok": False, "error": f"the active hold belongs to run {self.run_id}, not "
                                          f"{wanted}: left untouched"}
        return None

    @staticmethod
    def _releaser(fields: dict[str, Any], keep: bool) -> str:
        """Who released, in the record's words."""
        if not keep:
            return "'post'"
        if fields.get("before_thaw") is True:
            return "the runner, after the snapshot and before the thaw"
        return "the runner, at the thaw"

    def _block(self, wanted: Any) -> dict[str, Any]:
        """'quiesce run', just before its first FIFREEZE: take the write blocks deferred from
        'pre'. If one cannot be taken the hold is not complete: everything is released now and
        the answer says so (the runner then treats its pre-script as failed)."""
        assert self.hold is not None and self.settings is not None
        foreign = self._foreign_run(wanted)
        if foreign is not None:
            return foreign
        if self.state != HoldState.HOLDING:
            return {"ok": False, "state": self.state,
                    "error": f"no hold to complete (the hold is {self.state})"}
        if not self.hold.block_missed():
            return {"ok": True, "state": self.state, "blocked": False}
        started = time.monotonic()
        budget = min(BLOCK_SECONDS, max(0.0, (self.deadline or started) - started))
        failed = self.hold.block_all(budget)
        if failed:
            why = "; ".join(f"{r.plugin}/{r.name}: {r.error}" for r in failed)
            self._release_as(ABORTED, f"the write block deferred to the freeze could not be "
                                      f"taken ({why})")
            return {"ok": False, "state": self.state,
                    "error": f"could not complete the hold at the freeze: {why}; everything "
                             "was released"}
        self.log(f"write block taken at the freeze in "
                 f"{(time.monotonic() - started) * 1000:.1f} ms")
        return {"ok": True, "state": self.state, "blocked": True,
                "block_ms": round((time.monotonic() - started) * 1000, 3)}

    def _status(self) -> dict[str, Any]:
        instances = []
        for r in (self.hold.results() if self.hold is not None else []):
            instances.append({"plugin": r.plugin, "name": r.name, "status": r.status,
                              "held_seconds": None if r.held_seconds is None
                              else round(r.held_seconds, 3),
                              "error": r.error, "note": r.note})
        remaining = None
        hold = self.hold if self.state == HoldState.HOLDING else None
        if self.state == HoldState.HOLDING and self.deadline is not None:
            remaining = round(max(0.0, self.deadline - time.monotonic()), 3)
        return {"ok": True, "state": self.state, "run_id": self.run_id,
                "holder_pid": os.getpid(),
                "guardian_pid": self.guardian.process.pid if self.guardian.process else None,
                "config": self.config, "since": iso(self.since), "until": iso(self.until),
                "deadline": iso(self._wall(self.cutoff)),
                "remaining_seconds": remaining, "instances": instances,
                "blocks_writes": hold.blocks_writes() if hold is not None else None,
                "relies_on_freeze": hold.relies_on_freeze() if hold is not None else None,
                "commit_paths": hold.commit_paths() if hold is not None else [],
                "block_pending": bool(hold.block_missed()) if hold is not None else None}

    # ------------------------------------------------------------------ releasing
    def _outcome(self, state: HoldState, message: str | None = None,
                 by: str = "'post'") -> dict[str, Any]:
        """The outcome of a hold that was complete: consistent only when 'post' released it
        and every instance was held from 'pre's answer (within the deadline) until then."""
        assert self.hold is not None
        results = [r.to_dict() for r in self.hold.results()]
        consistent = state == HoldState.RELEASED and bool(results) and all(
            r["status"] == RELEASED for r in results)
        missed = self.hold.block_missed()
        if consistent and missed:
            consistent = False
            message = message or (
                f"the write block of {', '.join(missed)}, deferred to the caller's freeze, was "
                f"never taken before the release by {by}: the snapshot may NOT be "
                "application-consistent")
        if message is None:
            message = (f"every instance was held until released by {by}: the snapshot is "
                       "application-consistent" if consistent else
                       f"not every instance was held until released by {by}: the snapshot "
                       "may NOT be application-consistent")
        return {"ok": True, "state": state, "consistent": consistent, "message": message,
                "run_id": self.run_id, "holder_pid": os.getpid(), "config": self.config,
                "since": iso(self.since), "until": iso(self.until),
                "released_at": iso(time.time()), "instances": results}

    def _release(self, by: str = "'post'") -> dict[str, Any]:
        assert self.hold is not None
        self.liveness_stop.set()
        self.state = HoldState.RELEASING
        with self._answering():
            self.hold.release_all(RELEASED)
        self.guardian.send(op="released")
        self.state = HoldState.RELEASED
        self.final = self._outcome(HoldState.RELEASED, by=by)
        self.final["released_by"] = by
        self.log(f"released by {by}: {self.final['message']}")
        return self.final

    def _note_freeze(self, fields: dict[str, Any], answer: dict[str, Any]) -> None:
        """The runner says its freeze did not hold (``frozen_together`` false): the outcome
        is revised (:meth:`_freeze_failed`), also when the hold was already released: a
        runner that released before its thaw learns only at the thaw that its watchdog had
        thawed first."""
        if fields.get("frozen_together") is not False or self.final is None:
            return
        self._freeze_failed(self.final)
        if answer is not self.final:
            for key in ("consistent", "message", "instances"):
                if key in self.final:
                    answer[key] = self.final[key]

    def _freeze_failed(self, outcome: dict[str, Any]) -> None:
        """The caller says its freeze did not hold: an instance held at a lighter level (no
        commit block, relying on every disk being frozen together) was not consistent."""
        light = [i for i in outcome.get("instances", [])
                 if isinstance(i.get("metadata"), dict)
                 and isinstance(i["metadata"].get("level"), dict)
                 and i["metadata"]["level"].get("chosen") == LEVEL_LIGHT]
        if not light:
            return
        outcome["consistent"] = False
        outcome["message"] = (
            "the caller's freeze did not hold, and " + ", ".join(
                f"{i['plugin']}/{i['name']}" for i in light)
            + " relied on it (lighter level): the snapshot may NOT be application-consistent")
        for inst in light:
            inst["note"] = "held at the lighter level, but the caller's freeze failed"
        self.log(outcome["message"])

    def _auto_release(self, why: str) -> None:
        self._release_as(AUTO_RELEASED, why)

    def _release_as(self, status: str, why: str) -> None:
        """Release everything without 'post' (deadline, signal, pre gave up) and leave the
        outcome for 'post' to collect."""
        assert self.hold is not None and self.settings is not None
        self.log(f"release without 'post' ({status}): {why}")
        self.liveness_stop.set()
        self.state = HoldState.RELEASING
        with self._answering():
            self.hold.release_all(status, note=why)
        self.guardian.send(op="released")
        self._finish_without_post(why, HoldState.ABORTED if status == ABORTED else None)

    def _finish_without_post(self, why: str, state: HoldState | None = None) -> None:
        assert self.settings is not None and self.hold is not None
        if state is None:
            state = HoldState.AUTO_RELEASED if any(
                r.status == AUTO_RELEASED for r in self.hold.results()) else HoldState.LOST
        self.state = state
        self.final = self._outcome(self.state,
                                   f"{why}: the snapshot may NOT be application-consistent")
        self.final["record"] = self._record_path()
        self._leave_result()
        # Nobody else is there to tell: 'post' logs a release it asked for, this one is ours.
        journal_outcome(self.final)  # after the release, never blocking (quiesce.journal)
        self.linger_until = time.monotonic() + max(MIN_LINGER_SECONDS,
                                                   self.settings.max_hold_seconds)

    def _leave_result(self) -> None:
        """result.json for 'post' to collect; the runtime dir is tmpfs, safe to write while a
        filesystem may still be frozen. It takes over from the trace."""
        try:
            proto.write_json_atomic(os.path.join(self.rundir, proto.RESULT_NAME), self.final)
            self.result_file_written = True
        except OSError as exc:
            self.log(f"cannot write the result file: {exc}")

    # ------------------------------------------------------------------ records
    def _record_path(self) -> str | None:
        if self.settings is None:
            return None
        return os.path.join(self.settings.state_dir, "runs", f"{self.run_id}.json")

    def _record_bounded(self, timeout: float) -> str | None:
        """Write the record in a thread that retries for RECORD_RETRY_SECONDS; its path once
        written within ``timeout``, else None (the thread goes on; shutdown waits for it)."""
        outcome = self.record_outcome

        def keep_trying() -> None:
            give_up = time.monotonic() + RECORD_RETRY_SECONDS
            while True:
                path = self._record()
                if path is not None or time.monotonic() >= give_up:
                    outcome.append(path)
                    return
                time.sleep(RECORD_RETRY_PERIOD)

        if self.record_thread is None:  # one writer per hold, however many ask
            self.record_thread = threading.Thread(target=keep_trying, daemon=True,
                                                  name="run-record")
            self.record_thread.start()
        self.record_thread.join(timeout)
        return outcome[0] if outcome else None

    def _record(self) -> str | None:
        """Write the run record to the state dir; only once nothing is held."""
        if self.settings is None:
            return None
        final = self.final or {}
        record = RunRecord(
            run_id=self.run_id, state=final.get("state"),
            consistent=bool(final.get("consistent", False)), message=final.get("message"),
            deadline=iso(self._wall(self.cutoff)), config=self.settings.path,
            holder_pid=os.getpid(), started_at=iso(self.started_at), since=iso(self.since),
            until=iso(self.until), max_hold_seconds=self.settings.max_hold_seconds,
            released_at=final.get("released_at"), instances=final.get("instances", []),
            log=self.log.lines,
            extra={k: final[k] for k in ("released_by",) if k in final})
        try:
            path = write_record(self.settings.state_dir, record)
        except (OSError, QuiesceError) as exc:
            if str(exc) != self.record_error:
                self.log(f"cannot write the run record: {exc}")
            self.record_error = str(exc)
            return None
        self.record_error = None
        return path

    def shutdown(self) -> None:
        """Stop listening, write the record (nothing is held any more), release the lock."""
        self.liveness_stop.set()
        for request in self.pending:
            request.close()
        self.pending = []
        if self.inbox is not None:
            self.inbox.close()
            self.inbox = None
        if self.listener is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(proto.socket_path(self.rundir))
            self.listener.close()
            self.listener = None
        if self.hold is not None and self.hold.held():
            # Only reached on an unexpected error: never leave anything held.
            self.hold.release_all(AUTO_RELEASED, note="the holder hit an internal error")
            self.guardian.send(op="released")
        if self.record_thread is not None:
            self.record_thread.join()  # a record write still blocked (frozen state dir)
        elif self.state in (HoldState.RELEASED, HoldState.AUTO_RELEASED, HoldState.LOST,
                            HoldState.ABORTED) and self.hold:
            self._record()
        self.guardian.send(op="done")
        self.guardian.close()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def journal_outcome(final: dict[str, Any]) -> None:
    """One event for a hold that ended without 'post' (auto-released, lost, aborted). Sent
    only once nothing is held, as a non-blocking datagram: see quiesce.journal."""
    from quiesce import journal

    journal.log_event("holder", str(final.get("state")), str(final.get("message")),
                      priority=journal.WARNING, run_id=final.get("run_id"), consistent=False,
                      holder_pid=final.get("holder_pid"), since=final.get("since"),
                      released_at=final.get("released_at"), record=final.get("record"))


def _write_ready(fd: int, message: dict[str, Any]) -> bool:
    """Send the readiness message to 'pre'; False when 'pre' is gone (killed, timed out)."""
    data = json.dumps(message, default=str).encode() + b"\n"
    delivered = True
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        delivered = False
    with contextlib.suppress(OSError):
        os.close(fd)
    return delivered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quiesce.hold.holder")
    parser.add_argument("--config", required=True)
    parser.add_argument("--runtime-dir", required=True)
    parser.add_argument("--plugins", default=None)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--deadline-at", type=float, default=None,
                        help="CLOCK_MONOTONIC time by which every instance must be held")
    parser.add_argument("--go-fd", type=int, default=None,
                        help="import meanwhile, start only on pre's go here (hold.warmup)")
    args = parser.parse_args(argv)
    # A module imported for the first time while holding (a plugin's lazy import at release)
    # must not write its .pyc: that directory may be on a frozen filesystem, and the write
    # would block the holder uninterruptibly until the thaw. Reading is safe (atime updates
    # are skipped on a frozen filesystem). pre also starts us with -B.
    sys.dont_write_bytecode = True
    ready_fd = args.ready_fd
    os.set_inheritable(ready_fd, False)
    os.chdir("/")
    from quiesce.settings import parse_plugin_list

    plugins, cutoff = parse_plugin_list(args.plugins), args.deadline_at
    if args.go_fd is not None:  # started by 'pre' before its checks: touch nothing until go
        go = warmup.start_when_told(args.go_fd, args.config, plugins)
        if go is None:
            return 0  # 'pre' attempted nothing (or is gone): no hold ever existed
        cutoff = go.deadline_at if go.deadline_at is not None else cutoff
        os.environ.update(go.environ)

    holder: Holder | None = None

    def on_signal(signum: int, _frame: object) -> None:
        if holder is not None:
            holder.stop_signal = signum

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    holder = Holder(args.config, args.runtime_dir, plugins, cutoff=cutoff, ready_fd=ready_fd)
    try:
        try:
            ready = holder.start()
        except QuiesceError as exc:
            ready = {"ok": False, "error": str(exc), "hint": exc.hint,
                     "kind": type(exc).__name__, "instances": [],
                     "problems": [{"where": p.where, "message": p.message, "hint": p.hint}
                                  for p in getattr(exc, "problems", [])]}
        except Exception as exc:
            ready = {"ok": False, "error": f"internal error in the holder: {describe(exc)}",
                     "kind": type(exc).__name__, "instances": []}
            if holder.hold is not None:
                holder.hold.release_all(ABORTED, note="internal error")
        if not ready.get("ok") and holder.final is None and holder.lock_fd >= 0:
            # Nothing was attempted (bad config, ...): this hold never existed.
            clear_trace(holder.rundir)
        delivered = _write_ready(ready_fd, ready)
        holder.ready_fd = -1
        if ready.get("ok"):
            holder._trace()  # now "holding", with since/until
        if not ready.get("ok"):
            if holder.final is not None:
                holder.finish_failure()
            return 1
        if not delivered:
            # 'pre' died before it could report the hold (an orchestrator's timeout killed
            # it): its caller saw a failed pre, so nobody relies on this hold. Keeping the
            # locks until post or max_hold_seconds would only stall the applications.
            holder._release_as(ABORTED, "'pre' exited before the hold was ready, so nobody "
                                        "relies on it")
        holder.serve()
        return 0
    except Exception as exc:
        holder.log(f"internal error: {describe(exc)}")
        return 3
    finally:
        holder.shutdown()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as exc:  # pragma: no cover - last resort, nothing to print to
        sys.exit(errno.EIO if exc.errno is None else 4)
