"""The holder's inbox: accept connections and read requests without ever blocking the holder.

A client may be slow, or hostile (one byte every second). Reading its request in the thread
that also enforces ``max_hold_seconds`` would let it postpone the dead-man release. So each
accepted connection is read in a thread of its own, with a limit on the *whole* request
(``READ_LIMIT`` seconds, not per ``recv``), and the peer is checked (SO_PEERCRED) before
anything it sent is parsed. Complete requests wait in a queue; the holder's loops wait on
:meth:`Inbox.wait`, which wakes for a new request or after a timeout, and never for longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quiesce.hold.protocol import PROTOCOL_VERSION

READ_LIMIT = 2.0  # seconds for a whole request line, however slowly it trickles in
MAX_REQUEST = 65536
# A lingering request's connection (protocol.LingeringRequest) is closed by the client after
# its freeze; the reader gives up waiting for that after this long.
LINGER_LIMIT = 600.0


@dataclass
class Request:
    conn: socket.socket
    op: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def linger(self) -> bool:
        """The client closes this connection itself, later: the holder must not close it
        (nor end the thread that read it) when it answers (protocol.LingeringRequest)."""
        return self.fields.get("linger") is True

    def answer(self, message: dict[str, Any]) -> None:
        # Every answer says its protocol version (quiesce.hold.protocol.PROTOCOL_VERSION);
        # the request's own version may be missing (an older client): it is answered alike.
        document = {"protocol": PROTOCOL_VERSION, **message}
        with contextlib.suppress(OSError):
            self.conn.sendall(json.dumps(document, default=str).encode() + b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def peer_credentials(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


class LineReader:
    """Request lines from one connection, buffered: one read may bring more than one line (a
    lingering connection may carry several requests, protocol.LingeringRequest)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def line(self, give_up: float) -> bytes | None:
        """The next line without its newline, read by the monotonic time ``give_up``. What the
        peer sent before closing counts as a last line, and so does a line that grew past
        MAX_REQUEST (it fails to parse); None when nothing came in time or nothing is left."""
        while b"\n" not in self.buffer and len(self.buffer) < MAX_REQUEST:
            left = give_up - time.monotonic()
            if left <= 0:
                return None
            self.conn.settimeout(left)
            chunk = self.conn.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


class Inbox:
    """Requests from the holder's socket, read by short-lived threads."""

    def __init__(self, listener: socket.socket, allowed: Callable[[int], bool],
                 log: Callable[[str], None]) -> None:
        self.listener = listener
        self.allowed = allowed
        self.log = log
        self.ready: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wait(self, timeout: float) -> list[Request]:
        """Accept what is pending and return the requests read so far; waits at most
        ``timeout`` seconds for something to happen."""
        try:
            watched: list[Any] = [self.listener, self._wake_r]
            ready, _, _ = select.select(watched, [], [],
                                        max(0.0, timeout))
        except InterruptedError:
            ready = []
        if self.listener in ready:
            self._accept()
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        requests = []
        while True:
            try:
                requests.append(self.ready.get_nowait())
            except queue.Empty:
                return requests

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log(f"accept failed: {exc}")
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True,
                             name="request-reader").start()

    def _read(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            _pid, uid = peer_credentials(conn)
            # Read the line even from a peer about to be refused: closing a socket with unread
            # data resets it, and the peer would see ECONNRESET instead of the refusal.
            reader = LineReader(conn)
            data = reader.line(time.monotonic() + READ_LIMIT)
            if not self.allowed(uid):
                self.log(f"refused a request from uid {uid}")
                Request(conn, "").answer({"ok": False, "error": "permission denied"})
                conn.close()
                return
            if not data:
                self.log(f"a client sent no complete request within {READ_LIMIT:g} s")
                conn.close()
                return
            message = json.loads(data)
        except (OSError, ValueError) as exc:
            self.log(f"bad request: {exc}")
            with contextlib.suppress(OSError):
                conn.close()
            return
        request = self._queue(conn, message)
        if request.linger:
            self._read_more(reader)

    def _queue(self, conn: socket.socket, message: Any) -> Request:
        if not isinstance(message, dict):
            message = {}
        op = message.get("op")
        request = Request(conn, op if isinstance(op, str) else "", message)
        self.ready.put(request)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")
        return request

    def _read_more(self, reader: LineReader) -> None:
        """A lingering connection: its client closes it when done, and may send further
        requests on it meanwhile ('quiesce run' sends 'release' on the connection of its
        'block'). Each is queued like a first one; the connection is closed once the client
        closed its end, after a malformed line, or after LINGER_LIMIT seconds."""
        give_up = time.monotonic() + LINGER_LIMIT
        with contextlib.suppress(OSError):
            while (line := reader.line(give_up)) is not None:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    self.log(f"bad request on a lingering connection: {exc}")
                    break
                self._queue(reader.conn, message)
        with contextlib.suppress(OSError):
            reader.conn.close()

    def close(self) -> None:
        while True:
            try:
                self.ready.get_nowait().close()
            except queue.Empty:
                break
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
