"""Decisions the PostgreSQL engine makes from what it detected (no server needed)."""

from __future__ import annotations

import pytest

from quiesce.engine import InstanceSettings
from quiesce.schema import validate
from quiesce_postgresql.config import SCHEMA
from quiesce_postgresql.engine import PostgresQuiescer, _size_bytes


def engine(**options: object) -> PostgresQuiescer:
    result = validate(SCHEMA, options)
    assert result.ok, result.problems
    return PostgresQuiescer(InstanceSettings("postgresql", "main", result.data))


@pytest.mark.parametrize(("setting", "archive_mode", "standby", "wanted"), [
    ("auto", "off", False, False),
    ("auto", "on", False, True),
    ("auto", "always", False, True),
    ("auto", "on", True, False),  # a standby archives only with archive_mode = always
    ("auto", "always", True, True),
    (True, "off", False, True),
    (False, "always", False, False),
])
def test_when_post_waits_for_the_archiver(setting, archive_mode, standby, wanted) -> None:
    q = engine(wait_for_archive=setting)
    q.info = {"archive_mode": archive_mode, "standby": standby}
    assert q._archive_wait_wanted() is wanted


@pytest.mark.parametrize(("text", "size"), [
    ("16MB", 16 * 1024**2), ("1GB", 1024**3), ("64MB", 64 * 1024**2), ("8192kB", 8 * 1024**2),
])
def test_wal_segment_size_setting(text: str, size: int) -> None:
    assert _size_bytes(text) == size


def test_nothing_to_release_without_prepare() -> None:
    q = engine()
    from quiesce.errors import SessionLost

    with pytest.raises(SessionLost, match="closed"):
        q.check_alive()
    q.abort()  # never raises, even with no session
    q.close()
