"""Which process-list rows count as lock blockers, and how lock evidence is judged."""

from __future__ import annotations

import pymysql
import pytest

from quiesce_mysql.flavour import BACKUP_STAGE, FTWRL_MARIADB, FTWRL_MYSQL, INSTANCE
from quiesce_mysql.processlist import (
    candidate_blockers,
    describe_blockers,
    parse_rows,
    processlist_query,
    row_to_json,
)
from quiesce_mysql.verify import FREE, HELD, UNKNOWN, from_lock_rows, from_probe_error

ROWS = [
    # id, user, host, db, command, seconds, state, info
    (1, "system user", "", None, "Daemon", 900.0, "InnoDB purge coordinator", None),
    (2, "event_scheduler", "localhost", None, "Daemon", 900.0, "Waiting on empty queue", None),
    (3, "repl", "10.0.0.2:4000", None, "Binlog Dump GTID", 800.0, "Master has sent all", None),
    (10, "app", "10.0.0.5:5000", "shop", "Query", 42.5, "User sleep",
     b"UPDATE orders SET x = SLEEP(60)"),
    (11, "app", "10.0.0.5:5001", "shop", "Query", 0.2, "Sending data", "SELECT 1"),
    (12, "quiesce", "localhost", None, "Query", 1.0, "Waiting for backup lock",
     "BACKUP STAGE BLOCK_COMMIT"),
    (13, "bi", "10.0.0.9:7000", "dw", "Query", 120.0, "Sending data", "SELECT  *\n FROM  big"),
    (14, "app", "10.0.0.5:5002", "shop", "Killed", 50.0, "", "DELETE FROM t"),
    (15, "system user", "", None, "Slave_SQL", 30.0, "Reading event", "INSERT INTO t"),
]


def test_candidate_blockers_skip_idle_system_and_own_threads_longest_first() -> None:
    found = candidate_blockers(parse_rows(ROWS), exclude_ids=[12], min_seconds=0.8)
    assert [s.id for s in found] == [13, 10]
    assert found[1].info == "UPDATE orders SET x = SLEEP(60)"  # bytes decoded
    assert found[0].preview() == "SELECT * FROM big"  # whitespace folded


def test_min_seconds_filters_short_statements() -> None:
    found = candidate_blockers(parse_rows(ROWS), exclude_ids=[], min_seconds=0.1)
    assert 11 in [s.id for s in found]
    assert candidate_blockers(parse_rows(ROWS), exclude_ids=[], min_seconds=1000) == []


def test_describe_blockers_names_id_user_time_and_text() -> None:
    found = candidate_blockers(parse_rows(ROWS), exclude_ids=[12], min_seconds=0.8)
    text = describe_blockers(found)
    assert "id 13 (user 'bi', running 120.0s" in text
    assert "id 10 (user 'app', running 42.5s" in text
    assert "UPDATE orders SET x = SLEEP(60)" in text
    assert "PROCESS privilege" in describe_blockers([])


def test_long_statement_text_is_cut() -> None:
    rows = [(20, "app", "h", "d", "Query", 5.0, "x", "SELECT " + "a, " * 200 + "b")]
    (statement,) = parse_rows(rows)
    assert len(statement.preview()) == 80 and statement.preview().endswith("...")


def test_processlist_query_uses_time_ms_only_on_mariadb() -> None:
    assert "TIME_MS" in processlist_query(True)
    assert "TIME_MS" not in processlist_query(False)


def test_row_to_json_keeps_numbers_and_decodes_bytes() -> None:
    import decimal

    out = row_to_json({"a": b"x", "b": 3, "c": None, "d": decimal.Decimal("1.5")})
    assert out == {"a": "x", "b": 3, "c": None, "d": "1.5"}


# --------------------------------------------------------------------------- evidence

def test_performance_schema_rows() -> None:
    rows = [("GLOBAL", "SHARED", "GRANTED"), ("COMMIT", "SHARED", "GRANTED")]
    assert from_lock_rows(FTWRL_MYSQL, rows, source="performance_schema").result == HELD
    assert from_lock_rows(INSTANCE, rows, source="performance_schema").result == FREE
    pending = [("BACKUP LOCK", "SHARED", "PENDING")]
    assert from_lock_rows(INSTANCE, pending, source="performance_schema").result == FREE
    granted = [("BACKUP LOCK", "SHARED", "GRANTED")]
    assert from_lock_rows(INSTANCE, granted, source="performance_schema").result == HELD


def test_metadata_lock_info_rows() -> None:
    assert from_lock_rows(BACKUP_STAGE, [("MDL_BACKUP_WAIT_COMMIT",)],
                          source="METADATA_LOCK_INFO").result == HELD
    # START alone is not BLOCK_COMMIT: not proof that commits are blocked.
    assert from_lock_rows(BACKUP_STAGE, [("MDL_BACKUP_START",)],
                          source="METADATA_LOCK_INFO").result == FREE
    assert from_lock_rows(FTWRL_MARIADB, [], source="METADATA_LOCK_INFO").result == FREE


@pytest.mark.parametrize(("step", "error", "result"), [
    (BACKUP_STAGE, None, FREE),
    (BACKUP_STAGE, pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), HELD),
    (FTWRL_MARIADB, pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), HELD),
    (FTWRL_MARIADB, pymysql.err.ProgrammingError(1146, "Table doesn't exist"), FREE),
    (INSTANCE, pymysql.err.ProgrammingError(1049, "Unknown database"), FREE),
    (FTWRL_MARIADB, pymysql.err.OperationalError(1142, "ALTER command denied"), UNKNOWN),
    (BACKUP_STAGE, pymysql.err.OperationalError(1227, "Access denied"), UNKNOWN),
    (BACKUP_STAGE, pymysql.err.ProgrammingError(1146, "Table doesn't exist"), UNKNOWN),
])
def test_probe_outcomes(step, error, result) -> None:  # type: ignore[no-untyped-def]
    assert from_probe_error(step, error).result == result
