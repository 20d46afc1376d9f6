"""The MySQL "cannot reach" messages for a unix socket: said at once, naming the socket (never
PyMySQL's 'localhost'), and saying how to find the real one (issue 14 item 7)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings
from quiesce.errors import EngineError

pytest.importorskip("pymysql", reason="the MySQL engine's driver (pip install quiesce[mysql])")


def prepare(path: Path) -> EngineError:
    from quiesce_mysql.engine import MySQLQuiescer

    q = MySQLQuiescer(InstanceSettings(engine="mysql", name="db",
                                       options={"unix_socket": str(path),
                                                "connect_timeout": 30}))
    try:
        with pytest.raises(EngineError) as info:
            q.prepare(Deadline(60))
    finally:
        q.abort()
    return info.value


def test_a_missing_socket_says_so_and_how_to_find_the_real_one(tmp_path: Path) -> None:
    error = prepare(tmp_path / "mysqld.sock")
    assert str(error).startswith(f"no MySQL/MariaDB socket at {tmp_path / 'mysqld.sock'}: the "
                                 "file does not exist")
    assert "localhost" not in str(error) and "within" not in str(error)
    assert "SELECT @@socket" in error.hint and "mysqladmin variables | grep socket" in error.hint


def test_a_stale_socket_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "mysqld.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening: connect() is refused, like a dead server's
    try:
        error = prepare(path)
    finally:
        stale.close()
    assert str(error).startswith(f"nothing listens on the socket {path}")
    assert "localhost" not in str(error)
    assert "SELECT @@socket" in error.hint


def test_a_file_that_is_not_a_socket_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "mysqld.sock"
    path.write_text("")
    os.chmod(path, 0o600)
    error = prepare(path)
    assert str(error) == f"{path} is not a socket, so no MySQL/MariaDB server listens there"
