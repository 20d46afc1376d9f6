"""LSNs, WAL segment names and backup_label parsing: pure functions, no driver, no server."""

from __future__ import annotations

import hashlib
import re

from quiesce.errors import QuiesceError

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024


class BadLSN(QuiesceError):
    """A string is not a PostgreSQL LSN such as ``0/16B3748``."""


def parse_lsn(text: str) -> int:
    """``"1/2A0000D8"`` -> the 64-bit WAL position."""
    match = _LSN.match(text.strip())
    if not match:
        raise BadLSN(f"{text!r} is not an LSN (expected two hex numbers like 0/16B3748)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_name(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE,
                 *, containing_previous_byte: bool = False) -> str:
    """The WAL file name holding ``lsn`` on ``timeline`` (what ``pg_walfile_name`` returns).

    ``containing_previous_byte`` names the segment of ``lsn - 1``: the last WAL a backup that
    stopped at ``lsn`` needs (PostgreSQL's XLByteToPrevSeg, used by pg_walfile_name too).
    """
    if segment_size <= 0 or segment_size & (segment_size - 1):
        raise ValueError(f"WAL segment size must be a power of two, not {segment_size}")
    position = lsn - 1 if containing_previous_byte and lsn > 0 else lsn
    segno = position // segment_size
    per_xlogid = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_xlogid:08X}{segno % per_xlogid:08X}"


def is_segment_name(name: str) -> bool:
    return bool(_SEGMENT.match(name))


def parse_backup_label(text: str) -> dict[str, str]:
    """The ``KEY: value`` lines of a backup_label, e.g. ``{"START TIMELINE": "1", ...}``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def label_timeline(text: str) -> int | None:
    value = parse_backup_label(text).get("START TIMELINE")
    return int(value) if value and value.isdigit() else None


def label_start_lsn(text: str) -> str | None:
    """The LSN of ``START WAL LOCATION: 0/2000028 (file 000000010000000000000002)``."""
    value = parse_backup_label(text).get("START WAL LOCATION", "")
    lsn = value.split(" ", 1)[0]
    return lsn if _LSN.match(lsn) else None


def sha256_text(text: str | None) -> str | None:
    """sha256 of the exact bytes that get written to disk (UTF-8), or None for no file."""
    if text is None:
        return None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def label_checkpoint_lsn(text: str) -> str | None:
    """The LSN of ``CHECKPOINT LOCATION: 0/2000060``: the backup's starting checkpoint."""
    lsn = parse_backup_label(text).get("CHECKPOINT LOCATION", "").split(" ", 1)[0]
    return lsn if _LSN.match(lsn) else None


def label_mismatches(label: str, *, copy_system_identifier: str, copy_timeline: int,
                     copy_checkpoint: int, stop_lsn: int | None,
                     label_system_identifier: str | None) -> list[str]:
    """Why ``label`` does not belong to a copy whose pg_control says the rest; [] if it does.

    A copy taken while this backup was held has: the same cluster (system identifier) and
    timeline, and a latest checkpoint that is the backup's own starting checkpoint or one that
    completed during the hold: ``label CHECKPOINT LOCATION <= copy's checkpoint <= stop_lsn``
    (equality is not the rule). A copy from before the hold has an older checkpoint, one from
    after it a newer one; recovery from such a pairing reports success and loses or mixes data.
    ``stop_lsn`` None (no record at hand) skips the upper bound.
    """
    reasons: list[str] = []
    if label_system_identifier not in (None, "") and str(label_system_identifier) != str(
            copy_system_identifier):
        reasons.append(f"the copy is of another cluster: system identifier "
                       f"{copy_system_identifier} in its pg_control, {label_system_identifier} "
                       "in the record")
    timeline = label_timeline(label)
    if timeline is None:
        reasons.append("the label has no START TIMELINE line")
    elif timeline != copy_timeline:
        reasons.append(f"the label is for timeline {timeline}, the copy's checkpoint is on "
                       f"timeline {copy_timeline}")
    start_text, checkpoint_text = label_start_lsn(label), label_checkpoint_lsn(label)
    if start_text is None or checkpoint_text is None:
        reasons.append("the label has no START WAL LOCATION or CHECKPOINT LOCATION line")
        return reasons
    checkpoint = parse_lsn(checkpoint_text)
    if copy_checkpoint < checkpoint:
        reasons.append(f"the copy's latest checkpoint {format_lsn(copy_checkpoint)} is older "
                       f"than the backup's starting checkpoint {checkpoint_text}: the copy was "
                       "taken before this backup began")
    if stop_lsn is not None and copy_checkpoint > stop_lsn:
        reasons.append(f"the copy's latest checkpoint {format_lsn(copy_checkpoint)} is newer "
                       f"than the backup's end (stop_lsn {format_lsn(stop_lsn)}): the copy "
                       "was taken after this backup ended, or has been started since")
    return reasons
