"""What the WAL in a restored ``pg_wal`` really contains, read by ``pg_waldump``.

A WAL file's name says which stretch of WAL it is meant to hold, not that it holds it: a
segment copied while the server was still writing it has its full size (segments are
preallocated) but ends in zeros or in the bytes of a recycled segment. So the checks here read
the records themselves with the ``pg_waldump`` of the data directory's major version (it only
reads; nothing is changed):

- :func:`find_backup_end`: the end-of-backup record (``BACKUP_END <start lsn>``) that
  ``pg_backup_stop`` wrote, which a restore with a ``backup_label`` must replay;
- :func:`find_checkpoint`: the checkpoint record that ``pg_control`` names, from which crash
  recovery starts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from quiesce.errors import QuiesceError
from quiesce_postgresql import wal

WALDUMP_SECONDS = 900.0
_RECORD = re.compile(r"\blsn: ([0-9A-F]+/[0-9A-F]+), .*\bdesc: (\S+)(?: (.*))?$")
_ERROR_AT = re.compile(r"error in WAL record at ([0-9A-F]+/[0-9A-F]+)")
_MAX_ERROR = 400


class WalToolMissing(QuiesceError):
    """No pg_waldump of the right major version is installed."""


@dataclass
class WalScan:
    """What one pg_waldump pass found."""

    found_lsn: int | None = None  # where the record looked for starts
    error: str | None = None  # pg_waldump's own complaint where it stopped reading
    failed_at: int | None = None  # the LSN it could not read
    returncode: int | None = None  # 0: every record up to --end was read
    argv: list[str] = field(default_factory=list)


def find_waldump(major: int | None, bindir: str | os.PathLike[str] | None = None) -> str:
    """pg_waldump of PostgreSQL ``major`` (it reads only its own major version's WAL)."""
    if bindir:
        path = Path(bindir) / "pg_waldump"
        if os.access(path, os.X_OK):
            return str(path)
        raise WalToolMissing(f"no pg_waldump in {bindir}",
                             hint="give the bin directory of the PostgreSQL server version "
                                  "of the data directory")
    candidates: list[Path] = []
    if major is not None:
        candidates += [Path(f"/usr/lib/postgresql/{major}/bin/pg_waldump"),  # Debian/Ubuntu
                       Path(f"/usr/pgsql-{major}/bin/pg_waldump")]  # PGDG RPMs
    found = shutil.which("pg_waldump")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if os.access(path, os.X_OK) and _major_of(path) in (major, None):
            return str(path)
    which = f"PostgreSQL {major}" if major else "PostgreSQL"
    raise WalToolMissing(
        f"no pg_waldump of {which} found (looked in "
        f"{', '.join(str(c.parent) for c in candidates) or 'PATH'})",
        hint=f"install the {which} server package (Debian/Ubuntu: postgresql-{major or 'NN'}; "
             "RPM: postgresql{major or 'NN'}-server), or pass --pg-bindir")


def _major_of(tool: Path) -> int | None:
    try:
        out = subprocess.run([str(tool), "--version"], capture_output=True, text=True,
                             timeout=30, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return -1
    match = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    return int(match.group(1)) if match else None


def _scan(tool: str, wal_dir: Path, timeline: int, start: int, end: int | None, *,
          wanted: tuple[str, ...], argument: str | None) -> WalScan:
    """Stream ``pg_waldump -r XLOG`` from ``start`` until a record ``wanted`` (whose
    description starts with ``argument`` when given) shows up, or the WAL ends."""
    argv = [tool, "--path", str(wal_dir), "--timeline", str(timeline), "--rmgr", "XLOG",
            "--start", wal.format_lsn(start)]
    if end is not None:
        argv += ["--end", wal.format_lsn(end)]
    scan = WalScan(argv=argv)
    deadline = time.monotonic() + WALDUMP_SECONDS
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL, cwd="/") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            for line in proc.stdout:
                match = _RECORD.search(line.rstrip("\n"))
                if (match and match.group(2) in wanted
                        and (argument is None or (match.group(3) or "").startswith(argument))):
                    scan.found_lsn = wal.parse_lsn(match.group(1))
                    break
                if time.monotonic() > deadline:
                    scan.error = f"pg_waldump took longer than {WALDUMP_SECONDS:g}s"
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            errors = proc.stderr.read()
            scan.returncode = proc.wait()
    if scan.found_lsn is None and scan.error is None and scan.returncode != 0:
        text = " ".join(errors.replace("pg_waldump: error: ", "").split()) or (
            f"pg_waldump exited with {proc.returncode}")
        scan.error = text[:_MAX_ERROR]
        at = _ERROR_AT.search(text)
        scan.failed_at = wal.parse_lsn(at.group(1)) if at else None
    return scan


def find_backup_end(tool: str, wal_dir: Path, timeline: int, start_lsn: int,
                    stop_lsn: int | None = None) -> WalScan:
    """Look for ``BACKUP_END <start_lsn>`` from the backup's start (up to ``stop_lsn``)."""
    return _scan(tool, wal_dir, timeline, start_lsn, stop_lsn, wanted=("BACKUP_END",),
                 argument=wal.format_lsn(start_lsn))


def reaches(tool: str, wal_dir: Path, timeline: int, start_lsn: int, end_lsn: int) -> WalScan:
    """Read every record from ``start_lsn`` up to ``end_lsn``; returncode 0 when all were.

    (A backup taken on a standby has no end-of-backup record: the standby cannot write WAL.
    Its end is the stop_lsn that pg_backup_stop returned.)"""
    return _scan(tool, wal_dir, timeline, start_lsn, end_lsn, wanted=(), argument=None)


def find_checkpoint(tool: str, wal_dir: Path, timeline: int, redo_lsn: int) -> WalScan:
    """Read from a checkpoint's redo point to the first checkpoint record after it (the one
    whose redo point it is: checkpoints never overlap); found_lsn is where that record starts,
    which must be the checkpoint location in pg_control."""
    return _scan(tool, wal_dir, timeline, redo_lsn, None,
                 wanted=("CHECKPOINT_ONLINE", "CHECKPOINT_SHUTDOWN"), argument=None)
