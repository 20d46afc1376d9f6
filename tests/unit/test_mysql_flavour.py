"""Flavour/version detection and the statements and locks chosen for each server."""

from __future__ import annotations

import pytest

from quiesce.errors import EngineError
from quiesce_mysql.flavour import (
    BACKUP_STAGE,
    BACKUP_STAGE_COMMIT,
    BACKUP_STAGE_DDL,
    FTWRL_MARIADB,
    FTWRL_MYSQL,
    INSTANCE,
    SAFE_ENGINES,
    SYSTEM_SCHEMAS,
    binlog_status_statement,
    commit_block,
    gtid_variables,
    light_level_support,
    nontransactional_count_query,
    parse_server,
    plan_locks,
    replica_status_statement,
    sees_every_table,
)


@pytest.mark.parametrize(("version", "comment", "flavour", "numbers"), [
    ("10.11.6-MariaDB-0+deb12u1-log", "Debian 12", "mariadb", (10, 11, 6)),
    ("11.4.2-MariaDB", "MariaDB Server", "mariadb", (11, 4, 2)),
    ("5.5.5-10.4.3-MariaDB", "", "mariadb", (10, 4, 3)),  # replication-compat prefix
    ("10.6.16", "MariaDB Server", "mariadb", (10, 6, 16)),  # said only in the comment
    ("8.0.36", "MySQL Community Server - GPL", "mysql", (8, 0, 36)),
    ("8.4.0-log", "MySQL Community Server - GPL", "mysql", (8, 4, 0)),
    ("8.0.35-27", "Percona Server (GPL), Release 27", "mysql", (8, 0, 35)),
    ("5.7.44", "MySQL Community Server (GPL)", "mysql", (5, 7, 44)),
])
def test_parse_server(version: str, comment: str, flavour: str,
                      numbers: tuple[int, int, int]) -> None:
    info = parse_server(version, comment)
    assert info.flavour == flavour
    assert info.version == numbers
    assert info.version_string == version


def test_parse_server_without_a_version_number_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match="cannot read a version"):
        parse_server("garbage", "")


@pytest.mark.parametrize(("version", "comment", "statement"), [
    ("8.0.36", "MySQL", "SHOW MASTER STATUS"),
    ("8.1.0", "MySQL", "SHOW MASTER STATUS"),
    ("8.2.0", "MySQL", "SHOW BINARY LOG STATUS"),
    ("8.4.3", "MySQL", "SHOW BINARY LOG STATUS"),
    ("9.1.0", "MySQL", "SHOW BINARY LOG STATUS"),
    ("5.7.44", "MySQL", "SHOW MASTER STATUS"),
    ("10.4.30-MariaDB", "", "SHOW MASTER STATUS"),
    ("10.5.1-MariaDB", "", "SHOW MASTER STATUS"),
    ("10.5.2-MariaDB", "", "SHOW BINLOG STATUS"),
    ("10.11.6-MariaDB", "", "SHOW BINLOG STATUS"),
])
def test_binlog_status_statement(version: str, comment: str, statement: str) -> None:
    assert binlog_status_statement(parse_server(version, comment)) == statement


@pytest.mark.parametrize(("version", "statement"), [
    ("8.0.21", "SHOW SLAVE STATUS"),
    ("8.0.22", "SHOW REPLICA STATUS"),
    ("8.4.0", "SHOW REPLICA STATUS"),
    ("10.5.0-MariaDB", "SHOW SLAVE STATUS"),
    ("10.5.1-MariaDB", "SHOW REPLICA STATUS"),
    ("10.4.30-MariaDB", "SHOW SLAVE STATUS"),
])
def test_replica_status_statement(version: str, statement: str) -> None:
    assert replica_status_statement(parse_server(version)) == statement


def test_gtid_variables_per_flavour() -> None:
    assert gtid_variables(parse_server("10.11.6-MariaDB")) == (
        "gtid_binlog_pos", "gtid_current_pos", "gtid_slave_pos")
    assert gtid_variables(parse_server("8.0.36")) == ("gtid_mode", "gtid_executed")


MARIADB = parse_server("10.11.6-MariaDB")
MARIADB_103 = parse_server("10.3.39-MariaDB")
MYSQL8 = parse_server("8.0.36", "MySQL Community Server")
MYSQL84 = parse_server("8.4.0", "MySQL Community Server")
MYSQL57 = parse_server("5.7.44", "MySQL Community Server")


@pytest.mark.parametrize(("info", "requested", "light", "steps"), [
    (MARIADB, "auto", False, [BACKUP_STAGE]),
    (MARIADB, "auto", True, [BACKUP_STAGE_DDL]),
    (MARIADB, "backup-stage", False, [BACKUP_STAGE]),
    (MARIADB, "ftwrl", False, [FTWRL_MARIADB]),
    (MARIADB_103, "auto", False, [FTWRL_MYSQL]),  # no BACKUP STAGE before 10.4.1
    (MYSQL8, "auto", False, [INSTANCE, FTWRL_MYSQL]),  # full level: the commit block too
    (MYSQL8, "auto", True, [INSTANCE]),
    (MYSQL84, "auto", False, [INSTANCE, FTWRL_MYSQL]),
    (MYSQL84, "auto", True, [INSTANCE]),
    (MYSQL8, "instance", False, [INSTANCE]),
    (MYSQL8, "ftwrl", False, [FTWRL_MYSQL]),
    (MYSQL57, "auto", False, [FTWRL_MYSQL]),
])
def test_plan_locks(info, requested, light, steps) -> None:  # type: ignore[no-untyped-def]
    plan = plan_locks(info, requested, light=light)
    assert list(plan.steps) == steps
    assert plan.requested == requested
    assert plan.reason


def test_auto_blocks_commits_unless_the_light_level_was_verified() -> None:
    """MySQL's auto used to take LOCK INSTANCE FOR BACKUP alone whatever the caller froze."""
    for info in (MYSQL8, MARIADB):
        full = plan_locks(info, "auto")
        assert full.blocks_writes is True
        light = plan_locks(info, "auto", light=True)
        assert light.blocks_writes is False
        assert "light level" in light.reason
        added = commit_block(info, light)
        assert added.blocks_writes is True
    assert commit_block(MARIADB, plan_locks(MARIADB, "auto", light=True)) == BACKUP_STAGE_COMMIT
    assert commit_block(MYSQL8, plan_locks(MYSQL8, "auto", light=True)) == FTWRL_MYSQL


@pytest.mark.parametrize("info", [MARIADB_103, parse_server("10.5.22-MariaDB"), MYSQL57])
def test_light_level_refused_where_the_server_cannot_have_it(info) -> None:  # type: ignore[no-untyped-def]
    assert light_level_support(info)
    with pytest.raises(EngineError, match="internal: the light level"):
        plan_locks(info, "auto", light=True)


@pytest.mark.parametrize(("info", "requested", "message", "hint"), [
    (MARIADB, "instance", "not supported on MariaDB", "backup-stage"),
    (MYSQL57, "instance", "needs MySQL 8.0", "ftwrl"),
    (MYSQL8, "backup-stage", "not supported on MySQL", "instance"),
    (MARIADB_103, "backup-stage", "needs MariaDB 10.4.1", "ftwrl"),
])
def test_unsupported_lock_is_a_clear_error(info, requested, message, hint) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EngineError, match=message) as exc:
        plan_locks(info, requested)
    assert hint in exc.value.hint


def test_unknown_lock_mode_is_refused() -> None:
    with pytest.raises(EngineError, match="not one of"):
        plan_locks(MARIADB, "everything")


def test_lock_steps_release_what_they_take() -> None:
    assert BACKUP_STAGE.acquire == ("BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT")
    assert BACKUP_STAGE.release == BACKUP_STAGE.undo == ("BACKUP STAGE END",)
    assert INSTANCE.release == ("UNLOCK INSTANCE",)
    assert FTWRL_MYSQL.release == FTWRL_MARIADB.release == ("UNLOCK TABLES",)
    assert INSTANCE.pfs_evidence == ("BACKUP LOCK", "SHARED")
    assert FTWRL_MYSQL.pfs_evidence == ("GLOBAL", "SHARED")
    assert FTWRL_MARIADB.mdl_info_mode == "MDL_BACKUP_FTWRL2"
    assert BACKUP_STAGE.mdl_info_mode == "MDL_BACKUP_WAIT_COMMIT"


def test_nontransactional_query_passes_every_name_as_a_parameter() -> None:
    sql, params = nontransactional_count_query()
    assert sql.count("%s") == len(params) == len(SYSTEM_SCHEMAS) + len(SAFE_ENGINES)
    assert "InnoDB" in params and "mysql" in params
    assert "'InnoDB'" not in sql


@pytest.mark.parametrize(("lines", "expected"), [
    (["GRANT SELECT, RELOAD, PROCESS ON *.* TO `quiesce`@`%`"], True),
    (["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"], True),
    (["GRANT RELOAD, PROCESS, REPLICATION CLIENT ON *.* TO `quiesce`@`%`",
      "GRANT BACKUP_ADMIN ON *.* TO `quiesce`@`%`"], False),
    (["GRANT USAGE ON *.* TO `quiesce`@`%`", "GRANT SELECT ON `shop`.* TO `quiesce`@`%`"],
     False),  # one schema visible is not every table
    (["GRANT SELECT ON performance_schema.* TO `quiesce`@`%`"], False),
    ([], False),
])
def test_sees_every_table(lines: list[str], expected: bool) -> None:
    assert sees_every_table(lines) is expected
