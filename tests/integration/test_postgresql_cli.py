"""PostgreSQL end to end through the real CLI: quiesce pre -> (snapshot) -> quiesce post.

The holder process keeps the backup session between the two commands; these tests check what
the server and the run record say, and that a snapshot copied disk by disk while held restores
with the recorded backup_label.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import wait_for
from helpers.cli import QuiesceCli, cli_workspace

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("require_root")]


class Cli(QuiesceCli):
    def write_config(self, conninfo: str, *, max_hold: int = 120, **options: object) -> None:
        self.write_sections([("postgresql", {"name": "main", "conninfo": conninfo, **options})],
                            max_hold=max_hold)


@pytest.fixture
def cli() -> Iterator[Cli]:
    with cli_workspace(Cli, "quiesce-pg-cli-") as workspace:
        yield workspace


def quiesce_backends(server) -> list[int]:
    return server.backends("quiesce")


def test_pre_post_returns_the_backup_label_and_the_snapshot_restores(
        cli: Cli, postgresql_server_factory, postgresql_layout_factory) -> None:
    """Disks copied one at a time while held restore with the recorded backup_label."""
    server = postgresql_server_factory()
    server.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    server.execute("INSERT INTO ledger SELECT g, 'before pre' FROM generate_series(1, 1000) g")
    cli.write_config(server.conninfo)

    out = cli.run("pre", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    backends = quiesce_backends(server)
    assert len(backends) == 1

    # "Snapshot" the data disk first, then keep writing, as a cloud snapshots disks one by one.
    target = postgresql_layout_factory()
    shutil.copytree(server.data_dir, target.data_dir, symlinks=True)
    server.execute("INSERT INTO ledger SELECT g, 'during hold' FROM generate_series(1001, 2000) g")
    server.execute("CHECKPOINT")  # the data copy is now older than the checkpoint on disk

    result = cli.post_json()
    assert result["consistent"] is True
    (inst,) = result["instances"]
    assert (inst["plugin"], inst["name"], inst["status"]) == ("postgresql", "main", "released")
    meta = inst["metadata"]
    assert meta["backup_label"].startswith("START WAL LOCATION: ")
    assert meta["start_lsn"] and meta["stop_lsn"]
    # Which cluster the label belongs to; restore-label checks it against global/pg_control.
    assert meta["system_identifier"] == str(
        server.execute("SELECT system_identifier FROM pg_control_system()")[0][0])
    wait_for(lambda: quiesce_backends(server) == [], 90, "the holding session to close")

    # The WAL disk is copied after post: it has everything up to stop_lsn.
    shutil.copytree(server.log_dir, target.log_dir, symlinks=True)
    server.stop()
    link = Path(target.data_dir) / "pg_wal"  # runbook: the copy's pg_wal leads to its own WAL
    link.unlink()
    link.symlink_to(target.log_dir)
    out = cli.run("restore-label", "--state-dir", str(cli.state), str(target.data_dir))
    assert out.returncode == 0, out.stderr
    assert "could not check" not in out.stdout  # the identity was recorded and matched
    assert (Path(target.data_dir) / "backup_label").read_text() == meta["backup_label"]

    from quiesce_postgresql.server import LocalPostgres

    restored = LocalPostgres.open_existing(target)
    try:
        assert os.readlink(Path(target.data_dir) / "pg_wal") == str(target.log_dir)
        rows = restored.execute("SELECT count(*) FILTER (WHERE note = 'before pre'), "
                                "count(*) FILTER (WHERE note = 'during hold') FROM ledger")
        assert rows == [(1000, 1000)]
        assert restored.recovery_seconds is not None
        log = restored.log_file.read_text()
        # The server used the label: it recovered from the backup's checkpoint to its end.
        assert f"starting backup recovery with redo LSN {meta['start_lsn']}" in log
        assert "completed backup recovery" in log
    finally:
        restored.stop()


def test_deadline_auto_releases_and_post_says_so(cli: Cli, postgresql_server) -> None:
    cli.write_config(postgresql_server.conninfo, max_hold=2)
    out = cli.run("pre")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: quiesce_backends(postgresql_server) == [], 90,
             "the holder to release at max_hold_seconds")
    result = cli.post_json()
    (inst,) = result["instances"]
    assert inst["status"] == "auto-released"
    assert result["consistent"] is False
    assert "NOT" in result["message"]


def test_holder_sigkill_leaves_no_backup_running(cli: Cli, postgresql_server) -> None:
    cli.write_config(postgresql_server.conninfo)
    out = cli.run("pre")
    assert out.returncode == 0, out.stderr
    (backend,) = quiesce_backends(postgresql_server)
    holder = cli.status().get("holder_pid")
    assert isinstance(holder, int), cli.status()
    os.kill(holder, signal.SIGKILL)
    wait_for(lambda: quiesce_backends(postgresql_server) == [], 90,
             "the server to end the dead holder's session")
    pattern = re.compile(rf"\[{backend}\] .*aborting backup due to backend exiting before "
                         r"pg_backup_stop was called")
    wait_for(lambda: pattern.search(postgresql_server.log_file.read_text()) is not None, 90,
             "the server to log the aborted backup")
    # The guardian's account: a hold that ended with its holder is lost, never released.
    result = cli.post_json()
    assert [i["status"] for i in result["instances"]] == ["lost"], result
    assert result["consistent"] is False


def test_server_restart_during_hold_is_reported_lost(cli: Cli,
                                                     postgresql_server_factory) -> None:
    server = postgresql_server_factory()
    cli.write_config(server.conninfo)
    out = cli.run("pre")
    assert out.returncode == 0, out.stderr
    server.restart()
    result = cli.post_json()
    (inst,) = result["instances"]
    assert inst["status"] == "lost", inst
    assert result["consistent"] is False


def test_unreachable_instance_fails_pre_clearly(cli: Cli) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli.write_config(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                     connect_timeout=2)
    out = cli.run("pre")
    assert out.returncode != 0
    assert "cannot connect" in out.stdout + out.stderr


def test_password_in_conninfo_is_refused_before_anything_runs(cli: Cli) -> None:
    cli.write_config("host=127.0.0.1 user=postgres password=hunter2")
    out = cli.run("pre")
    assert out.returncode == 2
    assert "contains a password" in out.stderr
    assert "hunter2" not in out.stderr + out.stdout
    assert not (cli.rundir / "holder.sock").exists()


def test_an_unsafe_passfile_is_refused_by_pre(cli: Cli) -> None:
    passfile = cli.root / "pgpass"
    passfile.write_text("127.0.0.1:5432:*:quiesce:pw\n")
    passfile.chmod(0o644)
    cli.write_config("host=127.0.0.1 user=quiesce dbname=postgres", passfile=str(passfile))
    out = cli.run("pre")
    assert out.returncode == 2, out.stdout + out.stderr
    assert str(passfile) in out.stderr
    assert not (cli.rundir / "holder.sock").exists()
