"""The ``level`` key of the engines and the pure rules of the light level (no server)."""

from __future__ import annotations

import pytest

from quiesce.schema import validate
from quiesce_mysql.config import SCHEMA as MYSQL_SCHEMA
from quiesce_mysql.config import MySQLOptions, section_problems
from quiesce_mysql.flavour import commit_dirs, durability_problem, recovery_paths
from quiesce_postgresql.config import SCHEMA as PG_SCHEMA


def test_level_defaults_to_full_and_accepts_only_full_or_auto() -> None:
    for schema in (MYSQL_SCHEMA, PG_SCHEMA):
        assert validate(schema, {}).data["level"] == "full"
        assert validate(schema, {"level": "auto"}).ok
        bad = validate(schema, {"level": "light"})
        assert not bad.ok and "'full', 'auto'" in str(bad.problems[0])
        assert schema.fields["level"].doc  # the install skeleton shows it


def test_mysql_level_auto_needs_lock_auto() -> None:
    data = validate(MYSQL_SCHEMA, {"level": "auto", "lock": "instance"}).data
    (problem,) = section_problems(data, "mysql[0]")
    assert problem.where == "mysql[0].level"
    assert 'lock = "instance"' in problem.message and "level" in problem.hint
    assert section_problems(validate(MYSQL_SCHEMA, {"level": "auto"}).data) == []
    assert MySQLOptions.from_mapping({"level": "auto"}).level == "auto"


def test_postgresql_mode_left_out_is_not_an_explicit_backup() -> None:
    assert "mode" not in validate(PG_SCHEMA, {}).data
    assert validate(PG_SCHEMA, {"mode": "backup"}).data["mode"] == "backup"


@pytest.mark.parametrize(("variables", "problem"), [
    ({"innodb_flush_log_at_trx_commit": "1", "log_bin": "ON", "sync_binlog": "1"}, None),
    ({"innodb_flush_log_at_trx_commit": "1", "log_bin": "OFF", "sync_binlog": "0"}, None),
    ({"innodb_flush_log_at_trx_commit": "2", "log_bin": "OFF"},
     "innodb_flush_log_at_trx_commit is 2"),
    ({"innodb_flush_log_at_trx_commit": "1", "log_bin": "ON", "sync_binlog": "0"},
     "sync_binlog is 0"),
    ({"log_bin": "OFF"}, "innodb_flush_log_at_trx_commit is unknown"),
])
def test_durability(variables: dict[str, str], problem: str | None) -> None:
    found = durability_problem(variables)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_recovery_paths_resolve_relative_settings_under_the_data_directory() -> None:
    paths = dict((path, what) for what, path in recovery_paths({
        "datadir": "/var/lib/mysql/",
        "innodb_data_home_dir": "",
        "innodb_log_group_home_dir": "./",
        "innodb_undo_directory": "/srv/undo",
        "aria_log_dir_path": "/var/lib/mysql/",
        "log_bin": "ON",
        "log_bin_basename": "/srv/binlog/mysql-bin",
        "log_bin_index": "/srv/binlog/mysql-bin.index",
        "relay_log_basename": "relay-bin",
        "relay_log_index": "",
    }, ["/srv/big/t.ibd"]))
    assert paths == {
        "/var/lib/mysql": "data directory",
        "/srv/undo": "InnoDB undo directory",
        "/srv/binlog/mysql-bin": "binary log",
        "/srv/binlog/mysql-bin.index": "binary log index",
        "/var/lib/mysql/relay-bin": "relay log",
        "/srv/big/t.ibd": "InnoDB tablespace outside the data directory",
    }


def test_recovery_paths_skip_the_binlog_when_it_is_off() -> None:
    whats = [what for what, _ in recovery_paths({"datadir": "/d", "log_bin": "OFF",
                                                  "log_bin_basename": "/b/x"})]
    assert "binary log" not in whats and whats == ["data directory"]
    assert recovery_paths({}) == []


@pytest.mark.parametrize(("variables", "expected"), [
    ({"datadir": "/var/lib/mysql/", "innodb_log_group_home_dir": "./", "log_bin": "ON",
      "log_bin_basename": "/srv/binlog/mysql-bin"}, ["/var/lib/mysql", "/srv/binlog"]),
    ({"datadir": "/var/lib/mysql", "innodb_log_group_home_dir": "/srv/redo", "log_bin": "ON",
      "log_bin_basename": "mysql-bin"}, ["/srv/redo", "/var/lib/mysql"]),
    ({"datadir": "/var/lib/mysql", "innodb_log_group_home_dir": "", "log_bin": "OFF",
      "log_bin_basename": "/srv/binlog/mysql-bin"}, ["/var/lib/mysql"]),
    ({"datadir": "", "innodb_log_group_home_dir": "/srv/redo"}, []),
])
def test_commit_dirs_are_the_redo_and_binary_log_directories(variables: dict[str, str],
                                                             expected: list[str]) -> None:
    assert commit_dirs(variables) == expected
