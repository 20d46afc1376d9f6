"""Pytest fixtures for throwaway disks: loop-mounted filesystems (root) and plain directories.

Every disk a factory makes is torn down at the end of the test, even when the test fails:
thawed if it was left frozen, unmounted, its loop device detached, its image removed. Disks are
torn down newest first, so a disk mounted inside another goes before its parent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["dir_disk_factory", "loop_disk_factory"]

_MKFS_PACKAGE = {"ext2": "e2fsprogs", "ext3": "e2fsprogs", "ext4": "e2fsprogs",
                 "xfs": "xfsprogs", "btrfs": "btrfs-progs"}


def _skip_unless_loop_possible(fstype: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mount and FIFREEZE are root-only")
    if not os.path.exists("/dev/loop-control") and not os.path.exists("/dev/loop0"):
        pytest.skip("no loop device support here (/dev/loop-control and /dev/loop0 missing)")
    for tool, package in ((f"mkfs.{fstype}", _MKFS_PACKAGE.get(fstype, "?")),
                          ("losetup", "mount")):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            pytest.skip(f"{tool} is not installed (apt-get install {package})")


@pytest.fixture
def loop_disk_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """``factory(fstype="ext4", size_mb=None, name=None, *, workdir=None, image_dir=None)``
    -> a mounted :class:`quiesce.harness.disks.LoopDisk`, torn down at test end.

    The mount point is ``<workdir>/<name>``, the image ``<image_dir>/<name>.img``; both default
    to a per-test temporary directory. Skips (with the reason) when not root or when mkfs for
    ``fstype`` or losetup is missing.
    """
    from quiesce.harness.disks import LoopDisk

    base = tmp_path_factory.mktemp("disks")
    disks: list[LoopDisk] = []

    def factory(fstype: str = "ext4", size_mb: int | None = None, name: str | None = None, *,
                workdir: Path | None = None, image_dir: Path | None = None) -> LoopDisk:
        _skip_unless_loop_possible(fstype)
        # images stay in the fixture's directory unless asked: a disk mounted inside another
        # must not eat its parent's space
        disk = LoopDisk.create(workdir or base, name or f"disk{len(disks)}", size_mb=size_mb,
                               fstype=fstype, image_dir=image_dir or base)
        disks.append(disk)
        return disk

    yield factory
    errors = []
    for disk in reversed(disks):
        try:
            disk.teardown()
        except Exception as exc:  # keep tearing the others down
            errors.append(f"{disk.mount_point}: {exc}")
    if errors:
        pytest.fail("loop disk teardown left things behind:\n" + "\n".join(errors))


@pytest.fixture
def dir_disk_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """``factory(name=None)`` -> a :class:`quiesce.harness.disks.DirDisk` (no root needed)."""
    from quiesce.harness.disks import DirDisk

    base = tmp_path_factory.mktemp("dirdisks")
    disks: list[DirDisk] = []

    def factory(name: str | None = None, **_: Any) -> DirDisk:
        disk = DirDisk.create(base, name or f"disk{len(disks)}")
        disks.append(disk)
        return disk

    yield factory
    for disk in reversed(disks):
        disk.teardown()
