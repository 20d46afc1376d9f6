"""LocalMySQL: directories, user, process group, stop/kill, restores on copies at other paths."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quiesce.errors import EngineUnavailable, ServerError
from quiesce.harness.servers.base import ServerLayout

pytestmark = pytest.mark.timeout(240)


def proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_server_layout_user_and_process_group(mysql_server_factory: Callable[..., Any]) -> None:
    server = mysql_server_factory()
    layout = server.layout
    assert server.flavour in ("mariadb", "mysql") and server.version
    # Redo log on the log disk, not in the data directory; runtime files in run_dir only.
    assert (Path(layout.log_dir) / "ib_logfile0").exists() or \
        (Path(layout.log_dir) / "#innodb_redo").is_dir()
    assert not (Path(layout.data_dir) / "ib_logfile0").exists()
    assert server.socket.parent == Path(layout.run_dir) and server.socket.exists()
    assert server.pid_file.exists() and server.log_file.exists()
    rows = server.execute("SELECT @@log_bin, @@innodb_log_group_home_dir, @@port, "
                          "@@bind_address, @@sync_binlog")
    log_bin, home, port, bind, sync = rows[0]
    assert int(log_bin) == 1 and int(sync) == 1
    assert os.path.realpath(home) == os.path.realpath(layout.log_dir)
    assert int(port) == server.port and bind == "127.0.0.1"
    assert server.execute("SHOW BINLOG STATUS" if server.is_mariadb else "SHOW MASTER STATUS")
    pid = server.pid
    assert pid is not None and os.getpgid(pid) == pid  # its own process group
    if os.geteuid() == 0:
        import pwd

        assert proc_uid(pid) == pwd.getpwnam("mysql").pw_uid  # never a root server
    conn = server.connect(tcp=True)
    conn.close()
    assert server.connection.port == server.port
    assert server.connection.unix_socket == str(server.socket)


def test_stop_is_idempotent_and_leaves_no_process(mysql_server_factory: Callable[..., Any]
                                                  ) -> None:
    server = mysql_server_factory()
    pid = server.pid
    assert pid is not None
    from quiesce_mysql.server import live_server

    assert live_server(server.data_dir) == pid
    server.stop()
    server.stop()
    assert not server.running
    assert live_server(server.data_dir) is None  # no server process on that directory
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie


def test_kill_then_open_existing_on_copies_at_other_paths(
        mysql_server_factory: Callable[..., Any],
        mysql_layout_factory: Callable[[], ServerLayout]) -> None:
    server = mysql_server_factory()
    server.execute("CREATE DATABASE d")
    server.execute("CREATE TABLE d.inno (id INT PRIMARY KEY) ENGINE=InnoDB")
    server.execute("CREATE TABLE d.myi (id INT PRIMARY KEY) ENGINE=MyISAM")
    server.execute("INSERT INTO d.inno VALUES (1), (2), (3)")
    server.execute("INSERT INTO d.myi VALUES (1)")
    server.execute("FLUSH LOCAL TABLES")
    server.kill()  # a crash: InnoDB must recover from the redo log on the other "disk"
    target = mysql_layout_factory()
    shutil.copytree(server.layout.data_dir, target.data_dir)
    shutil.copytree(server.layout.log_dir, target.log_dir)
    from quiesce_mysql.server import LocalMySQL

    restored = LocalMySQL.open_existing(target)
    try:
        home = restored.execute("SELECT @@innodb_log_group_home_dir")[0][0]
        assert os.path.realpath(home) == os.path.realpath(target.log_dir)
        assert restored.execute("SELECT COUNT(*) FROM d.inno")[0][0] == 3
        assert restored.execute("SELECT COUNT(*) FROM d.myi")[0][0] == 1
        assert restored.check_tables("d") == []
        assert restored.recovery_seconds is not None
    finally:
        restored.stop()


def test_open_existing_refuses_a_live_servers_directory(
        mysql_server_factory: Callable[..., Any]) -> None:
    from quiesce_mysql.server import LocalMySQL

    server = mysql_server_factory()
    with pytest.raises(ServerError, match="belongs to a running server"):
        LocalMySQL.open_existing(ServerLayout(server.layout.data_dir, server.layout.log_dir,
                                              Path(server.layout.run_dir).parent / "run2"))


def test_open_existing_without_the_redo_log_names_the_directory(
        mysql_server_factory: Callable[..., Any],
        mysql_layout_factory: Callable[[], ServerLayout]) -> None:
    from quiesce_mysql.server import LocalMySQL

    server = mysql_server_factory()
    server.stop()
    target = mysql_layout_factory()
    shutil.copytree(server.layout.data_dir, target.data_dir)
    Path(target.log_dir).mkdir()  # the log disk was not restored
    with pytest.raises(ServerError, match="no InnoDB redo log in") as info:
        LocalMySQL.open_existing(target)
    assert "log_dir" in info.value.hint


def test_open_existing_on_something_else_is_refused(
        mysql_layout_factory: Callable[[], ServerLayout]) -> None:
    from quiesce_mysql.server import LocalMySQL

    target = mysql_layout_factory()
    Path(target.data_dir).mkdir(parents=True)
    with pytest.raises(ServerError, match="not a MySQL/MariaDB data directory"):
        LocalMySQL.open_existing(target)


def test_initialise_refuses_a_non_empty_data_directory(
        mysql_layout_factory: Callable[[], ServerLayout]) -> None:
    from quiesce_mysql.server import LocalMySQL

    target = mysql_layout_factory()
    Path(target.data_dir).mkdir(parents=True)
    (Path(target.data_dir) / "precious.txt").write_text("keep me")
    server = LocalMySQL(target)
    with pytest.raises(ServerError, match="not empty"):
        server.start()
    assert (Path(target.data_dir) / "precious.txt").read_text() == "keep me"
    server.stop()


def test_too_long_socket_path_is_refused_clearly(
        mysql_layout_factory: Callable[[], ServerLayout]) -> None:
    from quiesce_mysql.server import LocalMySQL

    target = mysql_layout_factory()
    long_run = Path(target.data_dir).parent / ("r" * 120)
    server = LocalMySQL(ServerLayout(target.data_dir, target.log_dir, long_run))
    with pytest.raises(ServerError, match="too long for a Unix socket"):
        server.start()


def test_restart_keeps_port_and_data(mysql_server_factory: Callable[..., Any]) -> None:
    server = mysql_server_factory()
    server.execute("CREATE DATABASE r")
    port = server.port
    server.restart()
    assert server.port == port
    assert server.execute("SHOW DATABASES LIKE 'r'") == [("r",)]


def test_missing_binary_is_an_actionable_error(tmp_path: Path) -> None:
    from quiesce_mysql.server import find_server_binary

    with pytest.raises(EngineUnavailable) as info:
        find_server_binary(tmp_path / "mariadbd")
    assert "apt-get install mariadb-server" in info.value.hint


def test_a_server_that_exits_while_starting_is_reported_with_its_log(
        mysql_server_factory: Callable[..., Any], mysql_layout_factory: Callable[[], Any]
        ) -> None:
    from quiesce_mysql.server import LocalMySQL, live_server

    layout = mysql_layout_factory()
    mysql_server_factory(layout=layout).stop()  # an initialised data directory
    server = LocalMySQL(layout, settings={"no-such-option": "1"})
    with pytest.raises(ServerError) as caught:
        server.start()
    text = str(caught.value)
    assert f"the {server.flavour} server exited with status" in text
    assert "no-such-option" in text.split("log tail:", 1)[1]  # the server's own complaint
    assert server.proc is None and not server.running
    assert live_server(server.data_dir) is None
