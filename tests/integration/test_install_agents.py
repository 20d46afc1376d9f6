"""``quiesce install qemu-ga | vmware | gce | aws`` into a tree (``--prefix``) and ``quiesce
check --agent`` on it: files, owners and modes, paths as seen inside the tree, the manifest,
idempotence, --force backups (never inside a directory the agent runs whole), the agent's own
configuration never replaced, --dry-run, refusals; and check's problems for a hook or a
switch that is wrong. The hooks themselves run in tests/integration/test_agent_hooks.py and
test_qemu_ga.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

QUIESCE = "/opt/q/bin/quiesce"


@pytest.fixture
def tree(require_root: None) -> Iterator[Path]:
    """A tree with a quiesce launcher inside it (a #!/bin/sh script; /bin/sh present)."""
    base = Path(tempfile.mkdtemp(prefix="qia-", dir="/run"))
    root = base / "root"
    try:
        (root / "opt/q/bin").mkdir(parents=True)
        (root / "bin").mkdir()
        (root / "bin/sh").write_text("")
        (root / "bin/sh").chmod(0o755)
        launcher = root / QUIESCE.lstrip("/")
        launcher.write_text("#!/bin/sh\nexit 0\n")
        launcher.chmod(0o755)
        for path in (base, root, root / "opt", root / "opt/q", root / "opt/q/bin"):
            path.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def quiesce(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quiesce", *args], capture_output=True,
                          text=True, timeout=120, cwd="/", check=False)


def install(root: Path, agent: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return quiesce("install", agent, "--prefix", str(root), "--quiesce", QUIESCE,
                   "--plugins", "postgresql", *extra)


def check(root: Path, agent: str) -> subprocess.CompletedProcess[str]:
    return quiesce("check", "--agent", agent, "--prefix", str(root))


def manifest(root: Path, agent: str) -> dict:
    path = root / f"var/lib/quiesce/installed/{agent}.json"
    st = path.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    return json.loads(path.read_text())


def mode_of(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, stat.S_IMODE(st.st_mode)


def test_vmware_files_manifest_and_idempotence(tree: Path) -> None:
    done = install(tree, "vmware")
    assert done.returncode == 0, done.stdout + done.stderr
    hook = tree / "etc/vmware-tools/backupScripts.d/quiesce"
    assert mode_of(hook) == (0, 0o700)
    text = hook.read_text()
    assert f"{QUIESCE} pre --config /etc/quiesce/quiesce.toml --deadline 60" in text
    assert "freezeFail)" in text and "--caller-failed" in text
    assert str(tree) not in text  # paths as seen inside the tree
    assert "execScripts = true" in (tree / "etc/vmware-tools/tools.conf").read_text()
    assert mode_of(tree / "etc/quiesce/quiesce.toml") == (0, 0o600)
    document = manifest(tree, "vmware")
    assert document["version"] == 1 and document["agent"] == "vmware"
    assert document["prefix"] == str(tree) and document["backups"] == []
    files = {f["path"]: f for f in document["files"]}
    assert set(files) == {"/etc/vmware-tools/backupScripts.d/quiesce",
                          "/etc/vmware-tools/tools.conf", "/etc/quiesce/quiesce.toml"}
    entry = files["/etc/vmware-tools/backupScripts.d/quiesce"]
    assert entry == {"path": "/etc/vmware-tools/backupScripts.d/quiesce", "mode": "0700",
                     "action": "create",
                     "sha256": hashlib.sha256(hook.read_bytes()).hexdigest()}
    again = install(tree, "vmware")
    assert again.returncode == 0 and "unchanged" in again.stdout
    # Still "create": uninstall must know quiesce made these files.
    assert {f["action"] for f in manifest(tree, "vmware")["files"]} == {"create"}


def test_force_keeps_backups_out_of_the_directory_the_agent_runs(tree: Path) -> None:
    assert install(tree, "vmware").returncode == 0
    hook = tree / "etc/vmware-tools/backupScripts.d/quiesce"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o700)
    refused = install(tree, "vmware")
    assert refused.returncode == 2 and "nothing was written" in refused.stderr
    assert hook.read_text() == "#!/bin/sh\nexit 0\n"
    tools_conf = tree / "etc/vmware-tools/tools.conf"
    tools_conf.write_text("[vmbackup]\ntimeout = 600\n")  # the admin's own settings
    forced = install(tree, "vmware", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    # VMware runs every file in backupScripts.d: the backup must not be one of them.
    assert os.listdir(hook.parent) == ["quiesce"]
    backups = list((tree / "etc/quiesce/install-backups").iterdir())
    assert [b.read_text() for b in backups] == ["#!/bin/sh\nexit 0\n"]
    document = manifest(tree, "vmware")
    assert document["backups"] == [f"/etc/quiesce/install-backups/{backups[0].name}"]
    actions = {f["path"]: f["action"] for f in document["files"]}
    assert actions["/etc/vmware-tools/backupScripts.d/quiesce"] == "replace"
    # The agent's configuration is never replaced, not even with --force; not in the
    # manifest either (quiesce did not write it).
    assert tools_conf.read_text() == "[vmbackup]\ntimeout = 600\n"
    assert "/etc/vmware-tools/tools.conf" not in actions


def test_dry_run_writes_nothing(tree: Path) -> None:
    done = install(tree, "gce", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "would create it" in done.stdout and "[Snapshots]" in done.stdout
    assert not (tree / "etc").exists() and not (tree / "var").exists()


def test_qemu_ga_direct_hook_and_its_switch(tree: Path) -> None:
    done = install(tree, "qemu-ga", "--hook", "direct", "--deadline", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    hook = tree / "etc/qemu/quiesce-fsfreeze-hook"
    assert mode_of(hook) == (0, 0o700)
    text = hook.read_text()
    assert "exec >>/var/log/qga-fsfreeze-hook.log 2>&1" in text
    assert "--deadline 20" in text and "qemu-ga refuses the freeze" in text
    conf = (tree / "etc/qemu/qemu-ga.conf").read_text()
    assert "fsfreeze-hook=/etc/qemu/quiesce-fsfreeze-hook" in conf
    assert not (tree / "etc/qemu/fsfreeze-hook.d").exists()
    out = check(tree, "qemu-ga")
    assert out.returncode == 0, out.stdout
    assert "pre's deadline 20 s" in out.stdout and "qemu-ga refuses the freeze" in out.stdout


def test_qemu_ga_check_warns_when_the_agent_runs_no_hook(tree: Path) -> None:
    conf = tree / "etc/qemu/qemu-ga.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[general]\nverbose=1\n")
    done = install(tree, "qemu-ga")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "set 'fsfreeze-hook=/etc/qemu/fsfreeze-hook'" in done.stdout
    assert conf.read_text() == "[general]\nverbose=1\n"  # the agent's own file: left alone
    out = check(tree, "qemu-ga")
    assert "WARNING: /etc/qemu/qemu-ga.conf does not enable the hook" in out.stdout
    # The distro's default hook that runs fsfreeze-hook.d is not in this tree.
    assert "problem AgentSwitchOff: /etc/qemu/fsfreeze-hook" in out.stdout
    assert out.returncode == 2


def test_aws_document_and_deadline_limits(tree: Path) -> None:
    too_long = install(tree, "aws", "--deadline", "115")
    assert too_long.returncode == 2 and "--deadline 110 or less" in too_long.stderr
    done = install(tree, "aws", "--deadline", "40")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ExecutionTimeout 50" in done.stdout and "MaximumRetryCount 0" in done.stdout
    document = (tree / "etc/quiesce/aws/quiesce-dlm-document.yaml").read_text()
    assert 'schemaVersion: "2.2"' in document
    assert '- "/etc/quiesce/aws/quiesce-dlm-hook {{ command }}"' in document
    assert 'timeoutSeconds: "50"' in document
    for value in ("pre-script", "post-script", "dry-run"):
        assert f'      - "{value}"' in document
    out = check(tree, "aws")
    assert out.returncode == 0, out.stdout
    assert "ExecutionTimeout must be at least 50" in out.stdout


def test_check_reports_a_writable_hook_and_switches_that_are_off(tree: Path) -> None:
    conf = tree / "etc/default/instance_configs.cfg"
    conf.parent.mkdir(parents=True)
    conf.write_text("[Snapshots]\nenabled = false\ntimeout_in_seconds = 30\n")
    assert install(tree, "gce", "--deadline", "28").returncode == 0
    assert install(tree, "vmware").returncode == 0
    (tree / "etc/google/snapshots/pre.sh").chmod(0o722)
    tools_conf = tree / "etc/vmware-tools/tools.conf"
    tools_conf.write_text("[vmbackup]\nexecScripts = false\n")
    gce = check(tree, "gce")
    assert gce.returncode == 2
    assert "pre.sh is writable by group/other (mode 0722)" in gce.stdout
    assert "snapshot scripts are not enabled" in gce.stdout
    assert ("problem DeadlineDoesNotFit: pre's deadline 28 s does not fit timeout_in_seconds "
            "30") in gce.stdout
    vmware = check(tree, "vmware")
    assert vmware.returncode == 2 and "sets execScripts = false" in vmware.stdout
    hook = tree / "etc/vmware-tools/backupScripts.d/quiesce"
    hook.write_text(hook.read_text().replace(" --caller-failed", " --json  #"))
    assert "does not release with 'quiesce post --caller-failed'" in check(tree, "vmware").stdout


def test_a_quiesce_missing_or_replaceable_inside_the_tree_is_refused(tree: Path) -> None:
    missing = quiesce("install", "gce", "--prefix", str(tree), "--quiesce", "/usr/bin/nope")
    assert missing.returncode == 2 and "does not exist inside" in missing.stderr
    assert "--quiesce" in missing.stderr
    (tree / "opt/q/bin").chmod(0o777)
    unsafe = install(tree, "gce")
    assert unsafe.returncode == 2, unsafe.stdout
    assert "/opt/q/bin (inside" in unsafe.stderr and "writable by group/other" in unsafe.stderr
    assert not (tree / "etc").exists()


def test_azure_install_writes_its_manifest(tree: Path) -> None:
    done = quiesce("install", "azure", "--prefix", str(tree), "--plugins", "postgresql")
    assert done.returncode == 0, done.stdout + done.stderr
    files = {f["path"] for f in manifest(tree, "azure")["files"]}
    assert files == {"/etc/azure/VMSnapshotScriptPluginConfig.json",
                     "/etc/azure/quiesce-pre.sh", "/etc/azure/quiesce-post.sh",
                     "/etc/quiesce/quiesce.toml"}
