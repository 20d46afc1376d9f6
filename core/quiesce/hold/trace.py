"""The trace a hold leaves in the runtime dir while it lives: ``hold.json``.

The holder writes it (tmpfs, never frozen) before it takes any lock, updates it when the hold
is complete, and removes it only once its outcome has been handed over: to ``post`` directly,
or as ``result.json`` that ``post`` collects. So when nothing answers on ``holder.sock``, no
``result.json`` exists and no process holds ``holder.lock``, but ``hold.json`` is still there,
the holder *and* its guardian died without reporting: ``post`` must call that hold lost, never
"no hold is active" (the words for a ``pre`` that never ran).

It also names the holder's pid, so a client can check that whoever answers on the socket is
the process that wrote it (SO_PEERCRED).

Fields: ``run_id``, ``holder_pid``, ``uid`` (the holder's euid), ``state`` (``quiescing`` or
``holding``), ``started_at``, ``since``/``until`` (wall clock, ISO 8601, once holding),
``deadline`` (the wall-clock time by which ``pre`` had to be held), ``config``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from typing import Any

from quiesce.atomic import write_atomic
from quiesce.errors import HolderError

TRACE_NAME = "hold.json"
MAX_TRACE = 1024 * 1024


def trace_path(rundir: str) -> str:
    return os.path.join(rundir, TRACE_NAME)


def write_trace(rundir: str, trace: dict[str, Any]) -> None:
    """Atomically (re)write the trace, 0600."""
    data = json.dumps(trace, indent=2, sort_keys=True, default=str).encode() + b"\n"
    write_atomic(trace_path(rundir), data, 0o600)


def read_trace(rundir: str) -> dict[str, Any] | None:
    """The trace of a hold, or None when there is none.

    Raises HolderError for a file the holder cannot have written (another owner, readable by
    others, not JSON): that is reported, never taken as "nothing is held".
    """
    path = trace_path(rundir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HolderError(f"cannot read {path}: {exc.strerror}",
                          hint=f"inspect and remove {path}") from exc
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid())
                or st.st_mode & 0o077):
            raise HolderError(f"{path} is not a file the holder wrote (owner uid {st.st_uid}, "
                              f"mode {stat.S_IMODE(st.st_mode):04o})",
                              hint=f"inspect and remove {path}")
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            data = handle.read(MAX_TRACE)
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        trace = json.loads(data)
    except ValueError as exc:
        raise HolderError(f"{path} is not valid JSON: {exc}", hint=f"remove {path}") from exc
    if not isinstance(trace, dict):
        raise HolderError(f"{path} is not a hold trace", hint=f"remove {path}")
    return trace


def clear_trace(rundir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(trace_path(rundir))
