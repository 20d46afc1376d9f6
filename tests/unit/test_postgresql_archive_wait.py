"""archive_wait_seconds (issue 12 item 7): a value the release cannot honour is refused at
validation with the real maximum, not capped silently."""

from __future__ import annotations

import inspect

from quiesce.hold.lifecycle import Hold
from quiesce.schema import validate
from quiesce_postgresql.config import (
    DEFAULT_ARCHIVE_WAIT_SECONDS,
    MAX_ARCHIVE_WAIT_SECONDS,
    RELEASE_SECONDS,
    SCHEMA,
)


def test_the_maximum_fits_inside_the_release_the_core_gives() -> None:
    release_timeout = inspect.signature(Hold.__init__).parameters["release_timeout"].default
    assert release_timeout >= RELEASE_SECONDS
    assert MAX_ARCHIVE_WAIT_SECONDS + 5 <= RELEASE_SECONDS
    assert 0 < DEFAULT_ARCHIVE_WAIT_SECONDS <= MAX_ARCHIVE_WAIT_SECONDS


def test_a_longer_wait_is_refused_with_the_real_maximum() -> None:
    result = validate(SCHEMA, {"archive_wait_seconds": 200})
    assert not result.ok
    text = " ".join(f"{p.where}: {p.message} {p.hint}" for p in result.problems)
    assert "archive_wait_seconds" in text
    assert f"maximum {MAX_ARCHIVE_WAIT_SECONDS}" in text
    assert "pg_backup_stop" in text


def test_the_maximum_itself_is_accepted() -> None:
    result = validate(SCHEMA, {"archive_wait_seconds": MAX_ARCHIVE_WAIT_SECONDS})
    assert result.ok, result.problems
    assert result.data["archive_wait_seconds"] == MAX_ARCHIVE_WAIT_SECONDS
    assert validate(SCHEMA, {}).data["archive_wait_seconds"] == DEFAULT_ARCHIVE_WAIT_SECONDS
