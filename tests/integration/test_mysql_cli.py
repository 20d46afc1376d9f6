"""MySQL/MariaDB end to end through the real CLI: quiesce pre -> (snapshot) -> quiesce post.

The holder process keeps the locking session between the two commands. A write from another
session must be seen by the server waiting for the lock while held, and go through after post.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import wait_for
from helpers.cli import QuiesceCli, cli_workspace
from helpers.mysql import setup_schema, unlocked
from quiesce_mysql.fixtures import LOCK_WAIT_STATES, BackgroundStatement

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("require_root")]


class Cli(QuiesceCli):
    def write_config(self, sections: list[dict[str, Any]], *, max_hold: int = 120,
                     others: dict[str, dict[str, Any]] | None = None) -> None:
        """[[mysql]] ``sections``, plus one section per other engine in ``others``."""
        self.write_sections([("mysql", section) for section in sections]
                            + list((others or {}).items()), max_hold=max_hold)


@pytest.fixture
def cli() -> Iterator[Cli]:
    with cli_workspace(Cli, "quiesce-my-cli-") as workspace:
        yield workspace


@pytest.fixture
def server(mysql_server: Any) -> Any:
    """The session's shared server (one per test cost ~2 s each) with a fresh schema, for
    tests that neither stop nor restart it; nothing may be locked when a test starts."""
    setup_schema(mysql_server)
    assert unlocked(mysql_server), "an earlier test left the shared server locked"
    return mysql_server


@pytest.fixture
def own_server(mysql_server_factory: Callable[..., Any]) -> Any:
    """A server of the test's own, for tests that restart it."""
    srv = mysql_server_factory()
    setup_schema(srv)
    return srv


def section(server: Any, name: str = "main", **options: Any) -> dict[str, Any]:
    return {"name": name, "unix_socket": str(server.socket), "user": "root", **options}


def test_pre_blocks_writes_until_post_which_returns_binlog_coordinates(
        cli: Cli, server: Any) -> None:
    cli.write_config([section(server)])
    out = cli.run("pre", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    writers = [BackgroundStatement(server, "INSERT INTO app.inno (v) VALUES (5)").start(),
               BackgroundStatement(server, "INSERT INTO app.myi (v) VALUES (5)").start()]
    try:
        for writer in writers:
            assert writer.wait_state(LOCK_WAIT_STATES) in LOCK_WAIT_STATES
        held_at = server.execute("SHOW BINLOG STATUS")[0]
        status = cli.status()
        assert isinstance(status.get("holder_pid"), int), status

        result = cli.post_json()
        for writer in writers:
            writer.join(60)
            assert writer.error is None
    finally:
        for writer in writers:
            writer.close()
    assert result["consistent"] is True
    (inst,) = result["instances"]
    assert (inst["plugin"], inst["name"], inst["status"]) == ("mysql", "main", "released")
    meta = inst["metadata"]
    assert meta["flavour"] == "mariadb"
    assert meta["lock"]["taken"] == ["backup-stage"]
    assert meta["binlog"]["file"] == held_at[0]
    assert meta["binlog"]["position"] == int(held_at[1])
    assert meta["gtid"]["gtid_binlog_pos"] is not None
    assert server.execute("SELECT COUNT(*) FROM app.myi WHERE v = 5")[0][0] == 1
    assert unlocked(server)


def test_deadline_auto_releases_and_post_says_so(cli: Cli, server: Any) -> None:
    cli.write_config([section(server)], max_hold=2)
    out = cli.run("pre")
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: unlocked(server), what="the holder to release at max_hold_seconds")
    result = cli.post_json()
    (inst,) = result["instances"]
    assert inst["status"] == "auto-released"
    assert result["consistent"] is False


def test_holder_sigkill_leaves_no_lock(cli: Cli, server: Any) -> None:
    cli.write_config([section(server, lock="ftwrl")])
    out = cli.run("pre")
    assert out.returncode == 0, out.stdout + out.stderr
    writer = BackgroundStatement(server, "INSERT INTO app.myi (v) VALUES (6)").start()
    try:
        writer.wait_state(LOCK_WAIT_STATES)
        holder = cli.status().get("holder_pid")
        assert isinstance(holder, int)
        os.kill(holder, signal.SIGKILL)
        writer.join(30)  # the session died with the holder, and its lock with it
        assert writer.error is None
    finally:
        writer.close()
    assert unlocked(server)
    # The guardian's account: a hold that ended with its holder is lost, never released.
    result = cli.post_json()
    assert [i["status"] for i in result["instances"]] == ["lost"], result
    assert result["consistent"] is False


def test_server_restart_during_hold_is_reported_lost(cli: Cli, own_server: Any) -> None:
    server = own_server
    cli.write_config([section(server)])
    out = cli.run("pre")
    assert out.returncode == 0, out.stdout + out.stderr
    server.restart()
    result = cli.post_json()
    (inst,) = result["instances"]
    assert inst["status"] == "lost", inst
    assert result["consistent"] is False


def test_second_instance_unreachable_releases_the_first_and_fails_pre(
        cli: Cli, server: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli.write_config([section(server, name="good"),
                      {"name": "gone", "host": "127.0.0.1", "port": port, "user": "root",
                       "connect_timeout": 2}])
    out = cli.run("pre")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "gone" in text and "cannot reach" in text
    assert unlocked(server)
    assert not cli.status().get("holder_pid")


def test_an_instance_failing_after_another_is_held_releases_it_and_fails_pre(
        cli: Cli, server: Any, postgresql_server: Any) -> None:
    """All or nothing across engines, with something really taken to unwind.

    (An unreachable instance fails while connecting, before anything is locked, so it cannot
    show this.) PostgreSQL enters backup mode while MariaDB's lock times out behind a long
    statement: 'pre' must end that backup before it exits 1.
    """
    blocker = BackgroundStatement(server, "UPDATE app.myi SET v = v + SLEEP(60)").start()
    try:
        blocker.wait_state(("User sleep",))
        cli.write_config([section(server, lock_wait_seconds=1)],
                         others={"postgresql": {"name": "pg",
                                                "conninfo": postgresql_server.conninfo}})
        out = cli.run("pre", "--json")
        assert out.returncode == 1, out.stdout + out.stderr
        ready = json.loads(out.stdout)
        by_name = {i["name"]: i for i in ready["instances"]}
        assert by_name["main"]["status"] == "failed"
        assert f"id {blocker.id}" in by_name["main"]["error"]
        pg = by_name["pg"]
        # It was held (pg_backup_start had returned), then released again by the unwind.
        assert pg["status"] == "aborted", pg
        assert pg["held_seconds"] is not None
        assert "another instance failed" in pg["note"]
        wait_for(lambda: postgresql_server.backends("quiesce") == [], 60,
                 "the backup session to end (the server aborts its backup)")
        assert not blocker.finished.is_set()
        assert unlocked(server, myisam=False)  # the blocker holds app.myi
        assert not cli.status().get("holder_pid")
    finally:
        blocker.close()


def test_long_running_statement_fails_pre_with_its_name_and_leaves_nothing_locked(
        cli: Cli, server: Any) -> None:
    blocker = BackgroundStatement(server, "UPDATE app.myi SET v = v + SLEEP(60)").start()
    try:
        blocker.wait_state(("User sleep",))
        cli.write_config([section(server, lock_wait_seconds=2)])
        out = cli.run("pre")
        assert out.returncode != 0
        text = out.stdout + out.stderr
        assert f"id {blocker.id}" in text
        assert "UPDATE app.myi SET v = v + SLEEP(60)" in text
        assert not blocker.finished.is_set()
        assert unlocked(server, myisam=False)  # the blocker holds app.myi
    finally:
        blocker.close()


def test_password_file_readable_by_group_is_refused_before_anything_runs(
        cli: Cli, server: Any) -> None:
    secret = cli.secret("mysql.pw", "hunter2\n", mode=0o640)
    cli.write_config([section(server, user="quiesce", password_file=secret)])
    out = cli.run("pre")
    assert out.returncode == 2
    assert "chmod 600" in out.stdout + out.stderr
    assert "hunter2" not in out.stdout + out.stderr
    assert not (cli.rundir / "holder.sock").exists()
