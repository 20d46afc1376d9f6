"""Loop disks and directory disks: create, tear down (also after failures), sparse copies."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quiesce.freezing.freeze import FreezeSession, discover_mounts, freeze_path, is_frozen
from quiesce.harness import disks as disks_module
from quiesce.harness.disks import DirDisk, DiskError, LoopDisk, MissingTool, snapshot_copy

WAIT = 60.0


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        return any(line.split(" ")[4] == str(path) for line in fh)


def attached(image: Path) -> bool:
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                         check=True).stdout
    return bool(out.strip())


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.mark.usefixtures("require_root")
@pytest.mark.parametrize(("fstype", "asked", "size"), [("ext4", None, 64), ("xfs", 64, 300)])
def test_create_and_teardown(tmp_path: Path, fstype: str, asked: int | None, size: int) -> None:
    disk = LoopDisk.create(tmp_path, "d", size_mb=asked, fstype=fstype)
    try:
        assert disk.size_mb == size  # xfs raised to its minimum
        assert disk.image == tmp_path / "d.img" and disk.mount_point == tmp_path / "d"
        assert disk.image.stat().st_size == size * 1024 * 1024
        assert disk.image.stat().st_blocks * 512 < disk.image.stat().st_size  # sparse
        assert disk.device.startswith("/dev/loop") and attached(disk.image)
        assert mounted(disk.mount_point)
        assert [m.fstype for m in discover_mounts([str(disk.mount_point)])] == [fstype]
        (disk.mount_point / "hello").write_text("hi")
    finally:
        disk.teardown()
    assert not mounted(disk.mount_point) and not disk.mount_point.exists()
    assert not disk.image.exists() and not attached(disk.image)
    disk.teardown()  # idempotent


@pytest.mark.usefixtures("require_root")
def test_teardown_thaws_a_frozen_disk(tmp_path: Path) -> None:
    with LoopDisk.create(tmp_path, "f") as disk:
        freeze_path(str(disk.mount_point))
        assert is_frozen(str(disk.mount_point))
    assert any("was frozen at teardown" in n for n in disk.notes)
    assert not mounted(disk.mount_point) and not attached(disk.image)


@pytest.mark.usefixtures("require_root")
def test_teardown_of_a_busy_disk_unmounts_lazily_and_says_so(tmp_path: Path) -> None:
    disk = LoopDisk.create(tmp_path, "busy")
    squatter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                cwd=disk.mount_point)
    try:
        disk.teardown()
        assert not mounted(disk.mount_point)
        assert any("unmounted it lazily" in n for n in disk.notes)
    finally:
        squatter.send_signal(signal.SIGKILL)
        squatter.wait()
        disk.teardown()
    # the loop device goes once its last user is gone (losetup -d set autoclear)
    end = time.monotonic() + WAIT
    while attached(disk.image) and time.monotonic() < end:
        time.sleep(0.1)
    assert not attached(disk.image)


@pytest.mark.usefixtures("require_root")
def test_failure_half_way_leaves_nothing_behind(tmp_path: Path) -> None:
    # A dangling symlink where the mount point goes: mkdir fails after losetup and mkfs ran.
    (tmp_path / "d").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        LoopDisk.create(tmp_path, "d")
    assert not (tmp_path / "d.img").exists()
    assert not attached(tmp_path / "d.img")
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    assert str(tmp_path) not in out


@pytest.mark.usefixtures("require_root")
def test_bad_requests_are_refused_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="unsupported filesystem type 'zfs'"):
        LoopDisk.create(tmp_path, "z", fstype="zfs")
    with pytest.raises(DiskError, match="bad disk name"):
        LoopDisk.create(tmp_path, "../escape")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiskError, match="exists and is not a directory"):
        LoopDisk.create(tmp_path, "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_mkfs_names_the_package(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(disks_module, "_SBIN", (str(tmp_path),))
    with pytest.raises(MissingTool) as caught:
        LoopDisk.create(tmp_path, "x", fstype="xfs")
    assert "mkfs.xfs is not installed" in str(caught.value)
    assert caught.value.hint == "install it: apt-get install xfsprogs"
    with pytest.raises(MissingTool, match=r"mkfs\.ext4"):
        disks_module.mkfs_command("ext4", "/dev/loop9")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("require_root")
@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_snapshot_copy_of_a_frozen_disk_mounts_with_the_data(loop_disk_factory, tmp_path: Path,
                                                             fstype: str) -> None:
    disk = loop_disk_factory(fstype)
    payload = os.urandom(3 * 1024 * 1024)
    (disk.mount_point / "payload").write_bytes(payload)
    copy = tmp_path / "copy.img"
    with FreezeSession(discover_mounts([str(disk.mount_point)]), timeout=120):
        copied = snapshot_copy(disk.image, copy)
        assert digest(copy) == digest(disk.image)
    assert len(payload) <= copied < disk.image.stat().st_size
    assert copy.stat().st_size == disk.image.stat().st_size
    assert copy.stat().st_blocks * 512 < copy.stat().st_size  # holes kept
    restored = LoopDisk.attach(copy, tmp_path / "restored", fstype)
    try:
        assert (restored.mount_point / "payload").read_bytes() == payload
    finally:
        restored.teardown()
    assert copy.exists()  # attach keeps the image unless told otherwise
    assert not mounted(restored.mount_point)
    with pytest.raises(FileExistsError):
        snapshot_copy(disk.image, copy)  # never overwrites


def test_snapshot_copy_of_plain_sparse_file(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    with open(src, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
        fh.seek(5 * 1024 * 1024)
        fh.write(b"a" * 4096)
        fh.seek(20 * 1024 * 1024)
        fh.write(b"b" * 8192)
    copied = snapshot_copy(src, tmp_path / "dst.img")
    assert copied >= 4096 + 8192
    assert digest(src) == digest(tmp_path / "dst.img")
    assert (tmp_path / "dst.img").stat().st_blocks * 512 <= 2 * 1024 * 1024


def test_dir_disk(tmp_path: Path) -> None:
    with DirDisk.create(tmp_path, "data") as disk:
        assert disk.mount_point.is_dir() and disk.freezable is False
        assert disk.device is None and disk.image is None
        (disk.mount_point / "f").write_text("x")
    assert not disk.mount_point.exists()
    disk.teardown()


def test_fixture_tears_down_nested_disks(loop_disk_factory, dir_disk_factory) -> None:
    outer = loop_disk_factory()
    inner = loop_disk_factory("xfs", name="inner", workdir=outer.mount_point)
    assert inner.size_mb == 300 and mounted(inner.mount_point)
    assert dir_disk_factory().mount_point.is_dir()
