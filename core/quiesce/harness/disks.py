"""Throwaway "disks" for tests and the drill: loop-mounted filesystems, or plain directories.

A :class:`LoopDisk` is a sparse image file, formatted, attached with ``losetup`` and mounted;
it can be frozen for real. A :class:`DirDisk` is a directory with the same interface for
machines where we are not root (``freezable`` is False). :func:`snapshot_copy` copies an image
file sparsely, as a cloud snapshot of that disk would.

``teardown()`` is idempotent and does its best even after a failure half-way: it thaws the
filesystem if frozen, unmounts (retrying, then lazily as a last resort, which it reports in
``notes``), detaches the loop device and removes the image.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from quiesce.errors import HarnessError
from quiesce.freezing.mounts import parse_mountinfo

__all__ = [
    "MIN_SIZE_MB",
    "DirDisk",
    "DiskError",
    "LoopDisk",
    "MissingTool",
    "mkfs_command",
    "snapshot_copy",
]

#: Smallest image per filesystem type (recent xfsprogs refuse filesystems under 300 MiB).
MIN_SIZE_MB = {"ext2": 8, "ext3": 8, "ext4": 8, "xfs": 300, "btrfs": 128}
_MKFS = {
    "ext2": (["mkfs.ext2", "-q", "-F"], "e2fsprogs"),
    "ext3": (["mkfs.ext3", "-q", "-F"], "e2fsprogs"),
    "ext4": (["mkfs.ext4", "-q", "-F"], "e2fsprogs"),
    "xfs": (["mkfs.xfs", "-q", "-f"], "xfsprogs"),
    "btrfs": (["mkfs.btrfs", "-q", "-f"], "btrfs-progs"),
}
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_COMMAND_TIMEOUT = 120.0
_UMOUNT_TRIES = 5


class DiskError(HarnessError):
    """A throwaway disk could not be created or torn down."""


class MissingTool(DiskError):
    """A binary needed to build a disk (mkfs.*, losetup, mount) is not installed."""


def _which(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))
    if path is None:
        raise MissingTool(f"{name} is not installed",
                          hint=f"install it: apt-get install {package}")
    return path


def mkfs_command(fstype: str, device: str) -> list[str]:
    """The argv formatting ``device`` as ``fstype``; MissingTool names the package to install."""
    try:
        argv, package = _MKFS[fstype]
    except KeyError:
        raise DiskError(f"unsupported filesystem type {fstype!r}",
                        hint=f"use one of: {', '.join(sorted(_MKFS))}") from None
    return [_which(argv[0], package), *argv[1:], device]


def _run(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=_COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DiskError(f"{what} timed out after {_COMMAND_TIMEOUT:g} s: {' '.join(argv)}",
                        hint="the machine may be overloaded") from exc
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip() or "no output")
        raise DiskError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}: {output}",
                        hint="loop devices and mount need root; check `losetup -a` and dmesg")
    return done.stdout


def _is_mount_point(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        return any(e.mount_point == target for e in parse_mountinfo(fh.read()))


@dataclass
class LoopDisk:
    """A mounted loop filesystem. Create with :meth:`create`; always :meth:`teardown`."""

    image: Path
    device: str
    mount_point: Path
    fstype: str
    size_mb: int
    notes: list[str] = field(default_factory=list)
    freezable: bool = True
    remove_image: bool = True
    _torn_down: bool = False

    @classmethod
    def create(cls, workdir: Path, name: str, size_mb: int | None = 64, fstype: str = "ext4",
               *, image_dir: Path | None = None) -> LoopDisk:
        """Image ``<image_dir or workdir>/<name>.img`` mounted on ``workdir/<name>``.

        ``size_mb`` is raised to the minimum ``fstype`` accepts (xfs: 300); None means that
        minimum or 64, whichever is larger. Anything created is undone if a step fails.
        """
        if not name or "/" in name or name in (".", ".."):
            raise DiskError(f"bad disk name {name!r}", hint="use a plain file name like 'data'")
        minimum = MIN_SIZE_MB.get(fstype, 64)
        size = max(minimum, 64 if size_mb is None else int(size_mb))
        mkfs = mkfs_command(fstype, "DEVICE")  # fail early, before creating anything
        losetup = _which("losetup", "mount")
        mount = _which("mount", "mount")
        workdir = Path(workdir).absolute()
        image = Path(image_dir or workdir).absolute() / f"{name}.img"
        mount_point = workdir / name
        if image.exists():
            raise DiskError(f"{image} already exists", hint="pick another name or remove it")
        if mount_point.exists() and not mount_point.is_dir():
            raise DiskError(f"{mount_point} exists and is not a directory",
                            hint="pick another name or remove it")
        disk = cls(image=image, device="", mount_point=mount_point, fstype=fstype,
                   size_mb=size)
        try:
            with open(image, "xb") as fh:
                fh.truncate(size * 1024 * 1024)
            disk.device = _run([losetup, "--find", "--show", str(image)],
                               "attaching the loop device").strip()
            _run([*mkfs[:-1], disk.device], f"formatting {disk.device} as {fstype}")
            mount_point.mkdir(parents=True, exist_ok=True)
            _run([mount, "-t", fstype, disk.device, str(mount_point)],
                 f"mounting {disk.device} on {mount_point}")
        except BaseException:
            disk.teardown()
            raise
        return disk

    @classmethod
    def attach(cls, image: Path, mount_point: Path, fstype: str = "ext4", *,
               read_only: bool = False, remove_image: bool = False) -> LoopDisk:
        """Attach and mount an existing image (e.g. a snapshot copy) on ``mount_point``.

        xfs copies are mounted with ``nouuid`` so they can sit next to their original. The
        image is kept at teardown unless ``remove_image``.
        """
        losetup = _which("losetup", "mount")
        mount = _which("mount", "mount")
        image = Path(image).absolute()
        mount_point = Path(mount_point).absolute()
        if not image.is_file():
            raise DiskError(f"{image} is not an image file", hint="pass the copied image path")
        disk = cls(image=image, device="", mount_point=mount_point, fstype=fstype,
                   size_mb=image.stat().st_size // (1024 * 1024), remove_image=remove_image)
        options = ["ro"] if read_only else []
        if fstype == "xfs":
            options.append("nouuid")
        try:
            disk.device = _run([losetup, "--find", "--show", *(["--read-only"] if read_only
                                                              else []), str(image)],
                               "attaching the loop device").strip()
            mount_point.mkdir(parents=True, exist_ok=True)
            _run([mount, "-t", fstype, *(["-o", ",".join(options)] if options else []),
                  disk.device, str(mount_point)], f"mounting {disk.device} on {mount_point}")
        except BaseException:
            disk.teardown()
            raise
        return disk

    def teardown(self) -> None:
        """Thaw, unmount, detach, remove the image and mount point. Idempotent; best effort.

        Raises DiskError only if the loop device or mount is still there at the end.
        """
        if self._torn_down:
            return
        problems: list[str] = []
        if self.device and self.mount_point.exists() and _is_mount_point(self.mount_point):
            self._thaw()
            self._unmount(problems)
        if self.device:
            try:
                _run([_which("losetup", "mount"), "-d", self.device],
                     f"detaching {self.device}")
            except DiskError as exc:
                if self._attached():
                    problems.append(str(exc))
        if self.remove_image:
            with contextlib.suppress(FileNotFoundError):
                self.image.unlink()
        with contextlib.suppress(OSError):  # leave it if not empty (e.g. still mounted)
            self.mount_point.rmdir()
        self._torn_down = not problems
        if problems:
            raise DiskError(f"tearing down {self.mount_point} left things behind: "
                            + "; ".join(problems),
                            hint="check `mount | grep loop` and `losetup -a`")

    def _thaw(self) -> None:
        from quiesce.freezing.freeze import thaw_path

        try:
            if thaw_path(str(self.mount_point)):
                self.notes.append(f"{self.mount_point} was frozen at teardown; thawed it")
        except OSError as exc:
            self.notes.append(f"FITHAW on {self.mount_point} failed: {exc}")

    def _unmount(self, problems: list[str]) -> None:
        umount = _which("umount", "mount")
        for attempt in range(_UMOUNT_TRIES):
            try:
                _run([umount, str(self.mount_point)], f"unmounting {self.mount_point}")
                return
            except DiskError as exc:
                last = exc
            time.sleep(0.2 * (attempt + 1))  # a process may still be closing files there
        try:
            _run([umount, "--lazy", str(self.mount_point)],
                 f"lazily unmounting {self.mount_point}")
            self.notes.append(f"{self.mount_point} was busy ({last}); unmounted it lazily: "
                              "the filesystem goes away when its last user closes it")
        except DiskError as exc:
            problems.append(str(exc))

    def _attached(self) -> bool:
        name = os.path.basename(self.device)
        try:
            with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8") as fh:
                return fh.read().strip().startswith(str(self.image))
        except OSError as exc:
            return exc.errno not in (errno.ENOENT, errno.ENXIO)

    def __enter__(self) -> LoopDisk:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()


@dataclass
class DirDisk:
    """A plain directory standing in for a disk where loop devices are unavailable."""

    mount_point: Path
    fstype: str = "dir"
    image: Path | None = None
    device: str | None = None
    notes: list[str] = field(default_factory=list)
    freezable: bool = False
    _torn_down: bool = False

    @classmethod
    def create(cls, workdir: Path, name: str, size_mb: int | None = None,
               fstype: str = "dir") -> DirDisk:
        """``workdir/<name>``, created empty (size and fstype are accepted and ignored)."""
        if not name or "/" in name or name in (".", ".."):
            raise DiskError(f"bad disk name {name!r}", hint="use a plain file name like 'data'")
        path = Path(workdir).absolute() / name
        path.mkdir(parents=True, exist_ok=False)
        return cls(mount_point=path)

    def teardown(self) -> None:
        if self._torn_down:
            return
        shutil.rmtree(self.mount_point, ignore_errors=True)
        self._torn_down = True

    def __enter__(self) -> DirDisk:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()


def snapshot_copy(src_image: Path | str, dst: Path | str, *, fsync: bool = True) -> int:
    """Copy an image file keeping its holes (SEEK_DATA/SEEK_HOLE + copy_file_range).

    ``dst`` must not exist. Returns the number of data bytes copied. The copy is of the file
    as it is now: take it while the filesystem inside is frozen or unmounted.
    """
    src_fd = os.open(src_image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src_fd).st_size
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            copied = 0
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src_fd, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole remains
                        break
                    raise
                end = os.lseek(src_fd, start, os.SEEK_HOLE)
                copied += _copy_range(src_fd, dst_fd, start, end - start)
                offset = end
            os.ftruncate(dst_fd, size)
            if fsync:
                os.fsync(dst_fd)
        except BaseException:
            os.close(dst_fd)
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        os.close(dst_fd)
    finally:
        os.close(src_fd)
    return copied


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> int:
    done = 0
    while done < length:
        chunk = min(length - done, 64 * 1024 * 1024)
        try:
            n = os.copy_file_range(src_fd, dst_fd, chunk, offset + done, offset + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = _copy_plain(src_fd, dst_fd, offset + done, chunk)
        if n == 0:
            break  # the file shrank under us
        done += n
    return done


def _copy_plain(src_fd: int, dst_fd: int, offset: int, length: int) -> int:
    data = os.pread(src_fd, min(length, 8 * 1024 * 1024), offset)
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(dst_fd, view[written:], offset + written)
    return len(data)
