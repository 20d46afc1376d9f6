"""Put a recorded backup_label (and tablespace_map) into a RESTORED PostgreSQL data directory.

A snapshot taken in backup mode restores correctly only if the ``backup_label`` that
``pg_backup_stop`` returned is written, byte for byte, into the restored data directory before
the server starts there; and never into a live one (a live server would treat the next crash
as a restore from that backup). This module does exactly that, refusing anything doubtful:

- the directory must look like a PostgreSQL data directory (``PG_VERSION``) and must not
  belong to a running postmaster (``postmaster.pid`` naming a live process whose cwd is that
  directory);
- the label must belong to the copy: the system identifier and timeline in the copy's
  ``global/pg_control`` must be the recorded ones, and its latest checkpoint must lie between
  the backup's starting checkpoint and ``stop_lsn`` (a copy taken during that hold); a label
  of another run "recovers" successfully and silently loses or mixes data. Overriding this is
  ``unsafe_skip_label_check`` (``--unsafe-skip-label-check``);
- the WAL in the copy's ``pg_wal`` must hold the backup's end-of-backup record (read with
  ``pg_waldump``, not guessed from file names: a segment copied before ``post`` has its full
  size but not the record; a backup taken on a standby has no such record, and its WAL must
  read without a gap up to ``stop_lsn``); otherwise it says which files to fetch and from
  where, unless ``wal_from_archive`` says restore_command will fetch them;
- only the label of a consistent run (held from before the snapshot until ``post``) is used
  unless ``accept_inconsistent`` (``--unsafe-accept-inconsistent``);
- the major version in ``PG_VERSION`` must be the recorded one;
- an existing ``backup_label``/``tablespace_map`` is only replaced with ``force``;
- the recorded sha256 must match the recorded text, and the bytes written are re-read and
  checked against it;
- ``tablespace_mapping`` (``--tablespace-mapping OLD=NEW``) is the one deliberate change to the
  recorded bytes: a copy restored on the original's host must not use its tablespace dirs;
- the files are created with mode 0600, owned by the data directory's owner, written to a
  temporary name, fsynced and renamed into place (then the directory is fsynced).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiesce.errors import QuiesceError
from quiesce_postgresql import wal, waldump
from quiesce_postgresql.control import ControlFileError, read_control
from quiesce_postgresql.datadir import live_postmaster

LABEL = "backup_label"
MAP = "tablespace_map"


class RestoreLabelError(QuiesceError):
    """The label cannot (or must not) be written into that directory."""


class LabelMismatch(RestoreLabelError):
    """The label was taken from another cluster, timeline or moment than the copy."""


@dataclass
class LabelInstalled:
    data_dir: str
    instance: str | None
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    start_lsn: str | None = None
    stop_lsn: str | None = None
    run_id: str | None = None
    checks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "instance": self.instance, "run_id": self.run_id,
                "written": self.written, "removed": self.removed, "checks": self.checks,
                "warnings": self.warnings, "start_lsn": self.start_lsn,
                "stop_lsn": self.stop_lsn}


class InconsistentRun(RestoreLabelError):
    """The run record says the hold did not last from before the snapshot until ``post``."""


def _inconsistency(record: Mapping[str, Any], chosen: Mapping[str, Any]) -> str | None:
    """Why this run's snapshot may not be application-consistent, or None.

    Consistent means: the record says ``consistent: true`` (when it has the field) and this
    instance's status is ``released`` (held from before the snapshot until ``post``). Any other
    status - auto-released, lost, late, aborted, failed, skipped... - is not.
    """
    status = chosen.get("status")
    metadata = chosen.get("metadata") if isinstance(chosen.get("metadata"), Mapping) else {}
    if status not in (None, "released"):
        ended = metadata.get("stopped_at") if isinstance(metadata, Mapping) else None
        when = f" (backup mode ended at {ended})" if ended else ""
        return (f"PostgreSQL instance {chosen.get('name')!r} was {status!r}, not released by "
                f"'quiesce post'{when}: the snapshot may have been taken outside the hold")
    if "consistent" in record and record.get("consistent") is not True:
        state = record.get("state")
        message = record.get("message")
        return (f"run {record.get('run_id')} is recorded as not consistent (state {state!r}"
                + (f": {message}" if message else "") + ")")
    return None


def find_label_metadata(record: Mapping[str, Any], name: str | None = None, *,
                        accept_inconsistent: bool = False) -> tuple[str | None, dict[str, Any]]:
    """The metadata of the PostgreSQL instance that recorded a backup_label.

    ``record`` is a run record or the document of ``quiesce post --json`` (``{"instances":
    [{"plugin": "postgresql", "name", "status", "metadata"} ...], "consistent": ...}``) or
    directly one instance's metadata (has ``backup_label``). With several PostgreSQL instances
    in the record, ``name`` chooses one. A run that was not consistent (see
    :func:`_inconsistency`) is refused (InconsistentRun) unless ``accept_inconsistent``.
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
    if not isinstance(metadata, Mapping) or not metadata.get("backup_label"):
        status = chosen.get("status", "unknown")
        mode = metadata.get("mode") if isinstance(metadata, Mapping) else None
        raise RestoreLabelError(
            f"PostgreSQL instance {chosen.get('name')!r} recorded no backup_label "
            f"(status {status!r}, mode {mode!r})",
            hint="only a hold released by 'quiesce post' in backup mode has a label; a lost or "
                 "auto-released hold means this snapshot is only crash-consistent")
    why = _inconsistency(record, chosen)
    if why is not None and not accept_inconsistent:
        raise InconsistentRun(
            why,
            hint="the label is right only for a snapshot taken while backup mode was held; if "
                 "you know this one was, pass --unsafe-accept-inconsistent, otherwise restore "
                 "the snapshot as crash-consistent (without a label; see docs/restore.md)")
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


def check_same_cluster(data_dir: Path, metadata: Mapping[str, Any]) -> list[str]:
    """Refuse a data directory of another major version; return warnings.

    (The system identifier is compared with pg_control by :func:`check_label_against_copy`.)
    """
    warnings: list[str] = []
    recorded_num = metadata.get("server_version_num")
    on_disk = pg_major(data_dir)
    if (isinstance(recorded_num, int) and recorded_num >= 100000 and on_disk is not None
            and on_disk != recorded_num // 10000):
        raise RestoreLabelError(
            f"{data_dir} is a PostgreSQL {on_disk} data directory, but the label was "
            f"recorded on PostgreSQL {recorded_num // 10000}",
            hint="give the data directory restored from this run's snapshot")
    if metadata.get("system_identifier") in (None, ""):
        warnings.append("the record has no system_identifier (older record, or "
                        "pg_control_system() not permitted): could not check that "
                        f"{data_dir} is a copy of the cluster the label was taken from")
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
    out: list[str] = []
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


def wal_directory(data_dir: Path) -> Path:
    """The restored copy's WAL directory (``pg_wal``, followed when it is a link); refuses a
    dangling link and one that leads to a running server's WAL."""
    link = data_dir / "pg_wal"
    if not os.path.lexists(link):
        raise RestoreLabelError(f"{link} is missing",
                                hint="restore the WAL disk (or the whole data disk) first")
    if link.is_symlink() and not link.exists():
        raise RestoreLabelError(
            f"{link} is a link to {os.readlink(link)}, which does not exist",
            hint="mount the restored WAL disk there, or point the link at it: "
                 f"ln -sfn /RESTORED/WAL/DIR {link}")
    target = Path(os.path.realpath(link))
    owner = live_wal_owner(target, data_dir)
    if owner is not None:
        raise RestoreLabelError(
            f"{link} leads to {target}, the WAL directory of the RUNNING server of {owner}",
            hint="a restored copy must use its own restored WAL; point the link at it "
                 f"(ln -sfn /RESTORED/WAL/DIR {link}) before anything reads or starts it")
    return target


def live_wal_owner(wal_dir: Path, data_dir: Path) -> str | None:
    """The data directory of a running PostgreSQL (other than ``data_dir``) whose pg_wal is
    ``wal_dir``, or None. Postmasters and backends chdir into their data directory."""
    mine = os.path.realpath(data_dir)
    wanted = os.path.realpath(wal_dir)
    seen: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as handle:
                if handle.read().strip() not in ("postgres", "postmaster"):
                    continue
            cwd = os.path.realpath(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if cwd in seen or cwd == mine:
            continue
        seen.add(cwd)
        if os.path.realpath(os.path.join(cwd, "pg_wal")) == wanted:
            return cwd
    return None


def pg_major(data_dir: Path) -> int | None:
    try:
        text = (data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def where_to_get_wal(metadata: Mapping[str, Any], wal_dir: Path) -> str:
    """The fix for missing WAL, naming the files."""
    label = str(metadata.get("backup_label") or "")
    start = wal.label_start_lsn(label)
    timeline = wal.label_timeline(label)
    first = (wal.segment_name(timeline, wal.parse_lsn(start)) if start and timeline
             else "the file named in the label's START WAL LOCATION")
    last = metadata.get("stop_wal_file") or "the file holding stop_lsn"
    return (f"copy WAL files {first} through {last} into {wal_dir} from the WAL archive or "
            "from the original server's pg_wal (it keeps them only until they are recycled), "
            "then run this again; or, with a WAL archive, set restore_command, create "
            "recovery.signal and pass --wal-from-archive; or, if every disk (data and WAL) "
            "was snapshotted at the same instant, restore crash-consistent WITHOUT a label "
            "(docs/restore.md)")


def check_label_against_copy(directory: Path, metadata: Mapping[str, Any]) -> list[str]:
    """Why the recorded label does not belong to the copy in ``directory`` ([] if it does)."""
    label = str(metadata.get("backup_label") or "")
    try:
        control = read_control(directory)
    except ControlFileError as exc:
        return [str(exc)]
    stop = metadata.get("stop_lsn")
    try:
        stop_lsn = wal.parse_lsn(str(stop)) if stop else None
    except wal.BadLSN as exc:
        return [f"the record's stop_lsn is not an LSN: {exc}"]
    return wal.label_mismatches(
        label, copy_system_identifier=control.system_identifier,
        copy_timeline=control.timeline, copy_checkpoint=control.checkpoint_lsn,
        stop_lsn=stop_lsn, label_system_identifier=metadata.get("system_identifier"))


def verify_wal(directory: Path, metadata: Mapping[str, Any], *,
               pg_bindir: str | None = None) -> str:
    """Prove the copy's WAL holds this backup's end-of-backup record (before stop_lsn);
    return what was found, raise RestoreLabelError saying where to get the WAL otherwise."""
    label = str(metadata.get("backup_label") or "")
    start, timeline = wal.label_start_lsn(label), wal.label_timeline(label)
    if start is None or timeline is None:
        raise RestoreLabelError("the label has no START WAL LOCATION / START TIMELINE")
    stop = metadata.get("stop_lsn")
    stop_lsn = wal.parse_lsn(str(stop)) if stop else None
    wal_dir = wal_directory(directory)
    tool = waldump.find_waldump(pg_major(directory), pg_bindir)
    if wal.parse_backup_label(label).get("BACKUP FROM") == "standby" and stop_lsn is not None:
        scan = waldump.reaches(tool, wal_dir, timeline, wal.parse_lsn(start), stop_lsn)
        if scan.returncode == 0:
            return (f"a backup taken on a standby (no end-of-backup record): the WAL in "
                    f"{wal_dir} reads without a gap from {start} to stop_lsn {stop}")
        reached = (f"the WAL there can be read only up to {wal.format_lsn(scan.failed_at)}"
                   if scan.failed_at is not None else "it could not be read")
        raise RestoreLabelError(
            f"{wal_dir} does not hold the WAL this standby backup needs, from {start} to "
            f"stop_lsn {stop}; {reached} (pg_waldump: {scan.error})",
            hint=where_to_get_wal(metadata, wal_dir))
    scan = waldump.find_backup_end(tool, wal_dir, timeline, wal.parse_lsn(start), stop_lsn)
    if scan.found_lsn is not None:
        return (f"the end-of-backup record (BACKUP_END {start}) is at "
                f"{wal.format_lsn(scan.found_lsn)} in {wal_dir}"
                + (f", before stop_lsn {stop}" if stop else ""))
    reached = (f"the WAL there can be read only up to {wal.format_lsn(scan.failed_at)}"
               if scan.failed_at is not None else "it could not be read")
    raise RestoreLabelError(
        f"{wal_dir} does not hold the WAL this backup needs: no end-of-backup record "
        f"(BACKUP_END {start}) before stop_lsn {stop}; {reached} (pg_waldump: {scan.error}). "
        "A WAL file copied before 'post' has its full size but not the end of the backup; "
        "started like this, recovery stops with 'WAL ends before end of online backup'",
        hint=where_to_get_wal(metadata, wal_dir))


def install_label(data_dir: str | os.PathLike[str], metadata: Mapping[str, Any], *,
                  force: bool = False, instance: str | None = None,
                  tablespace_mapping: Mapping[str, str] | None = None,
                  unsafe_skip_label_check: bool = False, wal_from_archive: bool = False,
                  pg_bindir: str | None = None) -> LabelInstalled:
    """Write ``metadata``'s backup_label (and tablespace_map) into ``data_dir``.

    Refused unless the label belongs to the copy (:func:`check_label_against_copy`; skipped,
    loudly, with ``unsafe_skip_label_check``) and the copy's WAL holds the end-of-backup record
    (:func:`verify_wal`; not required with ``wal_from_archive``, when restore_command will
    fetch it). ``tablespace_mapping`` (old path -> new path) rewrites tablespace_map entries;
    that is the only change ever made to the recorded bytes, and only when asked for.
    """
    directory = Path(os.path.abspath(data_dir))
    label = _check_text(metadata, LABEL)
    if label is None:
        raise RestoreLabelError("the record holds no backup_label")
    spcmap = _check_text(metadata, MAP)
    check_data_dir(directory)
    result = LabelInstalled(data_dir=str(directory), instance=instance,
                            start_lsn=metadata.get("start_lsn"), stop_lsn=metadata.get("stop_lsn"))
    mismatches = check_label_against_copy(directory, metadata)
    if mismatches and not unsafe_skip_label_check:
        raise LabelMismatch(
            f"the label does not belong to {directory}: " + "; ".join(mismatches),
            hint="give the run whose hold this copy was taken in (--run-id, or no --run-id to "
                 "let quiesce find it), or the data directory restored from that run's "
                 "snapshot; never start a copy with another run's label")
    if mismatches:
        result.warnings.append("--unsafe-skip-label-check: installed although "
                               + "; ".join(mismatches))
    else:
        result.checks.append("the label matches the copy's pg_control (cluster, timeline, "
                             "latest checkpoint between the backup's start and stop_lsn)")
    result.warnings.extend(check_same_cluster(directory, metadata))
    if wal_from_archive:
        result.warnings.append(
            "--wal-from-archive: the WAL to stop_lsn was not looked for in pg_wal; recovery "
            "must fetch it: set restore_command and create recovery.signal before starting")
    else:
        result.checks.append(verify_wal(directory, metadata, pg_bindir=pg_bindir))
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
    if os.path.lexists(directory / "postmaster.pid"):
        result.warnings.append(
            f"remove {directory / 'postmaster.pid'} before starting: it is a leftover from "
            "the snapshot, and the server refuses to start if its pid is alive on this host")
    return result


def match_runs(directory: Path, runs: Sequence[tuple[str, Mapping[str, Any]]],
               name: str | None) -> tuple[list[str], list[str]]:
    """Which of ``runs`` (run id, record) carry a label that belongs to the copy.

    Returns (matching run ids, one line per other run saying why not)."""
    matching: list[str] = []
    others: list[str] = []
    for run_id, record in runs:
        try:
            _, metadata = find_label_metadata(record, name, accept_inconsistent=True)
        except RestoreLabelError as exc:
            others.append(f"{run_id}: {exc}")
            continue
        reasons = check_label_against_copy(directory, metadata)
        if reasons:
            others.append(f"{run_id}: " + "; ".join(reasons))
        else:
            matching.append(run_id)
    return matching, others
