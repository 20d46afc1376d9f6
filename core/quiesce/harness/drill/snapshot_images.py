"""The drill's snapshot command: copy each disk image (or directory) one at a time.

    python -m quiesce.harness.drill.snapshot_images DEST SOURCE [SOURCE ...]

Run by ``quiesce run`` as its ``--snapshot-command`` while the disks are frozen, it copies the
sources one after the other - as clouds snapshot a VM's disks one by one - into DEST/<name of
the source>. Image files are copied sparsely (only their data extents). Directories are copied
with symlinks kept as symlinks (PostgreSQL's pg_wal link must stay a link), skipping files the
live server deletes while the copy runs.

It reads only the sources (image files beside the mounts, never files on the mounted
filesystems) and writes only DEST, which must be outside every frozen filesystem. It prints
one JSON line with the time each copy took, which ``quiesce run`` keeps in memory.

``--fail-after N`` exits 1 after copying N sources: the drill's tests use it to inject a
snapshot failure in the middle of a real cycle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from quiesce.harness.disks import snapshot_copy
from quiesce.harness.drill.workspace import copy_tree


def copy_source(src: Path, dest_dir: Path) -> dict[str, object]:
    target = dest_dir / src.name
    began = time.monotonic()
    if src.is_dir() and not src.is_symlink():
        copy_tree(src, target)
        size = None
    else:
        # No fsync: the restore reads the copy back through the page cache, and an fsync
        # here would only lengthen the freeze window the copy runs in.
        size = snapshot_copy(src, target, fsync=False)
    return {"source": str(src), "copy": str(target), "bytes": size,
            "seconds": round(time.monotonic() - began, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quiesce.harness.drill.snapshot_images")
    parser.add_argument("dest", type=Path)
    parser.add_argument("sources", type=Path, nargs="+")
    parser.add_argument("--fail-after", type=int, default=None)
    args = parser.parse_args(argv)
    args.dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    done: list[dict[str, object]] = []
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
