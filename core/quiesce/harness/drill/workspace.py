"""The drill's own files and disks: a private work directory, the two disks, restored copies.

Layout of one drill (``base`` is /var/lib/quiesce-drill as root, ``$XDG_CACHE_HOME/quiesce-drill``
or ``~/.cache/quiesce-drill`` otherwise: ``quiesce run`` trusts the drill's config and scripts
only when every directory above them is owned by root or the drill's user and not writable by
others, which rules out /tmp; ``QUIESCE_DRILL_DIR`` overrides it)::

    base/run-XXXX/            0711 root: servers' service users must traverse it
        images/               disk image files (never on a disk that gets frozen)
        disks/data, disks/log the mounted disks (or plain directories)
        cfg/                  0700: Azure config, pre/post scripts, quiesce.toml, run records
        srv/<name>/           servers' sockets, pid and log files
        snap/cycle-N/         the snapshot: one copy per disk
        restore/cycle-N/      copies of the snapshot attached as new disks
    /run/quiesce-drill-XXXX   the holder's runtime dir (0700); without root
                              $XDG_RUNTIME_DIR/quiesce-drill-XXXX, else base/run-XXXX/...

Everything the drill writes is outside the disks it freezes, so nothing it does can block on
a frozen filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from quiesce.errors import DrillError
from quiesce.harness.disks import LoopDisk, snapshot_copy

DISK_SIZE_MB = {"data": 160, "log": 192}


def default_base(euid: int | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """``QUIESCE_DRILL_DIR``; else /var/lib/quiesce-drill as root; else the user's XDG cache
    dir (``$XDG_CACHE_HOME`` or ``~/.cache``) + ``quiesce-drill``, falling back to the temp dir
    only when the user has no home (the config-dir check then says what to do)."""
    env = os.environ if environ is None else environ
    chosen = env.get("QUIESCE_DRILL_DIR")
    if chosen:
        return Path(chosen)
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/quiesce-drill")
    cache = env.get("XDG_CACHE_HOME", "")
    if os.path.isabs(cache):
        return Path(cache) / "quiesce-drill"
    home = env.get("HOME", "")
    if os.path.isabs(home) and home != "/":
        return Path(home) / ".cache" / "quiesce-drill"
    return Path(tempfile.gettempdir())


class Workspace:
    """Creates the directories; :meth:`remove` deletes all of it (and ``base`` if it made it)."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = Path(base or default_base())
        self.created_base = not self.base.exists()
        if not self.base.parent.exists():  # e.g. ~/.cache: private, whatever the umask
            self.base.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="run-", dir=self.base))
        os.chmod(self.root, 0o711)  # noqa: S103 - traverse only, for service users
        self.images = self._dir("images", 0o700)
        self.disks = self._dir("disks", 0o755)
        self.cfg = self._dir("cfg", 0o700)
        self.srv = self._dir("srv", 0o711)
        self.snap = self._dir("snap", 0o700)
        self.restore = self._dir("restore", 0o711)
        self.runtime: Path | None = None

    def _dir(self, name: str, mode: int) -> Path:
        path = self.root / name
        path.mkdir(mode=mode)
        os.chmod(path, mode)
        return path

    def runtime_dir(self) -> Path:
        """The holder's runtime dir, on tmpfs when there is one for us: /run as root,
        $XDG_RUNTIME_DIR (e.g. /run/user/1000) as another user; else inside the work dir."""
        if self.runtime is None:
            self.runtime = Path(tempfile.mkdtemp(prefix="quiesce-drill-",
                                                 dir=_runtime_parent(self.root)))
            os.chmod(self.runtime, 0o700)
        return self.runtime

    def remove_runtime(self) -> None:
        """The holder's runtime dir holds nothing worth keeping, even with --keep."""
        if self.runtime is not None:
            shutil.rmtree(self.runtime, ignore_errors=True)

    def remove(self) -> list[str]:
        """Delete the work and runtime dirs; returns what could not be removed."""
        problems: list[str] = []
        for path in (self.root, self.runtime):
            if path is None or not path.exists():
                continue
            if _has_mount_below(path):
                problems.append(f"{path} still has a filesystem mounted below it; left it")
                continue
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                problems.append(f"could not remove {path}")
        if self.created_base:
            with contextlib.suppress(OSError):
                self.base.rmdir()
        return problems


def _runtime_parent(fallback: Path) -> Path:
    uid = os.geteuid()
    if uid == 0:
        return Path("/run") if Path("/run").is_dir() else fallback
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        with contextlib.suppress(OSError):
            st = os.stat(xdg)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022:
                return Path(xdg)
    return fallback


def _has_mount_below(path: Path) -> bool:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        return any(line.split()[4].startswith(prefix) for line in fh if len(line.split()) > 4)


def attach_image(image: Path, mount_point: Path, fstype: str) -> LoopDisk:
    """Attach an existing image (a snapshot copy) as a loop device and mount it.

    Returns a LoopDisk whose teardown unmounts, detaches and deletes the image. XFS refuses a
    second filesystem with the UUID of one already mounted, hence ``nouuid`` (the copy and the
    live disk share it). A dirty journal (a snapshot of a live filesystem) is replayed by the
    kernel at mount, as it would be after a crash.
    """
    losetup = shutil.which("losetup") or "/usr/sbin/losetup"
    mount = shutil.which("mount") or "/usr/bin/mount"
    disk = LoopDisk(image=image, device="", mount_point=mount_point, fstype=fstype,
                    size_mb=image.stat().st_size >> 20)
    try:
        done = subprocess.run([losetup, "--find", "--show", str(image)], capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise DrillError(f"losetup {image} failed: {done.stderr.strip()}")
        disk.device = done.stdout.strip()
        mount_point.mkdir(parents=True, exist_ok=True)
        argv = [mount, "-t", fstype]
        if fstype == "xfs":
            argv += ["-o", "nouuid"]
        done = subprocess.run([*argv, disk.device, str(mount_point)], capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise DrillError(f"mounting the restored copy {image} failed: "
                             f"{done.stderr.strip()}")
    except BaseException:
        disk.teardown()
        raise
    return disk


def copy_image(src: Path, dst: Path) -> None:
    snapshot_copy(src, dst, fsync=False)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory tree, symlinks kept, tolerating files that vanish while copying.

    A live database deletes temporary files at any moment; a cloud snapshot simply does not
    contain them, and neither does this copy.
    """
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copystat(src, dst)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        target_dir = dst / rel
        for name in list(dirnames):
            s, d = Path(dirpath) / name, target_dir / name
            if s.is_symlink():
                d.symlink_to(os.readlink(s))
                dirnames.remove(name)
                continue
            try:
                d.mkdir(exist_ok=True)
                shutil.copystat(s, d)
            except FileNotFoundError:
                dirnames.remove(name)
        for name in filenames:
            s, d = Path(dirpath) / name, target_dir / name
            try:
                if s.is_symlink():
                    d.symlink_to(os.readlink(s))
                else:
                    shutil.copy2(s, d)
            except FileNotFoundError:
                continue
    for dirpath, _, names in os.walk(dst):  # keep ownership: servers run as their own user
        for name in [".", *names]:
            path = Path(dirpath) / name if name != "." else Path(dirpath)
            rel = path.relative_to(dst)
            with contextlib.suppress(OSError):
                st = os.lstat(src / rel)
                os.lchown(path, st.st_uid, st.st_gid)
