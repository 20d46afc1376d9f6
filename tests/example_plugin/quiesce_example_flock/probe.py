"""``quiesce flock-probe PATH``: is PATH flock()ed by another process right now?

The example plugin's own command (registered through ``quiesce_register_commands``). Exit 0
when the file is free, 1 when another process holds a lock on it; a file that cannot be
opened is an EngineError (exit 2 with its fix, like any command's error).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os

from quiesce.errors import EngineError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the file a [[flock]] section locks")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def main(args: argparse.Namespace) -> int:
    try:
        fd = os.open(args.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise EngineError(f"cannot open {args.path}: {exc.strerror}",
                          hint="give the path of an existing file") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            locked = True
        else:
            locked = False
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if args.json:
        print(json.dumps({"path": args.path, "locked": locked}))
    else:
        print(f"{args.path}: {'locked by another process' if locked else 'free'}")
    return 1 if locked else 0
