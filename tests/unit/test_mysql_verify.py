"""Which evidence source LockVerifier consults per flavour, and its fallbacks.

The server is replaced by a scripted connection that answers SQL by prefix: these tests check
the choice and order of sources (MySQL's Performance Schema, MariaDB's METADATA_LOCK_INFO,
then the conflict probes) - including the MySQL paths this machine cannot run. Whether a real
server's lock shows up in those sources is tested against MariaDB in
tests/integration/test_mysql_engine.py.
"""

from __future__ import annotations

from typing import Any

import pymysql

from quiesce_mysql.flavour import BACKUP_STAGE, FTWRL_MARIADB, FTWRL_MYSQL, INSTANCE, parse_server
from quiesce_mysql.verify import FREE, HELD, PROBE_DDL, UNKNOWN, LockSources, LockVerifier

MYSQL = parse_server("8.4.0", "MySQL Community Server - GPL")
MARIADB = parse_server("10.11.6-MariaDB")


class ScriptedConnection:
    """Answers each statement from ``answers`` (first matching prefix); records the SQL."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.executed: list[str] = []
        self._read_timeout = 1.0
        self._write_timeout = 1.0

    def cursor(self) -> ScriptedConnection:
        return self

    def __enter__(self) -> ScriptedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, sql: str, params: Any = None) -> None:
        self.executed.append(sql if params is None else f"{sql} <- {params}")
        for prefix, answer in self.answers.items():
            if sql.startswith(prefix):
                if isinstance(answer, BaseException):
                    raise answer
                self._rows = answer
                return
        self._rows = []

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)


def timeout_error() -> pymysql.err.OperationalError:
    return pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")


def test_mysql_reads_performance_schema_and_never_probes() -> None:
    conn = ScriptedConnection({
        "SELECT m.OBJECT_TYPE": [("BACKUP LOCK", "SHARED", "GRANTED")],
        "SELECT @@performance_schema": [(1, "YES")],
    })
    evidence = LockVerifier(conn, MYSQL, 7).check(INSTANCE)
    assert (evidence.result, evidence.method) == (HELD, "performance_schema")
    assert not any(sql.startswith(("ALTER", "BACKUP", "SET")) for sql in conn.executed)
    assert "<- (7,)" in conn.executed[0]  # the holding thread's id, as a parameter


def test_mysql_with_the_mdl_instrument_off_falls_back_to_the_ddl_probe() -> None:
    conn = ScriptedConnection({
        "SELECT m.OBJECT_TYPE": [],
        "SELECT @@performance_schema": [(1, "NO")],
        "ALTER TABLE": timeout_error(),
    })
    evidence = LockVerifier(conn, MYSQL, 7).check(FTWRL_MYSQL)
    assert (evidence.result, evidence.method) == (HELD, "probe: DDL")
    assert "SET SESSION lock_wait_timeout = %s <- (1,)" in conn.executed  # MySQL's minimum
    assert PROBE_DDL in conn.executed


def test_mysql_without_performance_schema_access_probes() -> None:
    conn = ScriptedConnection({
        "SELECT m.OBJECT_TYPE": pymysql.err.OperationalError(1142, "SELECT command denied"),
        "ALTER TABLE": pymysql.err.ProgrammingError(1049, "Unknown database"),
    })
    evidence = LockVerifier(conn, MYSQL, 7).check(INSTANCE)
    assert (evidence.result, evidence.method) == (FREE, "probe: DDL")


def test_mariadb_reads_metadata_lock_info_when_the_plugin_is_there() -> None:
    conn = ScriptedConnection({"SELECT LOCK_MODE": [("MDL_BACKUP_FTWRL2",)]})
    evidence = LockVerifier(conn, MARIADB, 9).check(FTWRL_MARIADB)
    assert (evidence.result, evidence.method) == (HELD, "METADATA_LOCK_INFO")
    assert not any("performance_schema" in sql for sql in conn.executed)


def test_mariadb_without_the_plugin_probes_backup_stage_and_ends_a_probe_that_got_through(
        ) -> None:
    conn = ScriptedConnection({
        "SELECT LOCK_MODE": pymysql.err.OperationalError(1109, "Unknown table"),
    })
    evidence = LockVerifier(conn, MARIADB, 9).check(BACKUP_STAGE)
    assert evidence.result == FREE
    assert conn.executed[-2:] == ["BACKUP STAGE START", "BACKUP STAGE END"]
    assert "SET SESSION lock_wait_timeout = %s <- (0,)" in conn.executed


def test_mariadb_ftwrl_probe_without_alter_privilege_is_unknown() -> None:
    conn = ScriptedConnection({
        "SELECT LOCK_MODE": pymysql.err.OperationalError(1109, "Unknown table"),
        "ALTER TABLE": pymysql.err.OperationalError(1142, "ALTER command denied"),
    })
    assert LockVerifier(conn, MARIADB, 9).check(FTWRL_MARIADB).result == UNKNOWN


def test_unusable_source_is_not_asked_twice() -> None:
    conn = ScriptedConnection({
        "SELECT LOCK_MODE": pymysql.err.OperationalError(1109, "Unknown table"),
        "BACKUP STAGE START": timeout_error(),
    })
    verifier = LockVerifier(conn, MARIADB, 9)
    verifier.check(BACKUP_STAGE)
    verifier.check(BACKUP_STAGE)
    assert sum(sql.startswith("SELECT LOCK_MODE") for sql in conn.executed) == 1


def test_what_one_verification_learnt_is_kept_for_the_next() -> None:
    """The engine hands the same LockSources to pre's verification, the block's at the freeze
    and the release's confirmation: the missing plugin and the probe session's
    lock_wait_timeout are asked about once, not right before the caller's FIFREEZE again."""
    conn = ScriptedConnection({
        "SELECT LOCK_MODE": pymysql.err.OperationalError(1109, "Unknown table"),
        "BACKUP STAGE START": timeout_error(),
    })
    sources = LockSources()
    assert LockVerifier(conn, MARIADB, 9, sources=sources).check(BACKUP_STAGE).result == HELD
    first = list(conn.executed)
    conn.executed.clear()
    assert LockVerifier(conn, MARIADB, 9, sources=sources).check(BACKUP_STAGE).result == HELD
    assert any(sql.startswith("SELECT LOCK_MODE") for sql in first)
    assert any(sql.startswith("SET SESSION lock_wait_timeout") for sql in first)
    assert conn.executed == ["BACKUP STAGE START"]


def test_a_fresh_probe_session_gets_its_lock_wait_timeout_again() -> None:
    answers = {"SELECT LOCK_MODE": pymysql.err.OperationalError(1109, "Unknown table"),
               "BACKUP STAGE START": timeout_error()}
    sources = LockSources()
    LockVerifier(ScriptedConnection(answers), MARIADB, 9, sources=sources).check(BACKUP_STAGE)
    fresh = ScriptedConnection(answers)
    assert LockVerifier(fresh, MARIADB, 9, sources=sources).check(BACKUP_STAGE).result == HELD
    assert fresh.executed == ["SET SESSION lock_wait_timeout = %s <- (0,)",
                              "BACKUP STAGE START"]


def test_a_source_that_worked_and_then_fails_falls_back_to_the_probe() -> None:
    conn = ScriptedConnection({"SELECT LOCK_MODE": [("MDL_BACKUP_WAIT_COMMIT",)],
                               "BACKUP STAGE START": timeout_error()})
    sources = LockSources()
    assert LockVerifier(conn, MARIADB, 9, sources=sources).check(BACKUP_STAGE).method == \
        "METADATA_LOCK_INFO"
    conn.answers["SELECT LOCK_MODE"] = pymysql.err.OperationalError(1142, "denied")
    evidence = LockVerifier(conn, MARIADB, 9, sources=sources).check(BACKUP_STAGE)
    assert evidence.result == HELD and evidence.method.startswith("probe")
    assert sources.missing == {"mdl_info"}


def test_a_transient_error_is_not_remembered() -> None:
    """A lock view that timed out (or whose query was killed) is asked again next time."""
    conn = ScriptedConnection({"SELECT LOCK_MODE": timeout_error(),
                               "BACKUP STAGE START": timeout_error()})
    sources = LockSources()
    LockVerifier(conn, MARIADB, 9, sources=sources).check(BACKUP_STAGE)
    assert sources.missing == set()
    conn.answers["SELECT LOCK_MODE"] = [("MDL_BACKUP_WAIT_COMMIT",)]
    evidence = LockVerifier(conn, MARIADB, 9, sources=sources).check(BACKUP_STAGE)
    assert evidence.method == "METADATA_LOCK_INFO" and evidence.result == HELD


def test_mysql_performance_schema_is_checked_again_unless_it_is_off() -> None:
    """The MDL instrument can be switched at run time: each verification checks it again.
    performance_schema itself off needs a restart: remembered."""
    conn = ScriptedConnection({
        "SELECT m.OBJECT_TYPE": [("BACKUP LOCK", "SHARED", "GRANTED")],
        "SELECT @@performance_schema": [(1, "YES")],
    })
    sources = LockSources()
    for _ in range(2):
        assert LockVerifier(conn, MYSQL, 7, sources=sources).check(INSTANCE).result == HELD
    assert sum(sql.startswith("SELECT @@performance_schema") for sql in conn.executed) == 2
    conn.answers["SELECT @@performance_schema"] = [(0, "YES")]
    conn.answers["ALTER TABLE"] = timeout_error()
    LockVerifier(conn, MYSQL, 7, sources=sources).check(INSTANCE)
    assert sources.missing == {"pfs"}
    conn.executed.clear()
    LockVerifier(conn, MYSQL, 7, sources=sources).check(INSTANCE)
    assert not any(sql.startswith("SELECT m.OBJECT_TYPE") for sql in conn.executed)
