"""Put a recorded backup_label (and tablespace_map) into a RESTORED PostgreSQL data directory.

A snapshot taken in backup mode restores correctly only if the ``backup_label`` that
``pg_backup_stop`` returned is written, byte for byte, into the restored data directory before
the server starts there; and never into a live one (a live server would treat the next crash
as a restore from that backup). This module does exactly that, refusing anything doubtful:

- the directory must look like a PostgreSQL data directory (``PG_VERSION``) and must not
  belong to a running postmaster (``postmaster.pid`` naming a live process whose cwd is that
  directory);
- the directory must be a copy of the cluster the label was taken from: the system identifier
  in its ``global/pg_control`` and the major version in ``PG_VERSION`` must match the ones
  recorded (a label written into another cluster's directory sends recovery looking for WAL
  that cluster never had);
- only the label of a hold released by ``post`` is used unless told otherwise: after an
  automatic release (``max_hold_seconds`` passed first) the snapshot may have been taken after
  the backup ended, and the label is right only if it was not;
- an existing ``backup_label``/``tablespace_map`` is only replaced with ``force``;
- the recorded sha256 must match the recorded text, and the bytes written are re-read and
  checked against it;
- ``tablespace_mapping`` (``--tablespace-mapping OLD=NEW``) is the one deliberate change to the
  recorded bytes: a copy restored on the original's host must not use its tablespace dirs;
- the files are created with mode 0600, owned by the data directory's owner, written to a
  temporary name, fsynced and renamed into place (then the directory is fsynced).

Recovery from a backup needs the WAL from ``start_lsn`` through ``stop_lsn``: when the
segment holding ``stop_lsn`` is not in the restored ``pg_wal``, a warning says so (the server
will then need ``restore_command`` to fetch it from the archive).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiesce.errors import QuiesceError
from quiesce.servers.postgresql import live_postmaster
from quiesce_postgresql import wal

LABEL = "backup_label"
MAP = "tablespace_map"


class RestoreLabelError(QuiesceError):
    """The label cannot (or must not) be written into that directory."""


@dataclass
class LabelInstalled:
    data_dir: str
    instance: str | None
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    start_lsn: str | None = None
    stop_lsn: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "instance": self.instance, "written": self.written,
                "removed": self.removed, "warnings": self.warnings,
                "start_lsn": self.start_lsn, "stop_lsn": self.stop_lsn}


def find_label_metadata(record: Mapping[str, Any], name: str | None = None, *,
                        allow_auto_released: bool = False) -> tuple[str | None, dict[str, Any]]:
    """The metadata of the PostgreSQL instance that recorded a backup_label.

    ``record`` is a run record (``{"instances": [{"plugin": "postgresql", "name", "metadata"}
    ...]}``) or directly one instance's metadata (has ``backup_label``). With several
    PostgreSQL instances in the record, ``name`` chooses one. An instance whose status is not
    "released" is refused unless ``allow_auto_released``.
    """
    if "backup_label" in record:
        return name, dict(record)
    instances = record.get("instances")
    if not isinstance(instances, list):
        raise RestoreLabelError("the record has no 'instances' list and no 'backup_label'",
                                hint="pass a run record written by 'quiesce post', or the "
                                     "metadata of one PostgreSQL instance")
    candidates = []
    for item in instances:
        if not isinstance(item, Mapping):
            continue
        engine = item.get("plugin", item.get("engine"))
        if engine != "postgresql":
            continue
        if name is not None and item.get("name") != name:
            continue
        candidates.append(item)
    names = [str(c.get("name")) for c in candidates]
    if not candidates:
        which = f" named {name!r}" if name else ""
        raise RestoreLabelError(f"the record has no PostgreSQL instance{which}",
                                hint="check --run-id/--record, and --name")
    if len(candidates) > 1:
        raise RestoreLabelError(
            f"the record has several PostgreSQL instances ({', '.join(names)})",
            hint="choose one with --name")
    chosen = candidates[0]
    metadata = chosen.get("metadata")
    status = chosen.get("status")
    if (isinstance(metadata, Mapping) and metadata.get("backup_label")
            and status not in (None, "released") and not allow_auto_released):
        raise RestoreLabelError(
            f"PostgreSQL instance {chosen.get('name')!r} was {status!r}, not released by "
            f"'quiesce post': backup mode ended at {metadata.get('stopped_at')}, possibly "
            "before the snapshot was taken",
            hint="the label is right only for a snapshot taken before that moment; if you know "
                 "it was, pass --allow-auto-released, otherwise restore the snapshot as "
                 "crash-consistent (without a label)")
    if not isinstance(metadata, Mapping) or not metadata.get("backup_label"):
        status = chosen.get("status", "unknown")
        mode = metadata.get("mode") if isinstance(metadata, Mapping) else None
        raise RestoreLabelError(
            f"PostgreSQL instance {chosen.get('name')!r} recorded no backup_label "
            f"(status {status!r}, mode {mode!r})",
            hint="only a hold released by 'quiesce post' in backup mode has a label; a lost or "
                 "auto-released hold means this snapshot is only crash-consistent")
    return chosen.get("name"), dict(metadata)


def _check_text(metadata: Mapping[str, Any], key: str) -> bytes | None:
    text = metadata.get(key)
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise RestoreLabelError(f"recorded {key} is not text")
    data = text.encode("utf-8")
    recorded = metadata.get(f"{key}_sha256")
    actual = hashlib.sha256(data).hexdigest()
    if not recorded:
        raise RestoreLabelError(f"the record has {key} but no {key}_sha256 to check it against")
    if recorded != actual:
        raise RestoreLabelError(
            f"recorded {key} does not match its sha256 ({actual} != {recorded})",
            hint="the run record was modified or damaged; do not restore with it")
    return data


def _owner(directory: Path) -> tuple[int, int]:
    st = directory.stat()
    return st.st_uid, st.st_gid


def _write_exact(directory: Path, name: str, data: bytes, owner: tuple[int, int]) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f".{name}.quiesce-tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o600)
            if os.geteuid() == 0:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            back = b""
            while chunk := os.read(fd, 65536):
                back += chunk
        finally:
            os.close(fd)
        if back != data:
            raise RestoreLabelError(f"{directory / name} does not read back as written")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(dir_fd)


def check_data_dir(data_dir: Path) -> None:
    """Refuse anything but a stopped (restored) PostgreSQL data directory."""
    try:
        st = os.lstat(data_dir)
    except FileNotFoundError as exc:
        raise RestoreLabelError(f"{data_dir} does not exist") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise RestoreLabelError(f"{data_dir} is not a directory",
                                hint="give the restored data directory itself, not a link")
    if not (data_dir / "PG_VERSION").is_file():
        raise RestoreLabelError(f"{data_dir} is not a PostgreSQL data directory (no PG_VERSION)",
                                hint="give the directory that holds PG_VERSION and global/")
    pid = live_postmaster(data_dir)
    if pid is not None:
        raise RestoreLabelError(
            f"{data_dir} belongs to a running PostgreSQL server (postmaster pid {pid})",
            hint="backup_label goes into a RESTORED copy, before its server starts; writing it "
                 "into a live cluster would break its next crash recovery")


def _control_system_identifier(data_dir: Path) -> str | None:
    """The system identifier at the start of global/pg_control (native byte order)."""
    try:
        with open(data_dir / "global" / "pg_control", "rb") as handle:
            raw = handle.read(8)
    except OSError:
        return None
    if len(raw) != 8:
        return None
    return str(int.from_bytes(raw, sys.byteorder))


def check_same_cluster(data_dir: Path, metadata: Mapping[str, Any]) -> list[str]:
    """Refuse a data directory of another cluster or major version; return warnings."""
    warnings: list[str] = []
    recorded_num = metadata.get("server_version_num")
    try:
        on_disk = (data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        on_disk = ""
    if (isinstance(recorded_num, int) and recorded_num >= 100000 and on_disk.isdigit()
            and int(on_disk) != recorded_num // 10000):
        raise RestoreLabelError(
            f"{data_dir} is a PostgreSQL {on_disk} data directory, but the label was "
            f"recorded on PostgreSQL {recorded_num // 10000}",
            hint="give the data directory restored from this run's snapshot")
    recorded_id = metadata.get("system_identifier")
    if recorded_id in (None, ""):
        warnings.append("the record has no system_identifier (older record, or "
                        "pg_control_system() not permitted): could not check that "
                        f"{data_dir} is a copy of the cluster the label was taken from")
        return warnings
    actual = _control_system_identifier(data_dir)
    if actual is None:
        raise RestoreLabelError(
            f"cannot read the system identifier from {data_dir / 'global' / 'pg_control'}",
            hint="a restored data directory has global/pg_control; restore the whole "
                 "data disk")
    if actual != str(recorded_id):
        raise RestoreLabelError(
            f"{data_dir} belongs to another cluster (system identifier {actual}); the label "
            f"was taken from system identifier {recorded_id}",
            hint="give the data directory restored from this run's snapshot (check "
                 "--run-id/--record and --name)")
    return warnings


def _unescape(path: str) -> str:
    out, escaped = [], False
    for ch in path:
        if escaped or ch != "\\":
            out.append(ch)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def _escape(path: str) -> str:
    return "".join("\\" + ch if ch in "\\\n\r" else ch for ch in path)


def remap_tablespaces(spcmap: bytes, mapping: Mapping[str, str],
                      warnings: list[str]) -> bytes:
    """Rewrite tablespace_map lines ``<oid> <path>`` whose path is a key of ``mapping``.

    Like pg_basebackup's --tablespace-mapping: a restored copy on the same host must not reuse
    the original server's tablespace directories. Unmapped tablespaces are warned about.
    """
    lines = spcmap.decode("utf-8").split("\n")
    used: set[str] = set()
    out = []
    for line in lines:
        if not line:
            out.append(line)
            continue
        oid, _, raw = line.partition(" ")
        path = _unescape(raw)
        key = os.path.normpath(path)
        if key in mapping:
            used.add(key)
            path = os.path.abspath(mapping[key])
            if not os.path.isdir(path):
                warnings.append(f"tablespace {oid}: {path} does not exist yet; restore the "
                                "tablespace's disk there before starting the server")
            out.append(f"{oid} {_escape(path)}")
        else:
            warnings.append(f"tablespace {oid} stays at its original location {path}: if the "
                            "original server still runs on this host, remap it with "
                            f"--tablespace-mapping {path}=NEWDIR")
            out.append(line)
    unused = sorted(set(mapping) - used)
    if unused:
        raise RestoreLabelError(
            f"--tablespace-mapping names no recorded tablespace: {', '.join(unused)}",
            hint="the recorded tablespace_map lists: " + "; ".join(x for x in lines if x))
    return "\n".join(out).encode("utf-8")


def install_label(data_dir: str | os.PathLike[str], metadata: Mapping[str, Any], *,
                  force: bool = False, instance: str | None = None,
                  tablespace_mapping: Mapping[str, str] | None = None) -> LabelInstalled:
    """Write ``metadata``'s backup_label (and tablespace_map) into ``data_dir``.

    ``tablespace_mapping`` (old path -> new path) rewrites tablespace_map entries; that is the
    only change ever made to the recorded bytes, and only when asked for.
    """
    directory = Path(os.path.abspath(data_dir))
    label = _check_text(metadata, LABEL)
    if label is None:
        raise RestoreLabelError("the record holds no backup_label")
    spcmap = _check_text(metadata, MAP)
    check_data_dir(directory)
    identity_warnings = check_same_cluster(directory, metadata)
    result = LabelInstalled(data_dir=str(directory), instance=instance,
                            start_lsn=metadata.get("start_lsn"), stop_lsn=metadata.get("stop_lsn"))
    result.warnings.extend(identity_warnings)
    if spcmap is not None:
        spcmap = remap_tablespaces(spcmap, tablespace_mapping or {}, result.warnings)
    elif tablespace_mapping:
        raise RestoreLabelError("--tablespace-mapping given, but the run recorded no "
                                "tablespace_map (no tablespaces)")
    existing = [n for n in (LABEL, MAP) if os.path.lexists(directory / n)]
    if existing and not force:
        raise RestoreLabelError(
            f"{directory} already has {' and '.join(existing)}",
            hint="it may be from an earlier restore attempt; pass --force to replace it")
    owner = _owner(directory)
    if spcmap is None and (directory / MAP).exists():
        (directory / MAP).unlink()  # a stale map would send tablespaces to the wrong place
        result.removed.append(MAP)
    if spcmap is not None:
        _write_exact(directory, MAP, spcmap, owner)
        result.written.append(MAP)
    _write_exact(directory, LABEL, label, owner)
    result.written.insert(0, LABEL)
    result.warnings.extend(_wal_warnings(directory, metadata))
    if os.path.lexists(directory / "postmaster.pid"):
        result.warnings.append(
            "postmaster.pid is a leftover from the snapshot (no live server uses it); "
            "PostgreSQL removes a stale one at start unless its pid is alive on this host")
    return result


def _wal_warnings(directory: Path, metadata: Mapping[str, Any]) -> list[str]:
    segment = metadata.get("stop_wal_file")
    if not segment:
        return []
    wal_dir = directory / "pg_wal"
    if not wal_dir.exists():
        return [f"{wal_dir} is missing (a dangling pg_wal link?): restore the WAL disk and "
                "point pg_wal at it before starting the server"]
    present = sorted(p.name for p in wal_dir.iterdir() if wal.is_segment_name(p.name))
    if segment in present:
        return []
    newest = present[-1] if present else "none"
    return [f"WAL file {segment} (holding stop_lsn {metadata.get('stop_lsn')}) is not in "
            f"{wal_dir} (newest there: {newest}); recovery will stop with 'WAL ends before "
            "end of online backup' unless restore_command can fetch it from the WAL archive"]
