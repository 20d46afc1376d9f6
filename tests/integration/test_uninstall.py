"""``quiesce uninstall``: exactly what the install manifest lists, never a changed file.

Manifests written by the test (the format of quiesce.callers.install.base) exercise each
rule; the last tests install for real (qemu-ga and azure into a --prefix tree) and uninstall.
Root-owned trees under /run: a manifest must be trusted like a config.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import private_dir

pytestmark = pytest.mark.timeout(180)


def quiesce(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quiesce", *args], capture_output=True,
                          text=True, timeout=120, cwd="/", check=False)


@pytest.fixture
def tree(require_root: None) -> Iterator[Path]:
    with private_dir("qun-") as base:
        root = base / "root"
        root.mkdir(mode=0o755)
        yield root


def put(root: Path, inner: str, content: bytes, mode: int) -> Path:
    path = root / inner.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def manifest(root: Path, agent: str, files: list[tuple[str, bytes, int, str]],
             backups: list[str] | None = None, **extra: object) -> Path:
    document = {"version": 1, "agent": agent, "prefix": str(root),
                "installed_at": "2026-11-30T00:00:00+00:00",
                "files": [{"path": inner, "sha256": hashlib.sha256(content).hexdigest(),
                           "mode": f"{mode:04o}", "action": action}
                          for inner, content, mode, action in files],
                "backups": backups or [], **extra}
    directory = root / "var/lib/quiesce/installed"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{agent}.json"
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)
    return path


def test_removes_what_it_created_and_leaves_what_was_there(tree: Path) -> None:
    hook = put(tree, "/etc/qemu/fsfreeze-hook.d/quiesce", b"#!/bin/sh\n", 0o700)
    conf = put(tree, "/etc/qemu/qemu-ga.conf", b"[general]\n", 0o644)
    mine = put(tree, "/etc/qemu/other", b"not ours\n", 0o644)
    path = manifest(tree, "qemu-ga", [("/etc/qemu/fsfreeze-hook.d/quiesce", b"#!/bin/sh\n",
                                       0o700, "create"),
                                      ("/etc/qemu/qemu-ga.conf", b"[general]\n", 0o644, "same")])
    dry = quiesce("uninstall", "qemu-ga", "--prefix", str(tree), "--dry-run")
    assert dry.returncode == 0 and hook.exists() and path.exists()
    assert f"would remove: {hook}" in dry.stdout
    proc = quiesce("uninstall", "qemu-ga", "--prefix", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert not hook.exists() and not path.exists()
    assert conf.read_bytes() == b"[general]\n" and mine.exists()
    assert f"left: {conf} (was already there before the install)" in proc.stdout


def test_a_changed_file_stops_everything_unless_kept(tree: Path) -> None:
    hook = put(tree, "/etc/qemu/fsfreeze-hook.d/quiesce", b"#!/bin/sh\n", 0o700)
    toml = put(tree, "/etc/quiesce/quiesce.toml", b"[[postgresql]]\nedited\n", 0o600)
    path = manifest(tree, "qemu-ga", [
        ("/etc/qemu/fsfreeze-hook.d/quiesce", b"#!/bin/sh\n", 0o700, "create"),
        ("/etc/quiesce/quiesce.toml", b"# skeleton\n", 0o600, "create")])
    proc = quiesce("uninstall", "qemu-ga", "--prefix", str(tree))
    assert proc.returncode == 2
    assert f"{toml}: its content changed since the install" in proc.stderr
    assert "nothing was removed" in proc.stderr and "--keep-changed" in proc.stderr
    assert hook.exists() and path.exists()  # all or nothing
    proc = quiesce("uninstall", "qemu-ga", "--prefix", str(tree), "--keep-changed")
    assert proc.returncode == 0, proc.stderr
    assert not hook.exists() and not path.exists()
    assert toml.read_bytes() == b"[[postgresql]]\nedited\n"


def test_a_changed_mode_or_a_symlink_counts_as_changed(tree: Path) -> None:
    hook = put(tree, "/etc/hook", b"x\n", 0o755)
    target = put(tree, "/etc/target", b"y\n", 0o600)
    (tree / "etc/link").symlink_to(target)
    manifest(tree, "gce", [("/etc/hook", b"x\n", 0o700, "create"),
                           ("/etc/link", b"y\n", 0o600, "create")])
    proc = quiesce("uninstall", "gce", "--prefix", str(tree), "--json", "--dry-run")
    assert proc.returncode == 2
    steps = {f["path"]: (f["action"], f["why"]) for f in json.loads(proc.stdout)["files"]}
    assert steps == {"/etc/hook": ("changed", "its mode is 0755, the install wrote 0700"),
                     "/etc/link": ("changed", "is no longer a regular file")}
    assert hook.exists() and target.exists()


def test_a_replaced_file_gets_its_previous_version_back(tree: Path) -> None:
    config = put(tree, "/etc/azure/VMSnapshotScriptPluginConfig.json", b"{quiesce}\n", 0o600)
    put(tree, "/etc/azure/VMSnapshotScriptPluginConfig.json.bak-20260101T000000", b"{old}\n",
        0o600)
    put(tree, "/etc/azure/VMSnapshotScriptPluginConfig.json.bak-20260201T000000", b"{older}\n",
        0o600)
    manifest(tree, "azure", [("/etc/azure/VMSnapshotScriptPluginConfig.json", b"{quiesce}\n",
                              0o600, "replace")],
             backups=["/etc/azure/VMSnapshotScriptPluginConfig.json.bak-20260101T000000",
                      "/etc/azure/VMSnapshotScriptPluginConfig.json.bak-20260201T000000"])
    proc = quiesce("uninstall", "azure", "--prefix", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert config.read_bytes() == b"{older}\n"  # the newest backup is the state before
    assert "restored" in proc.stdout


def test_a_backup_that_is_an_older_quiesce_hook_is_not_put_back(tree: Path) -> None:
    """An upgrade re-ran 'install --force' over quiesce's own older hook: that backup is not
    the state before quiesce, so uninstall removes the hook and leaves the backup."""
    new = b"#!/bin/sh\n# Azure VM Backup pre-script, installed by 'quiesce install azure'.\nnew\n"
    old = new.replace(b"new", b"old")
    hook = put(tree, "/etc/azure/quiesce-pre.sh", new, 0o700)
    backup = put(tree, "/etc/azure/quiesce-pre.sh.bak-20260101T000000", old, 0o700)
    manifest(tree, "azure", [("/etc/azure/quiesce-pre.sh", new, 0o700, "replace")],
             backups=["/etc/azure/quiesce-pre.sh.bak-20260101T000000"])
    proc = quiesce("uninstall", "azure", "--prefix", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert not hook.exists() and backup.read_bytes() == old
    assert "is an older quiesce hook" in proc.stdout


def test_a_file_another_install_lists_is_left(tree: Path) -> None:
    toml = put(tree, "/etc/quiesce/quiesce.toml", b"# skeleton\n", 0o600)
    manifest(tree, "azure", [("/etc/quiesce/quiesce.toml", b"# skeleton\n", 0o600, "create")])
    manifest(tree, "qemu-ga", [("/etc/quiesce/quiesce.toml", b"# skeleton\n", 0o600, "same")])
    proc = quiesce("uninstall", "azure", "--prefix", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert toml.exists() and "the qemu-ga install uses it too" in proc.stdout


def test_an_untrusted_or_unknown_manifest_is_refused(tree: Path) -> None:
    put(tree, "/etc/hook", b"x\n", 0o700)
    path = manifest(tree, "vmware", [("/etc/hook", b"x\n", 0o700, "create")])
    os.chmod(path, 0o666)
    proc = quiesce("uninstall", "vmware", "--prefix", str(tree))
    assert proc.returncode == 2 and "cannot be trusted" in proc.stderr
    assert (tree / "etc/hook").exists()
    manifest(tree, "vmware", [("/etc/hook", b"x\n", 0o700, "create")], version=2)
    (tree / "var/lib/quiesce/installed/vmware.json").write_text(
        json.dumps({"version": 2, "files": []}))
    proc = quiesce("uninstall", "vmware", "--prefix", str(tree))
    assert proc.returncode == 2 and "manifest version 2" in proc.stderr
    manifest(tree, "vmware", [("/etc/../etc/passwd", b"x\n", 0o644, "create")])
    proc = quiesce("uninstall", "vmware", "--prefix", str(tree))
    assert proc.returncode == 2 and "not an absolute, normalised path" in proc.stderr
    proc = quiesce("uninstall", "aws", "--prefix", str(tree))
    assert proc.returncode == 2 and "left no manifest" in proc.stderr


def test_install_then_uninstall_qemu_ga_leaves_the_tree_as_it_was(tree: Path) -> None:
    # The quiesce the hooks would run, inside the tree (an ELF: no interpreter to check).
    binary = tree / "opt/quiesce/bin/quiesce"
    binary.parent.mkdir(parents=True, mode=0o755)
    shutil.copy("/bin/true", binary)
    os.chmod(binary, 0o755)
    before = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if not p.is_dir())
    proc = quiesce("install", "qemu-ga", "--prefix", str(tree), "--plugins", "postgresql",
                   "--quiesce", "/opt/quiesce/bin/quiesce")
    assert proc.returncode == 0, proc.stderr
    assert (tree / "var/lib/quiesce/installed/qemu-ga.json").exists()
    proc = quiesce("uninstall", "qemu-ga", "--prefix", str(tree))
    assert proc.returncode == 0, proc.stderr
    after = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if not p.is_dir())
    assert after == before


def test_install_azure_then_uninstall_refuses_an_edited_wrapper(tree: Path) -> None:
    proc = quiesce("install", "azure", "--prefix", str(tree), "--plugins", "postgresql")
    assert proc.returncode == 0, proc.stderr
    wrapper = next((tree / "etc/azure").glob("*pre*"))
    wrapper.write_text(wrapper.read_text() + "# edited\n")
    proc = quiesce("uninstall", "azure", "--prefix", str(tree))
    assert proc.returncode == 2 and str(wrapper) in proc.stderr
    wrapper.unlink()  # the DBA takes their version away: uninstall may finish
    proc = quiesce("uninstall", "azure", "--prefix", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert not (tree / "etc/azure/VMSnapshotScriptPluginConfig.json").exists()
    assert not list((tree / "var/lib/quiesce/installed").iterdir())
