"""The backup-mode probe and the archive wait, against real throwaway PostgreSQL servers."""

from __future__ import annotations

from typing import Any

import pytest

from quiesce.deadline import Deadline
from quiesce.engine import InstanceSettings
from quiesce.errors import EngineError
from quiesce.schema import validate
from quiesce_postgresql.config import SCHEMA
from quiesce_postgresql.engine import PostgresQuiescer

pytestmark = pytest.mark.timeout(120)


def quiescer(conninfo: str, **options: Any) -> PostgresQuiescer:
    result = validate(SCHEMA, {"conninfo": conninfo, **options})
    assert result.ok, result.problems
    return PostgresQuiescer(InstanceSettings("postgresql", "main", result.data))


def test_the_probe_proves_backup_mode_without_an_error_in_the_server_log(
        postgresql_server_factory) -> None:
    server = postgresql_server_factory()
    q = quiescer(server.conninfo)
    try:
        q.prepare(Deadline(30))
        q.quiesce(Deadline(30))  # pg_backup_start, then the probe
        assert q.in_backup
        meta = q.release(Deadline(30))
    finally:
        q.close()
    assert meta["backup_label"].startswith("START WAL LOCATION")
    log = server.log_file.read_text()
    assert "quiesce verify" not in log
    assert "a backup is already in progress" not in log
    assert [line for line in log.splitlines() if "ERROR:" in line] == []


def test_the_probe_still_fails_when_the_session_is_not_in_backup_mode(
        postgresql_server_factory) -> None:
    """The proof is the server's refusal: without a backup running, the probe's start is
    accepted and the check fails (what a transaction-mode pooler would cause)."""
    server = postgresql_server_factory()
    q = quiescer(server.conninfo)
    try:
        q.prepare(Deadline(30))
        with pytest.raises(EngineError, match="a second start was accepted"):
            q._verify_backup_held(Deadline(30))
    finally:
        q.close()


def test_an_archive_wait_cut_short_by_the_release_deadline_says_so(
        postgresql_server_factory) -> None:
    server = postgresql_server_factory(settings={"archive_mode": "on",
                                                 "archive_command": "/bin/false"})
    q = quiescer(server.conninfo, archive_wait_seconds=25)
    try:
        q.prepare(Deadline(30))
        q.quiesce(Deadline(30))
        meta = q.release(Deadline(2))
    finally:
        q.close()
    assert meta["wal_archived"] is False
    (note,) = [n for n in meta["notes"] if "was not archived" in n]
    assert "archive_wait_seconds is 25, but the release deadline came first" in note
    assert "within 25s" not in note
