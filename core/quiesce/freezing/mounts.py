"""Which filesystems can be frozen, and in which order: parsing /proc/self/mountinfo.

Everything here is pure except :func:`discover_mounts` (and the loop-device lookup it uses),
so the selection and ordering rules are unit-tested on sample mountinfo text.

Rules:
- only block-device backed filesystems of a type known to implement FIFREEZE (loop devices
  included); never anything under /proc, /sys or /dev;
- each filesystem once, keyed by its ``major:minor`` device: bind mounts and btrfs subvolumes
  of one filesystem share the superblock that FIFREEZE acts on; the real mount (root ``/``) is
  kept over a bind of a subdirectory, then the first in mount order;
- a mount point hidden by a later mount on the same path is unreachable by path and skipped;
- freeze order: a filesystem is frozen before any filesystem it is nested in, and before the
  filesystem holding its loop image (freezing the holder first would block the loop
  filesystem's own freeze forever, since its sync writes through the frozen holder).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from quiesce.errors import FreezeError

MOUNTINFO = "/proc/self/mountinfo"

#: Filesystem types whose kernel drivers implement freeze (FIFREEZE) on a block device.
FREEZABLE_TYPES: frozenset[str] = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "nilfs2", "gfs2",
    "ocfs2",
})

#: Pseudo filesystem trees that are never frozen, whatever is mounted there.
EXCLUDED_TREES: tuple[str, ...] = ("/proc", "/sys", "/dev")

_NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "sshfs",
    "fuse.sshfs", "lustre", "virtiofs",
})
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One filesystem to freeze, named by the mount point it is reached through."""

    mount_point: str
    fstype: str
    source: str
    device: str  # "major:minor" as in mountinfo; identifies the filesystem (superblock)


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo, decoded (see proc(5))."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str
    super_options: str

    @property
    def major(self) -> int:
        return int(self.device.split(":", 1)[0])

    def as_mount(self) -> Mount:
        return Mount(self.mount_point, self.fstype, self.source, self.device)


def unescape(field: str) -> str:
    """Decode mountinfo's octal escapes (``\\040`` space, ``\\011`` tab, ``\\012``, ``\\134``)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Every mount in ``text`` (mountinfo format), in file order. Malformed lines raise."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
            entries.append(MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                device=fields[2],
                root=unescape(fields[3]),
                mount_point=unescape(fields[4]),
                options=fields[5],
                fstype=fields[dash + 1],
                source=unescape(fields[dash + 2]),
                super_options=fields[dash + 3] if len(fields) > dash + 3 else "",
            ))
        except (ValueError, IndexError) as exc:
            raise FreezeError(
                f"mountinfo line {number} is malformed: {line!r}",
                hint="this kernel's /proc/self/mountinfo format is not understood; report it",
            ) from exc
    return entries


def is_excluded(path: str) -> bool:
    return any(path == tree or path.startswith(tree + "/") for tree in EXCLUDED_TREES)


def why_not_freezable(entry: MountEntry) -> str | None:
    """None when ``entry`` can be frozen, else the reason it cannot."""
    if is_excluded(entry.mount_point):
        return f"it is under {'/'.join(entry.mount_point.split('/')[:2])}, which is never frozen"
    if entry.fstype in _NETWORK_TYPES or entry.fstype.startswith("nfs"):
        return (f"it is a network filesystem ({entry.fstype}); freeze it on its server, "
                "not here")
    if entry.fstype not in FREEZABLE_TYPES:
        return (f"its filesystem type {entry.fstype} does not support FIFREEZE (freezable "
                f"types: {', '.join(sorted(FREEZABLE_TYPES))})")
    if entry.major == 0 and not entry.source.startswith("/"):
        return f"it is not backed by a block device (source {entry.source!r})"
    return None


def _depth(path: str) -> int:
    return 0 if path == "/" else path.rstrip("/").count("/")


def _is_under(path: str, parent: str) -> bool:
    """True if ``path`` is strictly below directory ``parent``."""
    if parent == "/":
        return path != "/"
    return path.startswith(parent.rstrip("/") + "/")


def containing_mount(path: str, entries: Sequence[MountEntry]) -> MountEntry | None:
    """The visible mount whose mount point is the longest prefix of absolute ``path``."""
    best: MountEntry | None = None
    for entry in entries:  # later entries shadow earlier ones on the same mount point
        mp = entry.mount_point
        if (path == mp or _is_under(path, mp)) and (best is None or len(mp) >= len(
                best.mount_point)):
            best = entry
    return best


def select_freezable(entries: Sequence[MountEntry]) -> list[MountEntry]:
    """The freezable filesystems, one entry each, in mount order (not yet freeze order)."""
    visible: dict[str, MountEntry] = {}
    for entry in entries:  # a later mount on the same path hides the earlier one
        visible.pop(entry.mount_point, None)
        visible[entry.mount_point] = entry
    chosen: dict[str, MountEntry] = {}
    for entry in visible.values():
        if why_not_freezable(entry) is not None:
            continue
        kept = chosen.get(entry.device)
        if kept is None or (kept.root != "/" and entry.root == "/"):
            chosen[entry.device] = entry
    return list(chosen.values())


def freeze_order(entries: Sequence[MountEntry],
                 backing: Mapping[str, str] | None = None,
                 all_entries: Sequence[MountEntry] | None = None,
                 late: Collection[str] = ()) -> list[MountEntry]:
    """``entries`` ordered so each is frozen before the filesystems it depends on.

    ``backing`` maps a mount's source device (``/dev/loop3``) to the absolute path of its
    loop image; ``all_entries`` (default ``entries``) is used to find which filesystem holds
    that image. Ties go to the filesystems not in ``late`` (devices frozen as late as the
    dependencies allow: those the application's commits wait for), then deepest mount point
    first, then later mount first. A dependency cycle (possible only with contrived bind
    mounts) falls back to that tie order.
    """
    backing = backing or {}
    universe = list(all_entries) if all_entries is not None else list(entries)
    by_device = {e.device: e for e in entries}
    # after[a] = devices that must be frozen after a: the mounts a is nested in, a's image holder
    after: dict[str, set[str]] = {e.device: set() for e in entries}
    for child in entries:
        for parent in entries:
            if parent.device != child.device and _is_under(child.mount_point,
                                                           parent.mount_point):
                after[child.device].add(parent.device)
        image = backing.get(child.source)
        if image:
            holder = containing_mount(image, universe)
            if holder is not None and holder.device in by_device \
                    and holder.device != child.device:
                after[child.device].add(holder.device)
    rank = {e.device: i for i, e in enumerate(entries)}

    def tie(entry: MountEntry) -> tuple[bool, int, int]:
        return (entry.device in late, -_depth(entry.mount_point), -rank[entry.device])

    blockers = {d: {c for c in after if d in after[c]} for d in after}  # who must go first
    remaining = sorted(entries, key=tie)
    ordered: list[MountEntry] = []
    done: set[str] = set()
    while remaining:
        ready = [e for e in remaining if blockers[e.device] <= done]
        pick = ready[0] if ready else remaining[0]  # cycle: tie order decides
        ordered.append(pick)
        done.add(pick.device)
        remaining.remove(pick)
    return ordered


def loop_backing_files() -> dict[str, str]:
    """``/dev/loopN`` -> path of its backing file, from sysfs (empty when unavailable)."""
    result: dict[str, str] = {}
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return result
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8") as fh:
                path = fh.read().strip()
        except OSError:
            continue
        if path.endswith(" (deleted)"):
            continue
        result[f"/dev/{name}"] = path
    return result


def _select_only(entries: Sequence[MountEntry], only: Sequence[str]) -> list[MountEntry]:
    visible: dict[str, MountEntry] = {}
    for entry in entries:
        visible[entry.mount_point] = entry
    picked: list[MountEntry] = []
    problems: list[str] = []
    for requested in only:
        path = os.path.realpath(requested)
        shown = requested if path == requested else f"{requested} (= {path})"
        found = visible.get(path)
        if found is None:
            if not os.path.exists(path):
                problems.append(f"{shown} does not exist")
                continue
            holder = containing_mount(path, entries)
            where = f"it lies on the filesystem mounted at {holder.mount_point}" \
                if holder else "no mount contains it"
            problems.append(f"{shown} is not a mount point ({where}); name the mount point "
                            "of the filesystem to freeze")
            continue
        reason = why_not_freezable(found)
        if reason is not None:
            problems.append(f"{shown} cannot be frozen: {reason}")
            continue
        picked.append(found)
    if problems:
        raise FreezeError(
            "cannot freeze the requested mount(s):\n" + "\n".join(f"  - {p}" for p in problems),
            hint="pass only mount points of local block-device filesystems (ext4, xfs, btrfs, "
                 "...) to --freeze-mount; `findmnt -T PATH` shows which mount holds a path",
        )
    # one per filesystem: the first requested path for a device wins
    unique: dict[str, MountEntry] = {}
    for entry in picked:
        unique.setdefault(entry.device, entry)
    return list(unique.values())


def discover_mounts(only: Sequence[str] | None = None, *,
                    mountinfo_text: str | None = None,
                    backing: Mapping[str, str] | None = None,
                    late: Collection[str] = ()) -> list[Mount]:
    """The filesystems to freeze, each once, in freeze order (nested and loop-backed first).

    ``only`` limits the result to those mount points (symlinks resolved); a path that is not
    a mount point, or whose filesystem cannot be frozen, raises :class:`FreezeError` naming it
    and the reason. ``late``: devices ("major:minor") to freeze as late as the order allows
    (:func:`freeze_order`). ``mountinfo_text`` and ``backing`` (loop device -> image path)
    replace the live system's for tests.
    """
    if mountinfo_text is None:
        try:
            with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as fh:
                mountinfo_text = fh.read()
        except OSError as exc:
            raise FreezeError(f"cannot read {MOUNTINFO}: {exc}",
                              hint="is /proc mounted?") from exc
    entries = parse_mountinfo(mountinfo_text)
    selected = select_freezable(entries) if only is None else _select_only(entries, only)
    if backing is None:
        backing = loop_backing_files() if any(
            e.source.startswith("/dev/loop") for e in selected) else {}
    return [e.as_mount() for e in freeze_order(selected, backing, entries, late)]


def device_of(path: str) -> str | None:
    """The "major:minor" of the filesystem holding ``path`` (symlinks followed), as
    mountinfo names it; None when it cannot be read."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return None
    return f"{os.major(dev)}:{os.minor(dev)}"


def mount_id_of_fd(fd: int) -> int:
    """The mount ID (mountinfo's first field) an open fd lives on, from /proc/self/fdinfo."""
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise FreezeError(f"/proc/self/fdinfo/{fd} has no mnt_id (kernel older than 3.15?)")
