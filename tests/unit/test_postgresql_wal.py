"""LSN arithmetic, WAL file names and backup_label parsing."""

from __future__ import annotations

import pytest

from helpers.pg_control import control_bytes, crc32c
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


# ---------------------------------------------------------------- which label fits which copy
def fits(label: str = LABEL, *, copy_checkpoint: int = 0x2000060, stop: int | None = 0x2000100,
         timeline: int = 3, copy_id: str = "7", label_id: str | None = "7") -> list[str]:
    return wal.label_mismatches(label, copy_system_identifier=copy_id, copy_timeline=timeline,
                                copy_checkpoint=copy_checkpoint, stop_lsn=stop,
                                label_system_identifier=label_id)


def test_a_copy_taken_during_the_hold_fits() -> None:
    assert wal.label_checkpoint_lsn(LABEL) == "0/2000060"
    assert fits() == []  # the backup's own checkpoint
    assert fits(copy_checkpoint=0x2000100) == []  # a checkpoint completed during the hold
    assert fits(copy_checkpoint=0x20000F0) == []
    assert fits(stop=None, copy_checkpoint=0x9000000) == []  # no record: no upper bound


def test_a_copy_from_before_the_hold_does_not_fit() -> None:
    (reason,) = fits(copy_checkpoint=0x200005F)
    assert "older than the backup's starting checkpoint 0/2000060" in reason
    assert "taken before this backup began" in reason


def test_a_copy_from_after_the_hold_does_not_fit() -> None:
    (reason,) = fits(copy_checkpoint=0x2000101)
    assert "newer than the backup's end (stop_lsn 0/2000100)" in reason


def test_another_cluster_or_timeline_does_not_fit() -> None:
    assert "another cluster" in fits(copy_id="8")[0]
    assert fits(label_id=None) == []  # an older record without the identifier
    assert "timeline 3, the copy's checkpoint is on timeline 1" in fits(timeline=1)[0]
    assert fits("garbage\n") == ["the label has no START TIMELINE line",
                                 "the label has no START WAL LOCATION or CHECKPOINT LOCATION "
                                 "line"]


# ---------------------------------------------------------------- pg_control
def test_crc32c_matches_the_standard_check_value() -> None:
    import sys

    from quiesce_postgresql.control import crc32c_offsets

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    payload = b"12345678abcd"
    data = payload + crc32c(payload).to_bytes(4, sys.byteorder) + b"\0" * 8
    assert crc32c_offsets(data) == [12]
    assert crc32c_offsets(b"12345678abcE" + data[12:]) == []


def test_pg_control_is_read_and_its_crc_checked() -> None:
    from quiesce_postgresql.control import ControlFileError, parse_control

    control = parse_control(control_bytes(checkpoint=0x16000060, redo=0x16000028, timeline=2))
    assert control.system_identifier == "7712460687430259114"
    assert (control.checkpoint_lsn, control.redo_lsn) == (0x16000060, 0x16000028)
    assert (control.timeline, control.state, control.pg_control_version) == (2, "in production",
                                                                             1300)
    assert parse_control(control_bytes(crc_at=256)).checkpoint_lsn == 0x2000060  # other layout
    damaged = bytearray(control_bytes())
    damaged[33] ^= 0x01  # one bit of the checkpoint LSN
    with pytest.raises(ControlFileError, match="fails its CRC check"):
        parse_control(bytes(damaged))
    with pytest.raises(ControlFileError, match="not a pg_control file"):
        parse_control(b"\0" * 16)
