"""Facts about a PostgreSQL data directory that production code needs (restore-label,
restore-check) and the throwaway servers reuse: whether a live postmaster runs on it."""

from __future__ import annotations

import os
from pathlib import Path

from quiesce.processes import pid_alive


def live_postmaster(data_dir: Path) -> int | None:
    """The pid of a postmaster running on ``data_dir`` right now, or None.

    A postmaster chdirs into its data directory, so a pid from ``postmaster.pid`` that is alive
    AND has its cwd there is the live server of this directory; a copy of someone else's
    postmaster.pid (restored snapshot) does not pass.
    """
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0].strip()
        pid = int(first)
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0 or not pid_alive(pid):
        return None
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return pid  # cannot tell: assume the worst
    return pid if os.path.realpath(cwd) == os.path.realpath(data_dir) else None
