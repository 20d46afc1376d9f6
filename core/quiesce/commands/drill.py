"""``quiesce drill``: snapshot a throwaway database under load, restore it, prove it.

    quiesce drill [--engine postgresql|mysql|mariadb|mongodb|<a plugin's target>]
                  [--backend auto|docker|local]
                  [--disks loop|dir] [--cycles N]
                  [--mode quiesced|crash|unsafe-staggered|unsafe-light-staggered]
                  [--level full|auto] [--image IMAGE] [--json] [--keep]

Without root: ``--disks dir`` (the default then) with ``--mode quiesced`` or
``unsafe-staggered``; loop disks and ``--mode crash`` need root (losetup, mount, FIFREEZE).

Exit 0 when every cycle's restore verified, 1 when any did not, 3 with a one-line reason when
the engine cannot be started here (naming what to install), 2 for bad usage or a drill that
could not run. Progress goes to stderr; the table (or, with --json, exactly the JSON
document) to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_UNAVAILABLE = 3


def configure(parser: argparse.ArgumentParser) -> None:
    # No argparse choices: any installed plugin may provide a drill target; an unknown name
    # is a DrillError listing the targets the installed plugins provide.
    parser.add_argument("--engine", default="postgresql",
                        help="a drill target of an installed engine plugin (bundled: "
                             "postgresql, mysql, mariadb, mongodb)")
    parser.add_argument("--backend", default="auto", choices=("auto", "docker", "local"),
                        help="auto: Docker when an engine answers, else local binaries")
    parser.add_argument("--disks", choices=("loop", "dir"), default=None,
                        help="loop-mounted filesystems (default as root; root only) or plain "
                             "directories (default otherwise)")
    parser.add_argument("--fstype", choices=("ext4", "xfs"), default="ext4",
                        help="filesystem of the loop disks (default ext4)")
    parser.add_argument("--cycles", type=int, default=3, help="snapshot/restore cycles (3)")
    parser.add_argument("--mode", default="quiesced",
                        choices=("quiesced", "crash", "unsafe-staggered",
                                 "unsafe-light-staggered"),
                        help="quiesced: the full pre/freeze/snapshot/thaw/post cycle; crash: "
                             "freeze and snapshot only; unsafe-staggered: a negative control "
                             "that must NOT verify; unsafe-light-staggered: the light level "
                             "with the disks copied one by one and no freeze, which must NOT "
                             "verify either")
    parser.add_argument("--level", default="full", choices=("full", "auto"),
                        help='auto: level = "auto" in the drill\'s quiesce.toml; each cycle '
                             "then also checks that the light level was chosen (loop disks)")
    parser.add_argument("--image", help="container image for the Docker backend")
    parser.add_argument("--workers", type=int, default=3, help="workload writers (3)")
    parser.add_argument("--json", action="store_true",
                        help="print exactly the JSON report on stdout")
    parser.add_argument("--keep", action="store_true",
                        help="keep snapshot/restored images, configs and logs; print where")


def main(args: argparse.Namespace) -> int:
    from quiesce.errors import EngineUnavailable
    from quiesce.harness.drill.orchestrator import Drill, DrillOptions
    from quiesce.harness.drill.report import render_table

    if not 1 <= args.cycles <= 1000:
        print("quiesce drill: --cycles must be between 1 and 1000", file=sys.stderr)
        return 2
    if not 1 <= args.workers <= 32:
        print("quiesce drill: --workers must be between 1 and 32", file=sys.stderr)
        return 2
    opts = DrillOptions(engine=args.engine, backend=args.backend, disks=args.disks,
                        cycles=args.cycles, mode=args.mode, image=args.image, keep=args.keep,
                        fstype=args.fstype, workers=args.workers, level=args.level,
                        fail_at=os.environ.get("QUIESCE_DRILL_FAIL_AT") or None)
    try:
        result = Drill(opts).run()
    except EngineUnavailable as exc:
        line = f"quiesce drill: cannot start {args.engine} here: {exc}"
        if exc.hint:
            line += f"; {exc.hint}"
        print(" ".join(line.split()), file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(result.dumps())
    else:
        print(render_table(result))
    return 0 if result.verified else 1
