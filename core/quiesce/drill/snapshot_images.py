"""The drill's snapshot command: copy each disk image (or directory) one at a time.

    python -m quiesce.drill.snapshot_images DEST SOURCE [SOURCE ...]

Run by ``quiesce run`` as its ``--snapshot-command`` while the disks are frozen, it copies the
sources one after the other - as clouds snapshot a VM's disks one by one - into DEST/<name of
the source>. Image files are copied sparsely (only their data extents). Directories are copied
with symlinks kept as symlinks (PostgreSQL's pg_wal link must stay a link).

It reads only the sources (image files beside the mounts, never files on the mounted
filesystems) and writes only DEST, which must be outside every frozen filesystem. It prints
one JSON line with the time each copy took, which ``quiesce run`` keeps in memory.

``--fail-after N`` exits 1 after copying N sources: the drill's tests use it to inject a
snapshot failure in the middle of a real cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

CHUNK = 8 << 20


def copy_sparse(src: Path, dst: Path) -> int:
    """Copy the data extents of ``src`` into a new sparse file ``dst``; returns bytes copied."""
    copied = 0
    with open(src, "rb") as fsrc, open(dst, "wb") as fdst:
        size = os.fstat(fsrc.fileno()).st_size
        os.ftruncate(fdst.fileno(), size)
        offset = 0
        while offset < size:
            try:
                data = os.lseek(fsrc.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            hole = os.lseek(fsrc.fileno(), data, os.SEEK_HOLE)
            pos = data
            while pos < hole:
                n = os.copy_file_range(fsrc.fileno(), fdst.fileno(), min(CHUNK, hole - pos),
                                       pos, pos)
                if n <= 0:
                    break
                pos += n
                copied += n
            offset = hole
        os.fsync(fdst.fileno())
    return copied


def copy_source(src: Path, dest_dir: Path) -> dict[str, object]:
    target = dest_dir / src.name
    began = time.monotonic()
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, target, symlinks=True)
        size = None
    else:
        size = copy_sparse(src, target)
    return {"source": str(src), "copy": str(target), "bytes": size,
            "seconds": round(time.monotonic() - began, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quiesce.drill.snapshot_images")
    parser.add_argument("dest", type=Path)
    parser.add_argument("sources", type=Path, nargs="+")
    parser.add_argument("--fail-after", type=int, default=None)
    args = parser.parse_args(argv)
    args.dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    done = []
    for n, src in enumerate(args.sources):
        if args.fail_after is not None and n >= args.fail_after:
            print(json.dumps({"copies": done, "error": "failure injected by --fail-after"}))
            return 1
        try:
            done.append(copy_source(src, args.dest))
        except OSError as exc:
            print(json.dumps({"copies": done, "error": f"{src}: {exc}"}))
            return 1
    print(json.dumps({"copies": done}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
