"""The holder's start-up before 'pre' says go: the slow part that touches nothing.

'pre' starts the holder first thing (``--go-fd``), then checks the configuration, the state
dir and the runtime dir by itself (an active hold, an uncollected outcome) and only then
writes its go message. Meanwhile the holder does what costs time but changes nothing: it
imports its modules, validates quiesce.toml once to import the selected engines' plugins (and
their drivers, which the PostgreSQL schema needs too), and imports the modules each selected
engine names in ``EngineType.extra["preload"]`` (e.g. its Quiescer and driver). It opens no
database connection, creates nothing, and does not touch the runtime dir: the two processes'
start-up costs overlap instead of adding up, and every check 'pre' makes still comes before
the holder does anything. The real start (``Holder.start``) validates the file again, after
go, so the hold uses the file as it is then, exactly as without the warm-up.

The go message is one JSON line: ``{"go": true, "deadline_at": <CLOCK_MONOTONIC seconds or
null>, "environ": {...}}``; ``environ`` carries what 'pre' declared for the hold after the
holder was started (only the keys of :data:`GO_ENVIRON_KEYS`). EOF, anything else, or no
message within :data:`GO_WAIT_SECONDS` means 'pre' attempted nothing (or is gone): the holder
exits without having touched anything.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import select
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: How long a started holder waits for 'pre' to say go. pre's own checks take milliseconds
#: (its slowest, asking an older holder for its status, gives up within seconds).
GO_WAIT_SECONDS = 120.0
#: The EngineType.extra key naming modules the holder imports before go.
PRELOAD_KEY = "preload"
#: The environment variables 'pre' may hand over with go (what it declares for the hold
#: after reading --azure-config: see quiesce.commands.pre.declare_azure_freeze).
GO_ENVIRON_KEYS = frozenset({"QUIESCE_AZURE_FS_FREEZE"})
_MAX_MESSAGE = 65536


@dataclass(frozen=True)
class Go:
    """What 'pre' sends once its checks passed."""

    deadline_at: float | None = None
    environ: Mapping[str, str] = field(default_factory=dict)


def go_message(deadline_at: float | None, environ: Mapping[str, str] | None = None) -> bytes:
    """The go line 'pre' writes (only :data:`GO_ENVIRON_KEYS` of ``environ`` are sent)."""
    env = {k: v for k, v in (environ or {}).items() if k in GO_ENVIRON_KEYS}
    return json.dumps({"go": True, "deadline_at": deadline_at, "environ": env}).encode() + b"\n"


def parse_go(raw: bytes) -> Go | None:
    """The go message, or None when ``raw`` is not one (then nothing may start)."""
    if not raw.endswith(b"\n"):
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("go") is not True:
        return None
    deadline = message.get("deadline_at")
    if deadline is not None and (isinstance(deadline, bool)
                                 or not isinstance(deadline, int | float)
                                 or not math.isfinite(deadline)):
        return None
    environ = message.get("environ") or {}
    if not isinstance(environ, dict) or not all(
            k in GO_ENVIRON_KEYS and isinstance(v, str) for k, v in environ.items()):
        return None
    return Go(None if deadline is None else float(deadline), dict(environ))


def wait_for_go(fd: int, timeout: float = GO_WAIT_SECONDS) -> Go | None:
    """Read the go line from ``fd``; None on EOF, a malformed message or the timeout."""
    give_up = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n") and len(data) < _MAX_MESSAGE:
        remaining = give_up - time.monotonic()
        if remaining <= 0:
            return None
        try:
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, _MAX_MESSAGE)
        except InterruptedError:  # pragma: no cover - PEP 475 retries these
            continue
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return parse_go(data)


def preload(config: str, plugins: Sequence[str] | None) -> list[str]:
    """Import what the hold will need, best effort; the names of the modules imported.

    Validates ``config`` (which imports the selected plugins, and for some engines their
    driver) and imports each selected engine's ``extra["preload"]`` modules. Never raises:
    any problem is left for the real start to find and report.
    """
    try:
        from quiesce.settings import load_settings

        settings = load_settings(config, plugins=plugins)
    except Exception:  # a ConfigError, a broken plugin: reported after go
        return []
    imported: list[str] = []
    for etype in settings.engines.values():
        names = (etype.extra or {}).get(PRELOAD_KEY) or ()
        for name in names if isinstance(names, list | tuple) else ():
            with contextlib.suppress(Exception):
                importlib.import_module(str(name))
                imported.append(str(name))
    return imported


def start_when_told(go_fd: int, config: str, plugins: Sequence[str] | None) -> Go | None:
    """The holder's warm-up: preload, then wait for 'pre' to say go (the go fd is closed,
    and never inherited by the guardian). None: exit at once, nothing was touched."""
    os.set_inheritable(go_fd, False)
    try:
        preload(config, plugins)
        return wait_for_go(go_fd)
    finally:
        with contextlib.suppress(OSError):
            os.close(go_fd)


__all__ = ["GO_ENVIRON_KEYS", "GO_WAIT_SECONDS", "PRELOAD_KEY", "Go", "go_message",
           "parse_go", "preload", "start_when_told", "wait_for_go"]
