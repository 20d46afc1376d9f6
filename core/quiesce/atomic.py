"""Atomic file replacement: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600, *,
                 root_owned: bool = False, backup: str | None = None) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over ``path``.

    The temp file is created exclusively under a random name, mode 0600 then ``mode`` before
    any byte is written, so a secret is never briefly readable by others. ``root_owned``
    chowns it to root when we are root; ``backup`` hard-links the current file there before it
    is replaced. The directory is fsynced so the rename survives a crash.
    """
    import tempfile  # not at import: this module is on 'post''s start-up path

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # mkstemp: a random name created with O_EXCL|O_NOFOLLOW, mode 0600, so nothing planted in
    # the directory (a symlink, a FIFO) can redirect or block the write.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        if root_owned and os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        if backup:
            os.link(path, backup)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
