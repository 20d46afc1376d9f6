"""A lingering request (protocol.LingeringRequest): the holder answers it without closing the
connection, and its reader closes it once the client does (requests.wait_for_close)."""

from __future__ import annotations

import socket
import threading
import time

from quiesce.hold.requests import Request, wait_for_close


def test_linger_is_only_an_explicit_true() -> None:
    a, b = socket.socketpair()
    try:
        assert Request(a, "block", {"linger": True}).linger
        assert not Request(a, "block", {"linger": "yes"}).linger
        assert not Request(a, "block", {}).linger
    finally:
        a.close()
        b.close()


def test_the_reader_closes_once_the_client_closes() -> None:
    holder_end, client_end = socket.socketpair()
    done = threading.Event()

    def reader() -> None:
        wait_for_close(holder_end, 30)
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    Request(holder_end, "block", {"linger": True}).answer({"ok": True})
    assert client_end.recv(4096).startswith(b'{"protocol"')
    time.sleep(0.1)
    assert not done.is_set(), "the holder's end was closed before the client closed its own"
    client_end.close()
    assert done.wait(5)
    assert holder_end.fileno() == -1


def test_the_reader_gives_up_after_its_limit() -> None:
    holder_end, client_end = socket.socketpair()
    try:
        started = time.monotonic()
        wait_for_close(holder_end, 0.2)
        assert 0.15 < time.monotonic() - started < 5
        assert holder_end.fileno() == -1
    finally:
        client_end.close()
