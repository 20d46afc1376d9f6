"""The client side of the session holder: where it lives and how to talk to it.

``quiesce post`` and ``quiesce status`` import only this module (and the standard library) so
they reach the holder fast: no plugin, no driver, no config parsing before the request is sent.

Layout of the runtime dir (``--runtime-dir``, else ``QUIESCE_RUNTIME_DIR``, else
``/run/quiesce`` as root and ``$XDG_RUNTIME_DIR/quiesce`` as any other user), owned by the user
quiesce runs as, mode 0700, meant to be on tmpfs (never frozen):

- ``holder.sock``: the holder's Unix socket (0600). Protocol: the client sends one JSON object
  on one line (``{"op": "status"}`` or ``{"op": "release"}``), the holder answers with one JSON
  object on one line and closes the connection.
- ``holder.lock``: flock()ed by the holder (and its guardian) for as long as a hold or its
  recovery is in progress; the kernel drops the lock when they die, so it cannot go stale.
- ``result.json``: the outcome of a hold nobody has collected yet (auto-released by the
  deadline, or recovered by the guardian after the holder died); ``post`` reads and removes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
from collections.abc import Mapping
from typing import Any

from quiesce.atomic import write_atomic
from quiesce.errors import HolderError, NoActiveHold

DEFAULT_RUNTIME_DIR = "/run/quiesce"
RUNTIME_DIR_ENV = "QUIESCE_RUNTIME_DIR"
XDG_RUNTIME_DIR_ENV = "XDG_RUNTIME_DIR"
SOCKET_NAME = "holder.sock"
LOCK_NAME = "holder.lock"
RESULT_NAME = "result.json"
MAX_MESSAGE = 16 * 1024 * 1024

# Instance states while a hold is alive, and the final statuses of issue 3.
HELD = "held"
RELEASED = "released"
AUTO_RELEASED = "auto-released"
LOST = "lost"
FAILED = "failed"


def default_runtime_dir(euid: int | None = None,
                        environ: Mapping[str, str] | None = None) -> str:
    """The runtime dir when none is given: /run/quiesce as root; as any other user
    ``$XDG_RUNTIME_DIR/quiesce`` (the per-user tmpfs a login session gets, e.g.
    /run/user/1000), because /run itself is writable only by root.

    Raises HolderError naming the settings to use when a non-root user has no
    XDG_RUNTIME_DIR (e.g. under su or cron, which start no login session).
    """
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        return DEFAULT_RUNTIME_DIR
    env = os.environ if environ is None else environ
    base = env.get(XDG_RUNTIME_DIR_ENV, "")
    if not base:
        raise HolderError(
            f"quiesce runs as uid {uid}, not root, so it cannot use {DEFAULT_RUNTIME_DIR}, and "
            f"{XDG_RUNTIME_DIR_ENV} is not set to give a per-user runtime dir",
            hint=f"pass --runtime-dir DIR or set {RUNTIME_DIR_ENV}=DIR (a directory of yours, "
                 "ideally on tmpfs; the same one for pre, status and post)")
    if not os.path.isabs(base):
        raise HolderError(f"{XDG_RUNTIME_DIR_ENV}={base!r} is not an absolute path",
                          hint=f"fix {XDG_RUNTIME_DIR_ENV}, or pass --runtime-dir DIR or set "
                               f"{RUNTIME_DIR_ENV}=DIR")
    return os.path.join(base, "quiesce")


def runtime_dir(explicit: str | None = None) -> str:
    """The runtime dir: ``--runtime-dir``, else ``$QUIESCE_RUNTIME_DIR``, else
    :func:`default_runtime_dir`."""
    chosen = explicit or os.environ.get(RUNTIME_DIR_ENV) or default_runtime_dir()
    return os.path.abspath(chosen)


def socket_path(rundir: str) -> str:
    return os.path.join(rundir, SOCKET_NAME)


def check_runtime_dir(rundir: str) -> None:
    """Refuse a runtime dir another user could have planted a fake holder in."""
    try:
        st = os.stat(rundir, follow_symlinks=False)
    except FileNotFoundError:
        raise NoActiveHold(
            f"no hold is active: the runtime dir {rundir} does not exist",
            hint="run 'quiesce pre' first, or pass the --runtime-dir that 'pre' used",
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise HolderError(f"runtime dir {rundir} is not a directory",
                          hint=f"remove {rundir} or choose another --runtime-dir")
    uid = os.geteuid()
    if st.st_uid not in (0, uid) or st.st_mode & 0o077:
        whose = "root's" if uid == 0 else f"root's or uid {uid}'s (yours)"
        fix = (f"chown root:root {rundir} && chmod 700 {rundir}" if uid == 0 else
               f"use a runtime dir of your own (--runtime-dir), or chmod 700 {rundir} if it "
               "is yours")
        raise HolderError(
            f"runtime dir {rundir} is owned by uid {st.st_uid} with mode "
            f"{stat.S_IMODE(st.st_mode):04o}; it must be {whose} and not accessible to others",
            hint=fix,
        )


def request(rundir: str, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
    """Send one request to the holder and return its answer.

    Raises NoActiveHold when no holder listens there, HolderError when it answers badly.
    """
    check_runtime_dir(rundir)
    path = socket_path(rundir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoActiveHold(f"no hold is active (nothing listens on {path})",
                               hint="run 'quiesce pre' first, or pass the --runtime-dir "
                                    "that 'pre' used") from exc
        line = json.dumps({"op": op, **fields}).encode() + b"\n"
        sock.sendall(line)
        data = _read_line(sock)
    except TimeoutError as exc:
        raise HolderError(f"the holder at {path} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            raise NoActiveHold(f"the holder at {path} closed the connection (it is exiting)",
                               hint="check 'quiesce status' again in a moment") from exc
        raise HolderError(f"cannot talk to the holder at {path}: {exc}") from exc
    finally:
        sock.close()
    if not data:
        raise NoActiveHold(f"the holder at {path} closed the connection without answering",
                           hint="it was probably exiting; check 'quiesce status'")
    try:
        answer = json.loads(data)
    except ValueError as exc:
        raise HolderError(f"the holder at {path} sent a malformed answer: {exc}") from exc
    if not isinstance(answer, dict):
        raise HolderError(f"the holder at {path} sent a malformed answer")
    return answer


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n") or size > MAX_MESSAGE:
            break
    return b"".join(chunks).strip()


def lock_held(rundir: str) -> bool:
    """True when a holder or its guardian is alive for this runtime dir (the flock is taken)."""
    try:
        fd = os.open(os.path.join(rundir, LOCK_NAME),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_result(rundir: str) -> dict[str, Any] | None:
    """The uncollected result of a hold whose holder is gone, or None."""
    path = os.path.join(rundir, RESULT_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o077:
            raise HolderError(f"{path} is not a file the holder wrote (owner uid {st.st_uid}, "
                              f"mode {stat.S_IMODE(st.st_mode):04o})",
                              hint=f"inspect and remove {path}")
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            data = handle.read(MAX_MESSAGE)
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        result = json.loads(data)
    except ValueError as exc:
        raise HolderError(f"{path} is not valid JSON: {exc}", hint=f"remove {path}") from exc
    return result if isinstance(result, dict) else None


def consume_result(rundir: str) -> None:
    """Mark the uncollected result as reported (a second ``post`` finds nothing)."""
    path = os.path.join(rundir, RESULT_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path + ".reported")


def write_json_atomic(path: str, document: Any, mode: int = 0o600) -> None:
    """Readers see the old or the new file, never half of one."""
    data = json.dumps(document, indent=2, sort_keys=True, default=str).encode() + b"\n"
    write_atomic(path, data, mode)
