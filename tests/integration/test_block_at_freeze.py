"""The commit block deferred to the freeze, against a real MariaDB through the real CLI.

When ``quiesce run`` runs quiesce's own wrappers it sets QUIESCE_DEFER_BLOCK to its run id and
the runtime dir it will talk to, for the pre-script: the holder then holds MariaDB at BACKUP
STAGE BLOCK_DDL only (DDL waits, commits go on) until the runner's 'block' request, sent just
before the first FIFREEZE, adds BLOCK_COMMIT. Blocking is proven from the server's side with
lock_wait_timeout = 0: a statement that must wait fails at once with 1205, one that must not
goes through."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_for
from helpers.cli import QuiesceCli, cli_workspace
from helpers.mysql import ddl_error, setup_schema, unlocked, write_error
from quiesce.callers.runner import FREEZE_SETTLE_SECONDS
from quiesce.harness.servers.base import ServerLayout
from quiesce.hold import protocol as proto
from quiesce_mysql.fixtures import LOCK_WAIT_STATES, BackgroundStatement

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("require_root")]

RUN_ID = "20261130T230000Z-deadbeef"
LOCK_WAIT = 1205


@pytest.fixture
def cli() -> Iterator[QuiesceCli]:
    with cli_workspace(QuiesceCli, "quiesce-defer-") as workspace:
        yield workspace


@pytest.fixture
def server(mysql_server: Any) -> Any:
    setup_schema(mysql_server)
    mysql_server.execute("DROP TABLE app.myi")  # InnoDB only unless a test adds MyISAM
    assert unlocked(mysql_server, myisam=False), "an earlier test left the server locked"
    return mysql_server


def configure(cli: QuiesceCli, server: Any, *, max_hold: int = 120, **options: Any) -> None:
    cli.write_sections([("mysql", {"name": "main", "unix_socket": str(server.socket),
                                   "user": "root", **options})], max_hold=max_hold)


def deferred_pre(cli: QuiesceCli, monkeypatch: pytest.MonkeyPatch, defer_for: str = RUN_ID,
                 defer_dir: str | None = None) -> dict[str, Any]:
    monkeypatch.setenv("QUIESCE_RUN_ID", RUN_ID)
    monkeypatch.setenv(proto.DEFER_BLOCK_ENV,
                       proto.defer_block_value(defer_for, defer_dir or str(cli.rundir)))
    out = cli.run("pre", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def record_of(cli: QuiesceCli, post: dict[str, Any]) -> dict[str, Any]:
    path = post.get("record") or str(cli.state / "runs" / f"{post['run_id']}.json")
    return json.loads(open(path, encoding="utf-8").read())


@pytest.mark.parametrize("lock", ["auto", "backup-stage", "ftwrl"])
def test_pre_blocks_ddl_only_and_block_adds_the_commit_block(
        cli: QuiesceCli, server: Any, monkeypatch: pytest.MonkeyPatch, lock: str) -> None:
    configure(cli, server, lock=lock)
    deferred_pre(cli, monkeypatch)
    assert write_error(server, 1) is None, "a commit waited before the freeze's block"
    status = proto.request(str(cli.rundir), "status")
    assert status["block_pending"] is True and status["blocks_writes"] is False
    shown = cli.run("status").stdout
    assert "commits go on: the commit block waits for 'quiesce run'" in shown, shown
    if lock != "ftwrl":  # FTWRL alone has nothing to take before the freeze
        assert ddl_error(server) == LOCK_WAIT
    answer = proto.request(str(cli.rundir), "block", run_id=RUN_ID)
    assert answer["ok"] and answer["blocked"] is True, answer
    assert write_error(server, 2) == LOCK_WAIT, "the block did not stop commits"
    status = proto.request(str(cli.rundir), "status")
    assert status["block_pending"] is False and status["blocks_writes"] is True
    post = cli.post_json()
    assert post["consistent"] is True, post["message"]
    assert write_error(server, 3) is None and unlocked(server, myisam=False)
    meta = post["instances"][0]["metadata"]
    assert meta["commit_block"]["deferred_to_freeze"] is True
    assert meta["commit_block"]["taken"] is True
    assert meta["commit_block"]["held_seconds"] is not None
    assert meta["binlog_position_exact"] is True
    assert meta["lock"]["taken"][-1] in ("backup-stage-commit", "ftwrl")
    assert record_of(cli, post)["consistent"] is True


def test_a_release_without_the_block_is_recorded_not_consistent(
        cli: QuiesceCli, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(cli, server)
    deferred_pre(cli, monkeypatch)
    post = cli.post_json()
    assert post["consistent"] is False
    assert "never taken" in post["message"]
    meta = post["instances"][0]["metadata"]
    assert meta["commit_block"]["taken"] is False
    assert meta["binlog_position_exact"] is False
    assert record_of(cli, post)["consistent"] is False
    assert unlocked(server, myisam=False)


@pytest.mark.parametrize("other", ["run", "runtime dir"])
def test_another_runs_defer_request_is_ignored(
        cli: QuiesceCli, server: Any, monkeypatch: pytest.MonkeyPatch, other: str) -> None:
    """QUIESCE_DEFER_BLOCK left over from another run, or naming another runtime dir (a second
    'quiesce pre' in the same pre-script, whose holder the runner would never tell to block):
    pre takes the whole hold."""
    configure(cli, server)
    if other == "run":
        deferred_pre(cli, monkeypatch, defer_for="20261130T220000Z-0badf00d")
    else:
        deferred_pre(cli, monkeypatch, defer_dir=str(cli.root / "another-rt"))
    assert write_error(server, 1) == LOCK_WAIT
    status = proto.request(str(cli.rundir), "status")
    assert status["block_pending"] is False and status["blocks_writes"] is True
    post = cli.post_json()
    assert post["consistent"] is True
    assert "commit_block" not in post["instances"][0]["metadata"]


def test_block_for_another_run_is_refused_and_changes_nothing(
        cli: QuiesceCli, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(cli, server)
    deferred_pre(cli, monkeypatch)
    answer = proto.request(str(cli.rundir), "block", run_id="20261130T220000Z-0badf00d")
    assert answer["ok"] is False and "belongs to run" in answer["error"]
    assert write_error(server, 1) is None
    post = cli.post_json()
    assert post["consistent"] is False


def test_a_deferred_hold_still_ends_at_max_hold_seconds(
        cli: QuiesceCli, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody sends 'block' or runs 'post' (the runner died): the DDL block ends at the
    deadline like any hold, and the outcome is not consistent."""
    configure(cli, server, max_hold=3)
    deferred_pre(cli, monkeypatch)
    assert ddl_error(server) == LOCK_WAIT
    started = time.monotonic()
    assert wait_for(lambda: ddl_error(server) is None, timeout=30)
    assert time.monotonic() - started < 20
    post = cli.post_json()
    assert post["consistent"] is False
    assert post["instances"][0]["status"] == "auto-released"


def test_a_block_that_cannot_be_taken_releases_everything(
        cli: QuiesceCli, mysql_server_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holding session is killed between pre and the freeze: 'block' fails, the whole
    hold is released and the outcome says so."""
    own = mysql_server_factory()
    setup_schema(own)
    configure(cli, own)
    deferred_pre(cli, monkeypatch)
    mine = own.connect(read_timeout=20)
    try:
        with mine.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> "
                        "CONNECTION_ID() AND USER = 'root'")
            for (thread,) in cur.fetchall():
                cur.execute("KILL %s", (thread,))
    finally:
        mine.close()
    answer = proto.request(str(cli.rundir), "block", run_id=RUN_ID)
    assert answer["ok"] is False, answer
    assert write_error(own, 1) is None and unlocked(own, myisam=False)
    post = cli.post_json()
    assert post["consistent"] is False


# ------------------------------------------------- released between the snapshot and the thaw

@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory the mysql user can enter (pytest's tmp_path is root-only), removed last."""
    base = Path(tempfile.mkdtemp(prefix="quiesce-bt-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def server_on_disks(reachable_dir: Path, loop_disk_factory: Any,
                    mysql_server_factory: Any) -> tuple[Any, list[Any]]:
    """A MariaDB whose data directory and redo log are on two loop ext4 disks (the disks
    are torn down after the server stops: their factory was set up first)."""
    disks = [loop_disk_factory("ext4", 256, name, workdir=reachable_dir,
                               image_dir=reachable_dir) for name in ("data", "log")]
    for disk in disks:
        disk.mount_point.chmod(0o755)
    (reachable_dir / "run").mkdir(mode=0o755)
    server = mysql_server_factory(layout=ServerLayout(
        data_dir=disks[0].mount_point / "mysql", log_dir=disks[1].mount_point / "redo",
        run_dir=reachable_dir / "run"))
    setup_schema(server)
    server.execute("DROP TABLE app.myi")
    return server, disks


def lock_wait_state(server: Any, thread: int) -> str | None:
    """The thread's state (SHOW PROCESSLIST makes no temporary table: safe while frozen)."""
    for row in server.execute("SHOW PROCESSLIST"):
        if int(row[0]) == thread:
            return str(row[6] or "")
    return None


def test_a_release_sent_while_frozen_ends_the_commit_block_before_the_thaw(
        cli: QuiesceCli, server_on_disks: tuple[Any, list[Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What 'quiesce run' does between its snapshot and its thaw: 'release' on the block's
    connection while the server's own disks are frozen. The unlock must not need those disks:
    a commit that waited for the commit block leaves its lock wait before the thaw (and then
    waits for the disks, as in a bare freeze); the hold is recorded consistent."""
    from quiesce.freezing.freeze import FreezeSession
    from quiesce.freezing.mounts import discover_mounts

    server, disks = server_on_disks
    configure(cli, server)
    deferred_pre(cli, monkeypatch)
    status = proto.request(str(cli.rundir), "status")
    assert status["relies_on_freeze"] is False and status["block_pending"] is True, status
    connection = proto.LingeringRequest(str(cli.rundir), 5)
    commit = None
    try:
        assert connection.request("block", timeout=40, run_id=RUN_ID)["blocked"] is True
        commit = BackgroundStatement(server, "INSERT INTO app.inno (v) VALUES (5)").start()
        assert commit.wait_state(LOCK_WAIT_STATES)
        with FreezeSession(discover_mounts([str(d.mount_point) for d in disks]),
                           timeout=60) as session:
            assert len(session.frozen) == 2
            connection.send("release", timeout=1, run_id=RUN_ID, keep=True,
                            frozen_together=True, before_thaw=True)
            left = wait_for(lambda: (lock_wait_state(server, commit.id) or "-")
                            not in LOCK_WAIT_STATES, 20, "the commit leaving its lock wait")
            assert left
            assert not commit.finished.is_set(), "a commit finished on frozen disks"
        commit.join(30)
        assert commit.error is None, commit.error
        answer = connection.receive(30)
        assert answer["ok"] is True, answer
    finally:
        connection.close()
        if commit is not None:
            commit.close()
    post = cli.post_json()
    assert post["consistent"] is True, post
    record = record_of(cli, post)
    assert record["released_by"] == "the runner, after the snapshot and before the thaw"
    assert record["instances"][0]["metadata"]["commit_block"]["taken"] is True
    assert unlocked(server, myisam=False)


# --------------------------------------------------------------------------- quiesce run

PROBE = """\
import sys
import pymysql
conn = pymysql.connect(unix_socket=sys.argv[1], user="root", read_timeout=20, autocommit=True)
try:
    with conn.cursor() as cur:
        cur.execute("SET SESSION lock_wait_timeout = 0")
        cur.execute("INSERT INTO app.inno (v) VALUES (9)")
    result = "through"
except pymysql.err.MySQLError as exc:
    result = str(exc.args[0])
open(sys.argv[2], "w").write(result)
sys.exit(0 if sys.argv[3] in ("any", result) else 9)
"""

KILL_HOLD = """\
import sys
import pymysql
conn = pymysql.connect(unix_socket=sys.argv[1], user="root", read_timeout=20, autocommit=True)
with conn.cursor() as cur:
    cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
                "AND USER = 'root'")
    for (thread,) in cur.fetchall():
        cur.execute("KILL %s", (thread,))
"""


def quiesce_run(cli: QuiesceCli, server: Any, mount: str | list[str], *, after_pre: str = "",
                continue_on_failure: bool = False, expect: str = "1205", probe: bool = True
                ) -> tuple[int, dict[str, Any]]:
    """``quiesce run`` with quiesce's pre/post wrappers, freezing ``mount``; the snapshot
    command proves commits are blocked while it runs, the pre-script (after 'quiesce pre')
    whether they still went through before the freeze."""
    import os
    import subprocess
    import sys

    root = cli.root
    (root / "probe.py").write_text(PROBE)
    (root / "kill.py").write_text(KILL_HOLD)
    py, quiesce = sys.executable, f"{sys.executable} -m quiesce"
    common = f"--config {cli.config} --runtime-dir {cli.rundir}"
    probe_after_pre = (f"{py} {root / 'probe.py'} {server.socket} {root / 'after-pre'} any\n"
                       if probe else "")
    scripts = {
        "pre.sh": f"{quiesce} pre {common}\nrc=$?\n" + probe_after_pre + after_pre
                  + "exit $rc\n",
        "post.sh": f"exec {quiesce} post {common} --json\n",
    }
    for name, body in scripts.items():
        (root / name).write_text("#!/bin/sh\n" + body)
        (root / name).chmod(0o700)
    config = root / "azure.json"
    config.write_text(json.dumps({
        "pluginName": "ScriptRunner", "preScriptLocation": str(root / "pre.sh"),
        "postScriptLocation": str(root / "post.sh"), "preScriptParams": [],
        "postScriptParams": [], "preScriptNoOfRetries": 0, "postScriptNoOfRetries": 0,
        "timeoutInSeconds": 60, "continueBackupOnFailure": continue_on_failure,
        "fsFreezeEnabled": True}))
    config.chmod(0o600)
    snapshot = (f"{py} {root / 'probe.py'} {server.socket} {root / 'during-snapshot'} {expect}"
                if probe else "/bin/true")
    proc = subprocess.run([py, "-m", "quiesce", "run", "--config", str(config), "--json",
                           "--freeze-timeout", "30", "--snapshot-command", snapshot,
                           *[arg for m in ([mount] if isinstance(mount, str) else mount)
                             for arg in ("--freeze-mount", m)]],
                          capture_output=True, text=True,
                          timeout=180, check=False, cwd="/",
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("QUIESCE_")})
    return proc.returncode, json.loads(proc.stdout)


def test_quiesce_run_takes_the_commit_block_at_the_freeze(
        cli: QuiesceCli, server: Any, loop_disk_factory: Any) -> None:
    disk = loop_disk_factory("ext4", name="frozen")
    configure(cli, server)
    code, status = quiesce_run(cli, server, str(disk.mount_point))
    assert code == 0, status
    assert status["consistency"] == "application", status["errors"]
    hold = status["hold"]
    assert hold["block"]["ok"] is True and hold["block"]["blocked"] is True, hold
    assert hold["released_at_thaw"] is True and hold["released_before_thaw"] is True
    # nothing stopped writes after pre: the freeze waited for the kernel to settle
    assert 0 <= hold["settled_ms"] <= FREEZE_SETTLE_SECONDS * 1000
    assert (cli.root / "after-pre").read_text() == "through"  # no commit block before
    assert (cli.root / "during-snapshot").read_text() == "1205"  # blocked during it
    record = json.loads(wait_for(
        lambda: next(iter((cli.state / "runs").glob("*.json")), None), 30, "the run record"
    ).read_text())
    assert record["consistent"] is True
    assert record["instances"][0]["metadata"]["commit_block"]["taken"] is True
    assert unlocked(server, myisam=False)


def test_quiesce_run_freezing_the_servers_own_disks_releases_before_the_thaw(
        cli: QuiesceCli, server_on_disks: tuple[Any, list[Any]]) -> None:
    """The whole cycle with MariaDB's data and redo on the disks 'quiesce run' freezes: the
    release sent between the snapshot and the thaw neither stalls the thaw nor the run, and
    the snapshot is application-consistent."""
    server, disks = server_on_disks
    configure(cli, server)
    started = time.monotonic()
    # No INSERT probe during the snapshot: with the server's own disks frozen it may wait in
    # the kernel (InnoDB writing to a frozen file) before it reaches the commit lock.
    code, status = quiesce_run(cli, server, [str(d.mount_point) for d in disks], probe=False)
    assert code == 0, json.dumps(status, indent=1)
    assert status["consistency"] == "application", status["errors"]
    assert status["hold"]["released_before_thaw"] is True, status["hold"]
    assert sorted(status["freeze"]["mounts"]) == sorted(str(d.mount_point) for d in disks)
    assert status["freeze"]["watchdog_fired"] is False
    # no wait for an answer that needed the frozen disks (EARLY_RELEASE_TIMEOUT is 30 s)
    assert time.monotonic() - started < 25
    record = json.loads(wait_for(
        lambda: next(iter((cli.state / "runs").glob("*.json")), None), 30, "the run record"
    ).read_text())
    assert record["consistent"] is True
    assert record["released_by"] == "the runner, after the snapshot and before the thaw"
    assert write_error(server, 3) is None and unlocked(server, myisam=False)


@pytest.mark.parametrize("continue_on_failure", [False, True])
def test_quiesce_run_whose_block_fails_is_not_application_consistent(
        cli: QuiesceCli, mysql_server_factory: Any, loop_disk_factory: Any,
        continue_on_failure: bool) -> None:
    """The holding session dies between pre and the freeze: the run reports HoldIncomplete;
    without continueBackupOnFailure there is no snapshot, with it a crash-consistent one."""
    own = mysql_server_factory()
    setup_schema(own)
    disk = loop_disk_factory("ext4", name="frozen")
    configure(cli, own)
    code, status = quiesce_run(
        cli, own, str(disk.mount_point), continue_on_failure=continue_on_failure, expect="any",
        after_pre=f"{__import__('sys').executable} {cli.root / 'kill.py'} {own.socket}\n")
    assert code != 0
    assert status["consistency"] != "application"
    codes = [e["code"] for e in status["errors"]]
    # post then reports the hold it collects as not consistent (and exits non-zero)
    assert codes[0] == "HoldIncomplete", status["errors"]
    assert set(codes) <= {"HoldIncomplete", "Post-ScriptExecutionFailed"}, codes
    assert status["hold"]["block"]["ok"] is False
    assert status["snapshot_taken"] is continue_on_failure
    if continue_on_failure:  # nothing held any more: the commit went through
        assert (cli.root / "during-snapshot").read_text() == "through"
        assert status["consistency"] == "filesystem"
        assert status["freeze"]["mounts"] == [str(disk.mount_point)]
    assert unlocked(own, myisam=False)


def test_quiesce_run_with_postgresql_settles_and_completes_nothing(
        cli: QuiesceCli, postgresql_server: Any, loop_disk_factory: Any) -> None:
    """Backup mode never stops commits: the freeze waits for the kernel to settle after the
    pre-script, and there is no write block to take at the freeze."""
    disk = loop_disk_factory("ext4", name="frozen")
    cli.write_sections([("postgresql", {"name": "pg",
                                        "conninfo": postgresql_server.socket_conninfo})])
    code, status = quiesce_run(cli, postgresql_server, str(disk.mount_point), probe=False)
    assert code == 0, status
    assert status["consistency"] == "application", status["errors"]
    assert 0 <= status["hold"]["settled_ms"] <= FREEZE_SETTLE_SECONDS * 1000
    assert "block" not in status["hold"]
    assert status["hold"]["released_at_thaw"] is True
    # backup mode stops no commit: nothing to gain by releasing before the thaw
    assert status["hold"]["released_before_thaw"] is False


def test_quiesce_run_freezes_the_wal_filesystem_last(
        cli: QuiesceCli, reachable_dir: Path, loop_disk_factory: Any,
        postgresql_server_factory: Any) -> None:
    """PostgreSQL's data directory and pg_wal on two sibling filesystems, the WAL's mounted
    later (so frozen first by the default order): the holder reports pg_wal as the commit
    path, and the runner freezes its filesystem last and thaws it first, so commits go on
    while the data filesystem freezes. Whatever order --freeze-mount lists them in."""
    data, wal = (loop_disk_factory("ext4", 256, name, workdir=reachable_dir,
                                   image_dir=reachable_dir) for name in ("data", "wal"))
    for disk in (data, wal):
        disk.mount_point.chmod(0o755)
    (reachable_dir / "run").mkdir(mode=0o755)
    server = postgresql_server_factory(ServerLayout(
        data_dir=data.mount_point / "pg", log_dir=wal.mount_point / "wal",
        run_dir=reachable_dir / "run"))
    cli.write_sections([("postgresql", {"name": "pg", "conninfo": server.socket_conninfo})])
    for listed in ([data, wal], [wal, data]):
        code, status = quiesce_run(cli, server, [str(d.mount_point) for d in listed],
                                   probe=False)
        assert code == 0, json.dumps(status, indent=1)
        assert status["consistency"] == "application", status["errors"]
        assert status["hold"]["frozen_last"] == [str(wal.mount_point)], status["hold"]
        assert status["freeze"]["mounts"] == [str(data.mount_point), str(wal.mount_point)]
        assert status["freeze"]["watchdog_fired"] is False


def test_quiesce_run_light_level_freezes_the_redo_and_binlog_filesystem_last(
        cli: QuiesceCli, reachable_dir: Path, loop_disk_factory: Any,
        mysql_server_factory: Any) -> None:
    """MariaDB at the light level (no commit block) with its redo log and binlog on one disk,
    its data on another mounted earlier: the redo/binlog filesystem is the commit path, frozen
    last and thawed first. (At the full level the commit block stops commits for the whole
    freeze, and no commit path is named.)"""
    data, log = (loop_disk_factory("ext4", 256, name, workdir=reachable_dir,
                                   image_dir=reachable_dir) for name in ("data", "log"))
    for disk in (data, log):
        disk.mount_point.chmod(0o755)
    (reachable_dir / "run").mkdir(mode=0o755)
    redo = log.mount_point / "redo"
    server = mysql_server_factory(
        layout=ServerLayout(data_dir=data.mount_point / "mysql", log_dir=redo,
                            run_dir=reachable_dir / "run"),
        settings={"log-bin": str(redo / "mysql-bin")})
    setup_schema(server)
    server.execute("DROP TABLE app.myi")
    configure(cli, server, level="auto")
    code, status = quiesce_run(cli, server, [str(log.mount_point), str(data.mount_point)],
                               probe=False)
    assert code == 0, json.dumps(status, indent=1)
    assert status["consistency"] == "application", status["errors"]
    assert status["hold"]["frozen_last"] == [str(log.mount_point)], status["hold"]
    assert status["freeze"]["mounts"] == [str(data.mount_point), str(log.mount_point)]
    record = json.loads(wait_for(
        lambda: next(iter((cli.state / "runs").glob("*.json")), None), 30, "the run record"
    ).read_text())
    assert record["consistent"] is True
    assert record["instances"][0]["metadata"]["level"]["chosen"] == "light", record
    assert unlocked(server, myisam=False)
