"""LSN arithmetic, WAL file names and backup_label parsing."""

from __future__ import annotations

import pytest

from quiesce_postgresql import wal

LABEL = (
    "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
    "CHECKPOINT LOCATION: 0/2000060\n"
    "BACKUP METHOD: streamed\n"
    "BACKUP FROM: standby\n"
    "START TIME: 2026-11-26 12:30:52 UTC\n"
    "LABEL: quiesce main 2026-11-26T12:30:52Z\n"
    "START TIMELINE: 3\n"
)


def test_lsn_round_trip() -> None:
    assert wal.parse_lsn("0/2000028") == 0x2000028
    assert wal.parse_lsn("1/2A0000D8") == (1 << 32) | 0x2A0000D8
    assert wal.format_lsn((0x1F << 32) | 0xAB) == "1F/AB"


@pytest.mark.parametrize("bad", ["", "0x16", "1/2/3", "G/0", "123456789/0"])
def test_bad_lsn(bad: str) -> None:
    with pytest.raises(wal.BadLSN):
        wal.parse_lsn(bad)


def test_segment_names_match_pg_walfile_name() -> None:
    # Values checked against PostgreSQL 15's pg_walfile_name() with 16 MB segments.
    assert wal.segment_name(1, 0x2000028) == "000000010000000000000002"
    assert wal.segment_name(1, (5 << 32) | 0xFF000000) == "0000000100000005000000FF"
    # The previous byte of a segment boundary lives in the previous segment.
    assert wal.segment_name(1, 0x3000000, containing_previous_byte=True) == (
        "000000010000000000000002")
    assert wal.segment_name(1, 0x3000000) == "000000010000000000000003"
    # 64 MB segments: 64 of them per 4 GiB of WAL.
    assert wal.segment_name(2, 0x4000000, 64 * 1024 * 1024) == "000000020000000000000001"
    with pytest.raises(ValueError):
        wal.segment_name(1, 0, 3000)


def test_label_parsing() -> None:
    assert wal.label_timeline(LABEL) == 3
    assert wal.label_start_lsn(LABEL) == "0/2000028"
    assert wal.parse_backup_label(LABEL)["BACKUP FROM"] == "standby"
    assert wal.label_timeline("garbage") is None


def test_sha256_is_of_the_utf8_bytes() -> None:
    assert wal.sha256_text(None) is None
    assert wal.sha256_text("") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert wal.is_segment_name("000000010000000000000002")
    assert not wal.is_segment_name("000000010000000000000002.partial")
