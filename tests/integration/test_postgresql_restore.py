"""Restoring PostgreSQL copies taken during holds: the label must belong to the copy.

One real PostgreSQL 15 server, two holds through the real CLI (``pre``/``post``), and a
``cp -a`` copy of the data directory taken during each hold (the WAL directory copied after
``post``, as the runbook says). restore-label must pick the run a copy was taken in, refuse
any other, and refuse WAL that does not reach the end of the backup.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import private_dir
from helpers.cli import QuiesceCli

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("require_root")]


class Cli(QuiesceCli):
    def write_config(self, conninfo: str) -> None:
        self.write_sections([("postgresql", {"name": "main", "conninfo": conninfo})])


@dataclass
class Hold:
    run_id: str
    meta: dict
    data: Path  # cp -a of the data directory, taken during the hold
    wal_after_post: Path  # cp -a of the WAL directory, taken after post
    rows_acknowledged: int  # rows committed before post returned
    post_json: Path  # what 'quiesce post --json' printed, kept "next to the snapshot"


@dataclass
class Scenario:
    cli: Cli
    server: object
    base: Path
    older: Hold
    newer: Hold
    wal_during_newer: Path  # the WAL directory copied during the newer hold (before post)


def cp_a(src: Path, dst: Path) -> None:
    """Copy a live server's directory. A file the server removes mid-copy (its WAL writer's
    xlogtemp.N) makes cp fail; such a copy is simply taken again."""
    for attempt in range(5):
        done = subprocess.run(["cp", "-a", str(src), str(dst)], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode == 0:
            return
        if "No such file or directory" not in done.stderr or attempt == 4:
            raise AssertionError(f"cp -a {src} {dst} failed: {done.stderr}")
        shutil.rmtree(dst, ignore_errors=True)


def point_wal(data: Path, wal_dir: Path) -> None:
    """Runbook step: the restored copy's pg_wal link leads to the restored WAL."""
    link = data / "pg_wal"
    link.unlink()
    link.symlink_to(wal_dir)


def one_hold(cli: Cli, server, base: Path, name: str, rows: int) -> tuple[Hold, Path]:
    out = cli.run("pre", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    data = base / f"{name}-data"
    cp_a(server.data_dir, data)
    # Writes go on during the hold (backup mode does not block them) and are acknowledged.
    server.execute("INSERT INTO ledger (note) SELECT %s FROM generate_series(1, %s)",
                   (f"during {name}", rows))
    wal_during = base / f"{name}-wal-during"
    cp_a(server.log_dir, wal_during)
    out = cli.run("post", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["consistent"] is True
    (inst,) = result["instances"]
    post_json = base / f"{name}-post.json"
    post_json.write_text(out.stdout)
    acknowledged = server.execute("SELECT count(*) FROM ledger")[0][0]
    wal_after = base / f"{name}-wal-after"
    cp_a(server.log_dir, wal_after)
    return (Hold(result["run_id"], inst["metadata"], data, wal_after, acknowledged, post_json),
            wal_during)


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the CLI's runtime and state dirs are root-only")
    from quiesce_postgresql.fixtures import _require_postgres, _workspace

    _require_postgres()
    with _workspace() as workspace, private_dir("quiesce-pg-restore-") as root:
        server = workspace.server()
        cli = Cli(root)
        cli.write_config(server.conninfo)
        server.execute("CREATE TABLE ledger (id bigserial PRIMARY KEY, note text NOT NULL)")
        server.execute("INSERT INTO ledger (note) SELECT 'before' FROM generate_series(1, 200)")
        base = Path(workspace.layout().data_dir).parent
        older, _ = one_hold(cli, server, base, "older", 1300)
        server.execute("INSERT INTO ledger (note) SELECT 'between' FROM generate_series(1, 500)")
        newer, wal_during = one_hold(cli, server, base, "newer", 700)
        try:
            yield Scenario(cli, server, base, older, newer, wal_during)
        finally:
            if cli.rundir.exists() and cli.status().get("holder_pid"):
                cli.run("post", "--json")


def restore_label(cli: Cli, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quiesce", "restore-label", "--state-dir",
                           str(cli.state), *extra, str(data)],
                          capture_output=True, text=True, timeout=120, check=False)


def fresh_copy(s: Scenario, hold: Hold, wal: Path, name: str) -> Path:
    """A copy of one snapshot to restore (the scenario's copies stay untouched)."""
    data = s.base / f"{name}-restore-data"
    wal_copy = s.base / f"{name}-restore-wal"
    cp_a(hold.data, data)
    cp_a(wal, wal_copy)
    point_wal(data, wal_copy)
    return data


def test_without_run_id_the_older_copy_gets_the_older_label(scenario: Scenario) -> None:
    s = scenario
    data = fresh_copy(s, s.older, s.older.wal_after_post, "pick")
    out = restore_label(s.cli, data, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["run_id"] == s.older.run_id != s.newer.run_id
    assert (data / "backup_label").read_text() == s.older.meta["backup_label"]
    assert any("BACKUP_END" in c for c in result["checks"]), result


def test_the_wrong_run_id_is_refused(scenario: Scenario) -> None:
    s = scenario
    data = fresh_copy(s, s.older, s.older.wal_after_post, "wrong")
    out = restore_label(s.cli, data, "--run-id", s.newer.run_id)
    assert out.returncode == 2
    assert "does not belong" in out.stderr and "taken before this backup began" in out.stderr
    assert not (data / "backup_label").exists()
    # The newer copy with the older label: taken after that backup ended.
    data = fresh_copy(s, s.newer, s.newer.wal_after_post, "wrong2")
    out = restore_label(s.cli, data, "--run-id", s.older.run_id)
    assert out.returncode == 2
    assert "taken after this backup ended" in out.stderr
    assert not (data / "backup_label").exists()


def test_the_right_run_restores_every_acknowledged_row(scenario: Scenario) -> None:
    from quiesce.harness.servers.base import ServerLayout
    from quiesce_postgresql.server import LocalPostgres

    s = scenario
    data = fresh_copy(s, s.older, s.older.wal_after_post, "right")
    out = restore_label(s.cli, data, "--run-id", s.older.run_id)
    assert out.returncode == 0, out.stderr
    check = subprocess.run([sys.executable, "-m", "quiesce", "restore-check", str(data)],
                           capture_output=True, text=True, timeout=120, check=False)
    # The copy still has the live server's postmaster.pid: restore-check says to remove it.
    assert check.returncode == 1, check.stdout + check.stderr
    assert "postmaster.pid" in check.stdout
    (data / "postmaster.pid").unlink()
    check = subprocess.run([sys.executable, "-m", "quiesce", "restore-check", str(data)],
                           capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    layout = ServerLayout(data_dir=data, log_dir=Path(os.readlink(data / "pg_wal")),
                          run_dir=s.base / "right-run")
    restored = LocalPostgres.open_existing(layout)
    try:
        (count,) = restored.execute("SELECT count(*) FROM ledger")[0]
        assert count == s.older.rows_acknowledged == 1500
        log = restored.log_file.read_text()
        assert "completed backup recovery" in log
    finally:
        restored.stop()


def test_wal_copied_before_post_is_detected(scenario: Scenario) -> None:
    """The newest segment was copied mid-write: full size, no end-of-backup record."""
    s = scenario
    data = fresh_copy(s, s.newer, s.wal_during_newer, "incomplete")
    segment = s.newer.meta["stop_wal_file"]
    wal_dir = Path(os.readlink(data / "pg_wal"))
    assert (wal_dir / segment).stat().st_size == 16 * 1024 * 1024  # the name is there
    out = restore_label(s.cli, data, "--run-id", s.newer.run_id)
    assert out.returncode == 2
    assert "no end-of-backup record" in out.stderr, out.stderr
    assert segment in out.stderr and "WAL archive" in out.stderr
    assert not (data / "backup_label").exists()
    # Without --run-id too: the run matches, its WAL does not.
    out = restore_label(s.cli, data)
    assert out.returncode == 2 and "no end-of-backup record" in out.stderr


def test_a_truncated_last_segment_is_detected(scenario: Scenario) -> None:
    s = scenario
    data = fresh_copy(s, s.newer, s.newer.wal_after_post, "truncated")
    segment = Path(os.readlink(data / "pg_wal")) / s.newer.meta["stop_wal_file"]
    from quiesce_postgresql import wal

    end_in_segment = wal.parse_lsn(s.newer.meta["stop_lsn"]) % (16 * 1024 * 1024)
    with open(segment, "r+b") as handle:  # cut at the page holding the end of the backup
        handle.truncate(end_in_segment // 8192 * 8192)
    out = restore_label(s.cli, data, "--run-id", s.newer.run_id)
    assert out.returncode == 2
    assert "does not hold the WAL this backup needs" in out.stderr, out.stderr
    assert not (data / "backup_label").exists()


def test_the_post_json_kept_next_to_the_snapshot_is_a_record(scenario: Scenario) -> None:
    s = scenario
    data = fresh_copy(s, s.newer, s.newer.wal_after_post, "postjson")
    out = restore_label(s.cli, data, "--record", str(s.newer.post_json), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["run_id"] == s.newer.run_id
    assert (data / "backup_label").read_text() == s.newer.meta["backup_label"]
    # The older run's output on the newer copy: refused.
    (data / "backup_label").unlink()
    out = restore_label(s.cli, data, "--record", str(s.older.post_json))
    assert out.returncode == 2 and "taken after this backup ended" in out.stderr


def test_restore_check_finds_a_label_of_another_run(scenario: Scenario) -> None:
    s = scenario
    data = fresh_copy(s, s.older, s.older.wal_after_post, "checkwrong")
    out = restore_label(s.cli, data, "--run-id", s.newer.run_id, "--unsafe-skip-label-check",
                        "--wal-from-archive")
    assert out.returncode == 0, out.stderr
    assert "--unsafe-skip-label-check: installed although" in out.stdout
    (data / "postmaster.pid").unlink()
    check = subprocess.run([sys.executable, "-m", "quiesce", "restore-check", "--json",
                            str(data)], capture_output=True, text=True, timeout=120,
                           check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    doc = json.loads(check.stdout)
    (item,) = [c for c in doc["checks"] if c["name"] == "backup_label"]
    assert item["status"] == "problem"
    assert "taken before this backup began" in item["text"]
    assert doc["steps"][0].startswith(f"rm {data}/backup_label")


def test_a_label_taken_on_a_standby_needs_the_wal_to_stop_lsn(
        postgresql_server_factory, postgresql_layout_factory) -> None:
    """A standby writes no end-of-backup record: its end is stop_lsn, read without a gap."""
    from quiesce.deadline import Deadline
    from quiesce.engine import InstanceSettings
    from quiesce.schema import validate
    from quiesce_postgresql.config import SCHEMA
    from quiesce_postgresql.engine import PostgresQuiescer

    primary = postgresql_server_factory()
    primary.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS v")
    replica = primary.create_replica(postgresql_layout_factory())
    options = validate(SCHEMA, {"conninfo": replica.conninfo}).data
    q = PostgresQuiescer(InstanceSettings("postgresql", "standby", options))
    copy_root = Path(postgresql_layout_factory().data_dir).parent
    try:
        q.prepare(Deadline(30))
        q.quiesce(Deadline(30))
        cp_a(replica.data_dir, copy_root / "data")
        primary.execute("INSERT INTO t SELECT generate_series(1001, 2000)")
        primary.execute("CHECKPOINT")
        meta = q.release(Deadline(30))
    finally:
        q.close()
    assert "BACKUP FROM: standby" in meta["backup_label"]
    cp_a(replica.log_dir, copy_root / "wal")
    point_wal(copy_root / "data", copy_root / "wal")
    record = copy_root / "meta.json"
    record.write_text(json.dumps(meta))
    out = subprocess.run([sys.executable, "-m", "quiesce", "restore-label", "--record",
                          str(record), "--json", str(copy_root / "data")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert any("reads without a gap" in c for c in json.loads(out.stdout)["checks"])


def test_a_copy_of_no_hold_is_refused_without_run_id(scenario: Scenario) -> None:
    s = scenario
    s.server.execute("CHECKPOINT")
    data = s.base / "nohold-data"
    cp_a(s.server.data_dir, data)
    point_wal(data, s.newer.wal_after_post)
    out = restore_label(s.cli, data)
    assert out.returncode == 2
    assert "no run in" in out.stderr
    assert s.older.run_id in out.stderr and s.newer.run_id in out.stderr
    assert not (data / "backup_label").exists()


def test_pg_wal_leading_to_the_running_server_is_refused(scenario: Scenario) -> None:
    s = scenario
    data = s.base / "live-wal-data"
    cp_a(s.older.data, data)  # its pg_wal still leads to the running server's WAL
    out = restore_label(s.cli, data, "--run-id", s.older.run_id)
    assert out.returncode == 2
    assert "RUNNING server" in out.stderr
    assert not (data / "backup_label").exists()
