"""One structured log line per phase, to journald when it runs here, else to syslog.

Every command sends what it did (``pre`` held or failed, ``post`` released, the holder
auto-released, the guardian recovered, ...) as one event: a human ``MESSAGE`` and
machine-readable ``QUIESCE_*`` fields (``QUIESCE_COMMAND``, ``QUIESCE_PHASE``,
``QUIESCE_RUN_ID``, ``QUIESCE_CONSISTENT``, ...), ``PRIORITY`` and
``SYSLOG_IDENTIFIER=quiesce``. ``journalctl -t quiesce`` shows them; without journald they go
to syslog (``/var/log/syslog`` on Debian/Ubuntu with rsyslog) with the fields appended as
``key=value``.

Where, in order:

1. journald's native socket, ``/run/systemd/journal/socket`` (``$QUIESCE_JOURNAL_SOCKET``
   overrides it), one datagram per event in the journal's own protocol;
2. the syslog socket, ``/dev/log`` (``$QUIESCE_SYSLOG_SOCKET`` overrides it), one RFC 3164
   datagram (facility daemon);
3. nowhere: logging is never a reason to fail.

Never blocking: the journal's files (or syslog's) may sit on a filesystem that is frozen
between ``pre`` and ``post``. A daemon that writes to a frozen filesystem stops reading its
socket; a blocking send would then stall the caller until the thaw. So every send is a single
non-blocking datagram (``MSG_DONTWAIT`` on a ``SOCK_NONBLOCK`` socket): when the receiver's
queue is full the event is dropped, not waited for. Nothing here opens, writes or syncs a file.
The holder goes further and sends only after its release (its lines stay in memory until then).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
JOURNAL_SOCKET_ENV = "QUIESCE_JOURNAL_SOCKET"
SYSLOG_SOCKET_ENV = "QUIESCE_SYSLOG_SOCKET"
IDENTIFIER = "quiesce"

# syslog(3) priorities
ERR = 3
WARNING = 4
NOTICE = 5
INFO = 6

_FACILITY_DAEMON = 3
_MAX_VALUE = 4096  # characters per field: one event stays one small datagram
_FIELD_RE = re.compile(r"[^A-Z0-9_]")


def _field_name(key: str) -> str:
    """``run_id`` -> ``QUIESCE_RUN_ID``: journald accepts A-Z, 0-9 and '_' only."""
    name = _FIELD_RE.sub("_", key.upper()).lstrip("_")
    return f"QUIESCE_{name}"[:64]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE - 3] + "..."


def event_fields(command: str, phase: str, message: str, priority: int,
                 fields: Mapping[str, Any]) -> dict[str, str]:
    """The journal fields of one event (None values are left out)."""
    out = {"MESSAGE": _text(f"{command} {phase}: {message}"), "PRIORITY": str(priority),
           "SYSLOG_IDENTIFIER": IDENTIFIER, "SYSLOG_PID": str(os.getpid()),
           "QUIESCE_COMMAND": _text(command), "QUIESCE_PHASE": _text(phase)}
    for key, value in fields.items():
        if value is not None:
            out[_field_name(key)] = _text(value)
    return out


def journal_datagram(fields: Mapping[str, str]) -> bytes:
    """journald's native format: ``KEY=value\\n``; a value with a newline is sent as
    ``KEY\\n`` + its length (64-bit little endian) + the value + ``\\n``."""
    parts: list[bytes] = []
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            parts.append(key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key.encode() + b"=" + data + b"\n")
    return b"".join(parts)


def syslog_datagram(fields: Mapping[str, str], now: float | None = None) -> bytes:
    """One RFC 3164 line: ``<PRI>Mmm dd hh:mm:ss quiesce[pid]: MESSAGE key=value ...``."""
    pri = _FACILITY_DAEMON * 8 + int(fields.get("PRIORITY", INFO))
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now))
    extra = " ".join(f"{k[len('QUIESCE_'):].lower()}={_quoted(v)}" for k, v in fields.items()
                     if k.startswith("QUIESCE_") and k not in ("QUIESCE_COMMAND",
                                                                "QUIESCE_PHASE"))
    message = fields.get("MESSAGE", "").replace("\n", " ")
    line = f"<{pri}>{stamp} {IDENTIFIER}[{fields.get('SYSLOG_PID', os.getpid())}]: {message}"
    if extra:
        line += f" [{extra}]"
    return line.encode("utf-8", "replace")


def _quoted(value: str) -> str:
    flat = value.replace("\n", " ")
    if flat and not any(c in flat for c in ' "=[]'):
        return flat
    return '"' + flat.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _send(path: str, data: bytes) -> bool | None:
    """One datagram, never waiting: True sent, False the receiver is there but busy or
    refused this datagram (dropped), None nobody listens at ``path``."""
    try:
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    except OSError:
        return None
    try:
        sock.sendto(data, socket.MSG_DONTWAIT, path)
        return True
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return None
    except OSError as exc:
        # EAGAIN: its queue is full (e.g. journald blocked on a frozen filesystem); EMSGSIZE:
        # too large. The receiver exists: drop this event rather than wait or go elsewhere.
        if exc.errno == errno.EPROTOTYPE:
            return None  # a stream socket at that path: not a datagram receiver
        return False
    finally:
        sock.close()


def targets(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    env = os.environ if environ is None else environ
    return (env.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET,
            env.get(SYSLOG_SOCKET_ENV) or SYSLOG_SOCKET)


def log_event(command: str, phase: str, message: str, *, priority: int = INFO,
              **fields: Any) -> str | None:
    """Send one event; return where it went ("journald", "syslog") or None (dropped, or no
    logger here). Never raises, never blocks."""
    try:
        values = event_fields(command, phase, message, priority, fields)
        journal, syslog = targets()
        sent = _send(journal, journal_datagram(values))
        if sent is not None:
            return "journald" if sent else None
        sent = _send(syslog, syslog_datagram(values))
        if sent is not None:
            return "syslog" if sent else None
    except Exception:  # logging must never change what a command does
        return None
    return None


def priority_for(consistent: bool | None) -> int:
    """NOTICE for a consistent outcome, WARNING for anything else."""
    return NOTICE if consistent else WARNING

