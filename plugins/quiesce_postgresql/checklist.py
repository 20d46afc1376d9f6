"""``quiesce restore-check``: is a restored PostgreSQL data directory ready for its first start?

Reads only (files, pg_control, ``pg_waldump``); changes nothing. Each check gives ``ok``,
``problem`` (something to fix before starting) or ``note`` (something to know), and problems
carry the action that fixes them; :func:`check_restored` returns them in the order a DBA
should act on them. docs/restore.md is the runbook these checks follow, and the drill runs
them on every PostgreSQL restore.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiesce.errors import QuiesceError
from quiesce_postgresql import wal, waldump
from quiesce_postgresql.control import ControlData, ControlFileError, read_control
from quiesce_postgresql.restore import (
    RestoreLabelError,
    check_data_dir,
    pg_major,
    wal_directory,
)

OK, PROBLEM, NOTE = "ok", "problem", "note"
RECOVERY_KEYS = ("restore_command", "primary_conninfo", "recovery_target",
                 "recovery_target_lsn", "recovery_target_name", "recovery_target_time",
                 "recovery_target_xid", "recovery_target_action", "archive_mode",
                 "archive_command", "archive_library", "data_directory", "hba_file",
                 "ident_file", "include", "include_if_exists", "include_dir")


class RestoreCheckUsage(QuiesceError):
    """DATADIR is not a stopped PostgreSQL data directory (exit 2)."""


@dataclass
class Item:
    name: str
    status: str
    text: str
    action: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "text": self.text,
                "action": self.action}


@dataclass
class Checklist:
    data_dir: str
    items: list[Item] = field(default_factory=list)

    def add(self, name: str, status: str, text: str, action: str | None = None) -> None:
        self.items.append(Item(name, status, text, action))

    @property
    def problems(self) -> list[Item]:
        return [i for i in self.items if i.status == PROBLEM]

    @property
    def steps(self) -> list[str]:
        """What to do, in order: the fix of every problem, then start and verify."""
        steps = [i.action for i in self.items if i.status == PROBLEM and i.action]
        label = any(i.name == "backup_label" and i.status == OK for i in self.items)
        steps.append(
            "start the server on the copy (postgres -D DATADIR, pg_ctl, or your service "
            "manager once its configuration points at DATADIR) and read its log: "
            + ("'starting backup recovery with redo LSN ...', 'completed backup recovery' and "
               "'database system is ready to accept connections' must appear"
               if label else
               "'redo done at ...' (or a clean start) and 'database system is ready to accept "
               "connections' must appear, with no PANIC or FATAL"))
        steps.append("verify the data: pg_amcheck --heapallindexed on each database, and the "
                     "checks your application trusts (row counts, latest rows)")
        return steps

    def as_dict(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "ok": not self.problems,
                "checks": [i.as_dict() for i in self.items], "steps": self.steps}


def parse_settings(text: str) -> dict[str, str]:
    """``name = value`` lines of postgresql.conf syntax (quotes, '' escapes, # comments)."""
    settings: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name_end = 0
        while name_end < len(line) and (line[name_end].isalnum() or line[name_end] in "_."):
            name_end += 1
        name = line[:name_end].lower()
        rest = line[name_end:].lstrip()
        if rest.startswith("="):
            rest = rest[1:].lstrip()
        if not name:
            continue
        if rest.startswith("'"):
            value, i = [], 1
            while i < len(rest):
                if rest[i] == "'" and rest[i + 1:i + 2] == "'":
                    value.append("'")
                    i += 2
                elif rest[i] == "\\" and i + 1 < len(rest):
                    value.append(rest[i + 1])
                    i += 2
                elif rest[i] == "'":
                    break
                else:
                    value.append(rest[i])
                    i += 1
            settings[name] = "".join(value)
        else:
            settings[name] = rest.split("#", 1)[0].strip()
    return settings


def _settings(data_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The recovery-related settings of postgresql.conf then postgresql.auto.conf."""
    merged: dict[str, str] = {}
    read = []
    for name in ("postgresql.conf", "postgresql.auto.conf"):
        try:
            text = (data_dir / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        read.append(name)
        merged.update({k: v for k, v in parse_settings(text).items() if k in RECOVERY_KEYS})
    return merged, read


def check_restored(data_dir: str | os.PathLike[str], *,
                   pg_bindir: str | None = None) -> Checklist:
    """Every check, in the order a DBA acts on them. Raises RestoreCheckUsage when DATADIR
    is not a stopped data directory."""
    directory = Path(os.path.abspath(data_dir))
    try:
        check_data_dir(directory)
    except RestoreLabelError as exc:
        raise RestoreCheckUsage(str(exc), hint=exc.hint) from exc
    out = Checklist(str(directory))
    _check_files(directory, out)
    settings, read = _settings(directory)
    _check_config_location(directory, read, out)
    try:
        control: ControlData | None = read_control(directory)
    except ControlFileError as exc:
        out.add("pg_control", PROBLEM, str(exc), f"restore the data disk again ({exc.hint})")
        control = None
    if control is not None:
        out.add("pg_control", OK,
                f"cluster {control.system_identifier}, state '{control.state}', latest "
                f"checkpoint {wal.format_lsn(control.checkpoint_lsn)} (redo "
                f"{wal.format_lsn(control.redo_lsn)}) on timeline {control.timeline}")
    try:
        wal_dir: Path | None = wal_directory(directory)
    except RestoreLabelError as exc:
        out.add("pg_wal", PROBLEM, str(exc), exc.hint)
        wal_dir = None
    archive = bool(settings.get("restore_command")) and (
        (directory / "recovery.signal").exists() or (directory / "standby.signal").exists())
    if control is not None and wal_dir is not None:
        _check_wal(directory, control, wal_dir, archive=archive, pg_bindir=pg_bindir, out=out)
    _check_tablespaces(directory, out)
    _check_recovery(directory, settings, out)
    return out


def _check_files(directory: Path, out: Checklist) -> None:
    st = directory.stat()
    if st.st_uid == 0:
        out.add("ownership", PROBLEM, f"{directory} is owned by root; PostgreSQL refuses to "
                "run as root", f"chown -R postgres:postgres {directory} (and the restored "
                "WAL and tablespace directories)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o027:
        out.add("permissions", PROBLEM, f"{directory} has mode {mode:04o}; PostgreSQL "
                "refuses a data directory other users can read", f"chmod 700 {directory}")
    pid_file = directory / "postmaster.pid"
    if os.path.lexists(pid_file):
        out.add("postmaster.pid", PROBLEM,
                "postmaster.pid was copied with the snapshot; the server refuses to start "
                "while the pid in it is alive on this host (e.g. the original server)",
                f"rm {pid_file}")
    else:
        out.add("postmaster.pid", OK, "no leftover postmaster.pid")


def _check_config_location(directory: Path, read: list[str], out: Checklist) -> None:
    if "postgresql.conf" in read:
        out.add("configuration", OK, "postgresql.conf is in the data directory")
        return
    major = pg_major(directory)
    found = sorted(Path("/etc/postgresql").glob(f"{major or '*'}/*/postgresql.conf"))
    where = (", ".join(str(p.parent) for p in found) if found
             else "/etc/postgresql/<version>/<cluster>/ on Debian and Ubuntu")
    out.add("configuration", PROBLEM,
            "postgresql.conf (and pg_hba.conf, pg_ident.conf) are not in the data directory: "
            f"they are kept outside it (here: {where}) and are not part of a data-disk "
            "snapshot",
            "restore the configuration directory of the original server too (from the OS "
            "disk snapshot, or your configuration management), point its data_directory at "
            "the copy, or start with postgres -D DATADIR -c config_file=/PATH/postgresql.conf")


def _check_wal(directory: Path, control: ControlData, wal_dir: Path, *, archive: bool,
               pg_bindir: str | None, out: Checklist) -> None:
    try:
        tool = waldump.find_waldump(pg_major(directory), pg_bindir)
    except waldump.WalToolMissing as exc:
        out.add("wal", PROBLEM, f"cannot read the WAL: {exc}", exc.hint)
        return
    label_path = directory / "backup_label"
    if not label_path.exists():
        _check_crash_consistent(control, wal_dir, tool, archive, out)
        return
    label = label_path.read_text(encoding="utf-8", errors="replace")
    reasons = wal.label_mismatches(label, copy_system_identifier=control.system_identifier,
                                   copy_timeline=control.timeline,
                                   copy_checkpoint=control.checkpoint_lsn, stop_lsn=None,
                                   label_system_identifier=None)
    start, timeline = wal.label_start_lsn(label), wal.label_timeline(label)
    if reasons or start is None or timeline is None:
        out.add("backup_label", PROBLEM,
                "backup_label does not belong to this copy: " + "; ".join(reasons),
                f"rm {label_path}, then install the right label with 'quiesce restore-label "
                f"{directory}' (it finds the run this copy was taken in)")
        return
    if wal.parse_backup_label(label).get("BACKUP FROM") == "standby":
        out.add("backup_label", OK, f"backup_label of the backup started at {start} (on a "
                "standby) fits the copy's pg_control")
        out.add("wal", NOTE, "a backup taken on a standby has no end-of-backup record: its end "
                "is the stop_lsn of the run record, which 'quiesce restore-label' checked "
                "(install the label with it)")
        return
    scan = waldump.find_backup_end(tool, wal_dir, timeline, wal.parse_lsn(start))
    if scan.found_lsn is not None and control.checkpoint_lsn > scan.found_lsn:
        out.add("backup_label", PROBLEM,
                f"the copy's latest checkpoint {wal.format_lsn(control.checkpoint_lsn)} is "
                f"after this backup's end ({wal.format_lsn(scan.found_lsn)}): the copy was "
                "taken after the backup ended, so the label does not belong to it",
                f"rm {label_path}, then 'quiesce restore-label {directory}'")
        return
    out.add("backup_label", OK, f"backup_label of the backup started at {start} fits the "
            "copy's pg_control")
    if scan.found_lsn is not None:
        out.add("wal", OK, f"the end-of-backup record (BACKUP_END {start}) is at "
                f"{wal.format_lsn(scan.found_lsn)} in {wal_dir}")
    elif archive:
        out.add("wal", NOTE, f"{wal_dir} does not reach the end of the backup (BACKUP_END "
                f"{start}; pg_waldump: {scan.error}); recovery will fetch the rest with "
                "restore_command, so the archive must hold it")
    else:
        first = wal.segment_name(timeline, wal.parse_lsn(start))
        out.add("wal", PROBLEM,
                f"{wal_dir} does not hold the end-of-backup record (BACKUP_END {start}); "
                f"pg_waldump: {scan.error}. Started like this, recovery stops with 'WAL ends "
                "before end of online backup'",
                f"copy the WAL from {first} up to the file holding the run's stop_lsn "
                "(stop_wal_file in the run record) into "
                f"{wal_dir}, from the WAL archive or the original server's pg_wal; or set "
                "restore_command and create recovery.signal")


def _check_crash_consistent(control: ControlData, wal_dir: Path, tool: str, archive: bool,
                            out: Checklist) -> None:
    if control.state == "shut down":
        out.add("wal", OK, "the copy was shut down cleanly: nothing to replay")
        return
    out.add("backup_label", NOTE,
            "no backup_label: the server will recover the copy as after a crash. That is right "
            "only if every disk of the cluster (data, pg_wal, tablespaces) was snapshotted at "
            "the same instant (one freeze across all of them). A copy taken disk by disk "
            "during a backup-mode hold needs its label: 'quiesce restore-label DATADIR'")
    scan = waldump.find_checkpoint(tool, wal_dir, control.timeline, control.redo_lsn)
    if scan.found_lsn == control.checkpoint_lsn:
        out.add("wal", OK, f"the checkpoint record recovery starts from "
                f"({wal.format_lsn(control.checkpoint_lsn)}) is in {wal_dir}")
    elif archive:
        out.add("wal", NOTE, f"the checkpoint record {wal.format_lsn(control.checkpoint_lsn)} "
                f"is not in {wal_dir}; recovery will fetch it with restore_command")
    else:
        out.add("wal", PROBLEM,
                f"{wal_dir} does not hold the checkpoint record recovery starts from "
                f"({wal.format_lsn(control.checkpoint_lsn)}, redo "
                f"{wal.format_lsn(control.redo_lsn)}; pg_waldump: {scan.error})",
                f"restore the WAL disk from the same snapshot into {wal_dir}, or fetch "
                f"{wal.segment_name(control.timeline, control.redo_lsn)} and later files "
                "from the WAL archive")


def _check_tablespaces(directory: Path, out: Checklist) -> None:
    spcmap = directory / "tablespace_map"
    if spcmap.exists():
        text = spcmap.read_text(encoding="utf-8", errors="replace")
        targets = [line.partition(" ")[2] for line in text.splitlines() if line]
        origin = "tablespace_map"
    else:
        links = directory / "pg_tblspc"
        targets = []
        if links.is_dir():
            targets = [os.readlink(p) for p in sorted(links.iterdir()) if p.is_symlink()]
        origin = "pg_tblspc"
    missing = [t for t in targets if not os.path.isdir(t)]
    if missing:
        out.add("tablespaces", PROBLEM,
                f"tablespace directories named in {origin} do not exist: {', '.join(missing)}",
                "restore each tablespace's disk at its path (or remap it with restore-label "
                "--tablespace-mapping OLD=NEW)")
    elif targets:
        out.add("tablespaces", OK, f"{len(targets)} tablespace directories present")


def _check_recovery(directory: Path, settings: dict[str, str], out: Checklist) -> None:
    recovery = (directory / "recovery.signal").exists()
    standby = (directory / "standby.signal").exists()
    restore_command = settings.get("restore_command", "")
    if recovery and not standby and not restore_command:
        out.add("recovery", PROBLEM, "recovery.signal is present but restore_command is not "
                "set: PostgreSQL refuses to start",
                f"set restore_command in {directory / 'postgresql.auto.conf'} (or your "
                f"configuration), or rm {directory / 'recovery.signal'}")
    elif standby:
        source = ("primary_conninfo" if settings.get("primary_conninfo") else
                  "restore_command" if restore_command else None)
        if source is None:
            out.add("recovery", PROBLEM, "standby.signal is present but neither "
                    "primary_conninfo nor restore_command is set: the copy would wait forever",
                    f"set primary_conninfo to start a replica, or rm "
                    f"{directory / 'standby.signal'} to restore a standalone server")
        else:
            out.add("recovery", NOTE, f"standby.signal: the copy starts as a standby fed by "
                    f"{source}; remove standby.signal to restore a standalone server")
    elif recovery:
        targets = {k: v for k, v in settings.items() if k.startswith("recovery_target")}
        out.add("recovery", NOTE, "recovery.signal: archive recovery with restore_command"
                + (f", stopping at {targets}" if targets else ", to the end of the archive"))
    else:
        out.add("recovery", OK, "no recovery.signal/standby.signal: recovery replays pg_wal "
                "and the server starts as a primary")
    if settings.get("archive_mode", "off").lower() in ("on", "always", "true", "1", "yes"):
        out.add("archiving", NOTE,
                f"archive_mode is {settings['archive_mode']}: the started copy archives WAL "
                f"with archive_command {settings.get('archive_command', '')!r}. If that is the "
                "original server's archive, turn archive_mode off (or point it elsewhere) "
                "before starting, or the copy may overwrite or mix with the original's WAL")
    if any(k in settings for k in ("include", "include_if_exists", "include_dir")):
        out.add("configuration includes", NOTE, "postgresql.conf includes other files; "
                "restore-check did not read them (recovery settings may be there)")
