"""``level = "auto"`` against real throwaway MariaDB and PostgreSQL servers on loop disks.

The data and the log (redo / WAL) of each server sit on two loop-mounted filesystems this test
creates. The caller's freeze set is declared the way ``quiesce run`` declares it (nothing is
frozen here: only the engines' verdict and the locks they take are under test). Blocking is
proven from the server's side: a statement that must wait shows up in the process list in a
lock-wait state; one that must not wait completes while the hold is on.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings
from quiesce.freezing.freeze_set import (
    FREEZE_MOUNTS_ENV,
    RUN_ID_ENV,
    caller_freeze,
    freeze_mounts_value,
)
from quiesce.harness.servers.base import ServerLayout
from quiesce_mysql.fixtures import BackgroundStatement

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def disks() -> Iterator[tuple[Path, Path, Path]]:
    """(base, data mount, log mount): two fresh ext4 loop filesystems, removed at the end.

    Requested before the server factories, so it is torn down after their servers stop."""
    if os.geteuid() != 0:
        pytest.skip("loop disks need root (losetup, mount)")
    from quiesce.harness.disks import LoopDisk

    base = Path(tempfile.mkdtemp(prefix="quiesce-lvl-", dir="/tmp"))
    base.chmod(0o755)
    made: list[Any] = []
    try:
        for name in ("data", "log"):
            disk = LoopDisk.create(base, name, 256, "ext4")
            made.append(disk)
            disk.mount_point.chmod(0o755)
        (base / "run").mkdir(mode=0o755)
        yield base, made[0].mount_point, made[1].mount_point
    finally:
        for disk in reversed(made):
            disk.teardown()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def declared(*mounts: Path) -> dict[str, Any]:
    """The freeze set ``quiesce run`` would declare for ``mounts``, as the holder hands it."""
    env = {FREEZE_MOUNTS_ENV: freeze_mounts_value("run-levels", [str(m) for m in mounts]),
           RUN_ID_ENV: "run-levels"}
    freeze = caller_freeze(env)
    assert freeze.verified, freeze.evidence
    return freeze.to_dict()


def conditions(metadata: dict[str, Any]) -> dict[str, bool]:
    return {c["condition"]: c["ok"] for c in metadata["level"]["conditions"]}


# --------------------------------------------------------------------------- MariaDB

def maria(disks: tuple[Path, Path, Path], factory: Any) -> Any:
    base, data, log = disks
    server = factory(layout=ServerLayout(data_dir=data / "mysql", log_dir=log / "redo",
                                         run_dir=base / "run"))
    server.execute("CREATE DATABASE app")
    server.execute("CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT) "
                   "ENGINE=InnoDB")
    return server


def mysql_quiescer(server: Any, freeze: dict[str, Any] | None, **options: Any) -> Any:
    from quiesce_mysql.engine import MySQLQuiescer

    opts = {"unix_socket": str(server.socket), "user": "root", **options}
    return MySQLQuiescer(InstanceSettings(engine="mysql", name="db", options=opts,
                                          max_hold_seconds=120, caller_freeze=freeze))


@contextlib.contextmanager
def held(q: Any) -> Iterator[Any]:
    try:
        q.prepare(Deadline(60))
        q.quiesce(Deadline(60))
        yield q
    finally:
        q.abort()


def test_mariadb_light_level_blocks_ddl_but_lets_commits_through(disks, mysql_server_factory):
    server = maria(disks, mysql_server_factory)
    q = mysql_quiescer(server, declared(disks[1], disks[2]), level="auto")
    with held(q):
        assert q.level.chosen == "light", q.level.to_dict()
        assert q.plan.kinds == ["backup-stage-ddl"]
        server.execute("INSERT INTO app.t (v) VALUES (1)")  # a commit goes through
        ddl = BackgroundStatement(server, "CREATE TABLE app.u (id INT) ENGINE=InnoDB").start()
        try:
            assert ddl.wait_state(("Waiting for backup lock",))
            metadata = q.release(Deadline(30))
            ddl.join(60)
            assert ddl.error is None
        finally:
            ddl.close()
    level = metadata["level"]
    assert level["setting"] == "auto" and level["chosen"] == "light"
    assert all(conditions(metadata).values()), level["conditions"]
    assert set(conditions(metadata)) >= {"server", "durability", "server on this machine",
                                         "caller freezes", "files recovery needs",
                                         "transactional tables only"}
    files = {p["what"]: p for p in level["files"]["paths"]}
    assert files["data directory"]["mount"] == str(disks[1])
    assert files["InnoDB redo log directory"]["mount"] == str(disks[2])
    assert files["binary log"]["frozen"] is True
    assert metadata["binlog_position_exact"] is False  # commits went on during the hold
    assert metadata["nontransactional_tables"] == 0


def test_mariadb_light_level_falls_back_when_a_myisam_table_exists(disks,
                                                                   mysql_server_factory):
    server = maria(disks, mysql_server_factory)
    server.execute("CREATE TABLE app.m (id INT) ENGINE=MyISAM")
    q = mysql_quiescer(server, declared(disks[1], disks[2]), level="auto")
    with held(q):
        assert q.level.chosen == "full"
        assert q.plan.kinds == ["backup-stage-ddl", "backup-stage-commit"]
        writer = BackgroundStatement(server, "INSERT INTO app.t (v) VALUES (2)").start()
        try:
            writer.wait_state(("Waiting for backup lock", "Waiting for commit lock"))
            assert not writer.finished.is_set()
            metadata = q.release(Deadline(30))
            writer.join(60)
            assert writer.error is None
        finally:
            writer.close()
    assert conditions(metadata)["transactional tables only"] is False
    assert "1 non-transactional table" in metadata["level"]["reason"]
    assert metadata["binlog_position_exact"] is True
    assert server.execute("SELECT COUNT(*) FROM app.t")[0][0] == 1


@pytest.mark.parametrize("case", ["redo off the freeze set", "caller unknown", "level full"])
def test_mariadb_keeps_the_full_level_unless_every_condition_holds(disks, mysql_server_factory,
                                                                   monkeypatch, case):
    server = maria(disks, mysql_server_factory)
    for name in (FREEZE_MOUNTS_ENV, "QUIESCE_AZURE_FS_FREEZE"):
        monkeypatch.delenv(name, raising=False)
    freeze, level, failed = {
        "redo off the freeze set": (declared(disks[1]), "auto", "files recovery needs"),
        "caller unknown": (None, "auto", "caller freezes"),
        "level full": (declared(disks[1], disks[2]), "full", None),
    }[case]
    q = mysql_quiescer(server, freeze, level=level)
    with held(q):
        assert q.level.chosen == "full"
        assert q.plan.kinds == ["backup-stage"]  # START + BLOCK_COMMIT
        writer = BackgroundStatement(server, "INSERT INTO app.t (v) VALUES (3)").start()
        try:
            writer.wait_state(("Waiting for backup lock", "Waiting for commit lock"))
            metadata = q.release(Deadline(30))
            writer.join(60)
        finally:
            writer.close()
    assert metadata["binlog_position_exact"] is True
    if failed is None:
        assert metadata["level"]["reason"] == 'level = "full" (the default)'
    else:
        assert conditions(metadata)[failed] is False
        assert metadata["level"]["reason"].startswith(failed)
    if case == "redo off the freeze set":
        assert "InnoDB redo log directory" in metadata["level"]["reason"]


# --------------------------------------------------------------------------- PostgreSQL

def pg(disks: tuple[Path, Path, Path], factory: Any, **kwargs: Any) -> Any:
    base, data, log = disks
    return factory(ServerLayout(data_dir=data / "pg", log_dir=log / "wal", run_dir=base / "run"),
                   **kwargs)


def pg_quiescer(conninfo: str, freeze: dict[str, Any] | None, **options: Any) -> Any:
    from quiesce.schema import validate
    from quiesce_postgresql.config import SCHEMA
    from quiesce_postgresql.engine import PostgresQuiescer

    result = validate(SCHEMA, {"conninfo": conninfo, **options})
    assert result.ok, result.problems
    return PostgresQuiescer(InstanceSettings("postgresql", "main", result.data,
                                             caller_freeze=freeze))


def checkpoint_lsn(server: Any) -> str:
    return str(server.execute("SELECT checkpoint_lsn::text FROM pg_control_checkpoint()")[0][0])


@pytest.mark.parametrize("over", ["unix socket", "tcp"])
def test_postgresql_light_level_takes_no_backup_mode_and_no_checkpoint(
        disks, postgresql_server_factory, over):
    server = pg(disks, postgresql_server_factory)
    server.execute("CREATE TABLE t (v int)")
    conninfo = server.socket_conninfo if over == "unix socket" else server.conninfo
    q = pg_quiescer(conninfo, declared(disks[1], disks[2]), level="auto")
    before = checkpoint_lsn(server)
    with held(q):
        assert q.level.chosen == "light", q.level.to_dict()
        assert not q.in_backup
        server.execute("INSERT INTO t VALUES (1)")
        metadata = q.release(Deadline(30))
    assert checkpoint_lsn(server) == before  # no checkpoint just before the freeze
    assert metadata["mode"] == "crash-recovery"
    assert "backup_label" not in metadata
    assert metadata["lsn"] and metadata["checkpoint_lsn"] == before
    assert metadata["checkpoint"]["status"] == "skipped"
    assert all(conditions(metadata).values()), metadata["level"]["conditions"]
    files = {p["what"]: p for p in metadata["level"]["files"]["paths"]}
    assert files["data directory"]["mount"] == str(disks[1])
    assert files["pg_wal"]["mount"] == str(disks[2])  # the symlink is followed
    evidence = {c["condition"]: c["evidence"] for c in metadata["level"]["conditions"]}
    assert ("SO_PEERCRED" if over == "unix socket" else "listens on the port") \
        in evidence["server on this machine"]


def test_postgresql_tablespace_off_the_freeze_set_keeps_backup_mode(
        disks, postgresql_server_factory):
    server = pg(disks, postgresql_server_factory)
    space = disks[0] / "space"  # on the machine's own filesystem, not a frozen disk
    space.mkdir(mode=0o700)
    os.chown(space, *_postgres_ids())
    server.execute(f"CREATE TABLESPACE outside LOCATION '{space}'")
    q = pg_quiescer(server.socket_conninfo, declared(disks[1], disks[2]), level="auto")
    with held(q):
        assert q.level.chosen == "full"
        assert q.in_backup
        metadata = q.release(Deadline(30))
    assert metadata["mode"] == "backup" and metadata["backup_label"]
    assert conditions(metadata)["files recovery needs"] is False
    assert "tablespace outside" in metadata["level"]["reason"]


@pytest.mark.parametrize("case", ["mode backup explicit", "archive_mode on"])
def test_postgresql_never_drops_backup_mode_for_pitr(disks, postgresql_server_factory, case):
    settings = {"archive_mode": "on", "archive_command": "/bin/true"} \
        if case == "archive_mode on" else {}
    server = pg(disks, postgresql_server_factory, settings=settings)
    options: dict[str, Any] = {"level": "auto"}
    if case == "mode backup explicit":
        options["mode"] = "backup"
    q = pg_quiescer(server.socket_conninfo, declared(disks[1], disks[2]), **options)
    with held(q):
        assert q.level.chosen == "full"
        assert q.in_backup
        metadata = q.release(Deadline(30))
    failed = "mode" if case == "mode backup explicit" else "archive_mode"
    assert conditions(metadata)[failed] is False
    assert conditions(metadata)["files recovery needs"] is True  # only that one failed
    assert metadata["backup_label"]


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid
