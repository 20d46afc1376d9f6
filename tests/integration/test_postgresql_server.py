"""LocalPostgres: start/stop leave nothing behind, WAL on its own dir, restores of copies."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from quiesce.errors import EngineUnavailable, ServerError
from quiesce.harness.servers.base import ServerLayout
from quiesce_postgresql.datadir import live_postmaster
from quiesce_postgresql.server import LocalPostgres, find_bindir

pytestmark = pytest.mark.timeout(240)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_wal_lives_in_the_log_dir_and_stop_is_idempotent(postgresql_server_factory) -> None:
    server = postgresql_server_factory()
    assert server.running
    assert os.readlink(server.data_dir / "pg_wal") == str(server.log_dir)
    assert any(p.name.startswith("0000000") for p in server.log_dir.iterdir())
    assert server.execute("SHOW port")[0][0] == str(server.port)
    assert server.execute("SELECT current_setting('unix_socket_directories')")[0][0] == str(
        server.run_dir)
    assert server.version.split(".")[0] == str(server.major)
    if os.geteuid() == 0:
        assert server.execute("SELECT current_user")[0][0] == "postgres"
        assert (server.data_dir.stat().st_uid == server.ids[0])
    pgid = server.proc.pid
    server.stop()
    server.stop()
    assert not server.running
    assert not group_alive(pgid), "server processes survived stop()"
    assert "database system is shut down" in server.log_tail()


def test_kill_then_crash_recovery_on_restart(postgresql_server_factory) -> None:
    server = postgresql_server_factory()
    server.execute("CREATE TABLE t AS SELECT generate_series(1, 500) AS v")
    pgid = server.proc.pid
    server.kill()
    assert not group_alive(pgid)
    server.start()
    assert server.execute("SELECT count(*) FROM t")[0][0] == 500
    assert "database system was interrupted" in server.log_file.read_text()


def test_open_existing_on_copies_at_other_paths(postgresql_server_factory,
                                                postgresql_layout_factory) -> None:
    """A crash-consistent copy of both disks starts elsewhere: pg_wal is repointed."""
    server = postgresql_server_factory()
    server.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS v")
    server.kill()  # copy a crashed server: postmaster.pid is left behind, WAL must replay
    target = postgresql_layout_factory()
    shutil.copytree(server.data_dir, target.data_dir, symlinks=True)
    shutil.copytree(server.log_dir, target.log_dir, symlinks=True)
    assert (Path(target.data_dir) / "postmaster.pid").exists()
    assert os.readlink(Path(target.data_dir) / "pg_wal") == str(server.log_dir)
    restored = LocalPostgres.open_existing(target)
    try:
        assert os.readlink(Path(target.data_dir) / "pg_wal") == str(target.log_dir)
        assert restored.execute("SELECT count(*) FROM t")[0][0] == 1000
        assert restored.recovery_seconds is not None and restored.recovery_seconds > 0
        restored.amcheck()
    finally:
        restored.stop()


def test_open_existing_refuses_a_live_directory(postgresql_server) -> None:
    assert live_postmaster(postgresql_server.data_dir) == postgresql_server.proc.pid
    layout = ServerLayout(postgresql_server.data_dir, postgresql_server.log_dir,
                          Path(tempfile.mkdtemp(prefix="quiesce-pg-run-")))
    try:
        with pytest.raises(ServerError, match="belongs to a running postmaster"):
            LocalPostgres.open_existing(layout)
    finally:
        shutil.rmtree(layout.run_dir)
    assert postgresql_server.execute("SELECT 1") == [(1,)]


def test_missing_binaries_name_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable) as info:
        find_bindir(tmp_path)
    assert str(tmp_path / "initdb") in str(info.value)
    assert "apt-get install postgresql" in info.value.hint


def test_unreachable_directories_are_refused_up_front(require_root) -> None:
    try:
        find_bindir()
    except EngineUnavailable as exc:
        pytest.skip(f"no PostgreSQL server binaries: {exc}")
    root = Path(tempfile.mkdtemp(prefix="quiesce-pg-private-"))  # mode 0700, root-owned
    try:
        layout = ServerLayout(root / "data", root / "wal", root / "run")
        server = LocalPostgres(layout)
        with pytest.raises(ServerError, match="postgres user cannot reach"):
            server.start()
        assert not server.running
    finally:
        shutil.rmtree(root)


def test_a_server_that_exits_while_starting_is_reported_with_its_log(
        postgresql_server_factory, postgresql_layout_factory) -> None:
    layout = postgresql_layout_factory()
    postgresql_server_factory(layout=layout).stop()  # an initialised data directory
    server = LocalPostgres(layout, settings={"shared_buffers": "nonsense"})
    with pytest.raises(ServerError) as caught:
        server.start()
    text = str(caught.value)
    assert "postgres exited with status" in text
    assert "shared_buffers" in text.split("log tail:", 1)[1]  # the server's own complaint
    assert server.proc is None and not server.running
    assert live_postmaster(server.data_dir) is None
