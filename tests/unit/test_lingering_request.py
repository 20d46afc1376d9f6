"""A lingering request (protocol.LingeringRequest): the holder answers it without closing the
connection, reads any further request the client sends on it, and closes it once the client
closed its end (requests.Inbox)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from helpers import wait_for
from quiesce.hold import requests
from quiesce.hold.requests import Inbox, Request


def test_linger_is_only_an_explicit_true() -> None:
    a, b = socket.socketpair()
    try:
        assert Request(a, "block", {"linger": True}).linger
        assert not Request(a, "block", {"linger": "yes"}).linger
        assert not Request(a, "block", {}).linger
    finally:
        a.close()
        b.close()


class _Reader:
    """An Inbox reading one connection (the holder's end of a socketpair) in a thread."""

    def __init__(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.logged: list[str] = []
        self.inbox = Inbox(listener, lambda uid: True, self.logged.append)
        self.holder_end, self.client = socket.socketpair()
        self.thread = threading.Thread(target=self.inbox._read, args=(self.holder_end,),
                                       daemon=True)
        self.thread.start()

    def send(self, op: str, **fields: object) -> None:
        self.client.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")

    def next_request(self, timeout: float = 5) -> Request:
        got: list[Request] = wait_for(lambda: self.inbox.wait(0.05), timeout, "a request")
        assert len(got) == 1, got
        return got[0]

    def answer_line(self) -> dict[str, object]:
        self.client.settimeout(5)
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.client.recv(4096)
            assert chunk, "the holder closed the connection"
            data += chunk
        answer = json.loads(data)
        assert isinstance(answer, dict)
        return answer


@pytest.fixture
def reader() -> Iterator[_Reader]:
    made = _Reader()
    try:
        yield made
    finally:
        made.client.close()
        made.thread.join(5)
        made.inbox.close()
        made.inbox.listener.close()


def test_a_lingering_connection_carries_a_second_request(reader: _Reader) -> None:
    reader.send("block", linger=True)
    first = reader.next_request()
    assert first.op == "block" and first.linger
    first.answer({"ok": True, "n": 1})
    assert reader.answer_line()["n"] == 1
    time.sleep(0.1)
    assert reader.thread.is_alive(), "the reader ended before the client closed"
    reader.send("release", linger=True, keep=True)
    second = reader.next_request()
    assert second.op == "release" and second.fields["keep"] is True
    assert second.conn is first.conn
    second.answer({"ok": True, "n": 2})
    assert reader.answer_line()["n"] == 2
    reader.client.close()
    reader.thread.join(5)
    assert not reader.thread.is_alive() and reader.holder_end.fileno() == -1


def test_a_plain_request_is_read_once(reader: _Reader) -> None:
    reader.send("status")
    assert reader.next_request().op == "status"
    reader.thread.join(5)
    assert not reader.thread.is_alive(), "a request without linger kept its reader"


def test_garbage_after_a_lingering_request_closes_the_connection(reader: _Reader) -> None:
    reader.send("block", linger=True)
    reader.next_request()
    reader.client.sendall(b"{not json\n")
    reader.thread.join(5)
    assert not reader.thread.is_alive() and reader.holder_end.fileno() == -1
    assert any("bad request on a lingering connection" in line for line in reader.logged)
    assert reader.inbox.wait(0.05) == []


def test_the_reader_gives_up_after_its_limit(monkeypatch: pytest.MonkeyPatch,
                                             reader: _Reader) -> None:
    monkeypatch.setattr(requests, "LINGER_LIMIT", 0.3)
    reader.send("block", linger=True)
    reader.next_request()
    reader.thread.join(10)
    assert not reader.thread.is_alive() and reader.holder_end.fileno() == -1


def test_two_requests_in_one_write_are_both_read(reader: _Reader) -> None:
    reader.client.sendall(b'{"op": "block", "linger": true}\n'
                          b'\n'  # a blank line between two requests is skipped
                          b'{"op": "status", "linger": true}\n'
                          b'{"op": "release", "linger": true, "keep": true}\n')
    got: list[Request] = []
    give_up = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < give_up:
        got += reader.inbox.wait(0.05)
    assert [r.op for r in got] == ["block", "status", "release"]
    reader.client.close()
    reader.thread.join(5)
    assert not reader.thread.is_alive()
