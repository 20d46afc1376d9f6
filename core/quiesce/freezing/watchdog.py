"""The freeze watchdog: a separate process that thaws frozen filesystems if the runner cannot.

Started by :class:`quiesce.freezing.freeze.FreezeSession` *before* the first FIFREEZE as

    python -I -S -B /path/to/quiesce/watchdog.py --timeout SECONDS FD [FD ...]

(``python -m quiesce.freezing.watchdog`` works too), in its own session so a ``killpg`` of the
runner's
process group does not take it down. This module imports nothing but the standard library, so
it runs isolated (``-I``: no PYTHON* variables, no script directory on sys.path) and without
site-packages (``-S``: no .pth hooks, faster start). The FDs are directory descriptors of the
mount points, inherited through ``pass_fds``, listed in freeze order. Protocol:

- stdin is the control channel from the runner (a pipe or a socket). ``done\\n`` means the
  runner has thawed: exit without touching anything. ``thaw\\n`` means thaw now. End of file
  without ``done`` means the runner died (even by SIGKILL): thaw at once, not at the deadline.
- stdout is the report pipe to the runner: ``R\\n`` once everything is loaded and armed (the
  deadline starts there). With ``--wait-for-arm`` (``--timeout SECONDS --wait-for-arm FD...``)
  ``R\\n`` only says it is loaded: the runner starts it early, before the pre-script, so its
  start-up is not part of the database's hold, and sends ``arm\\n`` just before the first
  FIFREEZE; the deadline starts then and it answers ``A\\n``. EOF before ``arm`` thaws too
  (FITHAW of a filesystem that is not frozen does nothing);
  ``F <reason> <thawed> <einval> <failed>\\n`` if it thawed, where reason
  is ``deadline``, ``eof``, ``asked`` or ``signal``.
- stderr carries start-up errors only; once ready it is pointed at /dev/null.
- SIGTERM, SIGINT and SIGHUP make it thaw and exit rather than die with mounts frozen.

Once ready it never opens, writes or executes a file, never imports and never logs: every
filesystem may be frozen, and any of those would block it uninterruptibly. It only uses
``poll``, ``read``/``write`` on its pipes, ``ioctl`` on the descriptors it already holds, and
``_exit``. ``-B`` keeps the start-up from writing .pyc files (a frozen root would block it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import select
import signal
import sys
import time

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878

EXIT_OK = 0
EXIT_USAGE = 2

_CONTROL = 0  # stdin
_REPORT = 1  # stdout


def _usage(message: str) -> int:
    sys.stderr.write(f"quiesce.freezing.watchdog: {message}\n"
                     "usage: python -m quiesce.freezing.watchdog --timeout SECONDS FD [FD ...]\n")
    sys.stderr.flush()
    return EXIT_USAGE


def _parse(argv: list[str]) -> tuple[float, bool, list[int]] | str:
    if len(argv) < 3 or argv[0] != "--timeout":
        return "expected --timeout SECONDS followed by at least one descriptor"
    wait_for_arm = argv[2] == "--wait-for-arm"
    if wait_for_arm:
        argv = [argv[0], argv[1], *argv[3:]]
        if len(argv) < 3:
            return "expected at least one descriptor after --wait-for-arm"
    try:
        timeout = float(argv[1])
    except ValueError:
        return f"--timeout must be a number of seconds, not {argv[1]!r}"
    if not (timeout > 0 and math.isfinite(timeout)):
        return f"--timeout must be a positive finite number, not {argv[1]!r}"
    fds = []
    for text in argv[2:]:
        if not text.isdigit():
            return f"descriptor {text!r} is not a number"
        fd = int(text)
        if fd <= 2:
            return f"descriptor {fd} is one of stdin/stdout/stderr"
        try:
            os.fstat(fd)
        except OSError as exc:
            return f"descriptor {fd} is not open ({exc.strerror}); pass it with pass_fds"
        fds.append(fd)
    return timeout, wait_for_arm, fds


def thaw_all(fds: list[int]) -> tuple[int, int, int]:
    """FITHAW every descriptor, last frozen first. Returns (thawed, not frozen, failed)."""
    thawed = not_frozen = failed = 0
    for fd in reversed(fds):
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                not_frozen += 1
            else:
                failed += 1
        else:
            thawed += 1
    return thawed, not_frozen, failed


def _raise_oom_protection() -> None:
    """Ask the kernel's OOM killer to spare us (root only; best effort, /proc is never frozen)."""
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
    except OSError:
        return
    try:
        os.write(fd, b"-1000")
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(data: bytes) -> None:
    with contextlib.suppress(OSError):  # the runner is gone (EPIPE): nobody to tell
        os.write(_REPORT, data)


def watch(timeout: float, fds: list[int], wait_for_arm: bool = False) -> bytes | None:
    """Wait for ``done``, EOF, a signal or the deadline; return why to thaw (None: stand down).
    With ``wait_for_arm`` the deadline starts at ``arm`` (answered ``A``), not at ``R``."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: None)  # the wakeup fd does the work
    poller = select.poll()
    poller.register(_CONTROL, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    buffer = b""
    deadline = math.inf if wait_for_arm else time.monotonic() + timeout
    _write(b"R\n")
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"deadline"
        wait = -1 if remaining == math.inf else int(remaining * 1000) + 1
        for fd, _event in poller.poll(wait):
            if fd == wake_r:
                return b"signal"
            try:
                data = os.read(_CONTROL, 256)
            except OSError:
                return b"eof"
            if not data:
                return b"eof"
            buffer += data
            if b"done\n" in buffer:
                return None
            if b"thaw\n" in buffer:
                return b"asked"
            if deadline == math.inf and b"arm\n" in buffer:
                deadline = time.monotonic() + timeout
                buffer = buffer[buffer.index(b"arm\n") + 4:]
                _write(b"A\n")
                continue
            buffer = buffer[-16:]


def main(argv: list[str] | None = None) -> int:
    parsed = _parse(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, str):
        return _usage(parsed)
    timeout, wait_for_arm, fds = parsed
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a vanished runner is EPIPE, not death
    _raise_oom_protection()
    devnull = os.open("/dev/null", os.O_WRONLY)
    os.dup2(devnull, 2)  # nothing may reach a log or terminal from here on
    reason = watch(timeout, fds, wait_for_arm)
    if reason is None:
        os._exit(EXIT_OK)
    thawed, not_frozen, failed = thaw_all(fds)
    _write(b"F %s %d %d %d\n" % (reason, thawed, not_frozen, failed))
    os._exit(EXIT_OK)


if __name__ == "__main__":
    raise SystemExit(main())
