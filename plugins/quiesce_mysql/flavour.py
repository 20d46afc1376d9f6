"""Which server this is (MySQL or MariaDB, which version) and which statements it needs.

Everything here is pure logic on ``@@version`` / ``@@version_comment`` strings, so the MySQL
8.0 / 8.2 / 8.4 code paths are unit-tested on a machine that only has MariaDB.

Statement choices, from the servers' manuals:

- binlog coordinates: MySQL 8.2+ ``SHOW BINARY LOG STATUS`` (``SHOW MASTER STATUS`` is
  deprecated in 8.2 and removed in 8.4); MariaDB 10.5.2+ ``SHOW BINLOG STATUS``; older
  servers ``SHOW MASTER STATUS``.
- replica coordinates: MySQL 8.0.22+ and MariaDB 10.5.1+ ``SHOW REPLICA STATUS``; older
  ``SHOW SLAVE STATUS``.
- locks: MySQL 8.0+ ``LOCK INSTANCE FOR BACKUP``; MariaDB 10.4.1+ ``BACKUP STAGE``;
  ``FLUSH TABLES WITH READ LOCK`` everywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quiesce.errors import EngineError

MYSQL = "mysql"
MARIADB = "mariadb"

LOCK_MODES = ("auto", "ftwrl", "instance", "backup-stage")

_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class ServerInfo:
    """What the server said about itself."""

    flavour: str  # MYSQL or MARIADB
    version: tuple[int, int, int]
    version_string: str
    comment: str = ""

    @property
    def is_mariadb(self) -> bool:
        return self.flavour == MARIADB

    @property
    def version_text(self) -> str:
        return ".".join(str(part) for part in self.version)

    def at_least(self, *version: int) -> bool:
        return self.version >= tuple(version)

    def describe(self) -> str:
        name = "MariaDB" if self.is_mariadb else "MySQL"
        return f"{name} {self.version_text}"


def parse_server(version: str, comment: str = "") -> ServerInfo:
    """ServerInfo from ``@@version`` and ``@@version_comment``.

    MariaDB says so in its version ("10.11.6-MariaDB-0+deb12u1-log") or, for some packages, in
    the comment. A replication-compatibility prefix ("5.5.5-10.4.3-MariaDB") is skipped: the
    real version is the one right before "-MariaDB". Percona Server and other MySQL forks are
    MySQL.
    """
    text = version.strip()
    is_maria = "mariadb" in text.lower() or "mariadb" in comment.lower()
    matches = _VERSION_RE.findall(text)
    if not matches:
        raise EngineError(f"cannot read a version number from the server's @@version {text!r}",
                          hint="this plugin understands MySQL and MariaDB servers only")
    chosen = matches[0]
    if is_maria and text.startswith("5.5.5-") and len(matches) > 1:
        chosen = matches[1]
    numbers = (int(chosen[0]), int(chosen[1]), int(chosen[2]))
    return ServerInfo(MARIADB if is_maria else MYSQL, numbers, text, comment.strip())


# --- statements ------------------------------------------------------------------------------

def binlog_status_statement(info: ServerInfo) -> str:
    if info.is_mariadb:
        return "SHOW BINLOG STATUS" if info.at_least(10, 5, 2) else "SHOW MASTER STATUS"
    return "SHOW BINARY LOG STATUS" if info.at_least(8, 2, 0) else "SHOW MASTER STATUS"


def replica_status_statement(info: ServerInfo) -> str:
    if info.is_mariadb:
        return "SHOW REPLICA STATUS" if info.at_least(10, 5, 1) else "SHOW SLAVE STATUS"
    return "SHOW REPLICA STATUS" if info.at_least(8, 0, 22) else "SHOW SLAVE STATUS"


def gtid_variables(info: ServerInfo) -> tuple[str, ...]:
    """Server variables that hold GTID positions worth recording (besides SHOW ... STATUS)."""
    if info.is_mariadb:
        if info.at_least(10, 0, 2):
            return ("gtid_binlog_pos", "gtid_current_pos", "gtid_slave_pos")
        return ()
    return ("gtid_mode", "gtid_executed")


# --- locks -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LockStep:
    """One lock taken in the holding session, and how to take, prove and drop it."""

    kind: str  # "ftwrl", "instance" or "backup-stage"
    acquire: tuple[str, ...]
    release: tuple[str, ...]
    # Statements that undo a partly taken step (e.g. BACKUP STAGE START done, BLOCK_COMMIT
    # timed out). Safe to run when nothing is held.
    undo: tuple[str, ...]
    # Proof in MySQL's performance_schema.metadata_locks: an (OBJECT_TYPE, LOCK_TYPE) row
    # GRANTED to the holding thread. None where the Performance Schema is not used (MariaDB
    # ships it disabled; its METADATA_LOCK_INFO plugin is read instead).
    pfs_evidence: tuple[str, str] | None
    # Proof in MariaDB's information_schema.METADATA_LOCK_INFO (plugin metadata_lock_info).
    mdl_info_mode: str
    # True when the step stops all writes (commits included): the binlog position recorded
    # while it is held is exactly the one in the snapshot.
    blocks_writes: bool


FTWRL_MYSQL = LockStep(
    kind="ftwrl",
    acquire=("FLUSH TABLES WITH READ LOCK",),
    release=("UNLOCK TABLES",),
    undo=("UNLOCK TABLES",),
    pfs_evidence=("GLOBAL", "SHARED"),
    mdl_info_mode="",
    blocks_writes=True,
)

FTWRL_MARIADB = LockStep(
    kind="ftwrl",
    acquire=("FLUSH TABLES WITH READ LOCK",),
    release=("UNLOCK TABLES",),
    undo=("UNLOCK TABLES",),
    # MariaDB 10.4+ implements FTWRL as a lock in the backup namespace.
    pfs_evidence=None,
    mdl_info_mode="MDL_BACKUP_FTWRL2",
    blocks_writes=True,
)

INSTANCE = LockStep(
    kind="instance",
    acquire=("LOCK INSTANCE FOR BACKUP",),
    release=("UNLOCK INSTANCE",),
    undo=("UNLOCK INSTANCE",),
    pfs_evidence=("BACKUP LOCK", "SHARED"),
    mdl_info_mode="",
    blocks_writes=False,
)

# START then BLOCK_COMMIT: the server runs the skipped FLUSH and BLOCK_DDL stages on the way
# (they cannot be skipped, only implied). FLUSH flushes and closes unused non-transactional
# tables and blocks new write locks on them; BLOCK_DDL waits for running writes to
# non-transactional tables and blocks DDL; BLOCK_COMMIT blocks commits and binlog writes.
# At BLOCK_COMMIT nothing can change on disk except uncommitted InnoDB pages, which redo
# recovery handles: the snapshot is consistent for every engine.
BACKUP_STAGE = LockStep(
    kind="backup-stage",
    acquire=("BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT"),
    release=("BACKUP STAGE END",),
    undo=("BACKUP STAGE END",),
    pfs_evidence=None,
    mdl_info_mode="MDL_BACKUP_WAIT_COMMIT",
    blocks_writes=True,
)


# The light level on MariaDB 10.6+ (atomic DDL): START then BLOCK_DDL (FLUSH implied). DDL and
# writes to non-transactional tables wait; InnoDB commits go on. Safe only when every file
# recovery needs is frozen together before the snapshot (quiesce.freezing.freeze_set).
BACKUP_STAGE_DDL = LockStep(
    kind="backup-stage-ddl",
    acquire=("BACKUP STAGE START", "BACKUP STAGE BLOCK_DDL"),
    release=("BACKUP STAGE END",),
    undo=("BACKUP STAGE END",),
    pfs_evidence=None,
    mdl_info_mode="MDL_BACKUP_WAIT_DDL",
    blocks_writes=False,
)

# The commit block added on top of BACKUP_STAGE_DDL when the light level falls back to the full
# one (non-transactional tables found once DDL was blocked): the stage moves on to
# BLOCK_COMMIT; BACKUP_STAGE_DDL's END releases both.
BACKUP_STAGE_COMMIT = LockStep(
    kind="backup-stage-commit",
    acquire=("BACKUP STAGE BLOCK_COMMIT",),
    release=(),
    undo=("BACKUP STAGE END",),
    pfs_evidence=None,
    mdl_info_mode="MDL_BACKUP_WAIT_COMMIT",
    blocks_writes=True,
)


@dataclass(frozen=True)
class LockPlan:
    """The steps to take in order (released in reverse), and why they were chosen."""

    requested: str
    steps: tuple[LockStep, ...]
    reason: str

    @property
    def kinds(self) -> list[str]:
        return [step.kind for step in self.steps]

    @property
    def blocks_writes(self) -> bool:
        return any(step.blocks_writes for step in self.steps)

    @property
    def description(self) -> str:
        return " + ".join(self.kinds)


def plan_locks(info: ServerInfo, requested: str, *, light: bool = False) -> LockPlan:
    """The lock steps for ``requested`` on this server.

    ``light``: the light level's conditions were verified (``level = "auto"``, every file
    recovery needs frozen together by the caller, durable settings; see
    :func:`light_level_support`), so ``lock = "auto"`` blocks DDL only. The engine then counts
    non-transactional tables with DDL held and adds :func:`commit_block` if there are any.
    Without ``light``, ``auto`` always blocks commits as well.
    """
    if requested not in LOCK_MODES:
        raise EngineError(f"lock {requested!r} is not one of {', '.join(LOCK_MODES)}")
    ftwrl = _ftwrl(info)
    if requested == "ftwrl":
        return LockPlan(requested, (ftwrl,), "FLUSH TABLES WITH READ LOCK as configured")
    if requested == "instance":
        if info.is_mariadb:
            raise EngineError(
                f"lock = \"instance\" (LOCK INSTANCE FOR BACKUP) is not supported on "
                f"{info.describe()}: it is a MySQL 8.0+ statement",
                hint='use lock = "backup-stage" (or "auto") for MariaDB',
            )
        if not info.at_least(8, 0, 0):
            raise EngineError(
                f"lock = \"instance\" needs MySQL 8.0 or later; this is {info.describe()}",
                hint='use lock = "ftwrl" (or "auto") on this server',
            )
        return LockPlan(requested, (INSTANCE,),
                        "LOCK INSTANCE FOR BACKUP as configured (commits are not blocked: "
                        "consistent only when the caller freezes every file together)")
    if requested == "backup-stage":
        if not info.is_mariadb:
            raise EngineError(
                f"lock = \"backup-stage\" (BACKUP STAGE) is not supported on {info.describe()}:"
                " it is a MariaDB 10.4+ statement",
                hint='use lock = "instance" (or "auto") for MySQL 8.0+',
            )
        if not info.at_least(10, 4, 1):
            raise EngineError(
                f"lock = \"backup-stage\" needs MariaDB 10.4.1 or later; this is "
                f"{info.describe()}",
                hint='use lock = "ftwrl" (or "auto") on this server',
            )
        return LockPlan(requested, (BACKUP_STAGE,), "BACKUP STAGE as configured")
    # auto
    if light:
        problem = light_level_support(info)
        if problem is not None:
            raise EngineError(f"internal: the light level was chosen on {info.describe()}, "
                              f"which cannot have it: {problem}")
        if info.is_mariadb:
            return LockPlan(requested, (BACKUP_STAGE_DDL,),
                            "light level: BACKUP STAGE START + BLOCK_DDL (commits go on; the "
                            "caller freezes every file recovery needs together)")
        return LockPlan(requested, (INSTANCE,),
                        "light level: LOCK INSTANCE FOR BACKUP (commits go on; the caller "
                        "freezes every file recovery needs together)")
    if info.is_mariadb:
        if info.at_least(10, 4, 1):
            return LockPlan(requested, (BACKUP_STAGE,),
                            "MariaDB 10.4.1+: BACKUP STAGE START + BLOCK_COMMIT")
        return LockPlan(requested, (ftwrl,), "MariaDB before 10.4.1 has no BACKUP STAGE")
    if not info.at_least(8, 0, 0):
        return LockPlan(requested, (ftwrl,), "MySQL before 8.0 has no LOCK INSTANCE FOR BACKUP")
    return LockPlan(requested, (INSTANCE, ftwrl),
                    "MySQL 8.0+ at the full level: LOCK INSTANCE FOR BACKUP, plus FLUSH TABLES "
                    "WITH READ LOCK to block commits (the light level's conditions are not "
                    "verified)")


def split_at_commit_block(plan: LockPlan) -> tuple[tuple[LockStep, ...],
                                                  tuple[LockStep, ...]] | None:
    """The plan cut where it starts stopping writes: (steps for ``pre``, steps for the freeze),
    or None when it cannot be cut (nothing in it stops writes, or a step that does is not the
    last). BACKUP STAGE is cut between BLOCK_DDL and BLOCK_COMMIT: the server holds the stages
    it passed, so taking BLOCK_COMMIT later ends in the same state as taking both at once."""
    steps = plan.steps
    if steps == (BACKUP_STAGE,):
        return (BACKUP_STAGE_DDL,), (BACKUP_STAGE_COMMIT,)
    if steps and steps[-1].blocks_writes and not any(s.blocks_writes for s in steps[:-1]):
        return steps[:-1], steps[-1:]
    return None


def _ftwrl(info: ServerInfo) -> LockStep:
    return FTWRL_MARIADB if info.is_mariadb and info.at_least(10, 4, 0) else FTWRL_MYSQL


def light_level_support(info: ServerInfo) -> str | None:
    """None when this server can be held at the light level, else why not."""
    if info.is_mariadb:
        if not info.at_least(10, 6, 0):
            return (f"{info.describe()} is older than 10.6: without atomic DDL a snapshot "
                    "taken during DDL may not recover")
        return None
    if not info.at_least(8, 0, 0):
        return f"{info.describe()} has no LOCK INSTANCE FOR BACKUP (MySQL 8.0+)"
    return None


def commit_block(info: ServerInfo, plan: LockPlan) -> LockStep:
    """The step that adds the commit block to a light plan (the fall back to the full level)."""
    if plan.steps == (BACKUP_STAGE_DDL,):
        return BACKUP_STAGE_COMMIT
    return _ftwrl(info)


# Schemas whose tables are not the application's data: their non-transactional tables (MySQL's
# log tables, MariaDB's Aria system tables) do not make a snapshot inconsistent.
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")

# Engines a crash-consistent snapshot protects, or that keep nothing on disk to protect.
SAFE_ENGINES = ("InnoDB", "MEMORY", "BLACKHOLE", "FEDERATED", "PERFORMANCE_SCHEMA", "TempTable",
                "SEQUENCE", "ndbcluster", "ndbinfo")


def nontransactional_count_query() -> tuple[str, tuple[str, ...]]:
    """SQL (with driver parameters) counting application tables on unprotected engines."""
    schemas = ", ".join(["%s"] * len(SYSTEM_SCHEMAS))
    engines = ", ".join(["%s"] * len(SAFE_ENGINES))
    # Only "%s" placeholders are interpolated; the values travel as driver parameters.
    sql = (
        "SELECT COUNT(*) FROM information_schema.TABLES "  # noqa: S608
        "WHERE TABLE_TYPE = 'BASE TABLE' AND ENGINE IS NOT NULL "
        f"AND TABLE_SCHEMA NOT IN ({schemas}) AND ENGINE NOT IN ({engines})"
    )
    return sql, SYSTEM_SCHEMAS + SAFE_ENGINES


_GLOBAL_GRANT = re.compile(r"^GRANT\s+(?P<privs>.+?)\s+ON\s+\*\.\*\s+TO\s", re.IGNORECASE)


def sees_every_table(grant_lines: list[str]) -> bool:
    """True when ``SHOW GRANTS`` lines give a global privilege that shows every table.

    information_schema.TABLES lists only the tables the account has some privilege on, so a
    least-privileged account (RELOAD, BACKUP_ADMIN...) sees none of the application's tables
    and would count zero non-transactional tables. ``lock = "auto"`` on MySQL trusts the count
    only when the account holds SELECT (or ALL PRIVILEGES) on ``*.*``.
    """
    for line in grant_lines:
        match = _GLOBAL_GRANT.match(line.strip())
        if not match:
            continue
        privileges = [p.strip().upper() for p in match.group("privs").split(",")]
        if "SELECT" in privileges or any(p.startswith("ALL") for p in privileges):
            return True
    return False


# --- the light level's evidence ----------------------------------------------------------------

#: Server variables the light level reads (SHOW GLOBAL VARIABLES returns those that exist).
LEVEL_VARIABLES = (
    "datadir", "innodb_data_home_dir", "innodb_log_group_home_dir", "innodb_undo_directory",
    "log_bin", "log_bin_basename", "log_bin_index", "relay_log_basename", "relay_log_index",
    "aria_log_dir_path", "pid_file", "innodb_flush_log_at_trx_commit", "sync_binlog",
)


def level_variables_query() -> tuple[str, tuple[str, ...]]:
    marks = ", ".join(["%s"] * len(LEVEL_VARIABLES))
    return (f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({marks})", LEVEL_VARIABLES)


def tablespace_files_query(info: ServerInfo) -> str:
    """InnoDB files named by an absolute path (a DATA DIRECTORY outside the data directory);
    files named relative to the data directory ("./db/t.ibd") lie under it."""
    if info.is_mariadb:
        return ("SELECT DISTINCT FILENAME FROM information_schema.INNODB_SYS_TABLESPACES "
                "WHERE FILENAME LIKE '/%' LIMIT 10000")
    return ("SELECT DISTINCT FILE_NAME FROM information_schema.FILES "
            "WHERE ENGINE = 'InnoDB' AND FILE_NAME LIKE '/%' LIMIT 10000")


def _on(value: str | None) -> bool:
    return str(value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def durability_problem(variables: Mapping[str, str]) -> str | None:
    """None when every commit is durable on disk when acknowledged, else why not."""
    flush = str(variables.get("innodb_flush_log_at_trx_commit", "")).strip()
    if flush != "1":
        return (f"innodb_flush_log_at_trx_commit is {flush or 'unknown'}, not 1: acknowledged "
                "commits may be missing from the redo log a snapshot holds")
    if _on(variables.get("log_bin")):
        sync = str(variables.get("sync_binlog", "")).strip()
        if sync != "1":
            return (f"sync_binlog is {sync or 'unknown'}, not 1, with the binary log on: the "
                    "binlog a snapshot holds may lag the commits InnoDB recovers")
    return None


def _setting_path(datadir: str, value: str | None) -> str | None:
    """A path setting as the server reads it: relative ones are under the data directory;
    None when unset or empty."""
    text = str(value or "").strip()
    if not text:
        return None
    return os.path.normpath(text if os.path.isabs(text) else os.path.join(datadir, text))


def commit_dirs(variables: Mapping[str, str]) -> list[str]:
    """The directories every commit writes and flushes: the InnoDB redo log's, and the binary
    log's when it is on. Relative settings are under the data directory; an unset redo
    directory is the data directory itself."""
    datadir = str(variables.get("datadir") or "").strip()
    if not datadir:
        return []
    paths = [_setting_path(datadir, variables.get("innodb_log_group_home_dir"))
             or os.path.normpath(datadir)]
    binlog = _setting_path(datadir, variables.get("log_bin_basename"))
    if _on(variables.get("log_bin")) and binlog:
        paths.append(os.path.dirname(binlog))
    return list(dict.fromkeys(paths))


def recovery_paths(variables: Mapping[str, str],
                   tablespace_files: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Every (what, absolute path) crash recovery needs: the data directory, InnoDB system,
    redo and undo files, the binary and relay logs with their indexes, Aria's logs (MariaDB),
    and InnoDB files outside the data directory. Relative settings are under the data
    directory; unset or empty ones default to it."""
    datadir = str(variables.get("datadir") or "").strip()
    if not datadir:
        return []

    def resolve(value: str | None) -> str | None:
        return _setting_path(datadir, value)

    out: list[tuple[str, str]] = [("data directory", os.path.normpath(datadir))]
    for key, what in (("innodb_data_home_dir", "InnoDB system tablespace directory"),
                      ("innodb_log_group_home_dir", "InnoDB redo log directory"),
                      ("innodb_undo_directory", "InnoDB undo directory"),
                      ("aria_log_dir_path", "Aria log directory")):
        path = resolve(variables.get(key))
        if path is not None:
            out.append((what, path))
    if _on(variables.get("log_bin")):
        for key, what in (("log_bin_basename", "binary log"),
                          ("log_bin_index", "binary log index")):
            path = resolve(variables.get(key))
            if path is not None:
                out.append((what, path))
    for key, what in (("relay_log_basename", "relay log"), ("relay_log_index", "relay log index")):
        path = resolve(variables.get(key))
        if path is not None:
            out.append((what, path))
    for name in tablespace_files:
        out.append(("InnoDB tablespace outside the data directory", os.path.normpath(name)))
    seen: set[str] = set()
    unique: list[tuple[str, str]] = []
    for what, path in out:
        if path not in seen:
            seen.add(path)
            unique.append((what, path))
    return unique
