"""Issue 7: the wrappers of `quiesce install azure`, driven by an emulated Azure script runner
(tests/helpers/azure_emulator.py), against real throwaway MariaDB and PostgreSQL servers.

The runner is the careless caller the extension is: it polls, gives up on a slow script
without killing it, "snapshots" anyway and runs the post-script. Whatever it does, no record
may claim an application-consistent snapshot for a hold that was not complete before the
runner's snapshot began and still in place when it ended; `quiesce post` must say what really
happened (exit 0 only when consistent); nothing may stay locked afterwards; and
`quiesce restore-label` must refuse the label of an inconsistent run.

Each test installs into its own root-only prefix (a "jail" under /run), edits the installed
Azure config (small timeouts, 1 s polls, ``--json`` as script params so the runner's captured
output is machine-readable) and points the runtime dir at the jail through
QUIESCE_RUNTIME_DIR. The last tests drive `quiesce pre` directly: the holder's own deadline
(late acquisition) and a `pre` client that was SIGKILLed while it waited for a lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import private_dir, wait_for
from helpers.azure_emulator import AzureEmulator, Backup
from helpers.cli import QuiesceCli
from helpers.delay_proxy import DelayProxy
from helpers.mysql import setup_schema, unlocked
from quiesce_mysql.fixtures import BackgroundStatement

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120),
              pytest.mark.usefixtures("require_root")]

AZURE = "etc/azure/VMSnapshotScriptPluginConfig.json"
TOML = "etc/quiesce/quiesce.toml"
POLL = 1
MAX_HOLD = 60  # far beyond every test's waits: a hold that outlives its test shows as locked
SETTLE = 20.0  # how long a late or abandoned acquisition may take to be undone


# ---------------------------------------------------------------------------- the jail
class Jail(QuiesceCli):
    """An installation under ``root/jail``; runtime dir and state dir in ``root``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.prefix = root / "jail"
        self.config = self.prefix / TOML
        self.azure = self.prefix / AZURE
        self.env = {**os.environ, "QUIESCE_RUNTIME_DIR": str(self.rundir)}
        self.env.pop("QUIESCE_RUN_ID", None)  # the extension sets none
        self.backups: list[Backup] = []

    def install(self) -> None:
        out = subprocess.run([sys.executable, "-m", "quiesce", "install", "azure", "--prefix",
                              str(self.prefix), "--plugins", "postgresql,mysql"],
                             capture_output=True, text=True, timeout=60, cwd="/", check=False)
        assert out.returncode == 0, out.stdout + out.stderr

    def configure_azure(self, timeout: int, *, pre_retries: int = 0) -> None:
        """The installed Azure config with this timeout, 1 s polls and --json for both
        scripts (kept root-owned 0600, as the wrapper's --azure-config requires)."""
        doc = json.loads(self.azure.read_text())
        doc.update({"timeoutInSeconds": timeout, "ScriptsExecutionPollTimeSeconds": POLL,
                    "preScriptParams": ["--json"], "postScriptParams": ["--json"],
                    "preScriptNoOfRetries": pre_retries})
        self.azure.write_text(json.dumps(doc, indent=4) + "\n")
        assert self.azure.stat().st_mode & 0o777 == 0o600

    def backup(self, snapshot: Callable[[], None] | None = None) -> Backup:
        """One emulated Azure backup through the installed wrappers. Its scripts may still
        run when it returns (the runner never kills them); the fixture kills any left."""
        backup = AzureEmulator(self.azure, env=self.env, snapshot=snapshot).backup()
        self.backups.append(backup)
        return backup

    def records(self) -> list[dict[str, Any]]:
        runs = self.state / "runs"
        return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))] \
            if runs.is_dir() else []

    def holder_alive(self) -> bool:
        return bool(self.rundir.exists() and self.status().get("holder_pid"))


def _kill_leftovers(root: Path) -> None:
    """SIGKILL any process (holder, guardian, script) whose command line names ``root``."""
    needle = str(root).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    os.kill(int(entry), signal.SIGKILL)


@pytest.fixture
def jail() -> Iterator[Jail]:
    with private_dir("quiesce-foreign-") as root:
        j = Jail(root)
        j.install()
        try:
            yield j
        finally:
            for backup in j.backups:
                backup.kill_scripts()
            with contextlib.suppress(Exception):
                if j.holder_alive():
                    j.run("post", "--json", timeout=60)
            _kill_leftovers(root)


# ---------------------------------------------------------------------------- assertions
def _epoch(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.UTC).timestamp()


def post_report(backup: Backup) -> tuple[int | None, dict[str, Any] | None]:
    """The post-script's exit code and its --json output (None when it printed none)."""
    run = backup.post.run
    text = run.stdout.decode(errors="replace").strip()
    try:
        report = json.loads(text) if text else None
    except ValueError:
        report = None
    return run.exit_code, report


def assert_records_honest(jail: Jail, backup: Backup) -> list[dict[str, Any]]:
    """No record claims consistency for a hold that did not span the whole snapshot."""
    records = jail.records()
    snap = backup.snapshot
    for record in records:
        assert isinstance(record.get("consistent"), bool), record
        if not record["consistent"]:
            continue
        assert snap.taken and snap.started_wall is not None and snap.ended_wall is not None
        since, released = record.get("since"), record.get("released_at")
        assert since and released, record
        assert _epoch(since) <= snap.started_wall, (
            f"record {record['run_id']} says consistent, but its hold began at {since}, after "
            f"the snapshot began")
        assert _epoch(released) >= snap.ended_wall, (
            f"record {record['run_id']} says consistent, but it was released at {released}, "
            f"before the snapshot ended")
        assert all(i["status"] == "released" for i in record["instances"]), record
    return records


def assert_not_consistent(jail: Jail, backup: Backup, *, post_exit: int = 1) -> dict[str, Any]:
    """`post` (run by the runner) said not consistent, with exit ``post_exit``; no record says
    consistent; returns post's JSON."""
    backup.wait_scripts(SETTLE + 10)
    code, report = post_report(backup)
    assert code == post_exit, f"post exit {code}, wanted {post_exit}\n{backup.describe()}"
    assert report is not None, backup.describe()
    assert report.get("consistent") is False, report
    assert all(i.get("status") != "released" for i in report.get("instances") or []), report
    records = assert_records_honest(jail, backup)
    assert not any(r["consistent"] for r in records), records
    return report


def assert_consistent(jail: Jail, backup: Backup) -> dict[str, Any]:
    backup.wait_scripts(SETTLE + 10)
    code, report = post_report(backup)
    assert code == 0, backup.describe()
    assert report is not None and report["consistent"] is True, report
    assert [i["status"] for i in report["instances"]] == ["released"], report
    records = assert_records_honest(jail, backup)
    (record,) = [r for r in records if r["run_id"] == report["run_id"]]
    assert record["consistent"] is True and record["state"] == "released", record
    return report


def assert_slow_network_outcome(jail: Jail, backup: Backup, proxy: DelayProxy) -> None:
    """The pre-script behind a proxy slower than the whole Azure timeout.

    timeoutInSeconds 2 less the 1 s poll and 1 s of start-up leaves 'pre' no time at all: it
    refuses at once as a configuration error (exit 2) without connecting anywhere, and
    'post' finds no hold (exit 2). With 6 s, 'pre' tries, and its deadline (6 - 1 - 1 = 4 s)
    ends it with exit 1 before the runner gives up, so the runner sees a failure, not a
    timeout; 'post' says not consistent.
    """
    assert backup.snapshot.taken, backup.snapshot.error
    if backup.config.timeout <= 2 * POLL:
        backup.wait_scripts(SETTLE)
        assert (backup.pre.status, backup.pre.run.exit_code) == ("failed", 2), \
            backup.describe()
        assert proxy.accepted == 0  # refused before connecting
        code, report = post_report(backup)
        assert code == 2, backup.describe()
        assert report is None or report.get("consistent") is not True, report
        assert jail.records() == []
        return
    assert (backup.pre.status, backup.pre.run.exit_code) == ("failed", 1), backup.describe()
    assert proxy.accepted >= 1
    assert_not_consistent(jail, backup)


def assert_no_holder_left(jail: Jail) -> None:
    wait_for(lambda: not jail.holder_alive(), SETTLE, "the holder to exit")


# ---------------------------------------------------------------------------- MariaDB
@pytest.fixture
def mysql(mysql_server: Any) -> Any:
    setup_schema(mysql_server)
    assert unlocked(mysql_server), "an earlier test left the shared server locked"
    return mysql_server


def mysql_section(server: Any, **options: Any) -> dict[str, Any]:
    return {"name": "main", "unix_socket": str(server.socket), "user": "root", **options}


def write_blocked(server: Any) -> str | None:
    """None if a MyISAM write from another session is blocked (lock wait timeout within
    1 s), else why not: the probe the snapshot step runs while the hold should be in place."""
    import pymysql

    conn = server.connect(read_timeout=20)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 1")
            try:
                cur.execute("INSERT INTO app.myi (v) VALUES (7)")
            except pymysql.err.OperationalError as exc:
                return None if exc.args[0] == 1205 else f"unexpected error {exc}"
            return "a write went through during the snapshot"
    finally:
        conn.close()


def long_update(seconds: int) -> str:
    """A statement holding app.myi (MyISAM: a table lock) for ``seconds``: one row sleeps."""
    return f"UPDATE app.myi SET v = v + SLEEP({seconds}) WHERE id = 1"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mysql_normal_backup_is_consistent(jail: Jail, mysql: Any) -> None:
    jail.configure_azure(8)
    jail.write_sections([("mysql", mysql_section(mysql))], max_hold=MAX_HOLD)
    probes: list[str | None] = []
    backup = jail.backup(lambda: probes.append(write_blocked(mysql)))
    assert backup.pre.status == "success", backup.describe()
    assert probes == [None]  # the hold was in place during the snapshot
    report = assert_consistent(jail, backup)
    assert report["instances"][0]["metadata"]["lock"]["taken"]
    assert_no_holder_left(jail)
    assert unlocked(mysql)


@pytest.mark.parametrize("timeout", [2, 6])
def test_mysql_pre_slowed_by_the_network_is_never_consistent(jail: Jail, mysql: Any,
                                                             timeout: int) -> None:
    """A server whose greeting comes later than the runner waits (delay proxy)."""
    delay = timeout + 3
    with DelayProxy("127.0.0.1", mysql.port, delay, lifetime=90) as proxy:
        jail.configure_azure(timeout)
        jail.write_sections([("mysql", {"name": "main", "host": "127.0.0.1", "port": proxy.port,
                                        "user": "root", "connect_timeout": 60})],
                            max_hold=MAX_HOLD)
        backup = jail.backup()
        assert_slow_network_outcome(jail, backup, proxy)
        assert_no_holder_left(jail)
    wait_for(lambda: unlocked(mysql), SETTLE, "nothing locked on the server")
    assert_records_honest(jail, backup)


def test_mysql_pre_waiting_behind_a_long_query_is_never_consistent(jail: Jail,
                                                                   mysql: Any) -> None:
    jail.configure_azure(4)
    jail.write_sections([("mysql", mysql_section(mysql, lock_wait_seconds=30))],
                        max_hold=MAX_HOLD)
    blocker = BackgroundStatement(mysql, long_update(6)).start()
    try:
        blocker.wait_state(("User sleep",))
        backup = jail.backup()
        assert backup.pre.status != "success", backup.describe()
        assert not blocker.finished.is_set()  # the lock was still out of reach
        assert_not_consistent(jail, backup)
        blocker.join(30)
    finally:
        blocker.close()
    wait_for(lambda: unlocked(mysql), SETTLE, "nothing locked once the long query ended")
    assert_no_holder_left(jail)
    assert_records_honest(jail, backup)
    assert not any(r["consistent"] for r in jail.records())


def test_mysql_unreachable_is_not_consistent(jail: Jail, mysql: Any) -> None:
    jail.configure_azure(6)
    jail.write_sections([("mysql", {"name": "main", "host": "127.0.0.1", "port": closed_port(),
                                    "user": "root", "connect_timeout": 2})], max_hold=MAX_HOLD)
    backup = jail.backup()
    assert (backup.pre.status, backup.pre.run.exit_code) == ("failed", 1), \
        backup.describe()
    assert "cannot reach" in backup.pre.run.output()
    assert_not_consistent(jail, backup)
    assert_no_holder_left(jail)
    assert unlocked(mysql)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def slow_holder(jail: Jail, seconds: float) -> tuple[Callable[[], None], threading.Event]:
    """A snapshot step that stops the holder (SIGSTOP) and lets it go on (SIGCONT) after
    ``seconds``, or as soon as the returned event is set: the post-script that follows waits
    that long for its answer, while the databases stay held."""
    resume = threading.Event()

    def snapshot() -> None:
        pid = int(jail.status()["holder_pid"])
        os.kill(pid, signal.SIGSTOP)

        def go_on() -> None:
            resume.wait(seconds)
            os.kill(pid, signal.SIGCONT)

        threading.Thread(target=go_on, daemon=True).start()

    return snapshot, resume


def test_mysql_post_slower_than_the_timeout_still_releases(jail: Jail, mysql: Any) -> None:
    """The hold spanned the snapshot, so the snapshot is consistent even though the runner
    gave up on the post-script; the post-script, never killed, releases everything."""
    jail.configure_azure(5)
    jail.write_sections([("mysql", mysql_section(mysql))], max_hold=MAX_HOLD)
    snapshot, resumed = slow_holder(jail, 9)
    backup = jail.backup(snapshot)
    try:
        assert backup.pre.status == "success", backup.describe()
        assert (backup.post.status, backup.post.code) == ("timeout", 309), \
            backup.describe()
        assert not unlocked(mysql)  # post has not got its answer yet: still held
    finally:
        resumed.set()
    assert_consistent(jail, backup)
    assert_no_holder_left(jail)
    assert unlocked(mysql)


def test_mysql_pre_failing_with_retries_runs_once(jail: Jail, mysql: Any) -> None:
    jail.configure_azure(6, pre_retries=2)
    jail.write_sections([("mysql", mysql_section(mysql, lock_wait_seconds=1))],
                        max_hold=MAX_HOLD)
    blocker = BackgroundStatement(mysql, long_update(30)).start()
    try:
        blocker.wait_state(("User sleep",))
        backup = jail.backup()
        assert (backup.pre.status, backup.pre.code) == ("failed", 300), backup.describe()
        assert (backup.pre.run.exit_code, backup.pre.run.attempts) == (1, 3)
        assert f"id {blocker.id}" in backup.pre.run.output()
        assert_not_consistent(jail, backup)
        assert unlocked(mysql, myisam=False)  # the blocker holds app.myi, nothing else does
    finally:
        blocker.close()
    assert_no_holder_left(jail)
    assert unlocked(mysql)


# ---------------------------------------------------------------------------- PostgreSQL
@pytest.fixture
def pg(postgresql_server: Any) -> Any:
    postgresql_server.execute("CREATE TABLE IF NOT EXISTS foreign_runner (v int)")
    return postgresql_server


def pg_unlocked(server: Any) -> bool:
    """No quiesce session left, and a write from another session goes through at once."""
    if server.backends("quiesce"):
        return False
    with server.connect() as conn:
        conn.execute("SET statement_timeout = '2s'")
        conn.execute("INSERT INTO foreign_runner (v) VALUES (1)")
    return True


def pg_section(conninfo: str, **options: Any) -> dict[str, Any]:
    return {"name": "main", "conninfo": conninfo, **options}


def copy_data_dir(server: Any, target: Path) -> Callable[[], None]:
    """A snapshot step that really snapshots the data disk: ``cp -a`` of the data directory."""
    def snapshot() -> None:
        subprocess.run(["cp", "-a", str(server.data_dir), str(target)], check=True, timeout=60)
    return snapshot


def add_wal(server: Any, target: Path) -> None:
    """The WAL disk, copied after 'post' (it must reach the end of the backup), next to the
    data copy, with the copy's pg_wal link pointed at it: so that a label restore-label
    refuses is refused for the run's consistency, not for missing WAL."""
    wal = Path(f"{target}-wal")
    subprocess.run(["cp", "-a", str(server.log_dir), str(wal)], check=True, timeout=60)
    link = target / "pg_wal"
    assert link.is_symlink(), f"{link} is not the link to a separate WAL directory"
    link.unlink()
    link.symlink_to(wal)


def restore_label(jail: Jail, server: Any, data_dir: Path,
                  *extra: str) -> subprocess.CompletedProcess:
    add_wal(server, data_dir)
    return jail.run("restore-label", "--state-dir", str(jail.state), *extra, str(data_dir))


def assert_label_refused(jail: Jail, server: Any, data_dir: Path) -> None:
    out = restore_label(jail, server, data_dir)
    assert out.returncode == 2, out.stdout + out.stderr
    assert not (data_dir / "backup_label").exists()


def test_postgresql_normal_backup_is_consistent_and_its_label_restores(jail: Jail,
                                                                       pg: Any) -> None:
    jail.configure_azure(8)
    jail.write_sections([("postgresql", pg_section(pg.conninfo))], max_hold=MAX_HOLD)
    copy = jail.root / "snap"
    backup = jail.backup(copy_data_dir(pg, copy))
    assert backup.pre.status == "success", backup.describe()
    assert backup.snapshot.taken, backup.snapshot.error
    report = assert_consistent(jail, backup)
    wait_for(lambda: pg_unlocked(pg), SETTLE, "the holding session to end")
    assert_no_holder_left(jail)
    out = restore_label(jail, pg, copy, "--run-id", report["run_id"])
    assert out.returncode == 0, out.stdout + out.stderr
    label = report["instances"][0]["metadata"]["backup_label"]
    assert (copy / "backup_label").read_text() == label


@pytest.mark.parametrize("timeout", [2, 6])
def test_postgresql_pre_slowed_by_the_network_is_never_consistent(jail: Jail, pg: Any,
                                                                  timeout: int) -> None:
    delay = timeout + 3
    copy = jail.root / "snap"
    with DelayProxy("127.0.0.1", pg.port, delay, lifetime=90) as proxy:
        jail.configure_azure(timeout)
        jail.write_sections([("postgresql", pg_section(
            f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres",
            connect_timeout=60))], max_hold=MAX_HOLD)
        backup = jail.backup(copy_data_dir(pg, copy))
        assert_slow_network_outcome(jail, backup, proxy)
        assert_no_holder_left(jail)
    wait_for(lambda: pg_unlocked(pg), SETTLE, "no quiesce session left")
    assert_records_honest(jail, backup)
    assert_label_refused(jail, pg, copy)


def checkpointer_pid(server: Any) -> int:
    (row,) = server.execute("SELECT pid FROM pg_stat_activity "
                            "WHERE backend_type = 'checkpointer'")
    return int(row[0])


def test_postgresql_pre_waiting_for_a_checkpoint_is_never_consistent(
        jail: Jail, postgresql_server_factory: Callable[..., Any]) -> None:
    """The checkpointer is stopped (SIGSTOP): pre's CHECKPOINT / pg_backup_start waits."""
    server = postgresql_server_factory()
    server.execute("CREATE TABLE foreign_runner (v int)")
    server.execute("INSERT INTO foreign_runner VALUES (1)")  # something to checkpoint
    jail.configure_azure(4)
    jail.write_sections([("postgresql", pg_section(server.conninfo))], max_hold=MAX_HOLD)
    copy = jail.root / "snap"
    with stopped(checkpointer_pid(server)):
        backup = jail.backup(copy_data_dir(server, copy))
        assert backup.pre.status != "success", backup.describe()
    # The checkpoint can complete now: a late acquisition must be undone at once.
    assert_not_consistent(jail, backup)
    wait_for(lambda: pg_unlocked(server), SETTLE, "no quiesce session left")
    assert_no_holder_left(jail)
    assert_records_honest(jail, backup)
    assert_label_refused(jail, server, copy)


def test_postgresql_unreachable_is_not_consistent(jail: Jail, pg: Any) -> None:
    jail.configure_azure(6)
    jail.write_sections([("postgresql", pg_section(
        f"host=127.0.0.1 port={closed_port()} user=postgres dbname=postgres",
        connect_timeout=2))], max_hold=MAX_HOLD)
    copy = jail.root / "snap"
    backup = jail.backup(copy_data_dir(pg, copy))
    assert (backup.pre.status, backup.pre.run.exit_code) == ("failed", 1), \
        backup.describe()
    assert "cannot connect" in backup.pre.run.output()
    assert_not_consistent(jail, backup)
    assert_no_holder_left(jail)
    assert pg_unlocked(pg)
    assert_label_refused(jail, pg, copy)


def test_postgresql_post_slower_than_the_timeout_still_releases(jail: Jail, pg: Any) -> None:
    jail.configure_azure(5)
    jail.write_sections([("postgresql", pg_section(pg.conninfo))], max_hold=MAX_HOLD)
    copy = jail.root / "snap"
    holder_pause, resumed = slow_holder(jail, 9)

    def snapshot() -> None:
        copy_data_dir(pg, copy)()
        holder_pause()

    backup = jail.backup(snapshot)
    try:
        assert backup.pre.status == "success", backup.describe()
        assert (backup.post.status, backup.post.code) == ("timeout", 309), \
            backup.describe()
        assert pg.backends("quiesce")  # post has not got its answer yet: still held
    finally:
        resumed.set()
    report = assert_consistent(jail, backup)
    wait_for(lambda: pg_unlocked(pg), SETTLE, "the holding session to end")
    out = restore_label(jail, pg, copy, "--run-id", report["run_id"])
    assert out.returncode == 0, out.stdout + out.stderr


def test_postgresql_pre_failing_with_retries_runs_once(jail: Jail, pg: Any) -> None:
    jail.configure_azure(6, pre_retries=2)
    jail.write_sections([("postgresql", pg_section(
        f"host=127.0.0.1 port={pg.port} user=postgres dbname=no_such_database"))],
        max_hold=MAX_HOLD)
    copy = jail.root / "snap"
    backup = jail.backup(copy_data_dir(pg, copy))
    assert (backup.pre.status, backup.pre.code) == ("failed", 300), backup.describe()
    assert (backup.pre.run.exit_code, backup.pre.run.attempts) == (1, 3)
    assert "no_such_database" in backup.pre.run.output()
    assert_not_consistent(jail, backup)
    assert_no_holder_left(jail)
    assert pg_unlocked(pg)
    assert_label_refused(jail, pg, copy)


def test_postgresql_snapshot_outlasting_the_hold_is_not_consistent(jail: Jail,
                                                                    pg: Any) -> None:
    """A snapshot slower than max_hold_seconds: the holder ends backup mode on its own in the
    middle of it. The label exists, but the run is not consistent: restore-label refuses it
    unless told --unsafe-accept-inconsistent."""
    jail.configure_azure(8)
    jail.write_sections([("postgresql", pg_section(pg.conninfo))], max_hold=3)
    copy = jail.root / "snap"

    def slow_snapshot() -> None:
        copy_data_dir(pg, copy)()
        wait_for(lambda: not pg.backends("quiesce"), 30,
                 "the holder to end backup mode at max_hold_seconds")

    backup = jail.backup(slow_snapshot)
    assert backup.pre.status == "success", backup.describe()
    assert backup.snapshot.taken, backup.snapshot.error
    report = assert_not_consistent(jail, backup)
    assert [i["status"] for i in report["instances"]] == ["auto-released"], report
    assert report["instances"][0]["metadata"].get("backup_label"), report
    assert_no_holder_left(jail)
    assert pg_unlocked(pg)
    assert_label_refused(jail, pg, copy)
    out = jail.run("restore-label", "--state-dir", str(jail.state),
                   "--unsafe-accept-inconsistent", str(copy))
    assert out.returncode == 0, out.stdout + out.stderr
    label = report["instances"][0]["metadata"]["backup_label"]
    assert (copy / "backup_label").read_text() == label


# ---------------------------------------------------------------------------- the holder alone
def waiting_lock_requests(mysql: Any, blocker: BackgroundStatement) -> list[Any]:
    """Sessions other than ``blocker`` that wait for a lock on the server."""
    return [t for t in mysql.threads()
            if t[0] != blocker.id and str(t[4] or "").startswith("Waiting for")]


def test_a_lock_not_granted_by_the_deadline_is_never_held(jail: Jail, mysql: Any) -> None:
    """`pre --deadline 1` while the lock waits behind an 8 s statement: pre exits 1 at its
    deadline, the holder's lock request is withdrawn from the server while the statement
    still runs (so it can never be granted later), nothing is held once the statement ends,
    and the record says the instance did not make the deadline, not consistent.

    The record's status is "late" if the grant came after the deadline (released at once),
    or "failed" with the deadline as its error if the request was withdrawn first: this
    holder exits at the deadline, closing the connection, so the server drops the request.
    """
    jail.write_sections([("mysql", mysql_section(mysql, lock_wait_seconds=30))],
                        max_hold=MAX_HOLD)
    blocker = BackgroundStatement(mysql, long_update(8)).start()
    try:
        blocker.wait_state(("User sleep",))
        out = jail.run("pre", "--deadline", "1", "--json")
        assert out.returncode == 1, out.stdout + out.stderr
        assert not blocker.finished.is_set()  # pre did not wait for the lock
        wait_for(lambda: not waiting_lock_requests(mysql, blocker), 3,
                 "the holder's lock request to leave the server")
        assert not blocker.finished.is_set()  # withdrawn while it could not be granted
    finally:
        blocker.close()  # the statement ends (KILL): the lock is free from now on
    wait_for(lambda: unlocked(mysql), SETTLE, "nothing held once the long statement ended")
    post = jail.run("post", "--json")
    assert post.returncode == 1, post.stdout + post.stderr
    assert json.loads(post.stdout)["consistent"] is False, post.stdout
    assert_no_holder_left(jail)  # its record is final
    (record,) = jail.records()
    assert record["consistent"] is False, record
    (inst,) = record["instances"]
    detail = json.dumps({k: record.get(k) for k in ("state", "instances", "log")}, indent=1)
    assert inst["status"] in ("late", "failed"), detail
    if inst["status"] == "failed":
        assert "deadline" in str(inst["error"]), detail
    assert inst["held_seconds"] in (None, 0) or inst["status"] == "late", detail


def pre_waiting_for_the_lock(jail: Jail, mysql: Any,
                             blocker: BackgroundStatement) -> subprocess.Popen[str]:
    """`quiesce pre` (no deadline) started in the background, once its holder's lock
    request waits behind ``blocker`` on the server."""
    argv = [sys.executable, "-m", "quiesce", "pre", "--config", str(jail.config),
            "--runtime-dir", str(jail.rundir), "--json"]
    pre = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd="/")
    wait_for(lambda: jail.rundir.exists() and jail.status().get("state") == "quiescing",
             30, "the holder to be acquiring")
    wait_for(lambda: any(t[0] != blocker.id and str(t[4] or "").startswith("Waiting for")
                         for t in mysql.threads()), 30, "the holder's lock request to wait")
    return pre


def test_an_abandoned_pre_leaves_no_hold(jail: Jail, mysql: Any) -> None:
    """`quiesce pre` SIGKILLed while its lock waits: the holder must not take the lock later
    (or must drop it at once), and `post` must not call anything consistent."""
    jail.write_sections([("mysql", mysql_section(mysql, lock_wait_seconds=30))],
                        max_hold=MAX_HOLD)
    blocker = BackgroundStatement(mysql, long_update(4)).start()
    pre: subprocess.Popen[str] | None = None
    try:
        blocker.wait_state(("User sleep",))
        pre = pre_waiting_for_the_lock(jail, mysql, blocker)
        pre.kill()
        pre.communicate(timeout=10)
        assert not blocker.finished.is_set()
        blocker.join(30)
    finally:
        if pre is not None and pre.poll() is None:
            pre.kill()
            pre.communicate(timeout=10)
        blocker.close()
    wait_for(lambda: unlocked(mysql), SETTLE, "nothing held after the abandoned pre")
    post = jail.run("post", "--json")
    assert post.returncode == 1, post.stdout + post.stderr
    report = json.loads(post.stdout)
    assert report["consistent"] is False, report
    assert_no_holder_left(jail)
    assert not any(r["consistent"] for r in jail.records())


def test_a_post_during_the_acquisition_aborts_it(jail: Jail, mysql: Any) -> None:
    """The hole of issue 7 without any caller: 'post' one second into a 'pre' whose lock
    waits must answer at once, 'aborted' and not consistent, never wait for the lock only
    to release it; the lock must not be taken afterwards."""
    jail.write_sections([("mysql", mysql_section(mysql, lock_wait_seconds=30))],
                        max_hold=MAX_HOLD)
    blocker = BackgroundStatement(mysql, long_update(5)).start()
    pre: subprocess.Popen[str] | None = None
    try:
        blocker.wait_state(("User sleep",))
        pre = pre_waiting_for_the_lock(jail, mysql, blocker)
        post = jail.run("post", "--json")
        assert not blocker.finished.is_set()  # answered without waiting for the lock
        assert post.returncode == 1, post.stdout + post.stderr
        report = json.loads(post.stdout)
        assert (report.get("state"), report.get("consistent")) == ("aborted", False), report
        assert all(i.get("status") != "released" for i in report.get("instances") or []), \
            report
        _, pre_err = pre.communicate(timeout=60)
        assert pre.returncode == 1, pre_err
        blocker.join(30)
    finally:
        if pre is not None and pre.poll() is None:
            pre.kill()
            pre.communicate(timeout=10)
        blocker.close()
    wait_for(lambda: unlocked(mysql), SETTLE, "nothing held after the aborted acquisition")
    assert_no_holder_left(jail)
    assert not any(r["consistent"] for r in jail.records())
