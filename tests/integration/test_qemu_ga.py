"""End to end with the real QEMU guest agent: ``quiesce install qemu-ga --prefix <jail>``, then
the agent (Debian's qemu-guest-agent, run inside a chroot whose every block device the test
made: see tests/helpers/qga_jail.py) freezes the jail's database filesystem through
``guest-fsfreeze-freeze-list`` and its default hook runs quiesce's hook.d script.

A throwaway MariaDB (the host's binaries) keeps its data on that filesystem, mounted at
/srv/db inside the jail; quiesce, inside the jail, reaches it over TCP on 127.0.0.1.

Never sent: ``guest-fsfreeze-freeze`` (blocked with -b as well). The agent never runs outside
its chroot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from helpers.mysql import write_error
from helpers.qga_jail import (
    QUIESCE_IN_JAIL,
    QgaJail,
    gave_up_after,
    jail_with_mariadb,
    mariadb_toml,
)

pytestmark = pytest.mark.timeout(1200)

DEADLINE = 8  # install --deadline: what the hook gives 'quiesce pre'
HOOK = "/etc/qemu/fsfreeze-hook.d/quiesce"


def _skip_reason() -> str | None:
    for tool in ("chroot", "losetup", "mkfs.ext4", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install coreutils mount e2fsprogs)"
    from quiesce_mysql.fixtures import mysql_unavailable_reason

    return mysql_unavailable_reason()


def _postgres_available() -> bool:
    """PostgreSQL joins MariaDB when its binaries are installed (./dev setup installs them)."""
    from quiesce.errors import QuiesceError
    from quiesce_postgresql.server import find_bindir

    try:
        find_bindir(None)
    except QuiesceError:
        return False
    return True


def _engines(setup: Setup) -> set[str]:
    return {"mysql", "postgresql"} if setup.jail.postgres is not None else {"mysql"}


def _mysql_instance(record: dict[str, Any]) -> dict[str, Any]:
    [instance] = [i for i in record["instances"] if i["plugin"] == "mysql"]
    return instance


class Setup:
    def __init__(self, jail: QgaJail, server: Any, install: subprocess.CompletedProcess[str]):
        self.jail = jail
        self.server = server
        self.install = install

    def quiesce(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.jail.chroot(QUIESCE_IN_JAIL, *args, check=False)

    def status(self) -> dict[str, Any]:
        out = self.quiesce("status", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)

    def latest_record(self, before: int) -> dict[str, Any]:
        records = self.jail.records()
        assert len(records) == before + 1, [r.get("state") for r in records]
        return records[-1]

    def write_error(self) -> int | None:
        """See helpers.mysql.write_error: 1205 while held, None once writes go through."""
        return write_error(self.server)


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mount, chroot and FIFREEZE are root-only")
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with jail_with_mariadb(postgres=_postgres_available()) as (jail, server):
        install = subprocess.run(
            [sys.executable, "-m", "quiesce", "install", "qemu-ga", "--prefix", str(jail.root),
             "--quiesce", QUIESCE_IN_JAIL, "--deadline", str(DEADLINE), "--plugins", "mysql"],
            capture_output=True, text=True, timeout=120, check=False, cwd="/")
        if install.returncode == 0:
            # The DBA's part: describe the database.
            jail.host("/etc/quiesce/quiesce.toml").write_text(
                mariadb_toml(server, postgres=jail.postgres))
        jail.start_agent()
        yield Setup(jail, server, install)


def test_install_writes_the_hook_into_the_jail_as_seen_from_inside(setup: Setup) -> None:
    assert setup.install.returncode == 0, setup.install.stdout + setup.install.stderr
    hook = setup.jail.host(HOOK)
    st = hook.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700)
    text = hook.read_text()
    # Paths as seen from inside the jail, never the host's view of it.
    assert f"{QUIESCE_IN_JAIL} pre --config /etc/quiesce/quiesce.toml --deadline {DEADLINE}" \
        in text
    assert str(setup.jail.root) not in text
    conf = setup.jail.host("/etc/qemu/qemu-ga.conf").read_text()
    assert "fsfreeze-hook=/etc/qemu/fsfreeze-hook" in conf
    manifest = json.loads(setup.jail.host("/var/lib/quiesce/installed/qemu-ga.json")
                          .read_text())
    assert {f["path"] for f in manifest["files"]} >= {HOOK, "/etc/qemu/qemu-ga.conf",
                                                      "/etc/quiesce/quiesce.toml"}
    check = setup.quiesce("check", "--agent", "qemu-ga")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"deadline {DEADLINE} s" in check.stdout


def test_the_jail_sees_only_block_devices_the_test_created(setup: Setup) -> None:
    setup.jail.assert_only_own_devices()
    mounts = setup.jail.block_mounts()
    assert len(mounts) == 2  # the jail's root and /srv/db, both loop devices of this test


def test_freeze_holds_the_database_and_thaw_releases_it(setup: Setup) -> None:
    jail = setup.jail
    before = len(jail.records())
    assert jail.freeze_db() == {"return": 1}
    try:
        assert jail.command("guest-fsfreeze-status") == {"return": "frozen"}
        # The database lock refuses the write at once; it never reaches the frozen disk.
        assert setup.write_error() == 1205
        status = setup.status()
        assert status["held"] is True and status["state"] == "holding", status
        assert {(i["plugin"], i["status"]) for i in status["instances"]} == {
            (engine, "held") for engine in _engines(setup)}
    finally:
        thawed = jail.thaw()
    assert thawed["return"] >= 1, thawed
    assert setup.write_error() is None  # writes go through again
    record = setup.latest_record(before)
    assert record["consistent"] is True and record["state"] == "released", record
    assert {(i["plugin"], i["status"]) for i in record["instances"]} == {
        (engine, "released") for engine in _engines(setup)}
    log = jail.hook_log()
    assert f"execute {HOOK} freeze" in log and f"execute {HOOK} thaw" in log
    assert f"{HOOK} finished with status=0" in log


def test_a_failed_pre_is_in_the_record_status_and_agent_log(setup: Setup) -> None:
    """The default hook ignores the hook.d script's status: the agent freezes anyway, so the
    failure must be visible everywhere else."""
    jail = setup.jail
    before = len(jail.records())
    setup.server.stop()
    try:
        assert jail.freeze_db() == {"return": 1}  # frozen without the database lock
        try:
            status = setup.status()
            assert status["held"] is False
            failed = status.get("uncollected") or status
            assert failed.get("state") == "failed", status
            shown = setup.quiesce("status")
            assert "NOT application-consistent" in shown.stdout, shown.stdout
            log = jail.hook_log()
            assert "quiesce-qemu-ga: FAILED: quiesce pre exited 1" in log, log
            assert "NOT application-consistent" in log
        finally:
            jail.thaw()
        record = setup.latest_record(before)
        assert record["consistent"] is False and record["state"] == "failed", record
        log = jail.hook_log()
        assert "quiesce-qemu-ga: FAILED: quiesce post exited 1" in log, log
    finally:
        setup.server.start()


def test_a_hung_database_does_not_hang_the_agent_past_the_hook_deadline(setup: Setup) -> None:
    from quiesce_mysql.fixtures import BackgroundStatement

    jail = setup.jail
    before = len(jail.records())
    blocker = BackgroundStatement(
        setup.server, "UPDATE app.myi SET v = v + SLEEP(300) WHERE id = 1").start()
    try:
        blocker.wait_state(("User sleep",))
        # qemu-ga has no hook timeout: only the hook's deadline can end this call. The socket
        # timeout is far above it, so a hang shows up as a timeout error here.
        answer = jail.freeze_db(timeout=DEADLINE + 120)
        assert answer == {"return": 1}, answer
        assert not blocker.finished.is_set()  # the database was still hung
        try:
            assert setup.status()["held"] is False
            log = jail.hook_log()
            assert "quiesce-qemu-ga: FAILED: quiesce pre exited 1" in log, log
        finally:
            jail.thaw()
        record = setup.latest_record(before)
        assert record["consistent"] is False, record
        # The deadline ended it, not the engine's own lock_wait_seconds (600): the record
        # names the statement that hung the database and the wait it gave up after.
        assert record["state"] == "failed", record
        instance = _mysql_instance(record)
        assert instance["status"] == "failed", instance
        assert gave_up_after(instance["error"], blocker.id) <= DEADLINE, instance
    finally:
        blocker.close()
