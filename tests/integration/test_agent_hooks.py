"""The hooks of ``install vmware | gce | aws``, driven with each agent's documented calling
convention, inside a chroot (tests/helpers/qga_jail.py) whose quiesce reaches a throwaway
MariaDB over TCP:

- VMware Tools: ``freeze``, then ``thaw`` or ``freezeFail`` (released and recorded NOT
  consistent with VMware's reason);
- Compute Engine: ``pre.sh DISKS`` / ``post.sh DISKS``, and the agent's timeout
  (``timeout_in_seconds``) against a hung database: pre.sh ends on its own before it;
- Data Lifecycle Manager: the SSM document's own runCommand with its ``command`` parameter
  substituted as SSM does (``pre-script``, ``post-script``, ``dry-run``), and a value outside
  its allowedValues refused.

The installs go into the chroot with ``--prefix``; nothing is written outside it.
"""

from __future__ import annotations

import json
import os
import re
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

VMWARE_HOOK = "/etc/vmware-tools/backupScripts.d/quiesce"
GCE_PRE, GCE_POST = "/etc/google/snapshots/pre.sh", "/etc/google/snapshots/post.sh"
GCE_TIMEOUT = 20  # timeout_in_seconds in the instance configs written before install
AWS_DOCUMENT = "/etc/quiesce/aws/quiesce-dlm-document.yaml"


class Env:
    def __init__(self, jail: QgaJail, server: Any) -> None:
        self.jail = jail
        self.server = server

    def install(self, agent: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "quiesce", "install", agent, "--prefix", str(self.jail.root),
             "--quiesce", QUIESCE_IN_JAIL, "--plugins", "mysql", *extra],
            capture_output=True, text=True, timeout=120, check=False, cwd="/")

    def hook(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a hook inside the jail the way the agent runs it: argv, no stdin."""
        return self.jail.chroot(*argv, check=False, timeout=timeout)

    def status(self) -> dict[str, Any]:
        out = self.jail.chroot(QUIESCE_IN_JAIL, "status", "--json", check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)

    def new_record(self, before: int) -> dict[str, Any]:
        records = self.jail.records()
        assert len(records) == before + 1, [r.get("state") for r in records]
        return records[-1]


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mount and chroot are root-only")
    for tool in ("chroot", "losetup", "mkfs.ext4", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    from quiesce_mysql.fixtures import mysql_unavailable_reason

    reason = mysql_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with jail_with_mariadb() as (jail, server):
        # The guest agent's own settings, as a DBA would have them before installing.
        conf = jail.host("/etc/default/instance_configs.cfg")
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(f"[Snapshots]\nenabled = true\ntimeout_in_seconds = {GCE_TIMEOUT}\n")
        environment = Env(jail, server)
        for agent in ("vmware", "gce", "aws"):
            done = environment.install(agent)
            assert done.returncode == 0, done.stdout + done.stderr
        jail.host("/etc/quiesce/quiesce.toml").write_text(mariadb_toml(server))
        yield environment




def test_every_install_passes_check(env: Env) -> None:
    for agent in ("vmware", "gce", "aws"):
        out = env.jail.chroot(QUIESCE_IN_JAIL, "check", "--agent", agent, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "all good" in out.stdout
    # With no --agent, check finds the three manifests.
    out = env.jail.chroot(QUIESCE_IN_JAIL, "check", check=False)
    assert out.returncode == 0, out.stdout
    assert [line for line in out.stdout.splitlines() if line.startswith("quiesce check")] == [
        "quiesce check vmware", "quiesce check gce", "quiesce check aws"]


def test_vmware_freeze_then_thaw_is_consistent(env: Env) -> None:
    before = len(env.jail.records())
    freeze = env.hook(VMWARE_HOOK, "freeze")
    assert freeze.returncode == 0, freeze.stdout + freeze.stderr
    assert env.status()["state"] == "holding"
    assert write_error(env.server, 3) == 1205
    thaw = env.hook(VMWARE_HOOK, "thaw")
    assert thaw.returncode == 0, thaw.stdout + thaw.stderr
    assert write_error(env.server, 3) is None
    record = env.new_record(before)
    assert record["consistent"] is True and record["state"] == "released", record


def test_vmware_freeze_fail_releases_and_records_not_consistent(env: Env) -> None:
    before = len(env.jail.records())
    assert env.hook(VMWARE_HOOK, "freeze").returncode == 0
    failed = env.hook(VMWARE_HOOK, "freezeFail")
    assert failed.returncode == 0, failed.stdout + failed.stderr  # the snapshot already failed
    assert "VMware Tools reported freezeFail" in failed.stderr
    assert write_error(env.server, 3) is None  # released
    record = env.new_record(before)
    assert record["consistent"] is False, record
    assert "VMware Tools reported freezeFail" in record["message"], record
    assert env.status()["held"] is False


def test_vmware_passes_script_arg_through_harmlessly(env: Env) -> None:
    """tools.conf's scriptArg comes as a second argument."""
    before = len(env.jail.records())
    assert env.hook(VMWARE_HOOK, "freeze", "nightly").returncode == 0
    assert env.hook(VMWARE_HOOK, "thaw", "nightly").returncode == 0
    assert env.new_record(before)["consistent"] is True
    unknown = env.hook(VMWARE_HOOK, "snapshot")
    assert unknown.returncode == 2 and "unknown argument 'snapshot'" in unknown.stderr


def test_gce_pre_and_post_with_the_disk_list(env: Env) -> None:
    before = len(env.jail.records())
    pre = env.hook(GCE_PRE, "disk-1,disk-2", timeout=GCE_TIMEOUT)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    assert write_error(env.server, 3) == 1205
    post = env.hook(GCE_POST, "disk-1,disk-2", timeout=GCE_TIMEOUT)
    assert post.returncode == 0, post.stdout + post.stderr
    assert env.new_record(before)["consistent"] is True


def test_gce_pre_ends_before_the_agent_timeout_on_a_hung_database(env: Env) -> None:
    """The guest agent kills pre.sh at timeout_in_seconds (exit 124): the hook's deadline,
    below it, ends pre first, holding nothing, and says so."""
    from quiesce_mysql.fixtures import BackgroundStatement

    before = len(env.jail.records())
    blocker = BackgroundStatement(
        env.server, "UPDATE app.myi SET v = v + SLEEP(300) WHERE id = 1").start()
    try:
        blocker.wait_state(("User sleep",))
        # subprocess's timeout plays the agent's: TimeoutExpired would mean killed by it.
        pre = env.hook(GCE_PRE, "disk-1", timeout=GCE_TIMEOUT)
        assert pre.returncode == 1, pre.stdout + pre.stderr
        assert "quiesce-gce-pre: FAILED: quiesce pre exited 1" in pre.stderr
        assert not blocker.finished.is_set()  # the database was still hung
        assert env.status()["held"] is False
        record = env.new_record(before)
        assert record["state"] == "failed" and record["consistent"] is False, record
        [instance] = record["instances"]
        deadline = GCE_TIMEOUT - 5  # install's default: timeout_in_seconds less its margin
        assert gave_up_after(instance["error"], blocker.id) <= deadline, instance
    finally:
        blocker.close()
    post = env.hook(GCE_POST, "disk-1")  # the agent's post-snapshot call collects the failure
    assert post.returncode == 1 and "NOT application-consistent" in post.stderr


def ssm_run_command(env: Env, command: str) -> subprocess.CompletedProcess[str]:
    """What SSM's aws:runShellScript runs for the document's step: its runCommand line with
    ``{{ command }}`` replaced by the parameter's value, through /bin/sh."""
    text = env.jail.host(AWS_DOCUMENT).read_text()
    allowed = re.findall(r'^\s+- ("(?:pre|post)-script"|"dry-run")$', text, re.MULTILINE)
    if json.dumps(command) not in allowed:
        raise ValueError(f"SSM refuses {command!r}: not in allowedValues {allowed}")
    line = re.search(r"runCommand:\n\s+- (.+)$", text, re.MULTILINE)
    assert line is not None, text
    script = json.loads(line.group(1)).replace("{{ command }}", command)
    return env.hook("/bin/sh", "-c", script)


def test_aws_document_runs_pre_post_and_dry_run(env: Env) -> None:
    before = len(env.jail.records())
    pre = ssm_run_command(env, "pre-script")
    assert pre.returncode == 0, pre.stdout + pre.stderr
    assert write_error(env.server, 3) == 1205
    post = ssm_run_command(env, "post-script")
    assert post.returncode == 0, post.stdout + post.stderr
    assert env.new_record(before)["consistent"] is True
    dry = ssm_run_command(env, "dry-run")
    assert dry.returncode == 0 and "quiesce check aws" in dry.stdout, dry.stdout + dry.stderr
    assert len(env.jail.records()) == before + 1  # dry-run holds nothing
    with pytest.raises(ValueError, match="allowedValues"):
        ssm_run_command(env, "pre-script; reboot")
    direct = env.hook("/etc/quiesce/aws/quiesce-dlm-hook", "snapshot")
    assert direct.returncode == 2 and "unknown command 'snapshot'" in direct.stderr


def test_aws_pre_failure_is_reported_with_dlm_consequence(env: Env) -> None:
    before = len(env.jail.records())
    env.server.stop()
    try:
        pre = ssm_run_command(env, "pre-script")
        assert pre.returncode == 1, pre.stdout + pre.stderr
        assert "crash-consistent snapshot: NOT application-consistent" in pre.stderr
        post = ssm_run_command(env, "post-script")
        assert post.returncode == 1
    finally:
        env.server.start()
    record = env.new_record(before)
    assert record["state"] == "failed" and record["consistent"] is False
