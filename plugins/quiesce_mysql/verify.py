"""Prove, from a second session, that the holding session really holds its lock (or no longer).

A statement returning OK is not proof enough: quiesce must never report a lock it does not
hold. Evidence is looked for in this order, and the first conclusive source wins:

1. MySQL ``performance_schema.metadata_locks`` (on by default in MySQL 8.0+): a GRANTED row of
   the expected type owned by the holding thread.
2. MariaDB ``information_schema.METADATA_LOCK_INFO`` (plugin ``metadata_lock_info``, shipped
   with MariaDB; ``INSTALL SONAME 'metadata_lock_info'`` enables it): a row of the expected
   lock mode for the holding thread.
3. A conflict probe that changes nothing, run with ``lock_wait_timeout`` at its minimum:
   - BACKUP STAGE (MariaDB, any stage: BLOCK_DDL at the light level, BLOCK_COMMIT at the full
     one): a second ``BACKUP STAGE START`` must time out, because only one backup stage can be
     active on a server. (Our own START succeeded, so the active one is ours.) If it does not
     time out, the probe's own stage is ended at once. It cannot tell the stages apart: that
     the stage reached BLOCK_COMMIT rests on the statement's success.
   - FTWRL and LOCK INSTANCE: ``ALTER TABLE`` on a table of a schema that does not exist must
     time out waiting for the global/backup lock; "no such table" means nothing blocks DDL.
     It needs ALTER privilege on that name to be conclusive (root has it), so least-privileged
     accounts should rely on sources 1 or 2.

No source conclusive -> "unknown": the quiesce fails with a hint saying how to enable one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quiesce_mysql.flavour import LockStep, ServerInfo
from quiesce_mysql.session import (
    ACCESS_DENIED,
    ER_BAD_DB,
    ER_LOCK_WAIT_TIMEOUT,
    ER_NO_SUCH_TABLE,
    ER_UNKNOWN_TABLE,
    describe_error,
    error_number,
    run,
)

HELD = "held"
FREE = "free"
UNKNOWN = "unknown"

# A name that cannot collide with real data: the schema never exists.
PROBE_TABLE = "`quiesce_lock_probe_no_such_schema`.`no_such_table`"
PROBE_DDL = f"ALTER TABLE {PROBE_TABLE} COMMENT 'quiesce lock probe'"

VERIFY_HINTS = {
    "mariadb": ("let quiesce read lock information: INSTALL SONAME 'metadata_lock_info' and "
                "GRANT PROCESS to the quiesce account (or use lock = \"backup-stage\")"),
    "mysql": ("let quiesce read lock information: keep performance_schema ON (the default) "
              "and GRANT SELECT ON performance_schema.* to the quiesce account"),
}


@dataclass(frozen=True)
class Evidence:
    result: str  # HELD, FREE or UNKNOWN
    method: str
    detail: str = ""

    @property
    def conclusive(self) -> bool:
        return self.result in (HELD, FREE)


def from_lock_rows(step: LockStep, rows: list[tuple[Any, ...]], *, source: str) -> Evidence:
    """Judge (type, mode) rows a lock table lists for the holding thread.

    ``rows`` empty means "the thread holds no metadata lock that is instrumented": conclusive
    only when the source is known to instrument these locks (MariaDB's plugin always does;
    the Performance Schema may have the MDL instrument off), which the caller says.
    """
    if source == "performance_schema":
        want = step.pfs_evidence
        for object_type, lock_type, status in rows:
            if (want is not None and str(object_type) == want[0] and str(lock_type) == want[1]
                    and str(status) == "GRANTED"):
                return Evidence(HELD, source, f"{want[0]} {want[1]} GRANTED")
        return Evidence(FREE, source, f"no GRANTED {want} lock among {len(rows)} row(s)")
    for (mode,) in rows:
        if str(mode) == step.mdl_info_mode:
            return Evidence(HELD, source, str(mode))
    return Evidence(FREE, source, f"no {step.mdl_info_mode} among {len(rows)} lock(s)")


def from_probe_error(step: LockStep, exc: BaseException | None) -> Evidence:
    """Judge the outcome of a conflict probe (None: the probe statement succeeded)."""
    method = "probe: BACKUP STAGE START" if _is_backup_stage(step) else "probe: DDL"
    if exc is None:
        return Evidence(FREE, method, "the conflicting statement went through")
    number = error_number(exc)
    if number == ER_LOCK_WAIT_TIMEOUT:
        return Evidence(HELD, method, "the conflicting statement had to wait")
    if not _is_backup_stage(step) and number in (ER_NO_SUCH_TABLE, ER_BAD_DB):
        return Evidence(FREE, method, "DDL was not blocked (reached the table lookup)")
    if number in ACCESS_DENIED:
        return Evidence(UNKNOWN, method, f"not permitted ({describe_error(exc)})")
    return Evidence(UNKNOWN, method, describe_error(exc))


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _is_backup_stage(step: LockStep) -> bool:
    """BACKUP STAGE steps (any stage): proven by a second BACKUP STAGE START having to wait."""
    return step.kind.startswith("backup-stage")


#: Errors that say a lock view is missing or not readable by this account: known for the rest
#: of the hold (a timeout or a killed query says nothing about the next attempt).
MISSING_VIEW_ERRORS = frozenset({ER_UNKNOWN_TABLE, ER_NO_SUCH_TABLE, *ACCESS_DENIED})


@dataclass
class LockSources:
    """What one probe session learnt about the server's lock views, kept by the engine for the
    next verifications on it: a view found missing by 'pre' is not asked about again by the
    verification of the commit block right before the caller's FIFREEZE, nor by the release's
    confirmation. Only a definitive answer is kept (MISSING_VIEW_ERRORS, or the Performance
    Schema off, which needs a restart to change); a view that worked is asked again each time.
    A new probe session starts with a new one."""

    missing: set[str] = field(default_factory=set)
    #: The probe session whose lock_wait_timeout is already at its minimum.
    probe_wait_set_on: Any = None


class LockVerifier:
    """Looks at the holding thread from another connection (``probe``)."""

    def __init__(self, probe: Any, info: ServerInfo, thread_id: int, *,
                 timeout: float = 5.0, sources: LockSources | None = None) -> None:
        self.probe = probe
        self.info = info
        self.thread_id = thread_id
        self.timeout = timeout
        self.sources = sources if sources is not None else LockSources()
        self._pfs_usable: bool | None = False if "pfs" in self.sources.missing else None
        self._mdl_info_usable: bool | None = (False if "mdl_info" in self.sources.missing
                                              else None)

    # -- sources --------------------------------------------------------------------------

    def thread_alive(self) -> bool:
        # SHOW PROCESSLIST, not information_schema.PROCESSLIST: the latter is materialized
        # into an on-disk temporary table (its INFO column is a BLOB), whose files are created
        # and unlinked in tmpdir. Right before the caller's FIFREEZE (the deferred commit
        # block is verified there) the freed inodes queue RCU work that lengthens the freeze
        # (docs/performance.md), and a tmpdir on a frozen filesystem would block the query.
        rows = run(self.probe, "SHOW PROCESSLIST", timeout=self.timeout)
        return any(_as_int(row[0]) == self.thread_id for row in rows if row)

    def _unusable(self, source: str, exc: BaseException) -> None:
        if error_number(exc) in MISSING_VIEW_ERRORS:
            self.sources.missing.add(source)

    def _pfs_rows(self) -> list[tuple[Any, ...]] | None:
        if self.info.is_mariadb or self._pfs_usable is False:
            return None
        try:
            rows = run(
                self.probe,
                "SELECT m.OBJECT_TYPE, m.LOCK_TYPE, m.LOCK_STATUS "
                "FROM performance_schema.metadata_locks m "
                "JOIN performance_schema.threads t ON t.THREAD_ID = m.OWNER_THREAD_ID "
                "WHERE t.PROCESSLIST_ID = %s",
                (self.thread_id,), timeout=self.timeout,
            )
            if self._pfs_usable is None:
                enabled = run(
                    self.probe,
                    "SELECT @@performance_schema, (SELECT ENABLED FROM "
                    "performance_schema.setup_instruments WHERE NAME = "
                    "'wait/lock/metadata/sql/mdl')", timeout=self.timeout,
                )
                on, instrument = enabled[0] if enabled else (0, "NO")
                self._pfs_usable = bool(on) and str(instrument).upper() == "YES"
                if not on:
                    self.sources.missing.add("pfs")
        except Exception as exc:
            if error_number(exc) is None:
                raise
            self._pfs_usable = False
            self._unusable("pfs", exc)
            return None
        return rows if self._pfs_usable else None

    def _mdl_info_rows(self) -> list[tuple[Any, ...]] | None:
        if not self.info.is_mariadb or self._mdl_info_usable is False:
            return None
        try:
            rows = run(self.probe,
                       "SELECT LOCK_MODE FROM information_schema.METADATA_LOCK_INFO "
                       "WHERE THREAD_ID = %s", (self.thread_id,), timeout=self.timeout)
        except Exception as exc:
            if error_number(exc) is None:
                raise
            # 1109 unknown table (the plugin is not installed), access denied and the like.
            self._mdl_info_usable = False
            self._unusable("mdl_info", exc)
            return None
        self._mdl_info_usable = True
        return rows

    def _probe(self, step: LockStep) -> Evidence:
        minimum = 0 if self.info.is_mariadb else 1
        if self.sources.probe_wait_set_on is not self.probe:
            run(self.probe, "SET SESSION lock_wait_timeout = %s", (minimum,),
                timeout=self.timeout)
            self.sources.probe_wait_set_on = self.probe
        failure: BaseException | None = None
        try:
            if _is_backup_stage(step):
                run(self.probe, "BACKUP STAGE START", timeout=self.timeout + minimum)
            else:
                run(self.probe, PROBE_DDL, timeout=self.timeout + minimum)
        except Exception as exc:
            if error_number(exc) is None:
                raise
            failure = exc
        if failure is None and _is_backup_stage(step):
            run(self.probe, "BACKUP STAGE END", timeout=self.timeout)
        return from_probe_error(step, failure)

    # -- decisions ------------------------------------------------------------------------

    def check(self, step: LockStep) -> Evidence:
        """Evidence about ``step``'s lock held by the holding thread (HELD/FREE/UNKNOWN)."""
        rows = self._pfs_rows()
        if rows is not None:
            return from_lock_rows(step, rows, source="performance_schema")
        rows = self._mdl_info_rows()
        if rows is not None and step.mdl_info_mode:
            return from_lock_rows(step, rows, source="METADATA_LOCK_INFO")
        return self._probe(step)

