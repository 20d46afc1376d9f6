"""quiesce.journal against a fake journald socket and a fake /dev/log (no systemd here).

Each fake is a real AF_UNIX datagram socket bound in the test's directory; the environment
overrides (QUIESCE_JOURNAL_SOCKET, QUIESCE_SYSLOG_SOCKET) point quiesce at them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quiesce import journal

Make = Callable[[str], socket.socket]


def parse_native(data: bytes) -> dict[str, str]:
    """journald's native protocol, decoded the way journald does."""
    fields: dict[str, str] = {}
    rest = data
    while rest:
        line, sep, after = rest.partition(b"\n")
        assert sep, f"unterminated field: {rest!r}"
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            value = after[8:8 + size]
            assert after[8 + size:9 + size] == b"\n"
            fields[line.decode()] = value.decode()
            rest = after[9 + size:]
    return fields


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Make]:
    made: list[socket.socket] = []

    def make(name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(tmp_path / name))
        sock.settimeout(5)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    jpath, spath = tmp_path / "journal.sock", tmp_path / "log.sock"
    monkeypatch.setenv(journal.JOURNAL_SOCKET_ENV, str(jpath))
    monkeypatch.setenv(journal.SYSLOG_SOCKET_ENV, str(spath))
    return jpath, spath


def test_an_event_reaches_journald_with_its_structured_fields(paths: tuple[Path, Path],
                                                              receiver: Make) -> None:
    jsock = receiver("journal.sock")
    ssock = receiver("log.sock")
    where = journal.log_event("post", "released", "every instance was held until 'post'",
                              priority=journal.NOTICE, run_id="20260101T000000Z-abcdef",
                              consistent=True, hold_seconds=1.5, missing=None,
                              label="START WAL LOCATION: 0/2000028\nCHECKPOINT LOCATION: x\n")
    assert where == "journald"
    fields = parse_native(jsock.recv(65536))
    assert fields["MESSAGE"] == "post released: every instance was held until 'post'"
    assert fields["PRIORITY"] == "5"
    assert fields["SYSLOG_IDENTIFIER"] == "quiesce"
    assert fields["QUIESCE_COMMAND"] == "post" and fields["QUIESCE_PHASE"] == "released"
    assert fields["QUIESCE_RUN_ID"] == "20260101T000000Z-abcdef"
    assert fields["QUIESCE_CONSISTENT"] == "yes" and fields["QUIESCE_HOLD_SECONDS"] == "1.5"
    assert "QUIESCE_MISSING" not in fields
    # a value with newlines travels in the binary form, byte for byte
    assert fields["QUIESCE_LABEL"] == "START WAL LOCATION: 0/2000028\nCHECKPOINT LOCATION: x\n"
    ssock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        ssock.recv(65536)  # journald took it: nothing goes to syslog too


def test_without_journald_the_event_goes_to_syslog(paths: tuple[Path, Path],
                                                   receiver: Make) -> None:
    ssock = receiver("log.sock")
    where = journal.log_event("pre", "failed", "mysql/main: timed out",
                              priority=journal.ERR, run_id="r 1", consistent=False)
    assert where == "syslog"
    line = ssock.recv(65536).decode()
    assert line.startswith(f"<{3 * 8 + 3}>")  # facility daemon, severity err
    assert " quiesce[" in line and "]: pre failed: mysql/main: timed out" in line
    assert '[run_id="r 1" consistent=no]' in line


def test_with_neither_the_event_is_dropped_quietly(paths: tuple[Path, Path]) -> None:
    assert journal.log_event("status", "checked", "nothing is held") is None


def test_a_journald_that_does_not_read_never_blocks_the_sender(
        paths: tuple[Path, Path], receiver: Make) -> None:
    """journald stuck on a frozen filesystem stops reading: its queue fills up. The event is
    dropped (the test's timeout would catch a blocking send), and not sent to syslog either:
    journald is there, just busy."""
    jsock = receiver("journal.sock")
    ssock = receiver("log.sock")
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        sent = 0
        while True:
            try:
                filler.sendto(b"MESSAGE=x\n" * 100, str(paths[0]))
                sent += 1
            except BlockingIOError:
                break
        assert sent > 0
        assert journal.log_event("pre", "held", "holding 1 instance") is None
    finally:
        filler.close()
    ssock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        ssock.recv(65536)
    assert jsock.recv(65536).startswith(b"MESSAGE=x")  # only the filler's datagrams


def test_a_stream_socket_at_the_journal_path_falls_back_to_syslog(
        paths: tuple[Path, Path], receiver: Make) -> None:
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(str(paths[0]))
    stream.listen(1)
    ssock = receiver("log.sock")
    try:
        assert journal.log_event("check", "checked", "ok") == "syslog"
        assert b"check checked: ok" in ssock.recv(65536)
    finally:
        stream.close()


def test_field_names_are_what_journald_accepts() -> None:
    fields = journal.event_fields("run", "snapshot", "m", journal.INFO,
                                  {"hold-seconds": 1, "_private": 2, "a.b": 3})
    assert {"QUIESCE_HOLD_SECONDS", "QUIESCE_PRIVATE", "QUIESCE_A_B"} <= set(fields)
    assert all(k.replace("_", "").isalnum() and k.isupper() for k in fields)


def test_long_values_are_cut_so_an_event_stays_one_datagram() -> None:
    fields = journal.event_fields("post", "released", "x" * 100_000, journal.INFO, {})
    assert len(fields["MESSAGE"]) == 4096 and fields["MESSAGE"].endswith("...")
