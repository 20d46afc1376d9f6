"""The MySQL/MariaDB Quiescer against real throwaway MariaDB servers.

Blocking is proven from the server's side: a writer started in a thread must show up in the
process list in a lock-wait state (and not finish) while the lock is held, and finish after the
release. No sleep is used as proof; waits are for conditions, with generous timeouts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_for
from helpers.mysql import nothing_locked, setup_schema
from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings
from quiesce.errors import EngineError, LockWaitTimeout, PermissionProblem, SessionLost
from quiesce_mysql.fixtures import LOCK_WAIT_STATES, BackgroundStatement

pytestmark = pytest.mark.timeout(240)

Client = BackgroundStatement


# --------------------------------------------------------------------------- helpers

def make_quiescer(server: Any, name: str = "db", **options: Any) -> Any:
    from quiesce_mysql.engine import MySQLQuiescer

    opts: dict[str, Any] = {"unix_socket": str(server.socket), "user": "root"}
    opts.update(options)
    return MySQLQuiescer(InstanceSettings(engine="mysql", name=name, options=opts,
                                          max_hold_seconds=120))


def assert_blocked_then_released(server: Any, quiescer: Any, sql: str) -> dict[str, Any]:
    """``sql`` waits for the lock while held and completes after release; returns metadata."""
    writer = Client(server, sql).start()
    try:
        state = writer.wait_state(LOCK_WAIT_STATES)
        assert not writer.finished.is_set(), f"{sql!r} finished while the lock was held"
        assert state in LOCK_WAIT_STATES
        metadata = quiescer.release(Deadline(30))
        writer.join(60)
        assert writer.error is None, writer.error
        return metadata
    finally:
        writer.close()


def hold_and_release(server: Any, quiescer: Any, sql: str) -> dict[str, Any]:
    """Prepare and quiesce, then :func:`assert_blocked_then_released`; aborted whatever
    happens."""
    try:
        quiescer.prepare(Deadline(30))
        quiescer.quiesce(Deadline(30))
        return assert_blocked_then_released(server, quiescer, sql)
    finally:
        quiescer.abort()


def reset_shared(server: Any) -> None:
    """A fresh schema and no test account on a server earlier tests used; nothing locked."""
    server.execute("DROP USER IF EXISTS 'quiesce'@'%', 'quiesce'@'localhost'")
    setup_schema(server)
    nothing_locked(server)


@pytest.fixture
def server(mysql_server: Any) -> Any:
    """The session's shared server (starting one per test cost ~2 s each): for tests that
    neither stop nor restart it; each starts from a fresh schema, with nothing locked."""
    reset_shared(mysql_server)
    return mysql_server


@pytest.fixture
def own_server(mysql_server_factory: Callable[..., Any]) -> Any:
    """A server of the test's own, for tests that restart it."""
    srv = mysql_server_factory()
    setup_schema(srv)
    return srv


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chown(path, 0, 0)
    os.chmod(path, mode)
    return path


# --------------------------------------------------------------------------- locking

@pytest.mark.parametrize("table", ["inno", "myi"])
def test_auto_on_mariadb_takes_backup_stage_blocking_innodb_and_myisam(server: Any,
                                                                       table: str) -> None:
    q = make_quiescer(server)
    try:
        q.prepare(Deadline(30))
        q.quiesce(Deadline(30))
        q.check_alive()
        during = server.execute("SHOW BINLOG STATUS")[0]
        metadata = assert_blocked_then_released(server, q,
                                                f"INSERT INTO app.{table} (v) VALUES (7)")
    finally:
        q.abort()
    json.dumps(metadata)  # the holder ships it as JSON
    assert metadata["flavour"] == "mariadb"
    assert metadata["lock"]["taken"] == ["backup-stage"]
    assert metadata["lock"]["statements"] == ["BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT"]
    assert metadata["binlog_position_exact"] is True
    # The coordinates recorded are the ones the server had while commits were blocked.
    assert metadata["binlog"]["statement"] == "SHOW BINLOG STATUS"
    assert metadata["binlog"]["file"] == during[0]
    assert metadata["binlog"]["position"] == int(during[1])
    assert "gtid_binlog_pos" in metadata["gtid"]
    assert metadata["role"] == "primary" and metadata["replica"] is None
    assert server.execute(f"SELECT COUNT(*) FROM app.{table} WHERE v = 7")[0][0] == 1
    after = server.execute("SHOW BINLOG STATUS")[0]
    assert int(after[1]) > metadata["binlog"]["position"]  # the blocked write came after
    nothing_locked(server)


def test_ftwrl_blocks_writes_and_is_proven_by_a_ddl_probe(server: Any) -> None:
    q = make_quiescer(server, lock="ftwrl")
    metadata = hold_and_release(server, q, "INSERT INTO app.myi (v) VALUES (8)")
    assert metadata["lock"]["taken"] == ["ftwrl"]
    assert metadata["lock"]["verified_by"] == ["ftwrl: probe: DDL"]
    assert metadata["release_confirmed_by"] == "probe: DDL"
    nothing_locked(server)


@pytest.mark.parametrize("lock", ["ftwrl", "backup-stage"])
def test_lock_is_proven_from_metadata_lock_info_when_the_plugin_is_loaded(
        mysql_server_factory: Callable[..., Any], lock: str) -> None:
    srv = mysql_server_factory(plugins=["metadata_lock_info"])
    setup_schema(srv)
    q = make_quiescer(srv, lock=lock)
    metadata = hold_and_release(srv, q, "INSERT INTO app.inno (v) VALUES (9)")
    assert metadata["lock"]["verified_by"] == [f"{lock}: METADATA_LOCK_INFO"]
    assert metadata["release_confirmed_by"] == "METADATA_LOCK_INFO"


def test_instance_lock_on_mariadb_is_a_clear_error_and_locks_nothing(server: Any) -> None:
    q = make_quiescer(server, lock="instance")
    try:
        with pytest.raises(EngineError, match="not supported on MariaDB") as info:
            q.prepare(Deadline(30))
        assert "backup-stage" in info.value.hint
    finally:
        q.abort()
    nothing_locked(server)


def test_abort_while_held_releases_the_lock(server: Any) -> None:
    q = make_quiescer(server)
    q.prepare(Deadline(30))
    q.quiesce(Deadline(30))
    writer = Client(server, "INSERT INTO app.myi (v) VALUES (10)").start()
    try:
        writer.wait_state(LOCK_WAIT_STATES)
        q.abort()
        writer.join(60)
        assert writer.error is None
    finally:
        writer.close()
    nothing_locked(server)


def test_holding_session_is_on_the_server_with_wait_timeout_beyond_the_hold(
        server: Any) -> None:
    q = make_quiescer(server)
    try:
        q.prepare(Deadline(30))
        q.quiesce(Deadline(30))
        rows = server.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = %s",
                              (q.thread_id,))
        assert rows, "the holding session is not on the server"
        # An idle hold must not be cut by the server's wait_timeout (max_hold 120 + margin).
        assert int(q._run("SELECT @@session.wait_timeout")[0][0]) >= 120
        assert int(q._run("SELECT CONNECTION_ID()")[0][0]) == q.thread_id
    finally:
        q.abort()


def test_the_holding_session_check_creates_no_temporary_table(server: Any) -> None:
    """The check that the holding session is on the server runs right before the caller's
    FIFREEZE (the deferred commit block is verified there): it must not materialize
    information_schema.PROCESSLIST into an on-disk temporary table, whose files are created
    and unlinked in tmpdir (a tmpdir on a frozen filesystem would even block it)."""
    from quiesce_mysql.verify import LockVerifier

    q = make_quiescer(server)
    probe = server.connect()
    try:
        q.prepare(Deadline(30))
        verifier = LockVerifier(probe, q.info, q.thread_id)

        def disk_tables() -> int:
            with probe.cursor() as cur:
                cur.execute("SHOW SESSION STATUS LIKE 'Created_tmp_disk_tables'")
                return int(cur.fetchone()[1])

        before = disk_tables()
        assert verifier.thread_alive() is True
        assert disk_tables() == before
        gone = LockVerifier(probe, q.info, q.thread_id + 10_000)
        assert gone.thread_alive() is False
    finally:
        q.abort()
        probe.close()


# --------------------------------------------------------------------------- blockers

def start_blocker(server: Any) -> Client:
    """A long write on a MyISAM table: it blocks FTWRL and BACKUP STAGE BLOCK_DDL."""
    blocker = Client(server, "UPDATE app.myi SET v = v + SLEEP(60)").start()
    blocker.wait_state(("User sleep",))
    return blocker


@pytest.mark.parametrize("lock", ["backup-stage", "ftwrl"])
def test_long_running_write_gives_a_bounded_clear_timeout_and_leaves_nothing_locked(
        server: Any, lock: str) -> None:
    blocker = start_blocker(server)
    q = make_quiescer(server, lock=lock, lock_wait_seconds=3)
    try:
        q.prepare(Deadline(30))
        started = time.monotonic()
        with pytest.raises(LockWaitTimeout) as info:
            q.quiesce(Deadline(60))
        elapsed = time.monotonic() - started
        message = str(info.value)
        assert f"id {blocker.id}" in message
        assert "'root'" in message
        assert "UPDATE app.myi SET v = v + SLEEP(60)" in message
        assert "kill_blockers_after" in info.value.hint
        assert elapsed < 30, f"the bounded wait took {elapsed:.1f}s"
        # Not left locked: an InnoDB write goes through at once while the blocker still runs.
        assert not blocker.finished.is_set()
        conn = server.connect(read_timeout=20)
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO app.inno (v) VALUES (11)")
                cur.execute("SET SESSION lock_wait_timeout = 0")
                cur.execute("BACKUP STAGE START")
                cur.execute("BACKUP STAGE END")
        finally:
            conn.close()
    finally:
        q.abort()
        blocker.close()


def test_kill_blockers_after_kills_the_blocking_query_and_the_lock_succeeds(
        server: Any) -> None:
    blocker = start_blocker(server)
    q = make_quiescer(server, lock="ftwrl", lock_wait_seconds=20, kill_blockers_after=1)
    try:
        q.prepare(Deadline(60))
        q.quiesce(Deadline(60))
        blocker.join(30)
        assert blocker.error is not None and blocker.error.args[0] == 1317  # interrupted
        metadata = assert_blocked_then_released(server, q, "INSERT INTO app.myi (v) VALUES (12)")
    finally:
        q.abort()
        blocker.close()
    killed = metadata["lock"]["killed_blockers"]
    assert [k["id"] for k in killed] == [blocker.id]
    assert killed[0]["killed"] is True
    assert metadata["lock"]["attempts"] >= 2


# --------------------------------------------------------------------------- lost sessions

HOLDER_SCRIPT = textwrap.dedent("""
    import sys, time
    from quiesce.deadline import Deadline
    from quiesce.engine import InstanceSettings
    from quiesce_mysql.engine import MySQLQuiescer

    q = MySQLQuiescer(InstanceSettings(engine="mysql", name="db", max_hold_seconds=120,
                                       options={"unix_socket": sys.argv[1], "user": "root"}))
    q.prepare(Deadline(30))
    q.quiesce(Deadline(30))
    print("held", q.thread_id, flush=True)
    sys.stdin.read()  # hold until killed; runs no statement meanwhile
""")


def test_holder_killed_with_sigkill_leaves_no_lock(server: Any) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(server.socket)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    writer = None
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("held"), f"holder did not report a hold: {line!r}"
        thread_id = int(line.split()[1])
        writer = Client(server, "INSERT INTO app.myi (v) VALUES (13)").start()
        writer.wait_state(LOCK_WAIT_STATES)
        # The holding session is idle - no SLEEP() or other statement running on the server -
        # so the server notices the closed socket at once instead of finishing a statement.
        (command, info), = server.execute(
            "SELECT COMMAND, INFO FROM information_schema.PROCESSLIST WHERE ID = %s",
            (thread_id,))
        assert (command, info) == ("Sleep", None)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        # The server sees the socket close at once (the session was idle, not in SLEEP()):
        # the session ends and the blocked writer goes through.
        writer.join(30)
        assert writer.error is None
        wait_for(lambda: not server.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE ID = %s", (thread_id,)),
            30, "the holding session to disappear")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        if writer is not None:
            writer.close()
    nothing_locked(server)


def test_server_restart_during_hold_is_session_lost(own_server: Any) -> None:
    server = own_server
    q = make_quiescer(server)
    try:
        q.prepare(Deadline(30))
        q.quiesce(Deadline(30))
        server.restart()
        with pytest.raises(SessionLost):
            q.check_alive()
        with pytest.raises(SessionLost):
            q.release(Deadline(10))
    finally:
        q.abort()  # must not raise on a dead session
    nothing_locked(server)


def test_holding_session_killed_by_a_dba_is_session_lost(server: Any) -> None:
    q = make_quiescer(server)
    try:
        q.prepare(Deadline(30))
        q.quiesce(Deadline(30))
        server.execute(f"KILL {int(q.thread_id)}")
        with pytest.raises(SessionLost):
            q.check_alive()
    finally:
        q.abort()
    nothing_locked(server)


# --------------------------------------------------------------------------- connecting

def test_wrong_password_is_a_clear_error(server: Any, root_dir: Path) -> None:
    server.create_user("quiesce", "right-password", ["RELOAD, PROCESS ON *.*"])
    secret = write_secret(root_dir / "mysql.pw", "wrong-password\n")
    q = make_quiescer(server, user="quiesce", password_file=str(secret))
    started = time.monotonic()
    with pytest.raises(EngineError, match="access denied") as info:
        q.prepare(Deadline(30))
    assert "password_file" in info.value.hint
    assert time.monotonic() - started < 15
    q.abort()


def test_unreachable_socket_is_a_clear_bounded_error(mysql_layout_factory: Any) -> None:
    from quiesce_mysql.engine import MySQLQuiescer

    missing = Path(mysql_layout_factory().run_dir or "/nonexistent") / "none.sock"
    q = MySQLQuiescer(InstanceSettings(engine="mysql", name="db",
                                       options={"unix_socket": str(missing)}))
    with pytest.raises(EngineError, match=f"no MySQL/MariaDB socket at {missing}") as info:
        q.prepare(Deadline(30))
    assert "localhost" not in str(info.value)  # PyMySQL's own text named its host
    assert "unix_socket" in info.value.hint and "SELECT @@socket" in info.value.hint
    q.abort()


def test_server_that_accepts_but_never_answers_fails_within_connect_timeout() -> None:
    from quiesce_mysql.engine import MySQLQuiescer

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)  # the kernel completes handshakes; nobody ever sends a greeting
    try:
        port = listener.getsockname()[1]
        q = MySQLQuiescer(InstanceSettings(
            engine="mysql", name="db",
            options={"host": "127.0.0.1", "port": port, "connect_timeout": 1.5}))
        started = time.monotonic()
        with pytest.raises(EngineError, match=r"did not answer the handshake within 1\.5s"):
            q.prepare(Deadline(30))
        assert time.monotonic() - started < 10
        q.abort()
    finally:
        listener.close()


def test_password_file_readable_by_others_is_refused_before_connecting(
        server: Any, root_dir: Path) -> None:
    secret = write_secret(root_dir / "mysql.pw", "x\n", mode=0o644)
    q = make_quiescer(server, user="quiesce", password_file=str(secret))
    with pytest.raises(PermissionProblem) as info:
        q.prepare(Deadline(30))
    assert "chmod 600" in str(info.value) or any("chmod 600" in p.hint
                                                  for p in info.value.problems)
    assert q._conn is None
    q.abort()


# --------------------------------------------------------------------------- least privilege

def test_least_privileged_account_holds_backup_stage(server: Any, root_dir: Path) -> None:
    server.create_user("quiesce", "s3cret", ["RELOAD, PROCESS, BINLOG MONITOR, SLAVE MONITOR "
                                             "ON *.*"])
    secret = write_secret(root_dir / "mysql.pw", "s3cret\n")
    q = make_quiescer(server, user="quiesce", password_file=str(secret))
    metadata = hold_and_release(server, q, "INSERT INTO app.myi (v) VALUES (14)")
    assert metadata["lock"]["verified_by"] == ["backup-stage: probe: BACKUP STAGE START"]
    assert metadata["binlog"]["file"]
    nothing_locked(server)


def test_missing_binlog_privilege_fails_in_prepare_with_the_grant(server: Any,
                                                                   root_dir: Path) -> None:
    server.create_user("quiesce", "s3cret", ["RELOAD, PROCESS ON *.*"])
    secret = write_secret(root_dir / "mysql.pw", "s3cret\n")
    q = make_quiescer(server, user="quiesce", password_file=str(secret))
    try:
        with pytest.raises(EngineError, match="not permitted") as info:
            q.prepare(Deadline(30))
        assert "BINLOG MONITOR" in info.value.hint
    finally:
        q.abort()
    nothing_locked(server)


def test_ftwrl_that_cannot_be_proven_is_refused_and_released(server: Any,
                                                             root_dir: Path) -> None:
    # Without the metadata_lock_info plugin and without ALTER privilege nothing can prove an
    # FTWRL held by this account: quiesce must fail rather than claim the lock.
    server.create_user("quiesce", "s3cret", ["RELOAD, PROCESS, BINLOG MONITOR, SLAVE MONITOR "
                                             "ON *.*"])
    secret = write_secret(root_dir / "mysql.pw", "s3cret\n")
    q = make_quiescer(server, user="quiesce", password_file=str(secret), lock="ftwrl")
    try:
        q.prepare(Deadline(30))
        with pytest.raises(EngineError, match="could not be proven held") as info:
            q.quiesce(Deadline(30))
        assert "metadata_lock_info" in info.value.hint
        nothing_locked(server)
    finally:
        q.abort()


# --------------------------------------------------------------------------- replicas

def test_replica_coordinates_are_recorded(mysql_server_factory: Callable[..., Any]) -> None:
    primary = mysql_server_factory()
    replica = mysql_server_factory(settings={"server-id": "2"})
    setup_schema(primary)
    replica.execute("CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = %s, "
                    "MASTER_USER = 'root', MASTER_PASSWORD = '', MASTER_USE_GTID = slave_pos",
                    (primary.port,))
    replica.execute("START SLAVE")
    try:
        wait_for(lambda: replica.execute(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'app'")[0][0]
            == 2, 60, "the replica to catch up")
        q = make_quiescer(replica)
        try:
            q.prepare(Deadline(30))
            q.quiesce(Deadline(30))
            metadata = q.release(Deadline(30))
        finally:
            q.abort()
    finally:
        replica.execute("STOP SLAVE")
    assert metadata["role"] == "replica"
    assert metadata["replica"]["statement"] == "SHOW REPLICA STATUS"
    channel = metadata["replica"]["channels"][0]
    assert channel["Master_Port"] == primary.port
    assert channel["Gtid_IO_Pos"]
    json.dumps(metadata)


def test_probe_session_closed_during_the_hold_is_replaced_for_the_release_check(
        server: Any) -> None:
    q = make_quiescer(server)
    try:
        q.prepare(Deadline(30))
        q.quiesce(Deadline(30))
        probe_id = int(q._probe.thread_id())
        server.execute(f"KILL {probe_id}")  # e.g. the server's wait_timeout for idle sessions
        metadata = assert_blocked_then_released(server, q, "INSERT INTO app.myi (v) VALUES (15)")
    finally:
        q.abort()
    assert metadata["release_confirmed_by"] == "probe: BACKUP STAGE START"
    nothing_locked(server)


def test_backup_stage_held_by_an_idle_session_times_out_with_a_pointer_to_it(
        server: Any) -> None:
    other = server.connect()
    try:
        with other.cursor() as cur:
            cur.execute("BACKUP STAGE START")  # e.g. a mariabackup run; then idle
        q = make_quiescer(server, lock_wait_seconds=2)
        try:
            q.prepare(Deadline(30))
            with pytest.raises(LockWaitTimeout, match="idle session may hold a backup lock"):
                q.quiesce(Deadline(30))
        finally:
            q.abort()
        writer = Client(server, "INSERT INTO app.myi (v) VALUES (16)").start()
        writer.join(30)  # quiesce left nothing behind that blocks writers
        writer.close()
    finally:
        other.close()
    nothing_locked(server)


@pytest.mark.parametrize("lock", ["ftwrl", "backup-stage"])
def test_nothing_quiesce_runs_is_written_to_the_binlog(server: Any, lock: str) -> None:
    """FLUSH LOCAL TABLES (never replicated) and the locks leave the binlog where it was."""
    before = server.execute("SHOW BINLOG STATUS")[0][:2]
    server.execute("FLUSH TABLES")  # control: a plain FLUSH *is* logged
    logged = server.execute("SHOW BINLOG STATUS")[0][:2]
    assert logged != before
    q = make_quiescer(server, lock=lock)
    try:
        q.prepare(Deadline(30))
        q.quiesce(Deadline(30))
        metadata = q.release(Deadline(30))
    finally:
        q.abort()
    assert not any("pre-flush" in note for note in metadata.get("notes", []))  # it ran
    assert server.execute("SHOW BINLOG STATUS")[0][:2] == logged
