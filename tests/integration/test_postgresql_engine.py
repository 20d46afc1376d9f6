"""The PostgreSQL Quiescer against real throwaway servers (PostgreSQL binaries of this machine).

What each test proves is the server's own behaviour, observed from the server: labels it
returned, settings it reports for the holding session, its log saying a backup was aborted.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_for
from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings
from quiesce.errors import EngineError, SessionLost
from quiesce.schema import validate
from quiesce_postgresql import wal
from quiesce_postgresql.config import SCHEMA
from quiesce_postgresql.engine import PostgresQuiescer

pytestmark = pytest.mark.timeout(180)


def quiescer(conninfo: str, name: str = "main", **options: Any) -> PostgresQuiescer:
    result = validate(SCHEMA, {"conninfo": conninfo, **options})
    assert result.ok, result.problems
    return PostgresQuiescer(InstanceSettings("postgresql", name, result.data))


def hold(q: PostgresQuiescer, seconds: float = 60) -> None:
    q.prepare(Deadline(seconds))
    q.quiesce(Deadline(seconds))


def test_backup_mode_returns_the_real_backup_label(postgresql_server) -> None:
    q = quiescer(postgresql_server.conninfo)
    try:
        hold(q)
        assert q.in_backup
        meta = q.release(Deadline(60))
    finally:
        q.close()
    label = meta["backup_label"]
    assert label.startswith(f"START WAL LOCATION: {meta['start_lsn']} (file ")
    assert "BACKUP FROM: primary" in label
    assert "LABEL: quiesce main " in label
    assert meta["label"] in label
    assert wal.parse_lsn(meta["stop_lsn"]) >= wal.parse_lsn(meta["start_lsn"])
    assert meta["timeline"] == 1 == wal.label_timeline(label)
    assert meta["backup_label_sha256"] == wal.sha256_text(label)
    assert meta["tablespace_map"] is None and meta["tablespace_map_sha256"] is None
    assert meta["standby"] is False
    assert meta["server_version_num"] >= 120000
    assert meta["checkpoint"]["status"] == "done"
    assert meta["wal_archived"] is None  # archive_mode is off: nothing to wait for
    # The stop WAL file is the server's own name for it.
    walfile = postgresql_server.execute("SELECT pg_walfile_name(%s::pg_lsn)",
                                        (meta["stop_lsn"],))[0][0]
    assert meta["stop_wal_file"] == walfile


def test_holding_session_survives_role_timeouts(postgresql_server) -> None:
    """statement_timeout/idle_session_timeout set for the role cannot end the hold."""
    role = "quiesce_timeouts"
    postgresql_server.execute(f"DROP ROLE IF EXISTS {role}")
    postgresql_server.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    postgresql_server.execute(f"ALTER ROLE {role} SET statement_timeout = '500ms'")
    postgresql_server.execute(f"ALTER ROLE {role} SET idle_session_timeout = '1s'")
    try:
        q = quiescer(postgresql_server.dsn(user=role))
        try:
            hold(q)
            rows = postgresql_server.execute(
                "SELECT application_name, usename FROM pg_stat_activity WHERE pid = %s",
                (q.info["backend_pid"],))
            assert rows == [("quiesce", role)]
            shown = {name: q._query(f"SHOW {name}")[0][0] for name in
                     ("statement_timeout", "idle_session_timeout",
                      "idle_in_transaction_session_timeout")}
            assert shown == dict.fromkeys(shown, "0")
            # Idle past the role's idle_session_timeout, which would have killed the session.
            time.sleep(2.5)
            q.check_alive()
            meta = q.release(Deadline(60))
            assert "START WAL LOCATION" in meta["backup_label"]
        finally:
            q.close()
    finally:
        postgresql_server.execute(f"DROP ROLE IF EXISTS {role}")


def test_backup_mode_does_not_block_writes(postgresql_server) -> None:
    """The truth for PostgreSQL: backup mode brackets the snapshot, it does not stop writers."""
    postgresql_server.execute("CREATE TABLE IF NOT EXISTS writes_during_hold (v int)")
    q = quiescer(postgresql_server.conninfo)
    try:
        hold(q)
        with postgresql_server.connect() as other:
            other.execute("SET statement_timeout = '10s'")
            other.execute("INSERT INTO writes_during_hold VALUES (1)")
        q.check_alive()
        q.release(Deadline(60))
    finally:
        q.close()


def test_checkpoint_mode_flushes_and_records_the_checkpoint(postgresql_server) -> None:
    q = quiescer(postgresql_server.conninfo, mode="checkpoint")
    try:
        before = postgresql_server.execute(
            "SELECT checkpoint_lsn FROM pg_control_checkpoint()")[0][0]
        postgresql_server.execute("CREATE TABLE IF NOT EXISTS cp_mode (v int)")
        hold(q)
        assert not q.in_backup
        meta = q.release(Deadline(60))
    finally:
        q.close()
    assert meta["mode"] == "checkpoint"
    assert "backup_label" not in meta
    assert meta["checkpoint"]["status"] == "done"
    assert wal.parse_lsn(meta["checkpoint_lsn"]) > wal.parse_lsn(str(before))
    assert meta["timeline"] == 1


def test_least_privileged_role(postgresql_server) -> None:
    """Exactly the documented GRANTs are enough, and missing ones give the GRANT to run."""
    srv = postgresql_server
    srv.execute("DROP ROLE IF EXISTS quiesce_min")
    srv.execute("CREATE ROLE quiesce_min LOGIN")
    try:
        q = quiescer(srv.dsn(user="quiesce_min"))
        with pytest.raises(EngineError, match="may not run pg_backup_start") as info:
            q.prepare(Deadline(30))
        assert ("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), "
                "pg_backup_stop(boolean) TO quiesce_min;") in info.value.hint
        assert q._conn is None  # a failed prepare leaves no session behind

        srv.execute("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), "
                    "pg_backup_stop(boolean) TO quiesce_min")
        # Without pg_checkpoint: backup mode works, the missing CHECKPOINT is noted.
        q = quiescer(srv.dsn(user="quiesce_min"))
        try:
            hold(q)
            meta = q.release(Deadline(30))
        finally:
            q.close()
        assert meta["checkpoint"] == {"status": "not-permitted"}
        assert any("GRANT pg_checkpoint TO quiesce_min" in n for n in meta["notes"])
        assert "START WAL LOCATION" in meta["backup_label"]
        # Checkpoint mode without the right to CHECKPOINT is an error, not a silent no-op.
        q = quiescer(srv.dsn(user="quiesce_min"), mode="checkpoint")
        with pytest.raises(EngineError, match="may not run CHECKPOINT"):
            q.prepare(Deadline(30))

        srv.execute("GRANT pg_checkpoint TO quiesce_min")
        q = quiescer(srv.dsn(user="quiesce_min"))
        try:
            hold(q)
            meta = q.release(Deadline(30))
        finally:
            q.close()
        assert meta["checkpoint"]["status"] == "done"
        assert q.info["superuser"] is False
        # And checkpoint mode, with pg_checkpoint, records the checkpoint (pg_control_checkpoint
        # is executable by every role on 15).
        q = quiescer(srv.dsn(user="quiesce_min"), mode="checkpoint")
        try:
            hold(q)
            meta = q.release(Deadline(30))
        finally:
            q.close()
        assert meta["checkpoint"]["status"] == "done"
        assert meta["checkpoint_lsn"] and meta["timeline"] == 1
    finally:
        srv.execute("DROP OWNED BY quiesce_min")
        srv.execute("DROP ROLE IF EXISTS quiesce_min")


def test_killed_holder_process_leaves_no_backup_running(postgresql_server, tmp_path) -> None:
    """SIGKILL of the process holding backup mode: the server aborts the backup itself."""
    script = textwrap.dedent(f"""
        import sys, time
        from quiesce.deadline import Deadline
        from quiesce.engine import InstanceSettings
        from quiesce.schema import validate
        from quiesce_postgresql.config import SCHEMA
        from quiesce_postgresql.engine import PostgresQuiescer
        opts = validate(SCHEMA, {{"conninfo": {postgresql_server.conninfo!r}}}).data
        q = PostgresQuiescer(InstanceSettings("postgresql", "killed", opts))
        q.prepare(Deadline(60)); q.quiesce(Deadline(60))
        print(q.info["backend_pid"], flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"holder did not report a backend pid: {line!r}"
        backend = int(line)
        assert postgresql_server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,))[0][0] == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: postgresql_server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,))[0][0] == 0,
        what="the holding backend to exit")
    pattern = re.compile(rf"\[{backend}\] .*aborting backup due to backend exiting before "
                         r"pg_backup_stop was called")
    wait_for(lambda: pattern.search(postgresql_server.log_file.read_text()) is not None,
             what="the server to log the aborted backup")
    # And a new hold works as usual.
    q = quiescer(postgresql_server.conninfo)
    try:
        hold(q)
        assert "START WAL LOCATION" in q.release(Deadline(30))["backup_label"]
    finally:
        q.close()


def test_server_restart_during_hold_is_session_lost(postgresql_server_factory) -> None:
    server = postgresql_server_factory()
    q = quiescer(server.conninfo)
    try:
        hold(q)
        q.check_alive()
        server.restart()
        with pytest.raises(SessionLost):
            q.check_alive()
        with pytest.raises(SessionLost, match="no backup_label"):
            q.release(Deadline(30))
    finally:
        q.close()
    # The restarted server takes a new hold (no stale state on either side).
    q = quiescer(server.conninfo)
    try:
        hold(q)
        q.release(Deadline(30))
    finally:
        q.close()


def test_terminated_backend_is_session_lost(postgresql_server) -> None:
    q = quiescer(postgresql_server.conninfo, name="terminated")
    try:
        hold(q)
        postgresql_server.execute("SELECT pg_terminate_backend(%s)", (q.info["backend_pid"],))
        wait_for(lambda: postgresql_server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
            (q.info["backend_pid"],))[0][0] == 0, what="the backend to exit")
        with pytest.raises(SessionLost):
            q.check_alive()
        with pytest.raises(SessionLost):
            q.release(Deadline(30))
    finally:
        q.close()


def test_unreachable_server_fails_within_connect_timeout() -> None:
    """A server that accepts TCP but never answers: bounded by connect_timeout, clear error."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # never accepted, never answered
        port = silent.getsockname()[1]
        q = quiescer(f"host=127.0.0.1 port={port} user=nobody dbname=postgres",
                     connect_timeout=2)
        started = time.monotonic()
        with pytest.raises(EngineError, match="cannot connect") as info:
            q.prepare(Deadline(120))
        elapsed = time.monotonic() - started
    assert "pg_hba.conf" in info.value.hint
    # Generous bound: the point is that it ends near connect_timeout, not after the deadline.
    assert elapsed < 60, elapsed


def test_connection_refused_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = quiescer(f"host=127.0.0.1 port={port} user=postgres dbname=postgres")
    with pytest.raises(EngineError, match="postgresql instance 'main': cannot connect"):
        q.prepare(Deadline(30))


def test_wal_level_minimal_is_refused_in_backup_mode(postgresql_server_factory) -> None:
    server = postgresql_server_factory(settings={"wal_level": "minimal", "max_wal_senders": "0"})
    q = quiescer(server.conninfo)
    with pytest.raises(EngineError, match="wal_level is minimal") as info:
        q.prepare(Deadline(30))
    assert "checkpoint" in info.value.hint
    # Checkpoint mode has no such requirement.
    q = quiescer(server.conninfo, mode="checkpoint")
    try:
        hold(q)
        assert q.release(Deadline(30))["mode"] == "checkpoint"
    finally:
        q.close()


def test_waits_for_the_archiver_when_archiving_is_on(postgresql_server_factory,
                                                     postgresql_layout_factory) -> None:
    archive = Path(postgresql_layout_factory().data_dir).parent / "archive"
    archive.mkdir()
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam("postgres")
        os.chown(archive, entry.pw_uid, entry.pw_gid)
    server = postgresql_server_factory(settings={
        "archive_mode": "on", "archive_command": f"cp %p {archive}/%f"})
    q = quiescer(server.conninfo)
    try:
        hold(q)
        meta = q.release(Deadline(60))
    finally:
        q.close()
    assert meta["wal_archived"] is True
    assert (archive / meta["stop_wal_file"]).is_file()


def test_a_failing_archiver_costs_no_label(postgresql_server_factory) -> None:
    server = postgresql_server_factory(settings={"archive_mode": "on",
                                                 "archive_command": "/bin/false"})
    q = quiescer(server.conninfo, archive_wait_seconds=2)
    try:
        hold(q)
        meta = q.release(Deadline(60))
    finally:
        q.close()
    assert meta["wal_archived"] is False
    assert "START WAL LOCATION" in meta["backup_label"]
    assert any(f"WAL file {meta['stop_wal_file']} was not archived" in n
               for n in meta["notes"])


def test_backup_mode_on_a_standby(postgresql_server_factory, postgresql_layout_factory) -> None:
    primary = postgresql_server_factory()
    primary.execute("CREATE TABLE on_primary AS SELECT generate_series(1, 100) AS v")
    replica = primary.create_replica(postgresql_layout_factory())
    try:
        assert replica.execute("SELECT pg_is_in_recovery()")[0][0] is True
        q = quiescer(replica.conninfo, name="standby")
        try:
            hold(q)
            primary.execute("INSERT INTO on_primary VALUES (101)")
            meta = q.release(Deadline(60))
        finally:
            q.close()
        # Checkpoint mode on a standby: CHECKPOINT there is a restartpoint.
        q = quiescer(replica.conninfo, name="standby-cp", mode="checkpoint")
        try:
            hold(q)
            cp = q.release(Deadline(60))
        finally:
            q.close()
        assert cp["standby"] is True and cp["checkpoint"]["status"] == "done"
        assert cp["timeline"] == 1
    finally:
        replica.stop()
    assert meta["standby"] is True
    assert "BACKUP FROM: standby" in meta["backup_label"]
    assert meta["timeline"] == 1


def test_password_comes_from_the_passfile(postgresql_server_factory, root_dir) -> None:
    """TCP needs a password (scram); only the passfile supplies it, and it must be private."""
    server = postgresql_server_factory(initdb_args=["--auth-host=scram-sha-256"])
    server.execute("CREATE ROLE quiesce_pw LOGIN SUPERUSER PASSWORD 's3cret-pw'")
    conninfo = server.dsn(user="quiesce_pw", tcp=True)
    passfile = root_dir / "pgpass"
    passfile.write_text(f"127.0.0.1:{server.port}:*:quiesce_pw:s3cret-pw\n")
    passfile.chmod(0o600)

    with pytest.raises(EngineError, match="cannot connect") as info:
        quiescer(conninfo).prepare(Deadline(30))
    assert "s3cret" not in str(info.value)

    q = quiescer(conninfo, passfile=str(passfile))
    try:
        hold(q)
        assert "START WAL LOCATION" in q.release(Deadline(30))["backup_label"]
    finally:
        q.close()

    # passfile= inside conninfo works too, after the same trust check as the passfile key.
    q = quiescer(f"{conninfo} passfile={passfile}")
    try:
        hold(q)
        q.release(Deadline(30))
    finally:
        q.close()
    passfile.chmod(0o644)
    from quiesce.errors import PermissionProblem

    with pytest.raises(PermissionProblem, match="pgpass"):
        quiescer(f"{conninfo} passfile={passfile}").prepare(Deadline(30))


def test_a_server_that_stops_answering_cannot_hang_the_holder(postgresql_server_factory,
                                                              require_root) -> None:
    """SIGSTOP the holding backend: check_alive gives up, cuts the session, reports it lost;
    once the backend runs again it sees the closed socket and aborts the backup."""
    server = postgresql_server_factory()
    q = quiescer(server.conninfo, name="stopped")
    q.alive_timeout = 2.0
    try:
        hold(q)
        backend = q.info["backend_pid"]
        os.kill(backend, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(SessionLost, match="did not answer the liveness check within 2s"):
                q.check_alive()
            assert time.monotonic() - started < 60
        finally:
            os.kill(backend, signal.SIGCONT)
        with pytest.raises(SessionLost):
            q.release(Deadline(30))
    finally:
        q.close()
    pattern = re.compile(rf"\[{backend}\] .*aborting backup due to backend exiting before "
                         r"pg_backup_stop was called")
    wait_for(lambda: pattern.search(server.log_file.read_text()) is not None,
             what="the resumed backend to abort the backup")


def test_tablespace_map_recorded_and_restored_elsewhere(postgresql_server_factory,
                                                        postgresql_layout_factory) -> None:
    """A tablespace outside PGDATA: its map is recorded, and restore-label can move it so the
    restored copy never touches the original server's tablespace directory."""
    import shutil

    from quiesce_postgresql.restore import install_label
    from quiesce_postgresql.server import LocalPostgres

    server = postgresql_server_factory()
    workspace = Path(server.data_dir).parent
    original = workspace / "ts"
    original.mkdir(mode=0o700)
    if server.ids is not None:
        os.chown(original, *server.ids)
    server.execute(f"CREATE TABLESPACE fast LOCATION '{original}'")
    server.execute("CREATE TABLE t (v int) TABLESPACE fast")
    server.execute("INSERT INTO t SELECT generate_series(1, 500)")
    oid = server.execute("SELECT oid FROM pg_tablespace WHERE spcname = 'fast'")[0][0]

    target = postgresql_layout_factory()
    moved = Path(target.data_dir).parent / "ts-restored"
    q = quiescer(server.conninfo)
    try:
        hold(q)
        shutil.copytree(server.data_dir, target.data_dir, symlinks=True)
        shutil.copytree(original, moved, symlinks=True)
        server.execute("INSERT INTO t SELECT generate_series(501, 1000)")
        meta = q.release(Deadline(60))
    finally:
        q.close()
    assert meta["tablespace_map"] == f"{oid} {original}\n"
    assert meta["tablespace_map_sha256"] == wal.sha256_text(meta["tablespace_map"])
    shutil.copytree(server.log_dir, target.log_dir, symlinks=True)
    if server.ids is not None:  # a copy made as root: give the tablespace to postgres
        for path in [moved, *moved.rglob("*")]:
            os.lchown(path, *server.ids)
    link = Path(target.data_dir) / "pg_wal"  # runbook: the copy's pg_wal leads to its own WAL
    link.unlink()
    link.symlink_to(target.log_dir)

    result = install_label(target.data_dir, meta, tablespace_mapping={str(original): str(moved)})
    assert result.written == ["backup_label", "tablespace_map"]
    assert (Path(target.data_dir) / "tablespace_map").read_text() == f"{oid} {moved}\n"
    # The original server keeps running on its own tablespace while the copy starts.
    restored = LocalPostgres.open_existing(target)
    try:
        assert os.readlink(Path(target.data_dir) / "pg_tblspc" / str(oid)) == str(moved)
        assert restored.execute("SELECT count(*) FROM t") == [(1000,)]
    finally:
        restored.stop()
    assert server.execute("SELECT count(*) FROM t") == [(1000,)]


def test_a_slow_spread_checkpoint_is_bounded_by_the_deadline(postgresql_server_factory) -> None:
    """fast_checkpoint = false waits for a paced checkpoint: the deadline still holds."""
    server = postgresql_server_factory(settings={"checkpoint_timeout": "600s",
                                                 "checkpoint_completion_target": "0.9"})
    q = quiescer(server.conninfo, fast_checkpoint=False)
    try:
        q.prepare(Deadline(30))
        # Dirty enough buffers after prepare's CHECKPOINT that a paced one takes a while.
        server.execute("CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad "
                       "FROM generate_series(1, 30000) g")
        with pytest.raises(EngineError, match="pg_backup_start did not finish within") as info:
            q.quiesce(Deadline(1.5))
        assert "fast_checkpoint" in info.value.hint
        assert not q.in_backup
        q.check_alive()  # the session itself is fine, only the start was cancelled
    finally:
        q.close()
