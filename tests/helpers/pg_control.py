"""A global/pg_control file as PostgreSQL writes it, for tests without a server."""

from __future__ import annotations

import struct
import sys

CONTROL_FILE_SIZE = 8192


def crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli), independent of the table-driven one under test."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def control_bytes(system_identifier: int = 7712460687430259114, *, checkpoint: int = 0x2000060,
                  redo: int = 0x2000028, timeline: int = 1, state: int = 6,
                  crc_at: int = 288) -> bytes:
    """The head of ControlFileData, filler, then the CRC-32C of what precedes it (at 288 in
    PostgreSQL 15), zero-padded to 8 kB."""
    head = struct.pack("=QIIIxxxxqQQII", system_identifier, 1300, 202209061, state, 0,
                       checkpoint, redo, timeline, timeline)
    body = head + b"\x01" * (crc_at - len(head))
    data = body + crc32c(body).to_bytes(4, sys.byteorder)
    return data + b"\0" * (CONTROL_FILE_SIZE - len(data))
