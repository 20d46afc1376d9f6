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
from typing import TYPE_CHECKING, Any

from quiesce.atomic import write_atomic
from quiesce.errors import HolderError

if TYPE_CHECKING:
    from quiesce.hold.protocol import RuntimeDir

TRACE_NAME = "hold.json"
MAX_TRACE = 1024 * 1024


def trace_path(rundir: str) -> str:
    return os.path.join(rundir, TRACE_NAME)


def write_trace(rundir: str, trace: dict[str, Any]) -> None:
    """Atomically (re)write the trace, 0600."""
    data = json.dumps(trace, indent=2, sort_keys=True, default=str).encode() + b"\n"
    write_atomic(trace_path(rundir), data, 0o600)


def read_trace(rundir: str | RuntimeDir) -> dict[str, Any] | None:
    """The trace of a hold, or None when there is none.

    Raises HolderError for a file the holder cannot have written (another owner, readable by
    others, not JSON): that is reported, never taken as "nothing is held".
    """
    from quiesce.hold.protocol import read_holder_json

    trace = read_holder_json(rundir, TRACE_NAME, MAX_TRACE)
    if trace is not None and not isinstance(trace, dict):
        path = trace_path(rundir if isinstance(rundir, str) else rundir.path)
        raise HolderError(f"{path} is not a hold trace", hint=f"remove {path}")
    return trace


def clear_trace(rundir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(trace_path(rundir))
