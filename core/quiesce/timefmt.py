"""One timestamp format for every record, status and message: ISO 8601 UTC, milliseconds."""

from __future__ import annotations

import time


def iso(timestamp: float | None) -> str | None:
    """Wall-clock seconds -> ``2026-01-31T23:59:59.123Z``, or None."""
    if timestamp is None:
        return None
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{base}.{min(999, int((timestamp % 1) * 1000)):03d}Z"
