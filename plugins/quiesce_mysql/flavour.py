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

import re
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


def plan_locks(info: ServerInfo, requested: str, nontransactional_tables: int | None) -> LockPlan:
    """The lock steps for ``requested`` on this server.

    ``nontransactional_tables`` is how many tables outside the system schemas use an engine
    whose files a crash-consistent snapshot does not protect (MyISAM, Aria, CSV, ARCHIVE...);
    ``None`` when it was not counted (only ``auto`` on MySQL needs it).
    """
    if requested not in LOCK_MODES:
        raise EngineError(f"lock {requested!r} is not one of {', '.join(LOCK_MODES)}")
    ftwrl = FTWRL_MARIADB if info.is_mariadb and info.at_least(10, 4, 0) else FTWRL_MYSQL
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
        return LockPlan(requested, (INSTANCE,), "LOCK INSTANCE FOR BACKUP as configured")
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
    if info.is_mariadb:
        if info.at_least(10, 4, 1):
            return LockPlan(requested, (BACKUP_STAGE,),
                            "MariaDB 10.4.1+: BACKUP STAGE START + BLOCK_COMMIT")
        return LockPlan(requested, (ftwrl,), "MariaDB before 10.4.1 has no BACKUP STAGE")
    if not info.at_least(8, 0, 0):
        return LockPlan(requested, (ftwrl,), "MySQL before 8.0 has no LOCK INSTANCE FOR BACKUP")
    if nontransactional_tables is None:
        raise EngineError("internal: lock = auto on MySQL needs the count of "
                          "non-transactional tables")
    if nontransactional_tables:
        return LockPlan(
            requested, (INSTANCE, ftwrl),
            f"MySQL 8.0+: LOCK INSTANCE FOR BACKUP, plus FLUSH TABLES WITH READ LOCK because "
            f"{nontransactional_tables} non-transactional table(s) exist",
        )
    return LockPlan(requested, (INSTANCE,),
                    "MySQL 8.0+ with InnoDB tables only: LOCK INSTANCE FOR BACKUP")


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
