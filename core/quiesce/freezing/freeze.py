"""Freezing filesystems for a snapshot: FIFREEZE/FITHAW, all or nothing, under a watchdog.

:class:`FreezeSession` is the one way quiesce freezes. Its order of work keeps the freeze short
and never leaves a filesystem frozen:

1. open a directory descriptor per mount point and check it really lands on the filesystem
   that was discovered (a mount that vanished would otherwise resolve to its parent, e.g. /);
2. ``syncfs`` each of them (``os.sync()`` as a fallback) so FIFREEZE has little left to flush;
3. start the watchdog (:mod:`quiesce.freezing.watchdog`), a separate process in its own session that
   holds copies of those descriptors, wait for its ready byte, and ``syncfs`` once more (what
   was written while the watchdog started);
4. FIFREEZE in the given order (nested first); if one fails, thaw the ones already frozen in
   reverse, stand the watchdog down and raise :class:`FreezeError`.

``thaw()`` issues FITHAW in reverse order, once per filesystem, records EINVAL (already thawed,
usually by the watchdog) as a note, then stands the watchdog down and reads whether it fired.
Between the first FIFREEZE and the last FITHAW the session only calls ``ioctl`` on descriptors
it holds and ``time.monotonic``: no file is opened, written or executed, nothing is imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from quiesce.errors import FreezeError
from quiesce.freezing import watchdog as watchdog_module
from quiesce.freezing.mounts import (
    MOUNTINFO,
    Mount,
    discover_mounts,
    mount_id_of_fd,
    parse_mountinfo,
)
from quiesce.freezing.watchdog import FIFREEZE, FITHAW

__all__ = [
    "FIFREEZE",
    "FITHAW",
    "FreezeSession",
    "Mount",
    "discover_mounts",
    "freeze_path",
    "is_frozen",
    "thaw_path",
]

#: How long the watchdog may take to start (Python start-up on a busy machine).
WATCHDOG_READY_TIMEOUT = 30.0
#: How long standing the watchdog down may take before it is killed.
WATCHDOG_STOP_TIMEOUT = 10.0


def _errno_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{name}: {exc.strerror or os.strerror(exc.errno or 0)}"


def _freeze_hint(exc: OSError, mount_point: str) -> str:
    if exc.errno == errno.EBUSY:
        return (f"{mount_point} is already frozen (an earlier run, another backup agent or a "
                f"manual fsfreeze); if nothing else is snapshotting it, thaw it with "
                f"`fsfreeze -u {mount_point}` and retry")
    if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
        return "this filesystem does not support freezing; leave it out of --freeze-mount"
    if exc.errno == errno.EPERM:
        return "freezing needs root (CAP_SYS_ADMIN)"
    return "check the kernel log (dmesg) for the filesystem's error"


def freeze_path(path: str) -> None:
    """FIFREEZE the filesystem of ``path`` (no watchdog: for tests and tools only)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    finally:
        os.close(fd)


def thaw_path(path: str) -> bool:
    """FITHAW the filesystem of ``path``. True if it was frozen, False if it was not (EINVAL)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    finally:
        os.close(fd)
    return True


def is_frozen(path: str) -> bool:
    """Whether the filesystem of ``path`` is frozen, by trying FIFREEZE (EBUSY = frozen).

    Intrusive: an unfrozen filesystem is frozen and thawed at once. For tests and diagnostics
    on filesystems you own, never in a production path.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return True
            raise
        fcntl.ioctl(fd, FITHAW, 0)
        return False
    finally:
        os.close(fd)


def load_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), or None where it cannot be reached (then os.sync() is used).

    Resolved once, when a freeze is prepared: loading ctypes maps and unmaps shared objects,
    and unmapping right before a FIFREEZE queues kernel work (RCU) that the freeze then
    waits for, which lengthens the freeze window (docs/performance.md)."""
    try:
        import ctypes

        function: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (ImportError, OSError, AttributeError):
        return None
    return function


def _sync_filesystems(fds: Sequence[int], syncfs: Callable[[int], int] | None) -> None:
    """syncfs(2) each filesystem so FIFREEZE has little left to write; os.sync() without it.

    Per-filesystem sync does not wait on unrelated mounts (a hung NFS server stalls os.sync).
    """
    if syncfs is None:
        os.sync()
        return
    for fd in fds:
        if syncfs(fd) != 0:
            os.sync()
            return


def _exit_text(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


def _read_until(fd: int, timeout: float, stop: bytes | None) -> tuple[bytes, bool]:
    """Read ``fd`` until ``stop`` ends the data, EOF, or ``timeout`` (then True)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    end = time.monotonic() + timeout
    data = b""
    while stop is None or not data.endswith(stop):
        remaining = end - time.monotonic()
        if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
            return data, True
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data, False


class _WatchdogProcess:
    """Runner-side handle on the watchdog process (quiesce.freezing.watchdog has the protocol)."""

    def __init__(self, fds: Sequence[int], timeout: float, *,
                 wait_for_arm: bool = False) -> None:
        self.fds = list(fds)
        self.timeout = timeout
        self.wait_for_arm = wait_for_arm
        self.proc: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.report = ""
        self.returncode: int | None = None
        self.scope_reason = ""  # where it runs: its own systemd scope, or why not

    @staticmethod
    def command(timeout: float, fds: Sequence[int], wait_for_arm: bool = False) -> list[str]:
        """argv of the watchdog: the standard library only, isolated, no .pyc written."""
        if not sys.executable:
            raise FreezeError("cannot start the freeze watchdog: sys.executable is unknown",
                              hint="run quiesce with a regular python interpreter")
        args = ["--timeout", repr(float(timeout)),
                *(["--wait-for-arm"] if wait_for_arm else []), *(str(fd) for fd in fds)]
        path = os.path.abspath(watchdog_module.__file__ or "")
        if os.path.isfile(path):
            return [sys.executable, "-I", "-S", "-B", path, *args]
        return [sys.executable, "-B", "-m", "quiesce.freezing.watchdog", *args]  # zipped install

    def start(self) -> None:
        """Start it, in a systemd scope of its own where systemd is PID 1 (quiesce.scope: a
        caller that kills its cgroup must not take the watchdog with it); should systemd-run
        fail, it starts again without one, as it would where systemd is not PID 1."""
        from quiesce.scope import in_own_scope, scope_unit_name

        argv = self.command(self.timeout, self.fds, self.wait_for_arm)
        decision = in_own_scope(argv, scope_unit_name(
            "watchdog", f"{os.getpid()}-{time.monotonic_ns()}"))
        self.scope_reason = decision.reason
        if decision.wrapped:
            try:
                self._start(list(decision.argv), argv)
                return
            except FreezeError as exc:
                self.scope_reason = f"systemd-run failed ({exc}); started in the caller's cgroup"
        self._start(argv, argv)

    def _start(self, argv: list[str], plain: list[str]) -> None:
        # The control channel is a socket so that telling a watchdog that already exited to
        # stand down is EPIPE (MSG_NOSIGNAL), never a SIGPIPE that could kill the runner.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        if "-m" in plain:  # not isolated: it needs the environment that finds quiesce
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=theirs.fileno(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=self.fds, start_new_session=True, close_fds=True, cwd="/",
                env=env, bufsize=0,
            )
        except OSError as exc:
            ours.close()
            raise FreezeError(f"cannot start the freeze watchdog: {exc}",
                              hint="nothing was frozen; check that python can run") from exc
        finally:
            theirs.close()
        self.control = ours
        self._wait_ready()

    def _wait_ready(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        got, timed_out = _read_until(proc.stdout.fileno(), WATCHDOG_READY_TIMEOUT, b"\n")
        if timed_out:
            self.kill()
            raise FreezeError(f"the freeze watchdog did not get ready within "
                              f"{WATCHDOG_READY_TIMEOUT:g} s; nothing was frozen",
                              hint="the machine may be overloaded; retry")
        if got != b"R\n":
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            detail = b""
            with contextlib.suppress(OSError):
                detail = proc.stderr.read() or b""
            self.kill()
            text = detail.decode("utf-8", "replace").strip() or f"it said {got!r}"
            raise FreezeError(
                f"the freeze watchdog failed to start; nothing was frozen: {text}",
                hint=f"run `{' '.join(self.command(self.timeout, [3]))} 3<.` to see why")
        proc.stderr.close()  # it writes nothing more there

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def arm(self) -> None:
        """Start the deadline of a watchdog started with ``wait_for_arm`` (just before the
        first FIFREEZE) and wait for its acknowledgement."""
        proc, control = self.proc, self.control
        assert proc is not None and proc.stdout is not None and control is not None
        try:
            control.send(b"arm\n", socket.MSG_NOSIGNAL)
        except OSError as exc:
            raise FreezeError(f"the freeze watchdog is gone ({exc}); nothing was frozen",
                              hint="retry; check the kernel log if it keeps happening") from exc
        got, timed_out = _read_until(proc.stdout.fileno(), WATCHDOG_READY_TIMEOUT, b"\n")
        if timed_out or got != b"A\n":
            raise FreezeError("the freeze watchdog did not confirm its deadline; nothing was "
                              "frozen", hint="retry; the machine may be overloaded")

    def stand_down(self) -> bool:
        """Tell the watchdog we thawed; return whether it had fired (thawed by itself)."""
        proc = self.proc
        if proc is None:
            return False
        assert proc.stdout is not None
        self._close_control(b"done\n")
        end = time.monotonic() + WATCHDOG_STOP_TIMEOUT
        data, _ = _read_until(proc.stdout.fileno(), WATCHDOG_STOP_TIMEOUT, None)
        self.report = data.decode("ascii", "replace").strip()
        try:
            self.returncode = proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.returncode = 0  # it was alive: killed by us, not died on its own
        proc.stdout.close()
        self.proc = None
        return self.report.startswith("F ")

    def _close_control(self, message: bytes = b"") -> None:
        control, self.control = self.control, None
        if control is None:
            return
        if message:
            with contextlib.suppress(OSError):  # it may have exited already (fired)
                control.send(message, socket.MSG_NOSIGNAL)
        control.close()

    def kill(self) -> None:
        """Stop it without a thaw request (nothing is frozen: start-up or rollback paths)."""
        self._close_control(b"done\n")
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.proc = None


class FreezeSession:
    """Freeze ``mounts`` (given in freeze order, e.g. from :func:`discover_mounts`).

    ``timeout`` is the watchdog's deadline in seconds, counted from its ready byte, just
    before the first FIFREEZE: past it every filesystem is thawed even if this process is
    stuck or killed. Use as a context manager (thaws on exit) or call ``freeze()``/``thaw()``.
    """

    def __init__(self, mounts: Sequence[Mount], timeout: float, *, sync: bool = True) -> None:
        if not timeout > 0 or timeout == float("inf"):
            raise FreezeError(f"freeze timeout must be a positive number of seconds, not "
                              f"{timeout!r}", hint="e.g. --freeze-timeout 60")
        devices = [m.device for m in mounts]
        if len(set(devices)) != len(devices):
            raise FreezeError("the same filesystem is listed twice: " + ", ".join(
                m.mount_point for m in mounts), hint="use discover_mounts() to deduplicate")
        self.mounts: list[Mount] = list(mounts)
        self.timeout = float(timeout)
        self.sync = sync
        self.frozen: list[Mount] = []
        self.window_ms: float | None = None
        self.watchdog_fired = False
        self.watchdog_report = ""
        self.thaw_errors: list[str] = []
        self.notes: list[str] = []
        #: ("freeze"|"thaw", mount point, errno or 0), in the order the ioctls were issued
        self.events: list[tuple[str, str, int]] = []
        self._fds: list[int] = []
        self._syncfs: Callable[[int], int] | None = None
        self._watchdog: _WatchdogProcess | None = None
        self._first_freeze: float | None = None
        self._state = "new"

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog is not None else None

    # -- set-up ---------------------------------------------------------------------------

    def _open_descriptors(self) -> None:
        for mount in self.mounts:
            try:
                fd = os.open(mount.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise FreezeError(f"cannot open mount point {mount.mount_point}: {exc}",
                                  hint="is it still mounted?") from exc
            self._fds.append(fd)
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as fh:
            by_id = {e.mount_id: e for e in parse_mountinfo(fh.read())}
        for mount, fd in zip(self.mounts, self._fds, strict=True):
            entry = by_id.get(mount_id_of_fd(fd))
            if entry is None or entry.device != mount.device:
                found = f"the filesystem {entry.device} mounted at {entry.mount_point}" \
                    if entry else "no current mount"
                raise FreezeError(
                    f"{mount.mount_point} no longer holds filesystem {mount.device} "
                    f"({mount.fstype} on {mount.source}); it now reaches {found}",
                    hint="the mounts changed since discovery; discover them again")

    def _close_descriptors(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    # -- the window -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Open the mount points and start the watchdog now, its deadline not yet running:
        the runner calls this before the pre-script, so the watchdog's ~100 ms of interpreter
        start-up is not spent while the databases are held. :meth:`freeze` then only syncs,
        arms the watchdog and freezes; :meth:`cancel` stops it when no freeze follows."""
        if self._state != "new":
            raise FreezeError(f"this freeze session is already {self._state}",
                              hint="create a new FreezeSession for each freeze")
        if not self.mounts:
            return
        try:
            self._open_descriptors()
            if self.sync:
                self._syncfs = load_syncfs()
            self._watchdog = _WatchdogProcess(self._fds, self.timeout, wait_for_arm=True)
            self._watchdog.start()
        except BaseException:
            self._abandon()
            raise
        self._state = "prepared"

    def reorder(self, mounts: Sequence[Mount]) -> None:
        """Freeze the same filesystems in another order (thawed in its reverse), before the
        freeze: e.g. :func:`~quiesce.freezing.mounts.discover_mounts` with ``late``. The
        watchdog keeps its own descriptors; it thaws whatever is frozen, in any order."""
        if self._state not in ("new", "prepared"):
            raise FreezeError(f"cannot reorder a freeze session that is {self._state}")
        by_device = {m.device: i for i, m in enumerate(self.mounts)}  # each device once
        if sorted(by_device) != sorted(m.device for m in mounts):
            raise FreezeError("a new freeze order must list the same filesystems, each once")
        positions = [by_device[m.device] for m in mounts]
        if self._fds:
            self._fds = [self._fds[i] for i in positions]
        self.mounts = [self.mounts[i] for i in positions]

    def cancel(self) -> None:
        """No freeze after all (the pre-script failed): stop a prepared watchdog."""
        if self._state == "prepared":
            self._abandon()
            self._state = "cancelled"

    def freeze(self, before: Callable[[], None] | None = None) -> None:
        """Sync, then FIFREEZE every mount (all or nothing). ``before`` runs after the sync,
        just before the watchdog is armed and the first FIFREEZE (``quiesce run`` completes the
        databases' hold there); if it raises, nothing is frozen, the watchdog is stopped and
        the exception propagates."""
        if self._state not in ("new", "prepared"):
            raise FreezeError(f"this freeze session is already {self._state}",
                              hint="create a new FreezeSession for each freeze")
        prepared = self._state == "prepared"
        self._state = "starting"
        if not self.mounts:
            self._state = "thawed"
            return
        try:
            if prepared:
                if self.sync:
                    _sync_filesystems(self._fds, self._syncfs)
                if before is not None:
                    before()
                # Armed after 'before' (which may wait seconds for a lock): the deadline counts
                # from just before the first FIFREEZE, however long that took.
                assert self._watchdog is not None
                self._watchdog.arm()
            else:
                self._open_descriptors()
                if self.sync:
                    self._syncfs = load_syncfs()
                    _sync_filesystems(self._fds, self._syncfs)
                # With a 'before' step the deadline waits for it too (armed after it).
                self._watchdog = _WatchdogProcess(self._fds, self.timeout,
                                                  wait_for_arm=before is not None)
                self._watchdog.start()
                if self.sync:
                    # Starting the watchdog takes ~100 ms of interpreter start-up, during which
                    # the database keeps writing: a second, cheap syncfs keeps what FIFREEZE
                    # must flush (and so the window) small.
                    _sync_filesystems(self._fds, self._syncfs)
                if before is not None:
                    before()
                    self._watchdog.arm()
        except BaseException:
            self._abandon()
            raise
        failure: tuple[Mount, OSError] | None = None
        try:
            self._first_freeze = time.monotonic()
            for mount, fd in zip(self.mounts, self._fds, strict=True):
                try:
                    fcntl.ioctl(fd, FIFREEZE, 0)
                except OSError as exc:
                    self.events.append(("freeze", mount.mount_point, exc.errno or 0))
                    failure = (mount, exc)
                    break
                self.frozen.append(mount)
                self.events.append(("freeze", mount.mount_point, 0))
        except BaseException:
            self._state = "frozen"
            self.thaw()
            raise
        self._state = "frozen"
        if failure is not None:
            bad, error = failure
            self.thaw()
            self._state = "failed"
            undone = ", ".join(m.mount_point for m in self.frozen) or "none"
            raise FreezeError(
                f"cannot freeze {bad.mount_point} ({bad.fstype} on {bad.source}): "
                f"{_errno_text(error)}; thawed the ones already frozen ({undone})",
                hint=_freeze_hint(error, bad.mount_point)) from error

    def _abandon(self) -> None:
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog = None
        self._close_descriptors()
        self._state = "failed"

    def thaw(self) -> None:
        """FITHAW in reverse order, each filesystem once; idempotent; never raises for a mount.

        Failures are in ``thaw_errors`` (EINVAL, i.e. not frozen, only in ``notes``).
        """
        if self._state == "prepared":  # never frozen: only the waiting watchdog to stop
            self.cancel()
            return
        if self._state != "frozen":
            return
        count = len(self.frozen)
        for mount, fd in zip(reversed(self.frozen), reversed(self._fds[:count]), strict=True):
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError as exc:
                self.events.append(("thaw", mount.mount_point, exc.errno or 0))
                if exc.errno == errno.EINVAL:
                    self.notes.append(f"{mount.mount_point} was no longer frozen at thaw "
                                      "(thawed by the watchdog or by hand)")
                else:
                    self.thaw_errors.append(f"cannot thaw {mount.mount_point}: "
                                            f"{_errno_text(exc)}")
            else:
                self.events.append(("thaw", mount.mount_point, 0))
        end = time.monotonic()
        if self._first_freeze is not None and count:
            self.window_ms = (end - self._first_freeze) * 1000.0
        self._state = "thawed"
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            self.watchdog_fired = watchdog.stand_down()
            self.watchdog_report = watchdog.report
            if watchdog.returncode and not self.watchdog_fired:
                self.notes.append(
                    f"the watchdog died during the freeze ({_exit_text(watchdog.returncode)}):"
                    " the filesystems had no dead-man switch for part of the window")
            if self.watchdog_fired:
                self.notes.append(
                    f"the watchdog thawed the filesystems by itself after {self.timeout:g} s "
                    f"({watchdog.report}): the snapshot may not be consistent")
        self._close_descriptors()

    def __enter__(self) -> FreezeSession:
        self.freeze()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.thaw()
