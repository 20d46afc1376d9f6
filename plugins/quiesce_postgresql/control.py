"""Read ``global/pg_control`` of a stopped (restored) data directory without any PostgreSQL tool.

Only the head of ``ControlFileData`` is read; its layout has not changed from PostgreSQL 9.3
to 17 (native byte order and alignment)::

    offset  0  uint64  system_identifier
            8  uint32  pg_control_version
           12  uint32  catalog_version_no
           16  uint32  state (DBState)
           24  int64   time
           32  uint64  checkPoint            (LSN of the latest checkpoint record)
           40  uint64  checkPointCopy.redo   (where replay of that checkpoint starts)
           48  uint32  checkPointCopy.ThisTimeLineID
           52  uint32  checkPointCopy.PrevTimeLineID

The struct ends with a CRC-32C of everything before it. Its offset differs between major
versions, so the reader looks for the 4-aligned offset where the CRC of the bytes before it
matches the stored value: a torn or damaged file (the server itself refuses those, "incorrect
checksum in control file") matches nowhere and is refused.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from quiesce.errors import QuiesceError

CONTROL_FILE = Path("global") / "pg_control"
CONTROL_FILE_SIZE = 8192
# The struct is a few hundred bytes in every version; its CRC must sit within this prefix.
_CRC_SEARCH_END = 1024
_HEAD = "QIIIxxxxqQQII"  # native order; the explicit pad puts 'time' at offset 24
STATES = {
    0: "starting up",
    1: "shut down",
    2: "shut down in recovery",
    3: "shutting down",
    4: "in crash recovery",
    5: "in archive recovery",
    6: "in production",
}


class ControlFileError(QuiesceError):
    """global/pg_control is missing, short, damaged or not a pg_control file."""


@dataclass(frozen=True)
class ControlData:
    system_identifier: str  # 64-bit: a string, as the run record keeps it
    pg_control_version: int
    catalog_version: int
    state: str
    checkpoint_lsn: int
    redo_lsn: int
    timeline: int
    prev_timeline: int


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE: list[int] = []


def crc32c_offsets(data: bytes, limit: int = _CRC_SEARCH_END) -> list[int]:
    """Every 4-aligned offset ``k`` at which the CRC-32C of ``data[:k]`` is stored."""
    if not _TABLE:
        _TABLE.extend(_crc32c_table())
    found = []
    crc = 0xFFFFFFFF
    end = min(limit, len(data) - 4)
    for k in range(end + 1):
        if k % 4 == 0 and k >= 8:
            stored = int.from_bytes(data[k:k + 4], sys.byteorder)
            if crc ^ 0xFFFFFFFF == stored:
                found.append(k)
        if k < end:
            crc = _TABLE[(crc ^ data[k]) & 0xFF] ^ (crc >> 8)
    return found


def parse_control(data: bytes, where: str = "pg_control") -> ControlData:
    """The head of a pg_control file's bytes, after checking its CRC."""
    if len(data) < 64:
        raise ControlFileError(f"{where} is {len(data)} bytes long, not a pg_control file",
                               hint="restore the whole data disk; global/pg_control is "
                                    f"{CONTROL_FILE_SIZE} bytes")
    if not crc32c_offsets(data):
        raise ControlFileError(
            f"{where} fails its CRC check (damaged, torn, or from another machine "
            "architecture)",
            hint="PostgreSQL will not start on it either; restore the data disk again from "
                 "the snapshot")
    (system_identifier, version, catalog, state, _time, checkpoint, redo, timeline,
     prev_timeline) = struct.unpack_from("=" + _HEAD, data, 0)
    return ControlData(system_identifier=str(system_identifier), pg_control_version=version,
                       catalog_version=catalog, state=STATES.get(state, f"unknown ({state})"),
                       checkpoint_lsn=checkpoint, redo_lsn=redo, timeline=timeline,
                       prev_timeline=prev_timeline)


def read_control(data_dir: str | Path) -> ControlData:
    """The pg_control of ``data_dir`` (read only; never follows a link out of it)."""
    path = Path(data_dir) / CONTROL_FILE
    try:
        with open(path, "rb") as handle:
            data = handle.read(CONTROL_FILE_SIZE)
    except FileNotFoundError as exc:
        raise ControlFileError(f"{path} does not exist",
                               hint="a data directory has global/pg_control; restore the "
                                    "whole data disk") from exc
    except OSError as exc:
        raise ControlFileError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_control(data, str(path))
