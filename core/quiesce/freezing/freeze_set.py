"""Which filesystems the caller freezes together before its snapshot, and whether every file a
database's recovery needs lies on them.

An engine may use its light quiesce level (``level = "auto"``) only when this module says
yes: a snapshot taken while every such filesystem is frozen at once is crash-consistent, so
the database need not block commits. Anything this module cannot verify is a no.

Who knows the caller's freeze set:

- ``quiesce run`` freezes the mounts it planned and snapshots while all are frozen. It tells
  its scripts (and through ``quiesce pre`` the holder, which inherits the environment) with
  :data:`FREEZE_MOUNTS_ENV`, a JSON object ``{"run_id": ..., "mounts": [...]}``
  (:func:`freeze_mounts_value`) whose ``run_id`` must equal :data:`RUN_ID_ENV`, so a stale
  export in a shell never counts.
- Azure's extension (``quiesce pre --azure-config``) freezes, when ``fsFreezeEnabled`` is true,
  every ext3/ext4/xfs/btrfs filesystem on a block device that is not a loop device. ``pre``
  says which with :data:`AZURE_FREEZE_ENV` (``"true"`` / ``"false"``).
- Any other caller: unknown, so no.

The database's server must run on this machine in this mount namespace (its paths then mean
what they mean here): :func:`server_process_problem` checks that from its pid.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quiesce.errors import FreezeError
from quiesce.freezing.mounts import (
    MOUNTINFO,
    MountEntry,
    containing_mount,
    is_excluded,
    mount_id_of_fd,
    parse_mountinfo,
    why_not_freezable,
)

FREEZE_MOUNTS_ENV = "QUIESCE_FREEZE_MOUNTS"
AZURE_FREEZE_ENV = "QUIESCE_AZURE_FS_FREEZE"
RUN_ID_ENV = "QUIESCE_RUN_ID"

#: The filesystem types Azure's extension freezes (block devices only, loop devices never).
AZURE_TYPES: frozenset[str] = frozenset({"ext3", "ext4", "xfs", "btrfs"})

CALLER_RUN = "quiesce run"
CALLER_AZURE = "azure"
CALLER_UNKNOWN = "unknown"


@dataclass(frozen=True)
class CallerFreeze:
    """The filesystems the caller freezes together, or why that is not known."""

    caller: str
    verified: bool
    mounts: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()  # "major:minor" of each, as in mountinfo
    evidence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"caller": self.caller, "verified": self.verified, "mounts": list(self.mounts),
                "devices": list(self.devices), "evidence": self.evidence}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CallerFreeze:
        if not isinstance(data, Mapping):
            return unknown("the caller gave no freeze set")
        try:
            return cls(caller=str(data["caller"]), verified=data["verified"] is True,
                       mounts=tuple(str(m) for m in data.get("mounts", ())),
                       devices=tuple(str(d) for d in data.get("devices", ())),
                       evidence=str(data.get("evidence", "")))
        except (KeyError, TypeError):
            return unknown("the caller's freeze set description is malformed")


def unknown(why: str) -> CallerFreeze:
    return CallerFreeze(CALLER_UNKNOWN, False, evidence=why)


def freeze_mounts_value(run_id: str, mounts: Sequence[str]) -> str:
    """The value of :data:`FREEZE_MOUNTS_ENV` for the scripts of run ``run_id``."""
    return json.dumps({"run_id": run_id, "mounts": list(mounts)})


def _read_mountinfo(mountinfo_text: str | None) -> list[MountEntry]:
    if mountinfo_text is None:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as fh:
            mountinfo_text = fh.read()
    return parse_mountinfo(mountinfo_text)


def _visible(entries: Sequence[MountEntry]) -> dict[str, MountEntry]:
    visible: dict[str, MountEntry] = {}
    for entry in entries:  # a later mount on the same path hides the earlier one
        visible.pop(entry.mount_point, None)
        visible[entry.mount_point] = entry
    return visible


def caller_freeze(environ: Mapping[str, str], *,
                  mountinfo_text: str | None = None) -> CallerFreeze:
    """What the caller freezes together, from the environment ``quiesce pre`` ran in."""
    try:
        entries = _read_mountinfo(mountinfo_text)
    except (OSError, FreezeError) as exc:
        return unknown(f"cannot read the mount table: {exc}")
    declared = environ.get(FREEZE_MOUNTS_ENV)
    if declared is not None:
        return _run_freeze(declared, environ.get(RUN_ID_ENV, ""), entries)
    azure = environ.get(AZURE_FREEZE_ENV)
    if azure is not None:
        if azure.strip().lower() != "true":
            return CallerFreeze(CALLER_AZURE, False,
                                evidence="fsFreezeEnabled is false in the Azure config: "
                                         "nothing is frozen before the snapshot")
        return azure_freeze(entries)
    return unknown("the caller did not say what it freezes (only 'quiesce run' and Azure's "
                   "extension with fsFreezeEnabled do); a freeze that cannot be verified "
                   "from the guest does not count")


def azure_freeze(entries: Sequence[MountEntry]) -> CallerFreeze:
    """Azure's rule: every ext3/ext4/xfs/btrfs mount of a block device, no loop devices."""
    chosen: dict[str, MountEntry] = {}
    for entry in _visible(entries).values():
        if entry.fstype not in AZURE_TYPES or is_excluded(entry.mount_point):
            continue
        if not entry.source.startswith("/dev/") or entry.source.startswith("/dev/loop"):
            continue
        chosen.setdefault(entry.device, entry)
    mounts = tuple(e.mount_point for e in chosen.values())
    return CallerFreeze(CALLER_AZURE, True, mounts=mounts, devices=tuple(chosen),
                        evidence="fsFreezeEnabled is true: Azure's extension freezes every "
                                 "ext3/ext4/xfs/btrfs block-device mount (no loop devices) "
                                 "before the snapshot")


def _run_freeze(declared: str, run_id: str, entries: Sequence[MountEntry]) -> CallerFreeze:
    try:
        data = json.loads(declared)
    except ValueError:
        return unknown(f"{FREEZE_MOUNTS_ENV} is not JSON")
    if not isinstance(data, dict) or not isinstance(data.get("mounts"), list):
        return unknown(f"{FREEZE_MOUNTS_ENV} has no list of mounts")
    if not run_id or data.get("run_id") != run_id:
        return unknown(f"{FREEZE_MOUNTS_ENV} names run {data.get('run_id')!r}, not this run "
                       f"({RUN_ID_ENV}={run_id!r}): a leftover, not this caller's freeze")
    visible = _visible(entries)
    mounts: list[str] = []
    devices: list[str] = []
    for mount in data["mounts"]:
        entry = visible.get(mount) if isinstance(mount, str) else None
        if entry is None:
            return unknown(f"{FREEZE_MOUNTS_ENV} names {mount!r}, which is not a mount point "
                           "here")
        reason = why_not_freezable(entry)
        if reason is not None:
            return unknown(f"{FREEZE_MOUNTS_ENV} names {mount}, which cannot be frozen: "
                           f"{reason}")
        mounts.append(mount)
        devices.append(entry.device)
    if not mounts:
        return CallerFreeze(CALLER_RUN, False, evidence="quiesce run freezes nothing")
    return CallerFreeze(CALLER_RUN, True, mounts=tuple(mounts), devices=tuple(devices),
                        evidence=f"quiesce run {run_id} freezes these together and "
                                 "snapshots while all are frozen")


# -- the database's side -------------------------------------------------------------------

@dataclass(frozen=True)
class PathCheck:
    """Where one file or directory recovery needs lies, and whether it is frozen."""

    what: str
    path: str
    mount: str | None
    device: str | None
    frozen: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"what": self.what, "path": self.path, "mount": self.mount,
                               "device": self.device, "frozen": self.frozen}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class Coverage:
    """The verdict: are all the paths on filesystems the caller freezes together?"""

    frozen_together: bool
    reason: str
    paths: tuple[PathCheck, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"frozen_together": self.frozen_together, "reason": self.reason,
                "paths": [p.to_dict() for p in self.paths]}


def _existing(path: str) -> str:
    """``path`` itself, or its nearest existing ancestor (a log file not created yet)."""
    current = os.path.abspath(path)
    while not os.path.lexists(current) and current != "/":
        current = os.path.dirname(current)
    return current


def _locate(path: str, entries: Sequence[MountEntry]) -> tuple[MountEntry | None, str]:
    """The mount entry holding ``path`` (by the mount id of an O_PATH fd when possible)."""
    real = os.path.realpath(_existing(path))
    try:
        fd = os.open(real, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"cannot open {real}: {exc.strerror}"
    try:
        mount_id = mount_id_of_fd(fd)
    except (OSError, FreezeError, ValueError):
        mount_id = None
    finally:
        os.close(fd)
    if mount_id is not None:
        for entry in entries:
            if entry.mount_id == mount_id:
                return entry, real
    return containing_mount(real, entries), real


def all_frozen_together(freeze: CallerFreeze, paths: Sequence[tuple[str, str]], *,
                        mountinfo_text: str | None = None) -> Coverage:
    """Whether every ``(what, path)`` lies on a filesystem in ``freeze``.

    Paths are as this process sees them (the server must share its mount namespace:
    :func:`server_process_problem`); symlinks are followed, a path that does not exist yet is
    judged by its nearest existing parent directory.
    """
    if not freeze.verified:
        return Coverage(False, f"the caller's freeze set is not verified: {freeze.evidence}")
    if not paths:
        return Coverage(False, "no path to check (internal: the engine named none)")
    try:
        entries = _read_mountinfo(mountinfo_text)
    except (OSError, FreezeError) as exc:
        return Coverage(False, f"cannot read the mount table: {exc}")
    frozen = set(freeze.devices)
    checks: list[PathCheck] = []
    for what, path in paths:
        if not os.path.isabs(path):
            checks.append(PathCheck(what, path, None, None, False, "not an absolute path"))
            continue
        entry, real = _locate(path, entries)
        if entry is None:
            checks.append(PathCheck(what, path, None, None, False, real or "no mount holds it"))
            continue
        detail = f"resolves to {real}" if real != path.rstrip("/") and path != "/" else ""
        checks.append(PathCheck(what, path, entry.mount_point, entry.device,
                                entry.device in frozen, detail))
    missing = [c for c in checks if not c.frozen]
    if missing:
        first = missing[0]
        where = f"on {first.mount} ({first.device})" if first.mount else f"({first.detail})"
        return Coverage(False, f"{len(missing)} of {len(checks)} path(s) are not on a "
                        f"filesystem the caller freezes, e.g. the {first.what} {first.path} "
                        f"{where}", tuple(checks))
    mounts = sorted({c.mount for c in checks if c.mount})
    return Coverage(True, f"all {len(checks)} path(s) lie on {', '.join(mounts)}, which "
                    f"{freeze.caller} freezes together", tuple(checks))


# -- finding the server process ----------------------------------------------------------

def peer_pid(sock: socket.socket) -> int | None:
    """The pid at the other end of a Unix socket (SO_PEERCRED), else None."""
    if sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", raw)[0]
    return pid if pid > 0 else None


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` (any address), from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    cols = line.split()
                    if len(cols) > 9 and cols[3] == "0A" and \
                            int(cols[1].rsplit(":", 1)[1], 16) == port:
                        found.add(cols[9])
        except (OSError, ValueError):
            continue
    return found


def owns_listener(pid: int, port: int) -> bool:
    """True when process ``pid`` holds a socket listening on TCP ``port``."""
    inodes = {f"socket:[{i}]" for i in listening_inodes(port)}
    if not inodes:
        return False
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") in inodes:
                return True
        except OSError:
            continue
    return False


def server_pid(sock: socket.socket, pid_file_pid: int | None) -> tuple[int | None, str]:
    """The server process behind a client connection, and how it was found.

    Unix socket: the peer's pid from the kernel. TCP to a loopback address: the pid from the
    server's pid file, if that process holds the listening socket of the port connected to.
    """
    pid = peer_pid(sock)
    if pid is not None:
        return pid, f"pid {pid}, the peer of the Unix socket (SO_PEERCRED)"
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None, "not a Unix or TCP connection"
    try:
        host, port = sock.getpeername()[:2]
    except OSError as exc:
        return None, f"cannot read the connection's peer: {exc.strerror}"
    if host not in ("127.0.0.1", "::1") and not host.startswith("127."):
        return None, f"the server is reached over TCP at {host}, not on this machine"
    if pid_file_pid is None:
        return None, "the server's pid file could not be read here"
    if not owns_listener(pid_file_pid, int(port)):
        return None, (f"pid {pid_file_pid} (from the server's pid file) does not hold the "
                      f"socket listening on port {port}")
    return pid_file_pid, (f"pid {pid_file_pid}, from the pid file, listens on the port "
                          f"connected to ({host}:{port})")


def read_pid_file(path: str) -> int | None:
    """The first line of a pid file as a pid, or None."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            first = fh.readline().strip()
    except OSError:
        return None
    return int(first) if first.isdigit() and int(first) > 0 else None


def server_process_problem(pid: int, data_dir: str) -> str | None:
    """None when process ``pid`` shares this process's mount namespace and works in
    ``data_dir`` (its current directory: both mysqld and postgres chdir there), else why not."""
    try:
        theirs = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        ours = os.stat("/proc/self/ns/mnt").st_ino
    except OSError as exc:
        return f"cannot inspect process {pid}: {exc.strerror}"
    if theirs != ours:
        return (f"the server (pid {pid}) runs in another mount namespace (a container?): its "
                "paths cannot be checked from here")
    try:
        if not os.path.samefile(f"/proc/{pid}/cwd", data_dir):
            return (f"the server (pid {pid}) does not work in {data_dir}: its data directory "
                    "here is not the one it reports")
    except OSError as exc:
        return f"cannot compare process {pid}'s directory with {data_dir}: {exc.strerror}"
    return None


def connection_socket(fd: int) -> socket.socket:
    """A socket object for a driver's connection fd (a dup: closing it leaves the driver's)."""
    return socket.socket(fileno=os.dup(fd))


# -- the record of a level choice --------------------------------------------------------

LEVEL_FULL = "full"
LEVEL_LIGHT = "light"
LEVEL_SETTINGS = ("full", "auto")


@dataclass
class LevelChoice:
    """The level an engine chose for one hold, every condition it checked, and why.

    ``setting`` is the instance's ``level`` (``full`` or ``auto``). The light level is chosen
    only when the setting is ``auto`` and every condition holds; the first failed condition
    is the reason for the full level.
    """

    setting: str
    conditions: list[dict[str, Any]] = field(default_factory=list)
    chosen: str = LEVEL_FULL
    reason: str = ""

    def check(self, name: str, ok: bool, evidence: str) -> bool:
        self.conditions.append({"condition": name, "ok": bool(ok), "evidence": evidence})
        return bool(ok)

    @property
    def all_ok(self) -> bool:
        return bool(self.conditions) and all(c["ok"] for c in self.conditions)

    def decide(self) -> str:
        """Light when allowed and every condition held; full otherwise, with the reason."""
        if self.setting != "auto":
            self.chosen, self.reason = LEVEL_FULL, 'level = "full" (the default)'
        elif self.all_ok:
            self.chosen = LEVEL_LIGHT
            self.reason = "every condition of the light level is verified"
        else:
            failed = next((c for c in self.conditions if not c["ok"]), None)
            self.chosen = LEVEL_FULL
            self.reason = (f"{failed['condition']}: {failed['evidence']}" if failed else
                           "no condition could be checked")
        return self.chosen

    def check_server_here(self, pid: int | None, how: str, data_dir: str) -> bool:
        """The "server on this machine" condition: ``pid`` (found ``how``) is a process in our
        mount namespace working in ``data_dir`` (:func:`server_process_problem`)."""
        problem = how if pid is None else server_process_problem(pid, data_dir)
        return self.check("server on this machine", problem is None,
                          problem or f"{how}; it works in {data_dir} in this mount namespace")

    def check_caller_freezes(self, freeze: CallerFreeze) -> bool:
        """The "caller freezes" condition, with the caller's own evidence and mounts."""
        return self.check("caller freezes", freeze.verified,
                          freeze.evidence + (f": {', '.join(freeze.mounts)}" if freeze.mounts
                                             else ""))

    def fall_back(self, reason: str) -> None:
        """The light level was chosen, then something seen later requires the full one."""
        self.chosen, self.reason = LEVEL_FULL, reason

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "chosen": self.chosen, "reason": self.reason,
                "conditions": list(self.conditions)}


def for_instance(described: Mapping[str, Any] | None) -> CallerFreeze:
    """The caller's freeze set an instance was handed (InstanceSettings.caller_freeze), or,
    when none was, the one the environment ``pre`` ran in describes."""
    if described is not None:
        return CallerFreeze.from_dict(described)
    return caller_freeze(os.environ)
