"""LocalMongod's pure parts: command line, journal symlink, version parsing, discovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quiesce.errors import EngineUnavailable, ServerError
from quiesce.harness.servers.base import ServerLayout
from quiesce_mongodb.server import (
    find_mongod,
    link_journal,
    mongod_args,
    mongod_search_dirs,
    parse_mongod_version,
)


def test_mongod_args(tmp_path: Path) -> None:
    layout = ServerLayout(tmp_path / "data", tmp_path / "journal", tmp_path / "run")
    args = mongod_args("/usr/bin/mongod", layout, 27999, tmp_path / "run", replset="rs0")
    joined = " ".join(args)
    assert args[0] == "/usr/bin/mongod"
    assert f"--dbpath {tmp_path / 'data'}" in joined
    assert "--port 27999" in joined and "--bind_ip 127.0.0.1" in joined
    assert f"--unixSocketPrefix {tmp_path / 'run'}" in joined
    assert f"--logpath {tmp_path / 'run' / 'mongod.log'}" in joined
    assert "--replSet rs0" in joined
    assert "--fork" not in args  # its own process group instead
    assert "--replSet" not in mongod_args("m", layout, 1, tmp_path, replset=None)


def test_journal_symlink_is_created_and_repointed(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "log"
    data.mkdir()
    target = link_journal(data, log)
    assert target == log / "journal" and target.is_dir()
    assert os.readlink(data / "journal") == str(log / "journal")
    # A restored copy: the copied link still points at the old disk; repoint to the new one.
    new_log = tmp_path / "log-copy"
    link_journal(data, new_log)
    assert os.readlink(data / "journal") == str(new_log / "journal")
    assert (new_log / "journal").is_dir()
    # Idempotent.
    link_journal(data, new_log)
    assert os.readlink(data / "journal") == str(new_log / "journal")


def test_journal_in_data_dir_is_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "journal").mkdir(parents=True)
    assert link_journal(data, None) is None
    with pytest.raises(ServerError, match="real directory"):
        link_journal(data, tmp_path / "log")


def test_parse_mongod_version() -> None:
    out = ('db version v7.0.14\nBuild Info: {\n    "version": "7.0.14",\n}\n')
    assert parse_mongod_version(out) == "7.0.14"
    with pytest.raises(ServerError):
        parse_mongod_version("mongod: command not found")


def test_missing_mongod_names_where_it_looked() -> None:
    try:
        found = find_mongod()
    except EngineUnavailable as exc:
        assert "/usr/bin/mongod" in str(exc)
        assert "PATH (mongod)" in str(exc)
        assert "mongodb-org-server" in exc.hint
    else:
        pytest.skip(f"a mongod is installed here ({found}): the missing case cannot be shown")
    assert "/usr/bin" in mongod_search_dirs()
